"""Predicted vs measured time on this machine (SC-002), not a test.

1. Calibrates a device profile in this process (``opmeter.timemodel.calibrate``: microbenchmarks only, nothing of
   the workloads below is timed for it), with ``--threads`` torch threads;
2. runs ``opmeter report`` executed on the CPU (same thread count, the profile passed as ``--profile``) for a matrix
   of runs: the toy and mini presets, several images (the synthetic A4 page, a landscape page, a square page), modes
   (standard/Gundam crops, Tiny, Small, Base, Large) and decode lengths; ``--large`` adds the full-size preset's
   prefill with a short decode (fp32 on the CPU: tens of GB of memory and many minutes);
3. reads each report's ``summary.json`` and prints one line per run, then::

       prediction_runs=N within_15pct=K total_err_median=... ttft_err_median=... tpot_err_median=...

   (errors are |predicted - measured| / measured of the eager scenario; K counts runs whose total is within 15 %).
   Target: K/N >= 0.9 and each median <= 10 %. ``cpu_share_median`` is the process's CPU time over wall time
   during each report (one torch thread: the share of a core it got); well under 1, other jobs held the cores and
   the measured wall times are longer than the quiet machine the profile predicts.

One thread by default: on a machine whose cores are shared with other jobs, a two-thread op waits for a core the
other jobs hold, and the measured times then say more about the neighbours than about the model. Timings on a busy
machine are noisy either way; compare runs made on a quiet one.

Usage::

    .venv/bin/python manual/bench_prediction.py [--threads 1] [--repeats 3] [--quick] [--large] [--keep DIR]
        [--only I,J] [--profile FILE]

(``--only`` and ``--profile`` make spot checks, not the benchmark: its line needs the whole matrix and a profile
calibrated in the same process.)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import orjson

from opmeter.report.run import ReportOptions, run_report
from opmeter.timemodel.calibrate import calibrate


@attrs.frozen
class Run:
    preset: str
    workload: str
    tokens: int
    image: str | None = None
    """``landscape`` or ``square`` (a synthetic page of that shape), ``None`` for the workload's own page."""


TOY, MINI = "deepseek-ocr-toy", "deepseek-ocr-mini"
RUNS = (
    Run(TOY, "dsocr-standard-v1", 8), Run(TOY, "dsocr-standard-v1", 32), Run(TOY, "dsocr-tiny-v1", 16),
    Run(TOY, "dsocr-base-v1", 16, "landscape"), Run(MINI, "dsocr-standard-v1", 16),
    Run(MINI, "dsocr-standard-v1", 64), Run(MINI, "dsocr-tiny-v1", 32), Run(MINI, "dsocr-small-v1", 16),
    Run(MINI, "dsocr-base-v1", 16, "landscape"), Run(MINI, "dsocr-large-v1", 8),
    Run(MINI, "dsocr-gundam-v1", 16, "square"),
)
LARGE = Run("deepseek-ocr-v1-base", "dsocr-standard-v1", 2)
PAGES = {"landscape": (1600, 1000), "square": (1200, 1200)}


def _image(kind: str | None, directory: Path) -> Path | None:
    if kind is None:
        return None
    from opmeter.models.deepseek_ocr.workloads import load_workload

    width, height = PAGES[kind]
    return attrs.evolve(load_workload("dsocr-standard-v1"), width=width, height=height).save_image(directory)


def _one(run: Run, profile: Path, out: Path, args: argparse.Namespace, images: Path) -> dict[str, Any]:
    started, cpu = time.perf_counter(), time.process_time()
    run_report(ReportOptions(
        workload=run.workload, preset=run.preset, device="cpu", decode_tokens=run.tokens,
        repeats=1 if run is LARGE else args.repeats, out=out, image=_image(run.image, images), profile=profile,
        profiler=False, write_trace_json=False, threads=args.threads, command="manual/bench_prediction.py",
    ))
    data = orjson.loads((out / "summary.json").read_bytes())
    data["seconds"] = time.perf_counter() - started
    data["cpu_share"] = (time.process_time() - cpu) / data["seconds"]
    return data


def _line(run: Run, data: dict[str, Any]) -> str:
    err, pred, meas = data["relative_error"], data["predicted"], data["measured"]

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{v:+.1%}"

    return (f"{run.preset:<21} {run.workload:<18} {run.image or 'page':<9} {run.tokens:>3} tok | total pred "
            f"{pred['total_s']:.3f} s meas {meas['total_s']:.3f} s {pct(err['total'])} | TTFT {pct(err['ttft'])} "
            f"| TPOT {pct(err['tpot'])} | {data['seconds']:.0f} s, cpu share {data['cpu_share']:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per run (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="quick calibration budget (smoke test)")
    parser.add_argument("--large", action="store_true", help="add the full-size prefill with 2 new tokens")
    parser.add_argument("--keep", metavar="DIR", help="keep the profile and every report directory here")
    parser.add_argument("--only", metavar="I,J", help="run only these entries of the matrix (0-based; a spot check, "
                        "not the benchmark)")
    parser.add_argument("--profile", metavar="FILE", help="use this profile instead of calibrating (a spot check)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opmeter-bench-") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        if args.profile:
            profile = Path(args.profile)
        else:
            profile = calibrate("cpu", "float32", args.threads, quick=args.quick).save(root / "profile.json")
            print(f"calibrated {profile} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        errors: list[dict[str, Any]] = []
        shares: list[float] = []
        matrix = list(enumerate((*RUNS, LARGE) if args.large else RUNS))
        if args.only:
            wanted = {int(i) for i in args.only.split(",")}
            matrix = [(i, run) for i, run in matrix if i in wanted]
        for i, run in matrix:
            data = _one(run, profile, root / f"run{i:02d}", args, root)
            print(_line(run, data), flush=True)
            errors.append(data["relative_error"])
            shares.append(data["cpu_share"])
    totals = [abs(e["total"]) for e in errors if e["total"] is not None]
    within = sum(1 for t in totals if t <= 0.15)

    def median(key: str) -> str:
        values = [abs(e[key]) for e in errors if e[key] is not None]
        return f"{statistics.median(values):.3f}" if values else "nan"

    print(f"prediction_runs={len(totals)} within_15pct={within} total_err_median={median('total')} "
          f"ttft_err_median={median('ttft')} tpot_err_median={median('tpot')} "
          f"cpu_share_median={statistics.median(shares) if shares else math.nan:.2f}")


if __name__ == "__main__":
    main()
