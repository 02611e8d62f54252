"""The analytic prediction of one DeepSeek-OCR run: per-module and per-stage frames with roofline times.

With balanced routing, decode costs are affine in the KV length, so the per-module decode frame is built from two
evaluated steps (``steps * first + steps*(steps-1)/2 * (second - first)``) instead of walking every step's layer tree;
the per-step stage rows use the same interpolation. Exact for the additive quantities. With measured routing (an
:class:`~opmeter.models.deepseek_ocr.variant.AnalyticChoice` with expert counts), the prefill uses the measured tokens
per expert and every decode step is evaluated with its share of the measured expert calls.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from opmeter.analytic.base import FRAME_COLUMNS, Layer, layer_frame
from opmeter.analytic.stage_cost import StageCost

VISION_MODULES = ("model.sam_model", "model.vision_model", "model.projector")
"""The request (``vision``) stage: these modules' calls during the first forward (paths as in the vendor code and
the reference model); the model's own glue around them is prefill."""

VISION_COMPONENTS = ("SAM encoder", "CLIP tower", "projector")
"""The components covering :data:`VISION_MODULES`."""

DIRECT_FORWARD: dict[str, tuple[tuple[str, str], ...]] = {
    "NoTPTransformerBlock": (("self_attn", "attention"), ("mlp", "feed_forward")),
}
"""Analytic layers whose module calls sub-modules through ``.forward()`` (the vendor CLIP block calls
``self.self_attn.forward`` / ``self.mlp.forward``): sub-module attribute and the analytic method returning its layer."""

ADDITIVE = ("calls", "flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "self_flops_tensor",
            "self_flops_cuda", "self_bytes_read", "self_bytes_written")
LAYER_COLS = ["layer_flops_tensor", "layer_flops_cuda", "layer_bytes"]


def direct_forward_frame(root: Layer) -> pd.DataFrame:
    """Predicted rows of the sub-modules whose ``forward`` is invoked directly (see :data:`DIRECT_FORWARD`).

    The tracer never sees such a call, so their own ops are booked to the caller and only their children appear as
    module calls. Each row therefore predicts what the join can measure for them — the sum of their children
    (``flops_tensor``... ``self_*`` = 0) — and carries the whole analytic layer, own ops included, as
    ``layer_flops_tensor``, ``layer_flops_cuda``, ``layer_bytes``.
    """
    rows: dict[str, dict[str, Any]] = {}
    for path, node in root.walk(""):
        for attr, method in DIRECT_FORWARD.get(node.class_name, ()):
            sub = getattr(node, method)()
            key = f"{path}.{attr}" if path else attr
            row = rows.setdefault(key, {c: 0 for c in FRAME_COLUMNS} | {
                "module": key, "class_name": sub.class_name, "flops_cuda": 0.0, "layer_flops_tensor": 0,
                "layer_flops_cuda": 0.0, "layer_bytes": 0, "direct_forward": True})
            kids = [layer for _, layer in sub.children()]
            row["calls"] += 1
            row["flops_tensor"] += sum(k.tensor_core_flops() for k in kids)
            row["flops_cuda"] += sum(k.cuda_core_flops() for k in kids)
            row["bytes_read"] += sum(k.bytes_read() for k in kids)
            row["bytes_written"] += sum(k.bytes_written() for k in kids)
            row["layer_flops_tensor"] += sub.tensor_core_flops()
            row["layer_flops_cuda"] += sub.cuda_core_flops()
            row["layer_bytes"] += sub.bytes_read() + sub.bytes_written()
            row["weight_bytes"] = sub.weight_bytes()
            row["activation_bytes"] = max(row["activation_bytes"], sub.activation_bytes())
    return pd.DataFrame(list(rows.values()))


def _interpolated_decode(analytic: Any, seq: int, steps: int) -> pd.DataFrame:
    """Per-module decode frame of ``steps`` balanced steps from the first two (affine in the KV length)."""
    first = layer_frame(analytic.decode_step(seq)).set_index("module")
    second = layer_frame(analytic.decode_step(seq + 1)).set_index("module") if steps > 1 else first
    tri = steps * (steps - 1) / 2
    dec = first.copy()
    for col in ADDITIVE:
        dec[col] = steps * first[col] + tri * (second[col] - first[col])
    dec["kv_cache_bytes"] = first["kv_cache_bytes"] + (steps - 1) * (
        second["kv_cache_bytes"] - first["kv_cache_bytes"]
    )
    dec["activation_bytes"] = pd.concat([first["activation_bytes"], second["activation_bytes"]], axis=1).max(axis=1)
    return dec.reset_index()


def _module_frame(frames: list[pd.DataFrame], direct: pd.DataFrame) -> pd.DataFrame:
    """One row per module path over prefill, decode and the direct-forward rows."""
    both = pd.concat([*frames, direct], ignore_index=True)
    agg = {c: "sum" for c in ADDITIVE} | {"class_name": "first", "weight_bytes": "max", "activation_bytes": "max",
                                          "kv_cache_bytes": "last"}
    if len(direct):
        agg |= {c: "sum" for c in LAYER_COLS} | {"direct_forward": "any"}
        both["direct_forward"] = both["direct_forward"].astype("boolean").fillna(False).astype(bool)
    modules = both.groupby("module", sort=False).agg(agg).reset_index()
    if len(direct):
        modules.loc[~modules["direct_forward"], LAYER_COLS] = float("nan")
    return modules


def _stage_row(stage: str, tensor: float, cuda: float, nbytes: float, act: float, kv: float,
               hardware: Any) -> dict[str, Any]:
    from opmeter.hardware import roofline

    rt = roofline(tensor, cuda, nbytes, hardware) if hardware is not None else None
    return {
        "stage": stage, "flops_tensor": tensor, "flops_cuda": cuda, "bytes": nbytes,
        "activation_bytes": act, "kv_cache_bytes": kv,
        "predicted_time_s": rt.time_s if rt is not None else float("nan"),
        "predicted_bound": rt.bound if rt is not None and rt.time_s == rt.time_s else None,
    }


