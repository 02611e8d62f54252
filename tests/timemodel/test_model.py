"""The time model's arithmetic on a hand-made trace and profile, the profile's interpolation and JSON round trip."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from opmeter.errors import OpmeterError
from opmeter.timemodel.assess import ProfileChoice, TimeAssessment, check_profile, choose_profile, measured_times
from opmeter.timemodel.kinds import classify
from opmeter.timemodel.model import MODULE_CALL, Peaks, predict
from opmeter.timemodel.profile import (
    SCHEMA_VERSION,
    BandwidthPoint,
    ComputePoint,
    DeviceProfile,
    achieved_bytes_per_s,
    achieved_flops_per_s,
    load_profile,
)
from opmeter.trace import Trace
from opmeter.trace.modules import ModuleRecord


def flat_profile(**kw: object) -> DeviceProfile:
    """1 GFLOP/s for every compute kind, 1 GB/s for every memory kind; host costs 10 us (mm), 2 us (add), 1 us
    (view); 5 us per module call."""
    args: dict[str, object] = dict(
        device="cpu", device_name="Test CPU", dtype="float32", threads=1, torch_version="2.x",
        created="2026-01-01T00:00:00+00:00", source="measured", budget="quick",
        host_s={"mm": 1e-5, "elementwise": 2e-6, "view": 1e-6, "other": 3e-6}, module_call_s=5e-6,
        launch_latency_s=0.0,
        compute={k: (ComputePoint(1e6, 1e4, 1e9, "flat"),) for k in ("mm", "vector")},
        bandwidth={k: (BandwidthPoint(1e6, 1e9, "flat"),) for k in ("read", "write", "arg_reduction")},
    )
    args.update(kw)
    return DeviceProfile(**args)  # type: ignore[arg-type]


def hand_trace() -> Trace:
    """Root with two children: ``vis`` (a vision root) and ``lm``; a prefill and three decode steps."""
    mods = [ModuleRecord("<outside>", "", "", None, 0), ModuleRecord("<root>", "M", "m.M", None, 0),
            ModuleRecord("vis", "V", "m.V", "<root>", 1), ModuleRecord("lm", "L", "m.L", "<root>", 1)]
    t = Trace(modules=mods, first_call=[-1, 0, 1, 2], contexts=[(-1, 0), (0, 1), (1, 2), (1, 3)],
              groups=["prefill", "decode"])
    t.op_info = {"aten.mm.default": ("gemm", True), "aten.add.Tensor": ("elementwise", True),
                 "aten.view.default": ("data_movement", True)}
    t.cells = {
        (0, 2): {"aten.mm.default": [2, 2e9, 0.0, 1e6, 1e6, 0.0]},
        (0, 3): {"aten.add.Tensor": [4, 0, 4000.0, 8e6, 4e6, 0.0]},
        (1, 3): {"aten.mm.default": [3, 3e6, 0.0, 3e3, 3e3, 0.0], "aten.view.default": [10, 0, 0.0, 0, 0, 0.0]},
    }
    t.ctx_stats = {(0, 1): [1, 0.0], (1, 1): [3, 0.0]}
    return t


def test_cell_arithmetic_stages_and_split() -> None:
    pred = predict(hand_trace(), flat_profile(), decode_steps=3, request_roots=("vis",))
    st = pred.by_stage().set_index("stage")
    # vision: 2 mm calls: host 2 x 10 us + max(2 GFLOP at 1 GFLOP/s, 2 MB at 1 GB/s) = 2 s
    assert st.loc["vision", "eager_s"] == pytest.approx(2 + 2e-5)
    assert st.loc["vision", "compute_s"] == pytest.approx(2.0)
    # prefill: 4 adds (host 8 us, memory 12 MB at 1 GB/s beats 4000 FLOPs) + one root call (5 us)
    assert st.loc["prefill", "eager_s"] == pytest.approx(8e-6 + 0.012 + 5e-6)
    assert st.loc["prefill", "memory_s"] == pytest.approx(0.012)
    assert st.loc["prefill", "host_s"] == pytest.approx(13e-6)
    # decode: 3 mm (30 us + 3 ms), 10 views (10 us, no device time), 3 root calls (15 us)
    decode = 3e-5 + 3e-3 + 1e-5 + 1.5e-5
    assert st.loc["decode", "eager_s"] == pytest.approx(decode)
    assert st.loc["tpot", "eager_s"] == pytest.approx(decode / 3)
    assert st.loc["ttft", "eager_s"] == pytest.approx(st.loc["vision", "eager_s"] + st.loc["prefill", "eager_s"])
    assert st.loc["total", "eager_s"] == pytest.approx(st.loc["ttft", "eager_s"] + decode)
    for stage in st.index:  # the split adds up
        row = st.loc[stage]
        assert row["compute_s"] + row["memory_s"] + row["host_s"] == pytest.approx(row["eager_s"])
    # graph-captured: no host cost at all
    assert st.loc["decode", "graph_s"] == pytest.approx(3e-3)
    head = pred.headline()
    assert head == pytest.approx({"ttft_s": st.loc["ttft", "eager_s"], "tpot_s": decode / 3,
                                  "total_s": st.loc["total", "eager_s"]})
    calls = pred.cells[pred.cells["op"] == MODULE_CALL]
    assert int(calls["calls"].sum()) == 4


def test_bound_uses_datasheet_peaks_when_given() -> None:
    peaks = Peaks(1e12, 1e11, 1e10, "test peaks")
    pred = predict(hand_trace(), flat_profile(), 3, ("vis",))
    assert pred.peaks.label.startswith("best measured")

    class HW:
        known, name, tensor_tflops, cuda_tflops, bandwidth_gbps = True, "X", 1.0, 0.1, 10.0

    pred = predict(hand_trace(), flat_profile(), 3, ("vis",), HW())
    st = pred.by_stage().set_index("stage")
    assert st.loc["vision", "bound_s"] == pytest.approx(max(2e9 / peaks.tensor_flops_per_s, 2e6 / 1e10))
    assert st.loc["prefill", "bound_s"] == pytest.approx(max(4000 / 1e11, 12e6 / 1e10))


def test_components_and_kinds() -> None:
    pred = predict(hand_trace(), flat_profile(), 3, ("vis",))
    comp = pred.by_component({"vis": "vision", "lm": "decoder"}).set_index("component")
    assert comp.loc["vision", "eager_s"] == pytest.approx(2 + 2e-5)
    assert comp.loc["unattributed (glue)", "host_s"] == pytest.approx(4 * 5e-6)  # root calls
    kinds = pred.by_kind("decode").set_index("host_kind")
    assert kinds.loc["view", "host_s"] == pytest.approx(1e-5)


def test_interpolation() -> None:
    pts = [BandwidthPoint(1e3, 1e9, "a x"), BandwidthPoint(1e5, 1e11, "a y")]
    assert achieved_bytes_per_s(pts, 1e3) == pytest.approx(1e9)
    assert achieved_bytes_per_s(pts, 1e4) == pytest.approx(1e10)  # log-log midpoint
    assert achieved_bytes_per_s(pts, 1e9) == pytest.approx(1e11)  # clamped
    two = [*pts, BandwidthPoint(1e3, 4e9, "b"), BandwidthPoint(1e5, 4e11, "b")]
    assert achieved_bytes_per_s(two, 1e3) == pytest.approx(2e9)  # geometric mean of two benchmarks
    cpts = [ComputePoint(1e6, 1e6, 1e9), ComputePoint(1e9, 1e7, 1e11)]
    assert achieved_flops_per_s(cpts, 1e9, 1e7) == pytest.approx(1e11)
    assert 1e9 < achieved_flops_per_s(cpts, 3e7, 3e6) < 1e11
    assert math.isnan(achieved_flops_per_s([], 1.0, 1.0))


def test_profile_round_trip_and_bad_files(tmp_path: Path) -> None:
    prof = flat_profile(notes=("a note",))
    path = prof.save(tmp_path / "p.json")
    assert load_profile(path) == prof
    data = orjson.loads(path.read_bytes())
    assert data["schema_version"] == SCHEMA_VERSION
    (tmp_path / "old.json").write_bytes(orjson.dumps({**data, "schema_version": "opmeter.device_profile/0"}))
    with pytest.raises(OpmeterError, match="unsupported device profile schema"):
        load_profile(tmp_path / "old.json")
    (tmp_path / "bad.json").write_bytes(orjson.dumps({k: v for k, v in data.items() if k != "host_s"}))
    with pytest.raises(OpmeterError, match="malformed device profile"):
        load_profile(tmp_path / "bad.json")
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(OpmeterError, match="not a JSON device profile"):
        load_profile(tmp_path / "text.json")
    with pytest.raises(OpmeterError, match="cannot read device profile"):
        load_profile(tmp_path / "missing.json")


def test_kinds() -> None:
    assert classify("aten.addmm.default", "gemm").compute == "addmm"
    assert classify("aten.baddbmm.default", "gemm").compute == "bmm"
    assert classify("aten.view.default", "data_movement", 0, 0).host == "view"
    assert classify("aten.argmax.default", "reduction").memory == "arg_reduction"
    assert classify("aten._scaled_dot_product_flash_attention_for_cpu.default", "attention").compute == "sdpa"
    assert classify("aten.zeros.default", "data_movement", 0, 0).host == "creation"


def test_foreign_profile_and_mismatches_are_named() -> None:
    prof = flat_profile()
    same = check_profile(prof, "file p.json", "cpu", "Test CPU", "float32", 1)
    assert same.foreign is None and same.mismatches == ()
    other = check_profile(prof, "file p.json", "cpu", "Another CPU", "float32", 1)
    assert other.foreign is not None and "Test CPU" in other.foreign and "Another CPU" in other.foreign
    mixed = check_profile(prof, "file p.json", "cpu", "Test CPU", "bfloat16", 2)
    assert mixed.foreign is None and len(mixed.mismatches) == 2
    runtime = {"metrics": {"prefill_s": {"mean": 2.0}, "decode_s": {"mean": 0.003}, "tpot_s": {"mean": 0.001},
                           "vision_s": {"mean": 1.0}, "total_s": {"mean": 3.0}}}
    pred = predict(hand_trace(), prof, 3, ("vis",))
    foreign = TimeAssessment(other, pred, measured_times(runtime))
    assert foreign.relative_error() == {"ttft": None, "tpot": None, "total": None}
    assert "predicted vs measured not checked" in foreign.headline() and "Another CPU" in foreign.headline()
    ok = TimeAssessment(same, pred, measured_times(runtime))
    err = ok.relative_error()
    assert err["total"] == pytest.approx((pred.headline()["total_s"] - 2.003) / 2.003)
    assert ok.sc002() is True and "within" in ok.headline()


def test_missing_profile_is_named() -> None:
    choice = choose_profile(None, "meta", "bfloat16", None)
    assert choice.profile is None and "no device profile" in choice.label
    result = TimeAssessment(choice, None, None)
    assert result.predicted() is None and "not computed" in result.headline()
    assert result.to_dict()["relative_error"] == {"ttft": None, "tpot": None, "total": None}


def test_defaults_for_a_gpu_entry_are_labelled() -> None:
    from opmeter.hardware import HARDWARE

    choice = choose_profile(None, "meta", "bfloat16", HARDWARE["H100-SXM"])
    assert choice.profile is not None and choice.profile.source == "defaults"
    assert "DEFAULTS" in choice.label and "defaults" in choice.profile.label
    assert isinstance(choice, ProfileChoice)
    # a large GEMM gets close to its ceiling, a tiny one does not
    big = choice.profile.flops_rate("mm", 1e13, 1e11)
    small = choice.profile.flops_rate("mm", 1e6, 1e4)
    assert big == pytest.approx(0.7 * 989.4e12, rel=0.01) and small < 0.1 * big


def test_the_request_stage_is_its_explicit_group_or_its_modules_in_the_prefill() -> None:
    import pandas as pd

    from opmeter.timemodel.model import stage_of

    cells = pd.DataFrame({"group": ["encoder", "prefill", "prefill", "setup", "decode"],
                          "module": ["enc.layer", "enc.layer", "lm_head", "<outside>", "lm_head"]})
    assert list(stage_of(cells, ("enc",), "encoder")) == ["vision", "vision", "prefill", "setup", "decode"]
    assert list(stage_of(cells, (), "vision")) == ["other", "prefill", "prefill", "setup", "decode"]


def test_a_model_that_generates_nothing_has_its_forward_predicted_as_the_request() -> None:
    """An image classifier called once (no root call with a sequence length: group ``other``) is all request: its
    predicted time to the answer is its forward, not zero."""
    import torch
    from torch import nn

    from opmeter.timemodel.profile import load_profile
    from opmeter.trace import OpTracer

    model = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    with torch.no_grad(), OpTracer(model) as trace:
        model(torch.randn(1, 3, 32, 32))
    assert set(trace.groups) >= {"other"} and "prefill" not in trace.groups
    profile = load_profile(Path(__file__).parents[2] / "reports" / "dsocr-mini-cpu" / "device_profile.json")
    head = predict(trace, profile, decode_steps=0).headline()
    seconds = predict(trace, profile, decode_steps=0).stage_seconds()
    assert head["ttft_s"] > 0 and head["total_s"] == pytest.approx(head["ttft_s"])
    assert seconds["prefill"] == pytest.approx(head["ttft_s"]) and seconds["decode"] == 0
