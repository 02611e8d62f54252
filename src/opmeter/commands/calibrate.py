"""``opmeter calibrate``: microbenchmark this machine into a device profile for the time model."""

from __future__ import annotations

import argparse
import sys
import time

NAME = "calibrate"
HELP = (
    "Measure this device (host cost per op kind, achieved GEMM / attention / convolution rates, bandwidths) and "
    "write a device profile JSON for the report's predicted times (about a minute; --quick: a few seconds)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``opmeter calibrate``."""
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (default: %(default)s)")
    parser.add_argument("--dtype", default="float32",
                        help="float32 | bfloat16 | float16: dtype of every benchmark (default: %(default)s; use the "
                             "dtype the model runs in)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads during the calibration (default: torch's current setting)")
    parser.add_argument("--out", default="device_profile.json",
                        help="profile file (default: %(default)s; an existing file is replaced only when it is a "
                             "device profile)")
    parser.add_argument("--force", action="store_true", help="replace --out even when it is not a device profile")
    parser.add_argument("--quick", action="store_true", help="a few seconds, fewer shapes (tests, CI)")


def run(args: argparse.Namespace) -> int:
    """Calibrate, write the profile, print its headline numbers."""
    from pathlib import Path

    from opmeter.errors import OpmeterError
    from opmeter.io import check_output_file, ensure_output_dir
    from opmeter.timemodel.calibrate import calibrate, parse_dtype, resolve_calibration_device
    from opmeter.timemodel.profile import SCHEMA_VERSION

    out = Path(args.out)
    if out.is_dir():
        raise OpmeterError(f"--out {out} is a directory; give a file name such as {out / 'device_profile.json'}")
    check_output_file(out, SCHEMA_VERSION, args.force)
    resolve_calibration_device(args.device)  # one clear line before any work
    parse_dtype(args.dtype)
    if args.threads is not None and args.threads < 1:
        raise OpmeterError(f"--threads must be at least 1, got {args.threads}")
    ensure_output_dir(out.parent if str(out.parent) else ".")
    started = time.perf_counter()
    verbose = sys.stderr.isatty()
    profile = calibrate(args.device, args.dtype, args.threads, quick=args.quick,
                        progress=(lambda s: print(f"  {s}", file=sys.stderr)) if verbose else None)
    profile.save(out)
    from opmeter.timemodel import cache

    cached = cache.store(profile)  # executed reports on this machine reuse it (opmeter.timemodel.cache)
    print(f"device profile written to {out} in {time.perf_counter() - started:.1f} s"
          + (f" (and cached in {cached} for reports on this machine)" if cached is not None else ""))
    print(f"  {profile.label}")
    print(f"  host cost per op: {profile.host_cost('elementwise') * 1e6:.2f} us (add), "
          f"{profile.host_cost('view') * 1e6:.2f} us (view), {profile.host_cost('mm') * 1e6:.2f} us (mm)")
    print(f"  best GEMM {profile.peak_flops_per_s() / 1e9:.3g} GFLOP/s, best bandwidth "
          f"{profile.peak_bytes_per_s() / 1e9:.3g} GB/s")
    return 0


__all__ = ["HELP", "NAME", "add_arguments", "run"]
