"""Per-call sizes in the time model: a cell's large calls at their own size (the tracer's size histogram), the
release of the output a generation loop holds, and the calibration clock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from opmeter.timemodel.calibrate import pick_clock
from opmeter.timemodel.kinds import RELEASE
from opmeter.timemodel.model import HELD_RELEASE, held_output, predict
from opmeter.timemodel.profile import BandwidthPoint, ComputePoint, DeviceProfile
from opmeter.trace import OpTracer, Trace, load_trace
from opmeter.trace.modules import ModuleRecord
from opmeter.trace.recorder import LARGE_CALL_BYTES

SMALL, LARGE = 1e3, 1e8


def sized_profile(release: bool = False) -> DeviceProfile:
    """Host costs zero; reads and writes at 10 GB/s up to 10 MB per call and 1 GB/s from 50 MB (as a CPU's fresh
    large outputs, page faults included); optionally a release curve at 5 GB/s."""
    curve = (BandwidthPoint(1e7, 1e10, "c"), BandwidthPoint(5e7, 1e9, "c"))
    bandwidth = {k: curve for k in ("read", "write", "arg_reduction")}
    if release:
        bandwidth[RELEASE] = (BandwidthPoint(1e6, 5e9, "r"), BandwidthPoint(1e9, 5e9, "r"))
    return DeviceProfile(
        device="cpu", device_name="Test CPU", dtype="float32", threads=1, torch_version="2.x",
        created="2026-01-01T00:00:00+00:00", source="measured", budget="quick", host_s={"other": 0.0},
        module_call_s=0.0, launch_latency_s=0.0, compute={"vector": (ComputePoint(1e6, 1e4, 1e15, "fast"),)},
        bandwidth=bandwidth)


def mixed_trace(histogram: list[list[float]]) -> Trace:
    """One module ``lm`` under the root; in the prefill, 11 adds: one writes 100 MB, ten write 1 kB each."""
    mods = [ModuleRecord("<outside>", "", "", None, 0), ModuleRecord("<root>", "M", "m.M", None, 0),
            ModuleRecord("lm", "L", "m.L", "<root>", 1)]
    t = Trace(modules=mods, first_call=[-1, 0, 1], contexts=[(-1, 0), (0, 1), (1, 2)], groups=["prefill", "decode"])
    t.op_info = {"aten.add.Tensor": ("elementwise", True)}
    t.cells = {(0, 2): {"aten.add.Tensor": [11, 0, 0.0, 0, LARGE + 10 * SMALL, 0.0]},
               (1, 2): {"aten.add.Tensor": [3, 0, 0.0, 0, 3 * SMALL, 0.0]}}
    if histogram:
        t.large_calls = {(0, 2): {"aten.add.Tensor": histogram}}
    return t


def test_large_calls_are_costed_at_their_own_size() -> None:
    by_size = predict(mixed_trace([[1, 0, 0.0, 0, LARGE]]), sized_profile(), 0).stage_seconds()["prefill"]
    assert by_size == pytest.approx(LARGE / 1e9 + 10 * SMALL / 1e10)
    # without the histogram every call is costed at the mean size (9 MB: the fast rate)
    at_mean = predict(mixed_trace([]), sized_profile(), 0).stage_seconds()["prefill"]
    assert at_mean == pytest.approx((LARGE + 10 * SMALL) / 1e10)
    # a histogram that does not fit in its cell (more bytes than the cell) is ignored, not trusted
    unfit = predict(mixed_trace([[1, 0, 0.0, 0, 2 * LARGE]]), sized_profile(), 0).stage_seconds()["prefill"]
    assert unfit == pytest.approx(at_mean)


def test_release_of_the_held_output_is_costed_in_decode() -> None:
    trace = mixed_trace([[1, 0, 0.0, 0, LARGE]])
    assert held_output(trace) == ("lm", "aten.add.Tensor", LARGE)
    plain = predict(trace, sized_profile(), 3).stage_seconds()
    moved = predict(trace, sized_profile(release=True), 3)
    st = moved.stage_seconds()
    release = LARGE / 5e9
    assert st["decode"] == pytest.approx(plain["decode"] + release)
    assert st["prefill"] == pytest.approx(plain["prefill"] - release)
    assert moved.cells["op"].eq(HELD_RELEASE).sum() == 1
    # no decode step (nothing holds the output) or no release curve (a GPU profile): nothing moves
    assert predict(trace, sized_profile(release=True), 0).stage_seconds()["prefill"] == pytest.approx(
        plain["prefill"])


class _TwoSizes(torch.nn.Module):
    def forward(self, big: torch.Tensor, small: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return big + 1.0, small + 1.0, small + 2.0


def test_tracer_keeps_large_calls_and_saves_them(tmp_path: Path) -> None:
    big, small = torch.zeros(2**19), torch.zeros(4)  # 2 MiB in, 2 MiB out; 16 B
    model = _TwoSizes()
    with torch.inference_mode(), OpTracer(model, nvtx=False) as trace:
        model(big, small)
    assert trace.complete
    cells = [(ctx, ops) for ctx, ops in trace.large_calls.items() if "aten.add.Tensor" in ops]
    assert len(cells) == 1
    (buckets,) = [ops["aten.add.Tensor"] for _, ops in cells]
    assert len(buckets) == 1 and buckets[0][0] == 1  # the one large add, not the two small ones
    assert buckets[0][3] + buckets[0][4] >= LARGE_CALL_BYTES
    assert sum(v[0] for ops in trace.cells.values() for op, v in ops.items() if op == "aten.add.Tensor") == 3
    again = load_trace(trace.save(tmp_path / "t.json"))
    assert again.large_calls == trace.large_calls


def test_calibration_clock() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert pick_clock("cpu") is time.thread_time  # one thread: CPU time, blind to the neighbours' load
        torch.set_num_threads(2)
        assert pick_clock("cpu") is time.perf_counter  # the workers' time would be missed
        assert pick_clock("cuda") is time.perf_counter
    finally:
        torch.set_num_threads(before)
