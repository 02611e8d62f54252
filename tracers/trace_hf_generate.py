"""Recipe: trace any Hugging Face causal LM's ``generate()`` with opmeter.

Without hub access it builds a tiny GPT-2 or Llama from a config with random weights (the default); give
``--model`` a hub id or a local directory to trace a real one (``--random-init`` keeps its config but skips the
weights; ``--meta`` builds it on the meta device for counts only, no memory, no real numbers).

    .venv/bin/python tracers/trace_hf_generate.py                       # tiny random Llama
    .venv/bin/python tracers/trace_hf_generate.py --arch gpt2 --new-tokens 16 --timing
    .venv/bin/python tracers/trace_hf_generate.py --model /path/to/model --random-init --out reports/hf

Writes ``<out>/trace.json``, ``modules.csv``, ``operators.csv``, ``stages.csv``, ``callgraph.dot`` and prints the
tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from opmeter import OpTracer
from opmeter.io import atomic_write_text
from opmeter.trace.render import print_trace, terminal


def build(args: argparse.Namespace) -> Any:
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    if args.model:
        if args.random_init or args.meta:
            cfg = AutoConfig.from_pretrained(args.model)
            with torch.device("meta" if args.meta else "cpu"):
                return AutoModelForCausalLM.from_config(cfg)
        return AutoModelForCausalLM.from_pretrained(args.model)
    if args.arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=512, n_positions=256,
                                          bos_token_id=0, eos_token_id=0))
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        hidden_size=64, intermediate_size=128, vocab_size=512,
                                        bos_token_id=0, eos_token_id=0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="hub id or local directory (default: a tiny model built from a config)")
    p.add_argument("--arch", choices=["llama", "gpt2"], default="llama", help="tiny architecture when no --model")
    p.add_argument("--random-init", action="store_true", help="with --model: config only, random weights")
    p.add_argument("--meta", action="store_true", help="with --model: build on the meta device (counts only)")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--timing", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("reports/hf_generate"))
    args = p.parse_args()

    model = build(args).eval()
    device = next(model.parameters()).device
    ids = torch.randint(1, model.config.vocab_size, (1, args.prompt_tokens), device=device)
    with OpTracer(model, timing=args.timing, metadata={"recipe": "trace_hf_generate", "model": args.model}) as trace:
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                       min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
    trace.save(args.out / "trace.json")
    atomic_write_text(args.out / "modules.csv", trace.by_module().to_csv(index=False))
    atomic_write_text(args.out / "operators.csv", trace.by_operator().to_csv(index=False))
    atomic_write_text(args.out / "stages.csv", trace.stages().to_csv(index=False))
    atomic_write_text(args.out / "callgraph.dot", trace.to_dot())
    print_trace(trace, terminal())
    print(f"wrote {args.out}/trace.json and tables")


if __name__ == "__main__":
    main()
