"""Helpers of the generic transformers adapter tests: tiny runs traced on cpu or meta (no downloads)."""

from __future__ import annotations

from typing import Any

import pytest

from opmeter import OpTracer
from opmeter.models.base import RunRequest, marked_stages
from opmeter.models.hf.adapter import HFAdapter, fused_experts_layout

PREDICTED = ("llama", "qwen2", "mixtral", "qwen2_moe", "deepseek_v2", "deepseek_v3")
MEASURED_ONLY = ("gpt2", "t5", "whisper", "vit")
FUSED_MOE = ("mixtral", "qwen2_moe", "deepseek_v2", "deepseek_v3")


def adapter_or_skip(model_type: str) -> HFAdapter:
    """The adapter of ``hf:model_type``; skips when the installed transformers lacks the family or its layout."""
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"transformers has no {model_type} (older release)")
    adapter = HFAdapter(model_type, f"hf:{model_type}")
    return adapter


def predicted_or_skip(model_type: str) -> HFAdapter:
    """As :func:`adapter_or_skip`, and skips MoE families when transformers has per-expert modules (< 5)."""
    adapter = adapter_or_skip(model_type)
    if model_type in FUSED_MOE and not fused_experts_layout():
        pytest.skip(f"{model_type}: transformers < 5 writes per-expert modules; only the fused layout is modelled")
    return adapter


def traced_run(adapter: HFAdapter, device: str = "cpu", prompt: int = 8, new: int = 3) -> tuple[Any, Any]:
    """``(prepared run, trace)`` of the tiny preset, request stage marked as the pipeline does."""
    run = adapter.prepare(RunRequest(preset="tiny", workload=f"prompt-{prompt}", device=device, decode_tokens=new))
    with run.context(), OpTracer(run.model, metadata=run.metadata) as trace, \
            marked_stages(run.model, adapter.stage_spec):
        run.infer()
    return run, trace
