"""``opmeter verify``: analytic layers vs the tracer on a model's own modules, layer by layer and end to end."""

from __future__ import annotations

import argparse
import sys

from opmeter.errors import OpmeterError
from opmeter.report.outdir import FORCE_HELP

NAME = "verify"
HELP = (
    "Trace every module of a model shape-only (meta, bf16) at its standard workload's shapes and compare "
    "tensor-core FLOPs, CUDA-core FLOPs and bytes with the analytic layers; writes verification.csv/.md; exits 1 "
    "if any row is outside tolerance."
)


MAX_GRID_CROPS = 36
"""Largest ``--grid`` (cols * rows) the command accepts; a model may bound it further."""


def _grid(text: str) -> tuple[int, int]:
    try:
        cols, rows = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid must look like COLSxROWS (e.g. 2x3), got {text!r}") from None
    if cols < 1 or rows < 1:
        raise argparse.ArgumentTypeError(f"grid must be at least 1x1, got {text!r}")
    if cols * rows > MAX_GRID_CROPS:
        raise argparse.ArgumentTypeError(
            f"grid {text!r} has {cols * rows} crops; at most {MAX_GRID_CROPS} are verified (memory grows with the "
            "crop count)")
    return cols, rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``opmeter verify``."""
    from opmeter.models.base import DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL, help="model adapter NAME[:ARG] (default: %(default)s)")
    parser.add_argument("--out", default="reports/latest-verify",
                        help="output directory (default: %(default)s; the committed example is reports/verify)")
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)
    parser.add_argument("--preset", default=None, help="preset (default: the model's full size)")
    parser.add_argument(
        "--fast", action="store_true", help="CI-sized run: the model's smallest preset (overrides --preset)"
    )
    parser.add_argument(
        "--grid", type=_grid, default=None,
        help="crop grid COLSxROWS for models that tile pages (default: the standard page's)"
    )
    parser.add_argument(
        "--device", choices=("meta", "cpu"), default="meta",
        help="meta: shape-only bf16 (any size, default); cpu: real fp32 tensors, fused SDPA, learned routing "
        "(small presets only: use with --fast)",
    )
    parser.add_argument(
        "--attn", choices=("eager", "sdpa"), default="eager",
        help="reference decoder attention implementation (default: %(default)s, the vendor's)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    """Run the verification; print the worst row per layer; return 1 when any row fails."""
    from opmeter.models.base import resolve_adapter, verifiable
    from opmeter.report.outdir import check_output_dir, staged_output
    from opmeter.verify import run_verify, worst_per_layer

    adapter = resolve_adapter(args.model)
    cases_of = verifiable(adapter)
    preset = str((cases_of.fast_preset if args.fast else args.preset) or adapter.default_preset)
    progress = None if args.quiet else (lambda msg: print(f"  tracing {msg}", file=sys.stderr))
    cases = cases_of.verify_cases(preset, args.device, args.grid, args.attn)  # checks preset, device, grid first
    out = check_output_dir(args.out, args.force)  # fail now, not after the run
    with cases_of.verify_context(), \
            staged_output(out, force=args.force, command="verify", accumulate=True) as staging:
        df, seconds = run_verify(cases, preset, staging, progress, args.device)
    if df.empty:
        raise OpmeterError("no verification cases ran")
    worst = worst_per_layer(df)
    cols = ["layer", "case", "rel_tensor", "rel_cuda", "rel_bytes", "status"]
    print(worst[cols].to_string(index=False))
    fails = int(df["status"].str.startswith("FAIL").sum())
    print(f"{len(df)} rows, {fails} failing, {seconds:.1f} s; wrote {args.out}/verification.csv and .md")
    return 1 if fails else 0
