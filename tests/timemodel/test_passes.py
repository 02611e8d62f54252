"""Calibration passes merged into one profile, and the synthetic stacks that calibrate the module host factor."""

from __future__ import annotations

import logging
from pathlib import Path

import attrs
import pytest
import torch

from opmeter.timemodel import calibrate
from opmeter.timemodel.calibrate import PASSES, QUICK, _Timer, cache_flush, last_level_cache_bytes
from opmeter.timemodel.profile import BandwidthPoint, ComputePoint, DeviceProfile, mean_profile
from opmeter.timemodel.synthetic import GreedyLoop, stacks


def one_pass(host: float, gemm: float, read: float, factor: float, extra: bool = False) -> DeviceProfile:
    compute = {"mm": (ComputePoint(1e6, 1e4, gemm, "mm M=1"),)}
    if extra:
        compute["sdpa"] = (ComputePoint(1e6, 1e4, 5e9, "sdpa L=1"),)
    return DeviceProfile(
        device="cpu", device_name="Test CPU", dtype="float32", threads=1, torch_version="2.x",
        created="2026-01-01T00:00:00+00:00", source="measured", budget="full", host_s={"mm": host},
        module_call_s=host, launch_latency_s=0.0, compute=compute,
        bandwidth={"read": (BandwidthPoint(1e6, read, "sum n=1"),)}, module_host_factor=factor)


def test_passes_merge_into_their_mean_time() -> None:
    merged = mean_profile([one_pass(1e-6, 1e9, 1e10, 2.0), one_pass(3e-6, 3e9, 3e10, 4.0, extra=True)])
    assert merged.host_s["mm"] == pytest.approx(2e-6) and merged.module_call_s == pytest.approx(2e-6)
    assert merged.module_host_factor == pytest.approx(3.0)
    # rates: the mean time per unit of work (harmonic mean), not the mean rate
    assert merged.compute["mm"][0].flops_per_s == pytest.approx(1.5e9)
    assert merged.bandwidth["read"][0].bytes_per_s == pytest.approx(1.5e10)
    assert merged.compute["sdpa"][0].flops_per_s == pytest.approx(5e9)  # measured by one pass only
    assert "mean of 2 calibration passes" in merged.notes[-1]


def test_merging_passes_checks_the_device() -> None:
    single = one_pass(1e-6, 1e9, 1e10, 2.0)
    assert mean_profile([single]) is single
    with pytest.raises(ValueError):
        mean_profile([])
    with pytest.raises(ValueError):
        mean_profile([single, attrs.evolve(single, threads=2)])


def test_the_full_budget_takes_several_passes_the_quick_one_one() -> None:
    assert PASSES["full"] > 1 and PASSES["quick"] == 1


def test_synthetic_stacks_run_and_the_loop_runs_every_step() -> None:
    with torch.inference_mode():
        outputs = [model(x) for model, x in stacks("cpu", torch.float32)]
        loop = GreedyLoop(8, steps=3)
        ids = loop(torch.zeros(1, 1, dtype=torch.long))
    assert len(outputs) == 3 and all(torch.isfinite(o.float()).all() for o in outputs)
    assert ids.shape == (1, 4)  # the end token is outside the vocabulary: no early stop


def test_last_level_cache_from_sysfs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for index, size in (("index0", "32K"), ("index2", "1024K"), ("index3", "32768K")):
        (tmp_path / index).mkdir()
        (tmp_path / index / "size").write_text(size + "\n", encoding="utf-8")
    assert last_level_cache_bytes(tmp_path) == 32 * 2**20
    with caplog.at_level(logging.INFO, logger=calibrate.__name__):
        assert last_level_cache_bytes(tmp_path / "missing") == 32 * 2**20
    assert "assuming a 32 MiB" in caplog.text


def test_cold_calls_follow_a_flush_each() -> None:
    events: list[str] = []
    timer = _Timer("cpu", QUICK)
    seconds = timer.seconds_per_cold_call(lambda: events.append("call"), lambda: events.append("flush"), calls=3)
    assert events == ["call", "flush", "call", "flush", "call", "flush", "call"]  # a warm-up, then flush + call
    assert seconds >= 0
    assert cache_flush("cuda") is None
    flush = cache_flush("cpu")
    assert flush is not None
    flush()
