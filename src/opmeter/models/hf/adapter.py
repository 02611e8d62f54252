"""The generic transformers adapter: ``--model hf:MODEL_TYPE`` or ``--model hf:PATH`` (see docs/adding-a-model.md).

Importing this module registers it as ``hf`` (:func:`opmeter.models.base.register`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from opmeter.analytic.base import dtype_bytes
from opmeter.errors import OpmeterError
from opmeter.models.base import ModelWords, Prediction, PreparedRun, RunRequest, StageSpec, register
from opmeter.models.hf.analytic import FAMILIES, MOE, decoder_spec
from opmeter.models.hf.build import (
    build_model,
    experts_implementation,
    family_kind,
    refuse_data_dependent_meta,
    transformers_major,
)
from opmeter.models.hf.components import infer_components, stage_spec
from opmeter.models.hf.config import PRESETS, load_config, preset_config
from opmeter.models.hf.predict import predict_run
from opmeter.models.hf.run import make_infer, shape_only
from opmeter.models.hf.workloads import DEFAULT_WORKLOAD, WORKLOADS, PromptWorkload, parse_workload
from opmeter.structure import Component

log = logging.getLogger(__name__)

FUSED_OPS = ("_scaled_dot_product_flash", "_scaled_dot_product_efficient", "_scaled_dot_product_cudnn",
             "_flash_attention", "_efficient_attention")
"""Operator names of a fused SDPA kernel (otherwise the trace ran the math decomposition)."""


def fused_experts_layout() -> bool:
    """Whether the installed transformers writes MoE experts as one fused module (>= 5)."""
    return transformers_major() >= 5


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")



def check_positions(config: Any, kind: str, workload: PromptWorkload) -> None:
    """A decoder-only model's prompt and new tokens must fit its position table (``max_position_embeddings``);
    refused in one line before any work. Families without the attribute (relative or no positions) pass."""
    from opmeter.report.limits import check_decode_tokens

    limit = getattr(config, "max_position_embeddings", None)
    if kind == "causal" and isinstance(limit, int) and limit > 0:
        check_decode_tokens(workload.new_tokens, workload.prompt_tokens, limit)

class HFAdapter:
    """Any transformers model from its config; predicted for :data:`~opmeter.models.hf.analytic.FAMILIES`."""

    name = "hf"
    default_preset: str | None = "full"
    default_workload: str | None = DEFAULT_WORKLOAD

    def __init__(self, arg: str | None, spec: str) -> None:
        self.spec = spec
        self.config = load_config(arg)
        self.kind = family_kind(self.config)
        self.model_type = str(self.config.model_type)
        predicted = self.kind == "causal" and self.model_type in FAMILIES and (
            self.model_type not in MOE or fused_experts_layout())
        self._model: torch.nn.Module | None = None
        self._dtype: torch.dtype = torch.float32
        self.stage_spec: StageSpec = stage_spec(self._tree())
        family = type(self.config).__name__.removesuffix("Config")
        self.words = ModelWords(name=f"{family} (transformers {self.model_type})", predicted=predicted,
                                request_parts=" + ".join(self.stage_spec.request_components))

    # ---- what the model is ---------------------------------------------------------------------------------------
    def _tree(self) -> torch.nn.Module:
        """The last prepared model, else the tiny preset on meta (same module paths and classes, fewer layers)."""
        if self._model is None:
            self._model = build_model(preset_config(self.config, "tiny"), "meta")
        return self._model

    def presets(self) -> Mapping[str, str]:
        return dict(PRESETS)

    def workloads(self) -> Mapping[str, str]:
        return dict(WORKLOADS)

    def components(self, model: torch.nn.Module | None = None) -> Sequence[Component]:
        return infer_components(model if model is not None else self._tree())

    # ---- one run ---------------------------------------------------------------------------------------------------
    def prepare(self, request: RunRequest) -> PreparedRun:
        preset = request.preset or "full"
        config = preset_config(self.config, preset)
        meta = request.device == "meta"
        dtype = request.dtype or (torch.bfloat16 if meta else torch.float32)
        workload = parse_workload(request.workload, request.decode_tokens)
        check_positions(config, self.kind, workload)  # before the model is built, not inside the trace
        weights = request.weights_dir if request.weights else None
        model = build_model(config, request.device, dtype, weights)
        if meta:
            refuse_data_dependent_meta(model)
        self._model, self._dtype = model, dtype
        self.stage_spec = stage_spec(model)
        metadata = {
            "adapter": self.name, "model_spec": self.spec, "model_type": self.model_type, "hf_kind": self.kind,
            "preset": preset, "dtype": _dtype_name(dtype), "hf_workload": workload.summary(),
            "execution": "shape-only" if meta else "executed",
            "weights": str(weights) if weights is not None and not meta else "random",
            "experts_implementation": experts_implementation(config, request.device, dtype) or "default",
        }
        if meta:
            metadata["generation"] = f"fixed-budget loop of {workload.new_tokens} calls (generate() cannot run on meta)"
        return PreparedRun(model=model, infer=make_infer(model, self.kind, workload), workload=workload,
                           preset=preset, metadata=metadata, context=_context(meta))

    def workload_from_trace(self, metadata: Mapping[str, Any], request: RunRequest | None = None
                            ) -> tuple[PromptWorkload, str]:
        summary = metadata.get("hf_workload")
        if not isinstance(summary, Mapping) or "prompt_tokens" not in summary:
            raise OpmeterError("the trace has no hf workload in its metadata (not recorded by the hf adapter)")
        new_tokens = request.decode_tokens if request is not None and request.decode_tokens else summary["new_tokens"]
        from opmeter.checks import whole_number

        workload = PromptWorkload(whole_number(summary["prompt_tokens"], "the trace's prompt_tokens", 1, 1 << 24),
                                  whole_number(new_tokens, "the trace's new_tokens", 0, 1 << 20),
                                  whole_number(summary.get("batch", 1), "the trace's batch", 1, 1 << 16))
        return workload, str(metadata.get("preset") or "full")

    def parameter_model(self, preset: str, metadata: Mapping[str, Any]) -> torch.nn.Module | None:
        """The model on meta (parameter bytes of a saved trace); it also gives the stage spec of its tree."""
        dtype = torch.bfloat16 if str(metadata.get("dtype", "bfloat16")) == "bfloat16" else torch.float32
        model = build_model(preset_config(self.config, preset), "meta", dtype, None)
        self._model, self._dtype = model, dtype
        self.stage_spec = stage_spec(model)
        return model

    def predict(self, trace: Any, workload: Any, preset: str, hardware: Any) -> Prediction | None:
        """The analytic prediction of the traced run, ``None`` (measured only) for a family without a model."""
        if not self.words.predicted:
            log.info("hf:%s has no analytic model: measured-only report", self.model_type)
            return None
        meta = dict(getattr(trace, "metadata", {}) or {})
        element = dtype_bytes(str(meta.get("dtype") or _dtype_name(self._dtype)))
        spec = decoder_spec(preset_config(self.config, preset), element, transformers_major())
        if spec is None:
            return None
        import attrs

        spec = attrs.evolve(spec, sdpa=sdpa_variant(trace))
        return predict_run(spec, workload, hardware, label=f"hf analytic ({spec.family}, SDPA {spec.sdpa})")


def sdpa_variant(trace: Any) -> str:
    """``"fused"`` when the trace ran a fused SDPA kernel, else ``"math"`` (the decomposition)."""
    ops = trace.by_operator() if hasattr(trace, "by_operator") else None
    names = [str(o) for o in ops["op"]] if ops is not None and "op" in ops else []
    return "fused" if any(f in n for n in names for f in FUSED_OPS) else "math"


def _context(meta: bool) -> Any:
    return shape_only if meta else contextlib.nullcontext


register("hf", HFAdapter, "transformers")
