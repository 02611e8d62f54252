"""Shape-only trace of the full-size DeepSeek-OCR on the standard workload (not a test).

Builds ``deepseek-ocr-v1-base`` on the meta device (no weights), then traces ``model.infer()`` of
``dsocr-standard-v1`` (synthetic A4 page, base 1024 + 2 x 3 crops of 640, prefill of 912 tokens, 512 new tokens,
EOS ignored) with ``OpTracer`` in counts mode. Prints the build time, the stage totals, and ends with::

    standard_shape_only_seconds=<s> aten_ops=<n> us_per_op=<x>

where ``<s>`` is the wall time of the traced ``infer()`` (preprocessing included, model build excluded) and
``us_per_op`` is ``<s> / <n>`` in microseconds; the line before gives the process CPU time of the same run, which
is the better figure on a shared machine. Target on the 2-core CI machine: <= 60 s.

Usage::

    .venv/bin/python manual/bench_shape_only.py [--new-tokens 512] [--save trace.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from opmeter import OpTracer
from opmeter.models.deepseek_ocr import BuiltinTokenizer, build_reference, load_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=512, help="generated tokens (default: %(default)s)")
    parser.add_argument("--save", metavar="PATH", help="also save the trace JSON here")
    args = parser.parse_args()

    t0 = time.perf_counter()
    model = build_reference("deepseek-ocr-v1-base", device="meta")
    build_s = time.perf_counter() - t0
    wl = load_workload("dsocr-standard-v1", max_new_tokens=args.new_tokens)
    tok = BuiltinTokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        image = wl.save_image(tmp)
        t0, c0 = time.perf_counter(), time.process_time()
        with OpTracer(model) as trace:
            model.infer(tok, **wl.infer_kwargs(image))
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    if args.save:
        trace.save(args.save)
    stages = trace.stages()
    ops = int(stages["ops"].sum())
    groups = stages.groupby("group")[["ops", "flops_tensor"]].sum()
    print(f"build_meta_seconds={build_s:.2f} prefill_tokens={wl.prefill_length(tok)} new_tokens={args.new_tokens}")
    for name, row in groups.iterrows():
        print(f"stage={name} ops={int(row['ops'])} tflops_tensor={row['flops_tensor'] / 1e12:.3f}")
    print(f"process_cpu_seconds={cpu_seconds:.2f} (wall time is inflated when other jobs share the cores)")
    print(f"standard_shape_only_seconds={seconds:.2f} aten_ops={ops} us_per_op={1e6 * seconds / max(ops, 1):.2f}")


if __name__ == "__main__":
    main()
