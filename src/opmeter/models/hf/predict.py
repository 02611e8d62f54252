"""The prediction of one run: per-module and per-stage frames from the analytic model of every model call.

A run of M new tokens is the prefill (N positions) and M - 1 decode steps (one position over N + i cached ones);
each call is its own layer tree (:class:`~opmeter.models.hf.analytic.CausalLM`), so every step is exact, not
interpolated. The modules frame (:func:`opmeter.analytic.base.layer_frame` layout, keyed by module path) sums the
calls; the stages frame has ``prefill``, ``decode[i]``, ``decode`` and ``total`` rows with the roofline time of each
on the given hardware.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from opmeter.analytic.base import Layer, layer_frame
from opmeter.analytic.stage_cost import StageCost
from opmeter.models.base import Prediction
from opmeter.models.hf.analytic import CausalLM, DecoderSpec
from opmeter.models.hf.workloads import PromptWorkload


def stage_calls(spec: DecoderSpec, workload: PromptWorkload) -> list[tuple[str, Layer]]:
    """``(stage, layer)`` of every model call of the run, in order."""
    n, b = workload.prompt_tokens, workload.batch
    calls: list[tuple[str, Layer]] = [("prefill", CausalLM(spec=spec, batch=b, q_len=n))]
    calls += [(f"decode[{i}]", CausalLM(spec=spec, batch=b, q_len=1, past=n + i)) for i in range(workload.decode_steps)]
    return calls


ADDITIVE = ("flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "bytes", "predicted_time_s")
"""Stage columns that add up over calls."""


def _row(cost: StageCost, layer_bytes: tuple[float, float], hardware: Any) -> dict[str, Any]:
    from opmeter.hardware import roofline

    time_s, bound = math.nan, None
    if hardware is not None:
        rt = roofline(cost.flops_tensor, cost.flops_cuda, cost.io_bytes, hardware)
        time_s, bound = rt.time_s, rt.bound
    return {"stage": cost.stage, "flops_tensor": cost.flops_tensor, "flops_cuda": cost.flops_cuda,
            "bytes_read": layer_bytes[0], "bytes_written": layer_bytes[1], "bytes": cost.io_bytes,
            "activation_bytes": cost.activation_bytes, "kv_cache_bytes": cost.kv_bytes,
            "predicted_time_s": time_s, "predicted_bound": bound}


def _sum_row(name: str, part: pd.DataFrame) -> dict[str, Any]:
    """Calls in sequence: additive columns add (NaN times stay NaN), the activation peak is the max, the KV cache
    the last call's."""
    row: dict[str, Any] = {c: float(part[c].sum(min_count=1)) for c in ADDITIVE}
    return row | {"stage": name, "activation_bytes": float(part["activation_bytes"].max()),
                  "kv_cache_bytes": float(part["kv_cache_bytes"].iloc[-1]), "predicted_bound": None}


def stage_frame(calls: list[tuple[str, Layer]], hardware: Any) -> pd.DataFrame:
    """One row per call, then ``decode`` (the steps, when any) and ``total`` (prefill + decode)."""
    rows = [_row(StageCost.from_layer(name, layer), (layer.bytes_read(), layer.bytes_written()), hardware)
            for name, layer in calls]
    frame = pd.DataFrame(rows)
    steps = frame[frame["stage"].str.startswith("decode[")]
    extra = ([_sum_row("decode", steps)] if len(steps) else []) + [_sum_row("total", frame)]
    return pd.concat([frame, pd.DataFrame(extra)], ignore_index=True)


def predict_run(spec: DecoderSpec, workload: PromptWorkload, hardware: Any, label: str) -> Prediction:
    """The :class:`~opmeter.models.base.Prediction` of a run of ``workload`` on a model of ``spec``."""
    calls = stage_calls(spec, workload)
    modules = layer_frame(calls[0][1], calls=[("", layer) for _, layer in calls])
    stages = stage_frame(calls, hardware)
    by = stages.set_index("stage")["predicted_time_s"]
    steps = workload.decode_steps
    root = calls[0][1]
    headline = {
        "predicted_ttft_s": float(by.get("prefill", math.nan)),
        "predicted_tpot_s": float(by.get("decode", math.nan)) / steps if steps else 0.0,
        "parameter_bytes": float(root.weight_bytes()),
        "prefill_length": float(workload.prompt_tokens),
    }
    return Prediction(modules=modules, stages=stages, headline=headline, label=label,
                      details={"family": spec.family, "sdpa": spec.sdpa, "dtype_bytes": spec.dtype})
