"""Run the analytic crop-grid sweeps (vision, vision + prefill, decode) and write them under ``reports/sweeps``.

Every grid ``rows x cols`` with ``rows <= cols`` and ``2 <= rows*cols <= 29`` (global view 1024, crops 640), both
attention variants (``normal``, ``flash``), K = 100 decode steps. The vision sweep also gets traced (measured)
tensor-core / CUDA-core FLOPs and I/O for a few grids (shape-only trace of the reference vision path on meta), so
the measured points sit beside the analytic curves.

Writes ``NAME.csv``, ``NAME.md`` and SVG plots per sweep plus ``README.md`` (index). Prints one line per sweep and
ends with ``sweeps_seconds=<s>``.

Usage::

    .venv/bin/python manual/run_sweeps.py [--out reports/sweeps] [--preset deepseek-ocr-v1-base]
        [--decode-steps 100] [--measured-points 3] [--no-plots]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from opmeter.io import atomic_write_text
from opmeter.models.deepseek_ocr.sweeps import SWEEPS, SweepConfig, measured_vision_column, write_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", default="reports/sweeps", help="output directory (default: %(default)s)")
    parser.add_argument("--preset", default="deepseek-ocr-v1-base", help="preset (default: %(default)s)")
    parser.add_argument("--decode-steps", type=int, default=100, help="K decode steps (default: %(default)s)")
    parser.add_argument("--measured-points", type=int, default=3,
                        help="grids traced for the measured vision column (0: none; default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args()

    cfg = SweepConfig(preset=args.preset, decode_steps=args.decode_steps)
    out = Path(args.out)
    start = time.perf_counter()
    index = ["# Analytic sweeps", "", f"Preset `{cfg.preset}`, K = {cfg.decode_steps} decode steps, variants "
             f"{', '.join(cfg.variants)}. Regenerate with `.venv/bin/python manual/run_sweeps.py`.", ""]
    for name in SWEEPS:
        hook = None
        if name == "vision" and args.measured_points > 0:
            hook = measured_vision_column(cfg.preset, max_points=args.measured_points)
        result = write_sweep(name, out, cfg, plots=not args.no_plots, measured=hook)
        print(f"{name}: {len(result.frame)} rows, {len(result.files)} files, {result.seconds:.1f} s")
        index.append(f"- **{name}**: [{name}.md]({name}.md), [{name}.csv]({name}.csv)")
        index += [f"  - ![{p.stem}]({p.name})" for p in result.files if p.suffix == ".svg"]
    atomic_write_text(out / "README.md", "\n".join(index) + "\n")
    print(f"sweeps_seconds={time.perf_counter() - start:.1f}")


if __name__ == "__main__":
    main()
