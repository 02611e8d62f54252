"""Sweeps: the grid set, the columns, the objectives and the files."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from opmeter.cli import main
from opmeter.models.deepseek_ocr.sweeps import SweepConfig, run_sweep, sweep_grids

REQUIRED = ["rows", "cols", "crops", "image_tokens", "variant", "tensor_tflops", "cuda_tflops", "io_tb",
            "arithmetic_intensity", "activations_gb", "kv_gb"]


def test_grid_set() -> None:
    grids = sweep_grids()
    assert all(r <= c and 2 <= r * c <= 29 for r, c in grids)
    assert len(grids) == len(set(grids)) == 28 + 13 + 7 + 4 + 1
    assert (5, 5) in grids and (1, 29) in grids and (2, 14) in grids


def test_sweeps_are_fast_and_complete() -> None:
    t0 = time.perf_counter()
    frames = {name: run_sweep(name, SweepConfig(decode_steps=100)) for name in ("vision", "prefill", "decode")}
    assert time.perf_counter() - t0 < 30
    for df in frames.values():
        assert set(REQUIRED) <= set(df.columns)
        assert len(df) == 2 * len(sweep_grids())
    vis = frames["vision"]
    shares = vis["sam_share"] + vis["clip_share"] + vis["projector_share"]
    assert ((shares - 1).abs() < 1e-9).all()
    pre = frames["prefill"]
    assert (pre["required_tflops_ttft_0.5s"] == 2 * pre["required_tflops_ttft_1s"]).all()
    dec = frames["decode"]
    assert (dec["decode_steps"] == 100).all()
    assert (dec["required_tflops_tpot_50ms"] > 0).all()


def test_sweep_command_writes_files(tmp_path: Path) -> None:
    assert main(["sweep", "vision", "--out", str(tmp_path), "--max-crops", "4"]) == 0
    df = pd.read_csv(tmp_path / "vision.csv")
    assert set(REQUIRED) <= set(df.columns)
    assert (tmp_path / "vision.md").read_text().startswith("# Sweep `vision`")
    svgs = sorted(p.name for p in tmp_path.glob("*.svg"))
    assert "vision_split.svg" in svgs and "vision_flops_tflops.svg" in svgs and "vision_shares.svg" in svgs
    assert main(["sweep", "decode", "--out", str(tmp_path), "--max-crops", "3", "--no-plots",
                 "--decode-steps", "5"]) == 0
    assert main(["sweep", "prefill", "--out", str(tmp_path), "--variants", "warp"]) == 1
    # the measured column only exists in 'normal' rows: refused before tracing anything
    assert main(["sweep", "vision", "--out", str(tmp_path), "--variants", "flash", "--measured", "1"]) == 1
