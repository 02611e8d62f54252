"""Step 3 of a report, execute (``--device cpu|cuda``): timed repeats, a module-timing trace, the operator table."""

from __future__ import annotations

import attrs
import pandas as pd
import torch

from opmeter.models.base import PreparedRun
from opmeter.report.progress import Progress, timed
from opmeter.runtime import RuntimeProfile
from opmeter.trace import Trace


@attrs.frozen
class Execution:
    """What executing the model measured."""

    runtime: RuntimeProfile
    timing_trace: Trace
    """``OpTracer(count_ops=False, timing=True)``: per-module time and the Chrome trace."""
    op_table: pd.DataFrame | None
    """``torch.profiler``'s operator table (``None`` when disabled)."""


def execute(run: PreparedRun, trace: Trace, request_modules: tuple[str, ...], device: str, repeats: int,
            peak_flops: float | None, progress: Progress, seconds: dict[str, float], nvtx_modules: bool = False,
            profiler: bool = True) -> Execution:
    """``repeats`` timed runs after one warm-up (:mod:`opmeter.runtime`), one module-timing trace and, unless
    ``profiler`` is off, one ``torch.profiler`` run.

    ``request_modules`` are timed as the request stage; ``peak_flops`` (the device's tensor peak) gives MFU.
    """
    from opmeter.runtime import operator_table, profile_runtime
    from opmeter.trace import OpTracer
    from opmeter.trace.categories import category_of_name

    stages = trace.stages()
    prefill_flops = float(stages.loc[stages["group"] == "prefill", ["flops_tensor", "flops_cuda"]].sum().sum())
    decode_flops = float(stages.loc[stages["group"] == "decode", ["flops_tensor", "flops_cuda"]].sum().sum())
    model, tokens = run.model, run.workload.max_new_tokens
    request = [(p, model.get_submodule(p)) for p in request_modules if _has_submodule(model, p)]
    advance = progress.step(f"timing ({repeats} repeats + warm-up)", 1 + repeats)
    with timed(seconds, "timing"):
        runtime = profile_runtime(
            run.infer, model, request, device=device, repeats=repeats, warmup=1, peak_flops=peak_flops,
            stage_flops={"prefill": prefill_flops, "decode": decode_flops}, progress=advance,
        )
    with timed(seconds, "module_timing"), progress.forwards("module timing", model, tokens), OpTracer(
        model, count_ops=False, timing=True, nvtx="modules" if nvtx_modules else True
    ) as timing_trace, torch.inference_mode():
        run.infer()
    op_table = None
    if profiler:
        with timed(seconds, "profiler"), progress.forwards("torch.profiler", model, tokens):
            op_table = operator_table(run.infer, device=device, categorize=category_of_name)
    return Execution(runtime, timing_trace, op_table)


def _has_submodule(model: torch.nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True
