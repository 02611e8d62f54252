"""Recipe: trace the real ``deepseek-ai/DeepSeek-OCR`` ``infer()`` from a local checkpoint.

The remote code is used unmodified. It needs transformers 4.46.x (it imports ``LlamaFlashAttention2``); it was
written for a GPU, and :func:`opmeter.models.deepseek_ocr.vendor_compat.vendor_run` adapts it, reversibly:

* ``--device cuda``: as written; the only change is the decode cap (``--new-tokens``, a fixed budget: the vendor
  ``generate()`` otherwise runs up to 8,192 tokens and stops at EOS);
* ``--device cpu``: plus ``.cuda()`` redirected to the CPU and the bf16 pixels cast to the model's dtype;
* ``--device meta``: shape-only at full size without weights: plus answers for the values the remote code reads on
  the host (pixel sums carried from the real host tensors, balanced MoE routing) and a fixed-budget greedy loop.

Every patch is listed in the trace metadata (``vendor_patches``).

Usage::

    python tracers/trace_vendor_infer.py /path/to/DeepSeek-OCR [--device cuda|cpu|meta] [--no-weights]
        [--attn eager|flash_attention_2] [--workload dsocr-standard-v1] [--new-tokens 512] [--preset NAME]
        [--out reports/vendor/callgraph.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from opmeter import OpTracer
from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr import BuiltinTokenizer, load_vendor, load_workload
from opmeter.models.deepseek_ocr.vendor_compat import vendor_run


def main() -> None:
    parser = argparse.ArgumentParser(description="Trace the vendor DeepSeek-OCR infer() and save the trace.")
    parser.add_argument("checkpoint", help="local directory with config.json, remote code and weights")
    parser.add_argument("--device", default="cuda", help="cuda (as written), cpu, or meta (shape-only)")
    parser.add_argument("--attn", default="eager", help="eager or flash_attention_2")
    parser.add_argument("--workload", default="dsocr-standard-v1")
    parser.add_argument("--new-tokens", type=int, default=None, help="decode budget (default: the workload's)")
    parser.add_argument("--no-weights", action="store_true", help="random init from config.json")
    parser.add_argument("--preset", default=None, help="rescale the workload to a smaller preset's sizes")
    parser.add_argument("--out", default="reports/vendor/callgraph.json")
    args = parser.parse_args()

    weights = not args.no_weights and args.device != "meta"
    model = load_vendor(args.checkpoint, weights=weights, device=args.device, attn_implementation=args.attn)
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.checkpoint, trust_remote_code=True)
    except Exception as exc:  # a checkout without tokenizer files: say so, then use the built-in one
        print(f"no tokenizer in {args.checkpoint} ({type(exc).__name__}); using the built-in tokenizer")
        tokenizer = BuiltinTokenizer()
    wl = load_workload(args.workload, max_new_tokens=args.new_tokens, preset=args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        image = wl.save_image(tmp)
        start = time.perf_counter()
        with vendor_run(model, wl.max_new_tokens), OpTracer(model, metadata={"workload": wl.summary()}) as trace:
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
