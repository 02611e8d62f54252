"""The first touch of fresh outputs: writes into new memory cost page faults on the core of the kernel that writes
them, so they add to a compute-bound call; in-place writes and outputs the allocator reuses pay nothing extra."""

from __future__ import annotations

import logging
import platform

import attrs
import pytest

from opmeter.timemodel import calibrate
from opmeter.timemodel.calibrate import GLIBC_MMAP_THRESHOLD_MAX, first_touch_points, fresh_map_bytes
from opmeter.timemodel.kinds import FILL, FIRST_TOUCH, IN_PLACE, RELEASE, RW, classify, writes_in_place
from opmeter.timemodel.model import HELD_RELEASE, predict
from opmeter.timemodel.profile import BandwidthPoint, ComputePoint, DeviceProfile
from opmeter.trace import Trace
from opmeter.trace.modules import ModuleRecord

MB = 2.0**20
THRESHOLD = 32 * MB


def touch_profile(split: bool = True) -> DeviceProfile:
    """No host cost; compute at 1 GFLOP/s; read, write (fresh outputs) and fill at 10 GB/s; first touch 1 GB/s from
    32 MiB; release 4 GB/s."""
    flat = (BandwidthPoint(1e6, 1e10, "c"), BandwidthPoint(1e9, 1e10, "c"))
    bandwidth = {k: flat for k in ("read", "write", "arg_reduction", FILL)}
    bandwidth[RELEASE] = (BandwidthPoint(1e6, 4e9, "r"), BandwidthPoint(1e9, 4e9, "r"))
    if split:
        bandwidth[FIRST_TOUCH] = (BandwidthPoint(THRESHOLD, 1e9, "t"), BandwidthPoint(1e9, 1e9, "t"))
    else:
        del bandwidth[FILL]
    return DeviceProfile(
        device="cpu", device_name="Test CPU", dtype="float32", threads=1, torch_version="2.x",
        created="2026-01-01T00:00:00+00:00", source="measured", budget="quick", host_s={"other": 0.0},
        module_call_s=0.0, launch_latency_s=0.0,
        compute={k: (ComputePoint(1e6, 1e4, 1e9, "flat"),) for k in ("mm", "vector")},
        bandwidth=bandwidth, fresh_map_bytes=THRESHOLD if split else 0.0)


def one_cell_trace(op: str, category: str, flops: float, written: float) -> Trace:
    """A root ``m`` with a child ``head`` that makes one call of ``op`` in the prefill and nothing else."""
    mods = [ModuleRecord("<outside>", "", "", None, 0), ModuleRecord("<root>", "M", "m.M", None, 0),
            ModuleRecord("head", "H", "m.H", "<root>", 1)]
    t = Trace(modules=mods, first_call=[-1, 0, 1], contexts=[(-1, 0), (0, 1), (1, 2)], groups=["prefill", "decode"])
    t.op_info = {op: (category, True)}
    t.cells = {(0, 2): {op: [1, flops, 0.0, 0.0, written, 0.0]}}
    return t


def prefill(trace: Trace, profile: DeviceProfile, steps: int = 0) -> float:
    return predict(trace, profile, steps).stage_seconds()["prefill"]


def test_first_touch_adds_to_a_compute_bound_fresh_output() -> None:
    written = 64 * MB
    gemm = one_cell_trace("aten.mm.default", "gemm", 1e9, written)  # 1 s of compute, 6.7 ms of bandwidth
    assert prefill(gemm, touch_profile()) == pytest.approx(1.0 + written / 1e9)
    # without the split curves the write hides under the compute, as before
    assert prefill(gemm, touch_profile(split=False)) == pytest.approx(1.0)
    # an output the allocator reuses (below the threshold) pays bandwidth only, hidden under the compute
    small = one_cell_trace("aten.mm.default", "gemm", 1e9, 16 * MB)
    assert prefill(small, touch_profile()) == pytest.approx(1.0)


def test_in_place_writes_pay_no_first_touch() -> None:
    written = 64 * MB
    fresh = prefill(one_cell_trace("aten.add.Tensor", "elementwise", 0.0, written), touch_profile())
    in_place = prefill(one_cell_trace("aten.add_.Tensor", "elementwise", 0.0, written), touch_profile())
    assert in_place == pytest.approx(written / 1e10)
    assert fresh == pytest.approx(written / 1e10 + written / 1e9)


