"""Tracer overhead per aten op, side by side with PyTorch's own instrumentation (not a test).

Runs a small decoder's ``generate()`` (a tiny random-weight Llama built from a config when ``transformers`` is
installed, else opmeter's built-in demo transformer) under: no tracer, a bare Python dispatch mode (the floor of
any dispatch-mode tracer), ``OpTracer`` (counts), ``OpTracer(count_ops=False)`` (hooks only),
``torch.utils.flop_counter.FlopCounterMode`` (with its module tracker) and ``torch.profiler`` (CPU activities).
Each method runs ``--repeats`` times, interleaved; the minimum CPU time of the (single) compute thread is kept
(the machine is shared, wall time is too noisy). Overhead per op is ``(t_method - t_none) / ops`` with ``ops``
the aten ops OpTracer counted.

Usage::

    .venv/bin/python manual/bench_overhead.py [--new-tokens 32] [--repeats 5]

Ends with ``opmeter_us_per_op=<x> flopcounter_us_per_op=<y> ratio_vs_flopcounter=<x/y> ops=<n>``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from opmeter import OpTracer


class BareMode(TorchDispatchMode):
    """A dispatch mode that only forwards: the floor of any Python dispatch-mode tracer."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return func(*args, **(kwargs or {}))


def build_model() -> tuple[torch.nn.Module, Callable[[], Any], str]:
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        model = LlamaForCausalLM(cfg).eval()
        ids = torch.randint(0, 256, (1, 16))

        def run() -> Any:
            return model.generate(ids, max_new_tokens=ARGS.new_tokens, min_new_tokens=ARGS.new_tokens,
                                  do_sample=False, pad_token_id=0)

        return model, run, "transformers LlamaForCausalLM (4 layers, random weights)"
    except ImportError:
        from opmeter.trace.demo import DemoConfig, DemoTransformer

        model = DemoTransformer(DemoConfig()).eval()
        ids = torch.randint(0, model.config.vocab_size, (1, 16))

        def run_demo() -> Any:
            return model.generate(ids, max_new_tokens=ARGS.new_tokens)

        return model, run_demo, "opmeter demo transformer"


def timed(run: Callable[[], Any], ctx: Callable[[], Any]) -> float:
    """CPU time of this thread for one run (less sensitive than wall time to the other users of the machine)."""
    gc.collect()
    with torch.no_grad():
        t = time.thread_time()
        with ctx():
            run()
        return time.thread_time() - t


def main() -> None:
    # One intra-op thread: with the default pool, idle OpenMP workers spin and bill CPU time erratically on a
    # shared machine; the tracer's overhead is single-threaded Python anyway.
    torch.set_num_threads(1)
    model, run, label = build_model()
    with torch.no_grad():
        run()  # warm-up
    with OpTracer(model, nvtx=False) as trace, torch.no_grad():
        run()
    ops = int(trace.totals()["ops"])

    def flop_counter() -> Any:
        from torch.utils.flop_counter import FlopCounterMode

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return FlopCounterMode(model, display=False)

    def profiler() -> Any:
        return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    methods: dict[str, Callable[[], Any]] = {
        "none": contextlib.nullcontext,
        "bare_dispatch_mode": BareMode,
        "opmeter": lambda: OpTracer(model, nvtx=False),
        "opmeter_hooks_only": lambda: OpTracer(model, count_ops=False, nvtx=False),
        "opmeter_timing": lambda: OpTracer(model, timing=True, nvtx=False),
        "flopcounter": flop_counter,
        "torch_profiler": profiler,
    }
    times = dict.fromkeys(methods, float("inf"))
    for _ in range(ARGS.repeats):  # interleaved, so drifting machine load hits every method alike
        for name, ctx in methods.items():
            times[name] = min(times[name], timed(run, ctx))
    base = times["none"]
    print(f"model: {label}; generate {ARGS.new_tokens} new tokens; {ops} aten ops per run; best of {ARGS.repeats}")
    per_op = {}
    for name, t in times.items():
        per_op[name] = (t - base) / ops * 1e6
        print(f"{name:>20}: {t * 1e3:9.2f} ms  overhead {t / base:6.2f}x  {per_op[name]:7.2f} us/op")
    x, y = per_op["opmeter"], per_op["flopcounter"]
    print(f"opmeter_us_per_op={x:.2f} flopcounter_us_per_op={y:.2f} ratio_vs_flopcounter={x / y:.3f} ops={ops}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    ARGS = parser.parse_args()
    main()
