"""``opmeter sweep vision|prefill|decode``: analytic crop-grid sweeps with CSV, Markdown and SVG plots."""

from __future__ import annotations

import argparse

from opmeter.report.outdir import FORCE_HELP

NAME = "sweep"
SWEEPS = ("vision", "prefill", "decode")
HELP = (
    "Sweep a model's input geometry through its analytic model (for page models: every crop grid rows x cols, "
    "2..29 crops): vision, vision + prefill (with TFLOP/s for a TTFT of 0.5 s / 1 s) or K decode steps "
    "(TFLOP/s and GB/s for a TPOT of 50 ms); normal and flash attention. Writes NAME.csv, NAME.md and SVG plots."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``opmeter sweep``."""
    from opmeter.models.base import DEFAULT_MODEL

    parser.add_argument("name", choices=(*SWEEPS, "all"), help="which sweep ('all': the three)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model adapter NAME[:ARG] (default: %(default)s)")
    parser.add_argument("--out", default="reports/latest-sweeps",
                        help="output directory (default: %(default)s; a sweep adds to it, replaces only its own files)")
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)
    parser.add_argument("--preset", default=None, help="preset (default: the model's full size)")
    parser.add_argument("--decode-steps", type=int, default=100, help="K decode steps (default: %(default)s)")
    parser.add_argument("--max-crops", type=int, default=29, help="largest rows*cols (default: %(default)s)")
    parser.add_argument(
        "--variants", default="normal,flash", help="attention variants, comma separated (default: %(default)s)"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the SVG plots")
    parser.add_argument(
        "--measured", type=int, default=0, metavar="N",
        help="vision sweep: trace N grids shape-only for a measured column beside the analytic one (seconds each)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the sweep(s) through the model adapter and print where the files went."""
    from opmeter.models.base import resolve_adapter, sweepable
    from opmeter.report.outdir import check_output_dir, staged_output

    adapter = resolve_adapter(args.model)
    sweeps = sweepable(adapter)
    args.preset = args.preset or adapter.default_preset
    out = check_output_dir(args.out, args.force)
    shown = args.out
    with staged_output(out, force=args.force, command="sweep", accumulate=True) as staging:
        args.out = staging
        lines = list(sweeps.sweep(args))
    for line in lines:
        print(line)
    print(f"written to {shown}")
    return 0
