"""Recipe: trace the reference DeepSeek-OCR's ``infer()`` with ``OpTracer`` and save the trace JSON.

Usage::

    .venv/bin/python tracers/trace_reference_infer.py [--preset deepseek-ocr-v1-base] [--device meta]
        [--workload dsocr-standard-v1] [--new-tokens 512] [--out reports/reference/callgraph.json]

``--device meta`` (default) runs the full-size model shape-only (no weights; the policies are recorded in the trace
metadata); ``--device cpu`` with a small preset (``deepseek-ocr-toy``, ``deepseek-ocr-mini``) executes for real, the
workload rescaled to the preset's native sizes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from opmeter import OpTracer
from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr import BuiltinTokenizer, build_reference, load_workload


def main() -> None:
    parser = argparse.ArgumentParser(description="Trace the reference DeepSeek-OCR infer() and save the trace.")
    parser.add_argument("--preset", default="deepseek-ocr-v1-base")
    parser.add_argument("--device", default="meta", help="meta (shape-only), cpu or cuda")
    parser.add_argument("--workload", default="dsocr-standard-v1")
    parser.add_argument("--new-tokens", type=int, default=None, help="override the workload's max_new_tokens")
    parser.add_argument("--attn", default="eager", help="eager, sdpa or flash_attention_2")
    parser.add_argument("--out", default="reports/reference/callgraph.json")
    args = parser.parse_args()

    model = build_reference(args.preset, device=args.device, attn_implementation=args.attn)
    wl = load_workload(args.workload, max_new_tokens=args.new_tokens, preset=args.preset)
    tokenizer = BuiltinTokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        image = wl.save_image(tmp)
        start = time.perf_counter()
        with OpTracer(model, metadata={"workload": wl.summary(tokenizer)}) as trace:
            text = model.infer(tokenizer, **wl.infer_kwargs(image))
        seconds = time.perf_counter() - start
    path = trace.save(args.out)
    print(trace.summary())
    print(f"generated {len(text)} characters in {seconds:.1f} s; trace saved to {path}")


if __name__ == "__main__":
    try:
        main()
    except OpmeterError as exc:  # bad path, missing image, wrong transformers: one line, not a traceback
        raise SystemExit(f"{sys.argv[0]}: error: {exc}") from None