def test_the_split_counts_first_touch_as_memory() -> None:
    written = 64 * MB
    tp = predict(one_cell_trace("aten.mm.default", "gemm", 1e9, written), touch_profile(), 0)
    row = tp.by_stage().set_index("stage").loc["prefill"]
    assert row["compute_s"] == pytest.approx(1.0)
    assert row["memory_s"] == pytest.approx(written / 1e9)
    assert row["compute_s"] + row["memory_s"] + row["host_s"] == pytest.approx(row["eager_s"])
    assert tp.cells["touch_s"].sum() == pytest.approx(written / 1e9)


def test_the_held_release_moves_out_of_the_first_touch() -> None:
    written = 64 * MB
    trace = one_cell_trace("aten.mm.default", "gemm", 1e9, written)
    moved = predict(trace, touch_profile(), 3)
    st = moved.stage_seconds()
    release = written / 4e9
    assert st["prefill"] == pytest.approx(1.0 + written / 1e9 - release)
    assert st["decode"] == pytest.approx(release)
    row = moved.cells[moved.cells["op"] == HELD_RELEASE].iloc[0]
    assert row["touch_s"] == pytest.approx(release) and row["memory_s"] == 0


def test_in_place_classification() -> None:
    assert writes_in_place("aten.add_.Tensor") and writes_in_place("aten.copy_.default")
    assert writes_in_place("aten.mm.out") and writes_in_place("aten.index_add_.default")
    assert not writes_in_place("aten.add.Tensor") and not writes_in_place("aten._to_copy.default")
    assert not writes_in_place("aten.__and__.Tensor")  # a dunder, not an in-place name
    assert classify("aten.add_.Tensor", "elementwise").memory == IN_PLACE
    assert classify("aten.add.Tensor", "elementwise").memory == RW
    assert classify("aten.argmax.default", "reduction").memory == "arg_reduction"


def test_first_touch_points_are_write_minus_fill_from_the_threshold() -> None:
    sizes = (16 * MB, 32 * MB, 64 * MB)
    write = tuple(BandwidthPoint(b, b / (0.01 + b / 1e9), f"full n={int(b // 4)}") for b in sizes)
    fill = tuple(BandwidthPoint(b, 1e10, f"fill_ n={int(b // 4)}") for b in sizes)
    points = first_touch_points(write, fill, THRESHOLD)
    assert [p.bytes for p in points] == [32 * MB, 64 * MB]
    for p in points:
        extra = 0.01 + p.bytes / 1e9 - p.bytes / 1e10
        assert p.bytes / p.bytes_per_s == pytest.approx(extra)
        assert p.label.startswith("first_touch ")
    assert first_touch_points(write, fill, 0.0) == ()  # no known threshold: no curve
    # a size where write and fill agree is next to free, never a division by zero
    same = first_touch_points(fill, fill, THRESHOLD)
    assert all(p.bytes_per_s == pytest.approx(1e13) for p in same)


def test_fresh_map_threshold(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    assert fresh_map_bytes("cuda") == 0.0
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert fresh_map_bytes("cpu") == 0.0
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert fresh_map_bytes("cpu") == GLIBC_MMAP_THRESHOLD_MAX
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert fresh_map_bytes("cpu") == 2**20
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "lots")
    with caplog.at_level(logging.WARNING, logger=calibrate.__name__):
        assert fresh_map_bytes("cpu") == GLIBC_MMAP_THRESHOLD_MAX
    assert "MALLOC_MMAP_THRESHOLD_" in caplog.text


def test_peak_bandwidth_ignores_cost_curves() -> None:
    profile = touch_profile()
    cheap = {**profile.bandwidth, RELEASE: (BandwidthPoint(16 * MB, 2e12, "r"),),
             FIRST_TOUCH: (BandwidthPoint(THRESHOLD, 1e13, "t"),)}
    assert attrs.evolve(profile, bandwidth=cheap).peak_bytes_per_s() == pytest.approx(1e10)


def test_a_reused_held_output_moves_nothing() -> None:
    trace = one_cell_trace("aten.mm.default", "gemm", 1e9, 16 * MB)  # below the threshold: no first touch
    moved = predict(trace, touch_profile(), 3)
    assert not moved.cells["op"].eq(HELD_RELEASE).any()
    assert moved.stage_seconds()["decode"] == 0
