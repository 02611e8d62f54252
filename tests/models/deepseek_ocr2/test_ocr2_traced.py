"""The tiny DeepSeek-OCR-2 preset executed on a CPU under the tracer, joined with the analytic prediction."""

from __future__ import annotations

import math

import pytest
from ocr2_helpers import needs_ocr2

pytestmark = needs_ocr2

TOKENS = 3


@pytest.fixture(scope="module")
def traced():
    from opmeter.join import join
    from opmeter.models.base import RunRequest, marked_stages
    from opmeter.models.deepseek_ocr2.adapter import DeepseekOcr2Adapter
    from opmeter.trace import OpTracer

    adapter = DeepseekOcr2Adapter()
    run = adapter.prepare(RunRequest(preset="tiny", workload="dsocr2-standard", device="cpu", decode_tokens=TOKENS))
    with run.context(), marked_stages(run.model, adapter.stage_spec), OpTracer(run.model) as trace:
        new_tokens = run.infer()
    trace.metadata.update(run.metadata)
    prediction = adapter.predict(trace, run.workload, run.preset, None)
    joined = join(trace, prediction.modules, prediction.stages, components=adapter.components(run.model),
                  stage_spec=adapter.stage_spec)
    return trace, prediction, joined, new_tokens


def test_generation_runs_the_fixed_budget(traced) -> None:
    trace, _, _, new_tokens = traced
    assert tuple(new_tokens.shape) == (1, TOKENS)
    names = set(trace.stages()["stage"])
    assert {f"decode[{i}]" for i in range(TOKENS - 1)} <= names
    assert trace.complete


def test_every_compute_op_is_counted(traced) -> None:
    trace = traced[0]
    assert trace.uncounted().empty
    ops = set(trace.by_operator()["op"])
    assert "aten._grouped_mm.default" in ops  # transformers' default experts implementation


def test_tensor_core_flops_match_per_component(traced) -> None:
    comp = traced[2].by_component().set_index("component")
    for name, row in comp.iterrows():
        if name == "unattributed (glue)":
            assert row["flops_tensor"] == 0
            continue
        assert row["flops_tensor"] > 0 or name in ("token embedding", "decoder norms", "decoder residual adds",
                                                   "MoE dispatch/combine", "final norm"), name
        assert math.isclose(row["flops_tensor"], row["pred_flops_tensor"], rel_tol=1e-3, abs_tol=0), name


def test_vision_is_its_own_stage_and_nothing_is_setup(traced) -> None:
    stages = traced[2].by_stage().set_index("stage")
    assert "setup" not in stages.index or stages.loc["setup", "flops_tensor"] == 0
    for stage in ("vision", "prefill", "decode", "total"):
        row = stages.loc[stage]
        assert math.isclose(row["flops_tensor"], row["pred_flops_tensor"], rel_tol=1e-3), stage
    assert stages.loc["vision", "flops_tensor"] > 0


def test_bytes_and_cuda_core_flops_are_close(traced) -> None:
    total = traced[2].by_stage().set_index("stage").loc["total"]
    assert abs(total["flops_cuda"] / total["pred_flops_cuda"] - 1) < 0.02
    assert abs(total["bytes"] / total["pred_bytes"] - 1) < 0.05
