"""Time of the shape-only set report over the built-in document set at full size (not a test).

Runs ``opmeter report --workload dsocr-docset-v1`` (full-size preset, meta device) into a temporary directory in
a child process and reports its wall time and CPU time (user + system of the child): on a shared machine the CPU
time is the steadier figure. The target is at most 2 minutes on the 2-core development machine.

Usage::

    .venv/bin/python manual/bench_docset.py [--preset deepseek-ocr-v1-base] [--workload dsocr-docset-v1]

Ends with ``docset_pages=<n> geometries=<g> wall_s=<w> cpu_s=<c> target_s=120``.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="deepseek-ocr-v1-base")
    parser.add_argument("--workload", default="dsocr-docset-v1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-docset-") as tmp:
        out = Path(tmp) / "report"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "opmeter"), "report", "--workload", args.workload, "--preset",
                        args.preset, "--out", str(out), "--no-progress"], check=True, env=os.environ.copy())
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        with open(out / "pages.csv") as f:
            pages = sum(1 for row in csv.DictReader(f) if not row["error"])
        with open(out / "geometries.csv") as f:
            geometries = sum(1 for _ in csv.DictReader(f))
    print(f"docset_pages={pages} geometries={geometries} wall_s={wall:.1f} cpu_s={cpu:.1f} target_s=120")


if __name__ == "__main__":
    main()
