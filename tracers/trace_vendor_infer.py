"""Recipe: trace the real ``deepseek-ai/DeepSeek-OCR`` ``infer()`` from a local checkpoint on a GPU.

Needs a CUDA GPU, transformers 4.46.x (the remote code imports ``LlamaFlashAttention2`` and calls ``.cuda()``), and
the checkpoint directory (weights + remote code) on disk. The synthetic page of the workload is written to a
temporary file and fed to the vendor ``infer()`` with the workload's sizes; ``eval_mode=True`` returns the text
instead of streaming it. The vendor ``generate()`` stops at EOS (its budget is 8192 new tokens), so decode lengths
differ from the reference's fixed 512.

Usage::

    python tracers/trace_vendor_infer.py /path/to/DeepSeek-OCR [--attn flash_attention_2]
        [--workload dsocr-standard-v1] [--out reports/vendor/callgraph.json] [--no-weights]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from opmeter import OpTracer
from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr import load_vendor, load_workload


def main() -> None:
    parser = argparse.ArgumentParser(description="Trace the vendor DeepSeek-OCR infer() and save the trace.")
    parser.add_argument("checkpoint", help="local directory with config.json, remote code and weights")
    parser.add_argument("--attn", default="eager", help="eager or flash_attention_2")
    parser.add_argument("--workload", default="dsocr-standard-v1")
    parser.add_argument("--no-weights", action="store_true", help="random init from config.json")
    parser.add_argument("--out", default="reports/vendor/callgraph.json")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    model = load_vendor(args.checkpoint, weights=not args.no_weights, device="cuda", attn_implementation=args.attn)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint, trust_remote_code=True)
    wl = load_workload(args.workload)
    with tempfile.TemporaryDirectory() as tmp:
        image = wl.save_image(tmp)
        start = time.perf_counter()
        with OpTracer(model, timing=True, metadata={"workload": wl.summary()}) as trace:
            text = model.infer(
                tokenizer, prompt=wl.prompt, image_file=str(image), output_path=tmp, base_size=wl.base_size,
                image_size=wl.image_size, crop_mode=wl.crop_mode, save_results=False, eval_mode=True,
            )
        seconds = time.perf_counter() - start
    path = trace.save(args.out)
    print(trace.summary())
    print(f"generated {len(text or '')} characters in {seconds:.1f} s; trace saved to {path}")


if __name__ == "__main__":
    try:
        main()
    except OpmeterError as exc:  # bad path, missing image, wrong transformers: one line, not a traceback
        raise SystemExit(f"{sys.argv[0]}: error: {exc}") from None