def _cost_row(stage: str, cost: StageCost, hardware: Any) -> dict[str, Any]:
    return _stage_row(stage, cost.flops_tensor, cost.flops_cuda, cost.io_bytes, cost.activation_bytes,
                      cost.kv_bytes, hardware)


def _request_and_prefill_rows(analytic: Any, vision: Any, root: Layer, prefill: pd.DataFrame,
                              hardware: Any) -> tuple[list[dict[str, Any]], StageCost]:
    """The ``vision`` row (the vision modules' calls, as measured) and the ``prefill`` row (the rest)."""
    rows = []
    vis_rows = prefill[prefill["module"].isin(VISION_MODULES)]
    vt, vc = float(vis_rows["flops_tensor"].sum()), float(vis_rows["flops_cuda"].sum())
    vb = float((vis_rows["bytes_read"] + vis_rows["bytes_written"]).sum())
    if len(vis_rows):
        act = (StageCost.from_layer("vision", analytic.vision(vision), kv_bytes=0).activation_bytes
               if vision is not None else float(vis_rows["activation_bytes"].max()))
        rows.append(_stage_row("vision", vt, vc, vb, act, 0.0, hardware))
    pf = StageCost.from_layer("prefill", root)
    rows.append(_stage_row("prefill", pf.flops_tensor - vt, pf.flops_cuda - vc, pf.io_bytes - vb,
                           pf.activation_bytes, pf.kv_bytes, hardware))
    return rows, pf


def _decode_rows(analytic: Any, seq: int, steps: int, measured: list[Layer], hardware: Any
                 ) -> tuple[list[dict[str, Any]], StageCost]:
    """One row per decode step and the ``decode`` row (its time: the sum of the per-step rooflines)."""
    rows = []
    if measured:
        costs = [StageCost.from_layer("decode_step", s) for s in measured]
        rows = [_cost_row(f"decode[{i}]", c, hardware) for i, c in enumerate(costs)]
        decode_cost = StageCost.total("decode", costs)
    else:
        a = StageCost.from_layer("decode_step", analytic.decode_step(seq))
        b = StageCost.from_layer("decode_step", analytic.decode_step(seq + 1)) if steps > 1 else a
        for i in range(steps):
            def lin(f: str, i: int = i) -> float:
                return float(getattr(a, f) + i * (getattr(b, f) - getattr(a, f)))

            rows.append(_stage_row(f"decode[{i}]", lin("flops_tensor"), lin("flops_cuda"), lin("io_bytes"),
                                   lin("activation_bytes"), lin("kv_bytes"), hardware))
        decode_cost = analytic.decode_cost(seq, steps)
    d = _cost_row("decode", decode_cost, hardware)
    d["predicted_time_s"] = float(pd.Series([r["predicted_time_s"] for r in rows], dtype=float).sum())
    return [*rows, d], decode_cost


def predicted_frames(
    analytic: Any, vision: Any, text_tokens: int, decode_steps: int, hardware: Any, choice: Any = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """Per-module and per-stage predictions of prefill + ``decode_steps`` decode steps, with roofline times.

    Returns
    -------
    modules, stages, headline
        ``layer_frame`` layout per module (plus :func:`direct_forward_frame` rows); one row per stage (``vision``,
        ``prefill`` = first forward minus vision, ``decode[i]``, ``decode``, ``total``) with ``predicted_time_s``;
        predicted TTFT / TPOT.
    """
    from opmeter.models.deepseek_ocr.analytic import parameter_footprint

    step_experts = choice.decode_step_experts(decode_steps) if choice is not None else None
    root = analytic.prefill(vision, text_tokens, getattr(choice, "prefill_experts", None))
    seq = root.seq
    prefill = layer_frame(root)
    frames = [prefill]
    measured: list[Layer] = []
    if decode_steps > 0 and step_experts is not None:  # measured routing: every step as it was routed
        measured = [analytic.decode_step(seq + i, step_experts[i]) for i in range(decode_steps)]
        frames.append(layer_frame(measured[0], calls=[("", s) for s in measured]))
    elif decode_steps > 0:
        frames.append(_interpolated_decode(analytic, seq, decode_steps))
    modules = _module_frame(frames, direct_forward_frame(root))
    rows, total_cost = _request_and_prefill_rows(analytic, vision, root, prefill, hardware)
    if decode_steps > 0:
        dec_rows, decode_cost = _decode_rows(analytic, seq, decode_steps, measured, hardware)
        rows += dec_rows
        total_cost = StageCost.total("total", [total_cost, decode_cost])
    stages = pd.DataFrame(rows)
    parts = stages[stages["stage"].isin(["vision", "prefill", "decode"])]
    total = _cost_row("total", total_cost, hardware)
    total["predicted_time_s"] = float(parts["predicted_time_s"].sum())
    stages = pd.concat([stages, pd.DataFrame([total])], ignore_index=True)
    ttft = float(parts[parts["stage"].isin(["vision", "prefill"])]["predicted_time_s"].sum())
    tpot = float(parts[parts["stage"] == "decode"]["predicted_time_s"].sum()) / decode_steps if decode_steps else 0.0
    params = parameter_footprint(analytic.config, analytic.dtype)
    headline = {"predicted_ttft_s": ttft, "predicted_tpot_s": tpot,
                "parameters": float(params.parameters), "parameter_bytes": float(params.bytes),
                "prefill_length": float(seq), "image_tokens": float(vision.image_tokens if vision is not None else 0)}
    return modules, stages, headline
