"""Predicted vs traced work of the families the transformers adapter models: tensor-core FLOPs per component."""

from __future__ import annotations

import math

import pytest
from hf_helpers import PREDICTED, adapter_or_skip, predicted_or_skip, traced_run

from opmeter.join import GLUE, join


def _joined(model_type: str, device: str) -> tuple[object, object]:
    adapter = predicted_or_skip(model_type)
    run, trace = traced_run(adapter, device)
    prediction = adapter.predict(trace, run.workload, run.preset, None)
    assert prediction is not None
    return join(trace, prediction.modules, prediction.stages, components=adapter.components(run.model)), prediction


def _check_components(joined: object) -> None:
    comps = joined.by_component()  # type: ignore[attr-defined]
    compute = comps[comps["flops_tensor"] > 0]
    assert GLUE not in set(compute["component"]), "tensor-core work outside every component"
    for row in compute.to_dict("records"):
        assert math.isclose(row["flops_tensor"], row["pred_flops_tensor"], rel_tol=1e-3), row["component"]
    assert {"attention", "LM head"} <= set(compute["component"])


@pytest.mark.parametrize("model_type", PREDICTED)
def test_cpu_generate_matches_prediction_per_component(model_type: str) -> None:
    joined, _ = _joined(model_type, "cpu")
    _check_components(joined)
    stages = joined.by_stage().set_index("stage")  # type: ignore[attr-defined]
    for stage in ("prefill", "decode[0]", "decode[1]", "decode", "total"):
        assert math.isclose(stages.at[stage, "flops_tensor"], stages.at[stage, "pred_flops_tensor"], rel_tol=1e-3)


@pytest.mark.parametrize("model_type", ["llama", "deepseek_v3"])
def test_shape_only_run_matches_prediction(model_type: str) -> None:
    joined, prediction = _joined(model_type, "meta")
    _check_components(joined)
    assert set(prediction.stages["stage"]) >= {"prefill", "decode[0]", "decode[1]", "decode", "total"}


def test_moe_components_are_split() -> None:
    joined, _ = _joined("qwen2_moe", "cpu")
    names = set(joined.by_component()["component"])  # type: ignore[attr-defined]
    assert {"MoE router", "routed experts", "shared experts", "MoE dispatch/combine"} <= names


def test_stage_rows_and_roofline_times() -> None:
    from hf_helpers import traced_run

    from opmeter.hardware import lookup

    adapter = predicted_or_skip("llama")
    run, trace = traced_run(adapter, "meta", prompt=8, new=4)
    prediction = adapter.predict(trace, run.workload, run.preset, lookup("H100-SXM"))
    assert prediction is not None
    stages = prediction.stages.set_index("stage")
    assert list(stages.index) == ["prefill", "decode[0]", "decode[1]", "decode[2]", "decode", "total"]
    steps = [stages.at[f"decode[{i}]", "flops_tensor"] for i in range(3)]
    assert steps[0] < steps[1] < steps[2]  # the KV length grows
    for col in ("flops_tensor", "predicted_time_s"):
        assert math.isclose(stages.at["total", col], stages.at["prefill", col] + stages.at["decode", col])
    assert stages.at["total", "predicted_time_s"] > 0
    assert prediction.headline["predicted_tpot_s"] > 0
    assert set(prediction.modules["module"]) >= {"<root>", "model.layers.0.self_attn.q_proj", "lm_head"}


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2"])
def test_measured_totals_equal_torchs_flop_counter(model_type: str) -> None:
    """The adapter's traced run counts what torch's own FLOP counter counts (CPU fused attention aside, which the
    counter does not see)."""
    import warnings

    from torch.utils.flop_counter import FlopCounterMode

    from opmeter.models.base import RunRequest

    adapter = adapter_or_skip(model_type)
    run = adapter.prepare(RunRequest(preset="tiny", workload="prompt-8", device="cpu", decode_tokens=3))
    with run.context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with FlopCounterMode(display=False) as counter:
            run.infer()
    _, trace = traced_run(adapter, "cpu", prompt=8, new=3)
    ops = trace.by_operator()
    fused = ops[ops["op"].str.contains("_scaled_dot_product_flash_attention_for_cpu")]["flops_tensor"].sum()
    assert trace.totals()["flops_tensor"] - fused == counter.get_total_flops() > 0
