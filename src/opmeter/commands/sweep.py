"""``opmeter sweep vision|prefill|decode``: analytic crop-grid sweeps with CSV, Markdown and SVG plots."""

from __future__ import annotations

import argparse

from opmeter.errors import OpmeterError
from opmeter.io import ensure_output_dir

NAME = "sweep"
HELP = (
    "Sweep every crop grid rows x cols (rows <= cols, 2..29 crops; base 1024 + 640 crops) through the analytic "
    "DeepSeek-OCR model: vision, vision + prefill (with TFLOP/s for a TTFT of 0.5 s / 1 s) or K decode steps "
    "(TFLOP/s and GB/s for a TPOT of 50 ms); normal and flash attention. Writes NAME.csv, NAME.md and SVG plots."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``opmeter sweep``."""
    from opmeter.models.deepseek_ocr.config import FULL_SIZE, PRESETS
    from opmeter.sweeps import SWEEPS

    parser.add_argument("name", choices=(*SWEEPS, "all"), help="which sweep ('all': the three)")
    parser.add_argument("--out", default="reports/sweeps", help="output directory (default: %(default)s)")
    parser.add_argument(
        "--preset", default=FULL_SIZE, help=f"preset: {', '.join(sorted(PRESETS))} (default: %(default)s)"
    )
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


MAX_SWEEP_CROPS = 256
"""Largest ``--max-crops``: the analytic sweep is cheap, but the model's own tiling stops at 9 crops."""


def run(args: argparse.Namespace) -> int:
    """Run the sweep(s) and print where the files went."""
    from opmeter.commands.verify import MAX_GRID_CROPS
    from opmeter.models.deepseek_ocr.analytic import VARIANTS
    from opmeter.models.deepseek_ocr.config import get_config
    from opmeter.sweeps import SWEEPS, SweepConfig, measured_vision_column, write_sweep

    cfg = get_config(args.preset)
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise OpmeterError(f"unknown variant(s) {bad or args.variants!r}; use {', '.join(VARIANTS)}")
    if not 2 <= args.max_crops <= MAX_SWEEP_CROPS:
        raise OpmeterError(f"--max-crops must be between 2 and {MAX_SWEEP_CROPS}, got {args.max_crops}")
    if args.measured and args.max_crops > MAX_GRID_CROPS:  # measured points trace their grids
        raise OpmeterError(f"--measured traces grids: --max-crops must be at most {MAX_GRID_CROPS} with it, got "
                           f"{args.max_crops}")
    if not 1 <= args.decode_steps <= cfg.decoder.max_position_embeddings:
        raise OpmeterError(f"--decode-steps must be between 1 and {cfg.decoder.max_position_embeddings} (the "
                           f"model's max_position_embeddings), got {args.decode_steps}")
    if args.measured < 0:
        raise OpmeterError(f"--measured must be >= 0, got {args.measured}")
    if args.measured and "normal" not in variants:  # the measured column sits in the 'normal' rows only
        raise OpmeterError("--measured traces the reference's attention, the 'normal' variant: add it to --variants")
    sweep_cfg = SweepConfig(
        preset=args.preset, variants=variants, decode_steps=args.decode_steps, base_size=cfg.base_size,
        image_size=cfg.image_size, max_crops=args.max_crops,
    )
    ensure_output_dir(args.out)  # fail now, not after the run
    names = SWEEPS if args.name == "all" else (args.name,)
    for name in names:
        hook = None
        if name == "vision" and args.measured:
            hook = measured_vision_column(args.preset, max_points=args.measured)
        res = write_sweep(name, args.out, sweep_cfg, plots=not args.no_plots, measured=hook)
        print(f"{name}: {len(res.frame)} rows, {len(res.files)} files in {args.out} ({res.seconds:.1f} s)")
    return 0
