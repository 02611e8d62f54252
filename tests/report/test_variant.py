"""The analytic variant follows the execution path recorded in the trace (meta vs real CPU execution)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from opmeter.models.deepseek_ocr.config import get_config
from opmeter.models.deepseek_ocr.variant import AnalyticChoice, ExpertCounts, choose_analytic
from opmeter.trace import load_trace

TOY = "deepseek-ocr-toy"
RESIZE = {"<root>", "model", "model.sam_model", "model.sam_model.blocks.1", "model.sam_model.blocks.1.attn"}
"""Ancestors of the toy's global SAM attention, whose rel-pos table is linearly resized: under inference_mode the
resize decomposes into index/elementwise ops (the analytic model predicts one ``upsample_linear1d``), a gap of a few
kB that is < 1 % of the fused attention's bytes on the toy and invisible at the real geometry."""


def _workload_tokens(trace: Any) -> tuple[int, int]:
    w = trace.metadata["workload"]
    return int(w["prefill_length"]), int(w["max_new_tokens"]) - 1


def test_meta_trace_chooses_the_shape_only_variant(toy_run: dict[str, Any]) -> None:
    trace = toy_run["trace"]
    w = toy_run["workload"]
    cfg = get_config(TOY)
    choice = choose_analytic(trace, cfg, w.text_tokens() + w.vision(cfg).image_tokens, w.decode_steps)
    assert (choice.variant, choice.sdpa, choice.attn_implementation) == ("normal", "math", "eager")
    assert choice.dtype == 2 and not choice.host_checks
    assert not choice.measured_routing  # the reference's balanced shape-only routing, recognised as such
    assert any("balanced" in r for r in choice.reasons)
    assert "balanced expert routing" in choice.label()


def test_cpu_trace_chooses_fused_sdpa_fp32_host_checks_and_measured_routing(cpu_report: Path) -> None:
    trace = load_trace(cpu_report / "trace.json")
    seq, steps = _workload_tokens(trace)
    choice = choose_analytic(trace, get_config(TOY), seq, steps)
    assert (choice.sdpa, choice.dtype, choice.host_checks, choice.attn_implementation) == ("fused", 4, True, "eager")
    assert choice.measured_routing
    assert choice.prefill_experts is not None and choice.decode_experts is not None
    moe = [i for i, c in enumerate(choice.decode_experts) if c is not None]
    assert moe == [1]  # toy: layer 0 dense, layer 1 MoE
    k = get_config(TOY).decoder.num_experts_per_tok
    assert sum(choice.prefill_experts[1] or ()) == seq * k
    assert sum(choice.decode_experts[1].tokens) == steps * k
    assert any("_scaled_dot_product_flash_attention_for_cpu" in r for r in choice.reasons)


def test_decode_steps_reproduce_the_measured_expert_totals() -> None:
    counts = ExpertCounts(calls=(3, 0, 2, 1, 3, 0), tokens=(3, 0, 5, 1, 3, 0))
    choice = AnalyticChoice(decode_experts=(None, counts))
    steps = choice.decode_step_experts(3)
    assert steps is not None and len(steps) == 3
    assert all(s[0] is None for s in steps)
    per_step = [s[1] for s in steps]
    assert [sum(1 for x in s if x) for s in per_step] == [3, 3, 3]  # calls spread evenly over the steps
    for e in range(6):  # each expert's calls and tokens, once per step at most
        assert sum(1 for s in per_step if s[e]) == counts.calls[e]
        assert sum(s[e] for s in per_step) == counts.tokens[e]


def test_executed_report_matches_the_analytic_prediction_module_by_module(cpu_report: Path) -> None:
    """Before the variant was read from the trace, experts were off by up to -80 % and vision bytes by -30 %."""
    data = orjson.loads((cpu_report / "joined.json").read_bytes())
    choice = data["metadata"]["analytic_choice"]
    assert choice["routing"] == "measured" and choice["sdpa"] == "fused" and choice["host_checks"]
    mods = pd.DataFrame(data["modules"])
    jm = mods[mods["predicted"]]
    assert len(jm) > 100
    assert jm["module"].str.contains(r"mlp\.experts\.\d+$").sum() >= 5
    assert jm["rel_flops_tensor"].abs().max() < 1e-9, jm.loc[jm["rel_flops_tensor"].abs().idxmax(), "module"]
    for col in ("rel_flops_cuda", "rel_bytes"):
        assert jm[col].notna().all()
        assert jm[col].abs().max() < 1e-2, jm.loc[jm[col].abs().idxmax(), ["module", col]]
        off = set(jm.loc[jm[col].abs() > 1e-9, "module"])
        assert off <= RESIZE, off - RESIZE
    stages = {s["stage"]: s for s in data["stages"]}
    for stage in ("prefill", "decode", "decode[0]", "decode[1]"):
        for col in ("rel_flops_tensor", "rel_flops_cuda", "rel_bytes"):
            assert abs(stages[stage][col]) < 1e-9, (stage, col)
    assert abs(stages["vision"]["rel_bytes"]) < 1e-2
    text = (cpu_report / "report.md").read_text()
    assert "## Analytic variant" in text and 'sdpa="fused"' in text and "measured expert routing" in text


def test_balanced_choice_predicts_as_before(toy_run: dict[str, Any]) -> None:
    from opmeter.hardware import HARDWARE
    from opmeter.models.deepseek_ocr.predict import predicted_frames

    w = toy_run["workload"]
    cfg = get_config(TOY)
    choice = choose_analytic(toy_run["trace"], cfg, w.text_tokens() + w.vision(cfg).image_tokens, w.decode_steps)
    modules, stages, _ = predicted_frames(choice.analytic(cfg), w.vision(cfg), w.text_tokens(), w.decode_steps,
                                          HARDWARE["H100-SXM"], choice)
    pd.testing.assert_frame_equal(modules, toy_run["pred_modules"])
    pd.testing.assert_frame_equal(stages, toy_run["pred_stages"])


def test_rejoining_a_saved_cpu_trace_chooses_the_same_variant(cpu_report: Path, tmp_path: Path) -> None:
    from opmeter.cli import main

    assert main(["report", "--trace", str(cpu_report / "trace.json"), "--out", str(tmp_path)]) == 0
    again = orjson.loads((tmp_path / "joined.json").read_bytes())["metadata"]["analytic_choice"]
    first = orjson.loads((cpu_report / "joined.json").read_bytes())["metadata"]["analytic_choice"]
    assert again == first
