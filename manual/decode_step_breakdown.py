"""Where a decode step's time goes, measured against the time model, module by module (a diagnostic, not a test).

Runs the model's inference on the CPU (one torch thread), traces it once for the time model's prediction with the
given profile, then times the decode calls of each child of the root module and of each decoder layer in situ
(forward hooks, the thread's CPU time, mean over every decode call of ``--runs`` runs). Prints one row per module,
children included (measured, predicted, their ratio, the predicted host part) and one line::

    step_measured_ms=... step_predicted_ms=... children_measured_ms=... outside_children_ms=... (predicted ...)

``outside_children`` is the step minus the root's children: the root forward's own Python and the generation loop
between forwards, where few ops run. The second decode step holds the release of the prefill's logits, so it is in
the step means of both sides.

Usage::

    .venv/bin/python manual/decode_step_breakdown.py --profile PROFILE.json [--model deepseek-ocr]
        [--preset deepseek-ocr-mini] [--workload dsocr-tiny-v1] [--tokens 16] [--runs 4]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from opmeter.models.base import RunRequest, resolve_adapter
from opmeter.timemodel.model import predict
from opmeter.timemodel.profile import load_profile
from opmeter.trace import OpTracer


def _rows(model: torch.nn.Module) -> list[str]:
    """The children of the root and the members of its children's ``ModuleList`` (the decoder layers; not a layer's
    experts, whose calls per step vary)."""
    lists = [name for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.ModuleList) and name.count(".") <= 1]
    members = [f"{name}.{child}" for name in lists for child, _ in model.get_submodule(name).named_children()]
    return [name for name, _ in model.named_children()] + members


def _under(path: str, row: str) -> bool:
    return path == row or path.startswith(row + ".")


def _timed(model: torch.nn.Module, rows: list[str]) -> tuple[dict[str, list[float]], list[float]]:
    """In-situ timers: per row module, the CPU time of every call; the root forward's ends."""
    times: dict[str, list[float]] = {r: [] for r in rows}
    modules = dict(model.named_modules())

    def pre(name: str) -> Callable[..., None]:
        return lambda *_: times[name].append(-time.thread_time())

    def post(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            times[name][-1] += time.thread_time()
        return hook

    for name in rows:
        modules[name].register_forward_pre_hook(pre(name))
        modules[name].register_forward_hook(post(name))
    ends: list[float] = []
    model.register_forward_hook(lambda *_: ends.append(time.thread_time()))
    return times, ends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, help="device profile (opmeter calibrate --threads 1)")
    parser.add_argument("--model", default="deepseek-ocr")
    parser.add_argument("--preset", default="deepseek-ocr-mini")
    parser.add_argument("--workload", default="dsocr-tiny-v1")
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per run (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=4, help="timed runs after one warm-up (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    adapter = resolve_adapter(args.model)
    run = adapter.prepare(RunRequest(preset=args.preset, workload=args.workload, device="cpu",
                                     decode_tokens=args.tokens, scratch=Path(tempfile.mkdtemp())))
    model, steps = run.model, args.tokens - 1
    with torch.inference_mode(), OpTracer(model, count_ops=True, nvtx=False) as trace:
        run.infer()
    prediction = predict(trace, load_profile(args.profile), steps)
    cells = prediction.cells[prediction.cells["stage"] == "decode"]
    rows = [r for r in _rows(model) if cells["module"].map(lambda p, r=r: _under(p, r)).any()]
    eager: dict[str, float] = {}
    host: dict[str, float] = {}
    for r in rows:
        mine = cells[cells["module"].map(lambda p, r=r: _under(p, r))]
        eager[r], host[r] = float(mine["eager_s"].sum()) / steps, float(mine["host_s"].sum()) / steps
    times, ends = _timed(model, rows)
    step_times: list[float] = []
    with torch.inference_mode():
        run.infer()
        for r in rows:
            times[r].clear()
        for _ in range(args.runs):
            ends.clear()
            run.infer()
            step_times += [b - a for a, b in itertools.pairwise(ends)]
    table = []
    for r in rows:
        calls = times[r]
        per_run = len(calls) // args.runs
        decode = [t for i, t in enumerate(calls) if per_run and i % per_run != 0]
        measured = statistics.fmean(decode) if decode else float("nan")
        table.append((r, measured * 1e3, eager[r] * 1e3, host[r] * 1e3))
    df = pd.DataFrame(table, columns=["module", "measured_ms", "predicted_ms", "predicted_host_ms"])
    df["ratio"] = df["measured_ms"] / df["predicted_ms"]
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    step = statistics.fmean(step_times) * 1e3
    step_pred = prediction.stage_seconds()["decode"] / steps * 1e3
    children = [r for r in rows if "." not in r]
    inside = float(df.loc[df["module"].isin(children), "measured_ms"].sum())
    inside_pred = sum(eager[r] for r in children) * 1e3
    print(f"step_measured_ms={step:.3f} step_predicted_ms={step_pred:.3f} children_measured_ms={inside:.3f} "
          f"outside_children_ms={step - inside:.3f} (predicted {step_pred - inside_pred:.3f})")


if __name__ == "__main__":
    main()
