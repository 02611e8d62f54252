"""The default shape-only report on two torch stacks, side by side (not a test).

Runs ``opmeter report`` (full-size reference, ``dsocr-standard-v1``, meta device) once per Python interpreter,
alternating ``--rounds`` times so that machine load hits both alike, and compares the best wall time and the trace
totals. By default the stacks are this checkout's ``.venv`` (torch 2.13) and the compat venv that
``./dev.sh test-compat`` builds (torch 2.6.0 + transformers 4.46.3). Ends with one line::

    stack_a=<torch> stack_b=<torch> a_s=<best s> b_s=<best s> speed_ratio=<b/a> same_flops=<bool> same_bytes=<bool>

Target (issue: the real stack): ``speed_ratio`` within 0.8..1.2 and identical FLOPs and bytes.

Usage::

    .venv/bin/python manual/bench_stack.py [--python-b ~/.cache/opmeter-ci/compat-venv/bin/python] [--rounds 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPAT = Path.home() / ".cache" / "opmeter-ci" / "compat-venv" / "bin" / "python"

_TOTALS = (
    "import sys; from opmeter.trace import load_trace; t = load_trace(sys.argv[1]).totals(); "
    "print(int(t['flops_tensor']), int(t['flops_cuda']), int(t['bytes_read']), int(t['bytes_written']))"
)


def _torch_version(python: str) -> str:
    return subprocess.run([python, "-c", "import torch; print(torch.__version__)"], check=True,
                          capture_output=True, text=True).stdout.strip()


def _report(python: str, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([python, "-m", "opmeter.cli", "report", "--out", str(out), "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _totals(python: str, out: Path) -> list[int]:
    text = subprocess.run([python, "-c", _TOTALS, str(out / "trace.json")], check=True, capture_output=True,
                          text=True).stdout
    return [int(x) for x in text.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-a", default=sys.executable)
    parser.add_argument("--python-b", default=str(COMPAT))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    pythons = {"a": args.python_a, "b": args.python_b}
    best = {"a": float("inf"), "b": float("inf")}
    totals: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for key, python in pythons.items():
                out = Path(tmp) / f"{key}{i}"
                seconds = _report(python, out)
                best[key] = min(best[key], seconds)
                totals[key] = _totals(python, out)
                print(f"round {i} stack {key}: {seconds:.1f} s, totals {totals[key]}", flush=True)
    same_flops = totals["a"][:2] == totals["b"][:2]
    same_bytes = totals["a"][2:] == totals["b"][2:]
    print(f"stack_a={_torch_version(args.python_a)} stack_b={_torch_version(args.python_b)} a_s={best['a']:.1f} "
          f"b_s={best['b']:.1f} speed_ratio={best['b'] / best['a']:.2f} same_flops={same_flops} "
          f"same_bytes={same_bytes}")


if __name__ == "__main__":
    main()
