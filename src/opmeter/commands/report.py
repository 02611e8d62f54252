"""``opmeter report``: trace a model's inference, join it with its analytic model, write the report."""

from __future__ import annotations

import argparse
import sys
import time

from opmeter.errors import OpmeterError
from opmeter.report.outdir import FORCE_HELP

NAME = "report"
HELP = (
    "Trace one inference of a model (shape-only on meta without a GPU, or executed with --device cpu|cuda), join it "
    "with its analytic model and write report.md, JSON, CSV, SVG and call graphs into --out."
)


def _positive_int(minimum: int) -> type:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"
    return parse  # type: ignore[return-value]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``opmeter report``."""
    from opmeter.models.base import DEFAULT_MODEL, adapter_names
    from opmeter.report.limits import DEFAULT_MAX_IMAGE_PIXELS

    parser.add_argument("--model", default=None, help=f"model adapter NAME[:ARG], one of {', '.join(adapter_names())} "
                        f"(default: {DEFAULT_MODEL}; with --trace: the one that recorded it)")
    parser.add_argument("--workload", default=None, help="workload id (default: the model's standard workload)")
    parser.add_argument("--preset", default=None, help="model preset (default: the model's full size)")
    parser.add_argument(
        "--device", default="auto", help="auto | cpu | cuda | meta (default auto: cuda when available, else meta = "
        "shape-only)",
    )
    parser.add_argument("--decode-tokens", type=_positive_int(1), default=None,
                        help="new tokens: the prefill's plus N-1 decode steps (default: the workload's, 512)")
    parser.add_argument("--repeats", type=_positive_int(1), default=3,
                        help="timed repeats when executing (default: %(default)s)")
    parser.add_argument("--hardware", default=None,
                        help="hardware entry for predicted (roofline) times, and for MFU on a GPU "
                        "(default: the detected GPU, else H100-SXM)")
    parser.add_argument("--out", default="reports/latest", help="output directory (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)
    parser.add_argument("--recalibrate", action="store_true",
                        help="measure a fresh device profile even when a cached one fits this machine (profiles are "
                             "cached under ~/.cache/opmeter/profiles, OPMETER_CACHE_DIR)")
    parser.add_argument("--image", default=None,
                        help="use this image instead of the workload's (with --trace: the image that was traced)")
    parser.add_argument("--images", default=None, metavar="DIR|GLOB",
                        help="a report over these PNG/JPEG/WebP pages (per-page table, distributions); "
                        "decode_tokens.json beside them gives per-page lengths")
    parser.add_argument("--max-image-pixels", type=_positive_int(0), default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="refuse larger --image pages, read from the header only (default: %(default)s; 0 = no "
                        "limit)")
    parser.add_argument("--trace", default=None, metavar="TRACE_JSON",
                        help="report from a saved trace.json instead of running the model")
    parser.add_argument("--trace-json", choices=("full", "none"), default="full",
                        help="write trace.json into --out (default: %(default)s)")
    parser.add_argument("--compress", action="store_true",
                        help="gzip large machine-readable files (trace.json, joined.json, CSVs > 64 KiB) to *.gz")
    parser.add_argument("--nvtx-modules", action="store_true",
                        help="NVTX ranges per module call in the module-timing run (stage ranges are always on)")
    parser.add_argument("--verify", action="store_true",
                        help="also run the per-layer verification of the preset (opmeter verify) into the report")
    parser.add_argument("--no-weights", action="store_true",
                        help="random initialisation from the checkpoint's config instead of its weights (models loaded "
                        "from a checkpoint; shape-only runs never load weights)")
    parser.add_argument("--weights", default=None, metavar="DIR",
                        help="load weights from this local checkpoint (models built from a config)")
    parser.add_argument("--profile", default=None, metavar="PROFILE_JSON",
                        help="device profile from `opmeter calibrate` for the predicted times (default: calibrate on "
                             "the spot when executing, documented defaults of --hardware when shape-only)")
    parser.add_argument("--dtype", default=None,
                        help="dtype of the model: float32 | bfloat16 | float16 (default: bfloat16 on meta and cuda, "
                             "float32 on cpu)")
    parser.add_argument("--threads", type=_positive_int(1), default=None,
                        help="torch threads for the run (match the profile's; default: torch's setting)")
    parser.add_argument("--no-profiler", action="store_true", help="skip the torch.profiler operator table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run the report; prints where it went and the headline numbers."""
    from opmeter.report.run import ReportOptions, run_report

    started = time.perf_counter()
    opts = ReportOptions(
        workload=args.workload,
        model=args.model,
        preset=args.preset,
        device=args.device,
        decode_tokens=args.decode_tokens,
        repeats=args.repeats,
        hardware=args.hardware,
        out=args.out,
        image=args.image,
        trace_path=args.trace,
        write_trace_json=args.trace_json == "full",
        compress=args.compress,
        profiler=not args.no_profiler,
        weights=not args.no_weights,
        weights_dir=args.weights,
        verify=args.verify,
        nvtx_modules=args.nvtx_modules,
        profile=args.profile,
        dtype=args.dtype,
        threads=args.threads,
        progress=not args.no_progress and sys.stderr.isatty(),
        max_image_pixels=args.max_image_pixels,
        images=args.images,
        force=args.force,
        recalibrate=args.recalibrate,
        command="opmeter report " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["report"] else "opmeter report",
    )
    result = run_report(opts)
    elapsed = time.perf_counter() - started
    print(f"report written to {result.out_dir / 'report.md'} in {elapsed:.1f} s")
    for line in result.headline:
        print(f"  {line}")
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    print(f"  phases: {phases}")
    return 0


__all__ = ["HELP", "NAME", "OpmeterError", "add_arguments", "run"]
