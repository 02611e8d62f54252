"""``opmeter verify``: analytic layers vs the tracer on the reference modules, layer by layer and end to end."""

from __future__ import annotations

import argparse
import sys

from opmeter.errors import OpmeterError
from opmeter.io import ensure_output_dir
from opmeter.models.deepseek_ocr.geometry import MAX_CROPS

NAME = "verify"
HELP = (
    "Trace every DeepSeek-OCR reference module shape-only (meta, bf16) at the standard workload's shapes and compare "
    "tensor-core FLOPs, CUDA-core FLOPs and bytes with the analytic layers; writes verification.csv/.md; exits 1 "
    "if any row is outside tolerance."
)


MAX_GRID_CROPS = 4 * MAX_CROPS
"""Largest ``--grid`` (cols * rows): four times the model's own maximum."""


def _grid(text: str) -> tuple[int, int]:
    try:
        cols, rows = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid must look like COLSxROWS (e.g. 2x3), got {text!r}") from None
    if cols < 1 or rows < 1:
        raise argparse.ArgumentTypeError(f"grid must be at least 1x1, got {text!r}")
    if cols * rows > MAX_GRID_CROPS:
        raise argparse.ArgumentTypeError(
            f"grid {text!r} has {cols * rows} crops; at most {MAX_GRID_CROPS} are verified (the model's own tiling "
            f"uses at most {MAX_CROPS}, and memory grows with the crop count)")
    return cols, rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``opmeter verify``."""
    from opmeter.models.deepseek_ocr.config import FULL_SIZE, PRESETS

    parser.add_argument("--out", default="reports/verify", help="output directory (default: %(default)s)")
    parser.add_argument(
        "--preset", default=FULL_SIZE, help=f"reference preset: {', '.join(sorted(PRESETS))} (default: %(default)s)"
    )
    parser.add_argument(
        "--fast", action="store_true", help="CI-sized run: the deepseek-ocr-toy preset (overrides --preset)"
    )
    parser.add_argument(
        "--grid", type=_grid, default=None, help="crop grid COLSxROWS (default: 2x3, the standard page)"
    )
    parser.add_argument(
        "--device", choices=("meta", "cpu"), default="meta",
        help="meta: shape-only bf16 (any size, default); cpu: real fp32 tensors, fused SDPA, learned routing "
        "(small presets: use with --fast or --preset deepseek-ocr-mini)",
    )
    parser.add_argument(
        "--attn", choices=("eager", "sdpa"), default="eager",
        help="reference decoder attention implementation (default: %(default)s, the vendor's)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    """Run the verification; print the worst row per layer; return 1 when any row fails."""
    from opmeter.models.deepseek_ocr.config import get_config
    from opmeter.verify import run_verify, worst_per_layer

    preset = "deepseek-ocr-toy" if args.fast else args.preset
    get_config(preset)  # validates the name
    progress = None if args.quiet else (lambda msg: print(f"  tracing {msg}", file=sys.stderr))
    if args.device == "cpu" and preset == "deepseek-ocr-v1-base":
        raise OpmeterError("--device cpu runs the model for real: use --fast or --preset deepseek-ocr-mini")
    ensure_output_dir(args.out)  # fail now, not after the run
    df, seconds = run_verify(preset, args.out, args.grid, progress, args.device, args.attn)
    if df.empty:
        raise OpmeterError("no verification cases ran")
    worst = worst_per_layer(df)
    cols = ["layer", "case", "rel_tensor", "rel_cuda", "rel_bytes", "status"]
    print(worst[cols].to_string(index=False))
    fails = int(df["status"].str.startswith("FAIL").sum())
    print(f"{len(df)} rows, {fails} failing, {seconds:.1f} s; wrote {args.out}/verification.csv and .md")
    return 1 if fails else 0
