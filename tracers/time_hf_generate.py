"""Recipe: time any Hugging Face causal LM's ``generate()`` with :mod:`opmeter.runtime` (TTFT, TPOT, tokens/s, MFU).

Forward hooks on the model mark the stages (the first forward is the prefill, every later one a decode step; CUDA
events on a GPU, the host clock on CPU); ``--repeats`` timed runs follow one warm-up; a ``torch.profiler`` operator
table (self time, not double counted) is printed with ``--profile``. Without hub access it builds a tiny random
Llama from a config (the default); give ``--model`` a hub id or a local directory for a real one.

    .venv/bin/python tracers/time_hf_generate.py                                   # tiny random Llama on CPU
    .venv/bin/python tracers/time_hf_generate.py --model /path/to/model --device cuda --new-tokens 128 --profile

MFU needs a peak: on a GPU it is detected from the peak table (``opmeter.hardware``); elsewhere set
``OPMETER_PEAK_TFLOPS`` (and ``OPMETER_BW_GBPS``), otherwise it is reported as unknown. FLOPs per stage come from
one counting trace (``OpTracer``) of the same call.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from opmeter import OpTracer
from opmeter.hardware import detect_hardware
from opmeter.runtime import operator_table, profile_runtime
from opmeter.trace.categories import category_of_name


def build(model_id: str | None, device: str) -> Any:
    import transformers
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    if model_id:
        model = AutoModelForCausalLM.from_pretrained(model_id, torch_dtype="auto")
    else:
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             hidden_size=64, intermediate_size=128, vocab_size=512,
                                             bos_token_id=0, eos_token_id=0))
    return model.to(device).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--model", help="hub id or local directory (default: a tiny random Llama)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="print the torch.profiler operator table")
    args = p.parse_args()

    model = build(args.model, args.device)
    vocab = int(model.config.vocab_size)
    ids = torch.randint(3, vocab, (1, args.prompt_tokens), device=args.device)

    def generate() -> Any:
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                              min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    with OpTracer(model, nvtx=False) as trace, torch.inference_mode():
        generate()
    groups = trace.stages().groupby("group")[["flops_tensor", "flops_cuda"]].sum().sum(axis=1)
    hw = detect_hardware(None if args.device.startswith("cuda") else "cpu")
    prof = profile_runtime(
        generate, model, device=args.device, repeats=args.repeats,
        peak_flops=hw.tensor_tflops * 1e12 if hw.known else None,
        stage_flops={k: float(groups.get(k, 0.0)) for k in ("prefill", "decode")},
    )
    print(f"hardware: {hw.name} ({hw.source})")
    print(prof.summary()[["label", "mean", "std", "n"]].to_string(index=False))
    if args.profile:
        table = operator_table(generate, device=args.device, categorize=category_of_name)
        print(table.head(20).to_string(index=False))
    tpot = prof.stat("tpot_s").mean
    print(f"ttft_s={prof.stat('ttft_s').mean:.4g} tpot_s={tpot:.4g}")


if __name__ == "__main__":
    main()
