"""The analytic prediction of one DeepSeek-OCR-2 generation: per-module rows and per-stage rows.

The run is the one :func:`~opmeter.models.deepseek_ocr2.model.fixed_budget_generate` makes: one prefill call (vision
tower and projector per view batch, then the decoder over the whole prompt, ``lm_head`` on the last position) and
``max_new_tokens - 1`` one-token decode steps with the KV cache. Stages: ``vision`` (the vision tower and projector
calls), ``prefill`` (the rest of the first call), ``decode[i]``, ``decode`` (their sum), ``total``.
"""

from __future__ import annotations

from typing import Any

import attrs
import pandas as pd

from opmeter.analytic.base import Composite, Layer, layer_frame
from opmeter.models.deepseek_ocr2.analytic import Ocr2ForConditionalGeneration, ViewBatch
from opmeter.models.deepseek_ocr2.config import Ocr2Preset
from opmeter.models.deepseek_ocr2.workloads import Ocr2Workload

STAGE_COLUMNS = ["stage", "flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "weight_bytes",
                 "activation_bytes", "kv_cache_bytes", "predicted_time_s"]


@attrs.frozen
class RunShape:
    """What the analytic model needs to know about one run."""

    preset: Ocr2Preset
    prompt_tokens: int
    views: tuple[ViewBatch, ...]
    decode_steps: int
    dtype: int = 2
    sdpa: str = "math"

    @classmethod
    def of(cls, preset: Ocr2Preset, workload: Ocr2Workload, dtype: int = 2, sdpa: str = "math") -> RunShape:
        """The run of ``workload`` on ``preset`` (element size ``dtype``; ``sdpa`` ``"math"`` or ``"fused"``)."""
        v = workload.views(preset)
        views = (ViewBatch(1, v.global_size),) + ((ViewBatch(v.tiles, v.tile_size),) if v.tiles else ())
        tokens = workload.text_tokens() + v.image_tokens(preset)
        return cls(preset, tokens, views, workload.decode_steps, dtype, sdpa)

    def prefill(self) -> Ocr2ForConditionalGeneration:
        """The root call of the prefill."""
        return Ocr2ForConditionalGeneration(preset=self.preset, q_len=self.prompt_tokens, dtype=self.dtype,
                                            views=self.views, sdpa=self.sdpa)

    def decode_step(self, index: int) -> Ocr2ForConditionalGeneration:
        """The root call of decode step ``index`` (0-based)."""
        return Ocr2ForConditionalGeneration(preset=self.preset, q_len=1, past=self.prompt_tokens + index,
                                            dtype=self.dtype, sdpa=self.sdpa)

    def vision(self) -> Composite:
        """The vision tower and projector calls of the prefill (paths relative to the root)."""
        calls = self.prefill().model().vision_calls()
        return Composite(tuple((f"model.{p}", layer) for p, layer in calls), class_name="vision")

    def calls(self) -> list[tuple[str, Layer]]:
        """Every root call of the run, in order."""
        return [("", self.prefill()), *(("", self.decode_step(i)) for i in range(self.decode_steps))]


def _row(stage: str, layer: Layer, hardware: Any, minus: Layer | None = None) -> dict[str, Any]:
    t, c, r, w = layer.totals()
    if minus is not None:
        mt, mc, mr, mw = minus.totals()
        t, c, r, w = t - mt, c - mc, r - mr, w - mw
    return {"stage": stage, "flops_tensor": t, "flops_cuda": c, "bytes_read": r, "bytes_written": w,
            "weight_bytes": layer.weight_bytes(), "activation_bytes": layer.activation_bytes(),
            "kv_cache_bytes": layer.kv_cache_bytes(), "predicted_time_s": _seconds(t, c, r + w, hardware)}


def _seconds(tensor: float, cuda: float, nbytes: float, hardware: Any) -> float:
    if hardware is None:
        return float("nan")
    from opmeter.hardware import roofline

    return float(roofline(tensor, cuda, nbytes, hardware).time_s)


ADDITIVE = ("flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "predicted_time_s")
"""Stage columns that add up over stages."""


def _decode_rows(run: RunShape, hardware: Any) -> list[dict[str, Any]]:
    """``decode[i]`` rows. FLOPs, bytes and the KV cache are affine in the cached length, so steps 0 and 1 give every
    step exactly; the activation peak is interpolated between the first and the last step (an upper bound: each
    op's size grows with the cache, so the peak is convex in the step)."""
    n = run.decode_steps
    if n == 0:
        return []
    first = _row("decode[0]", run.decode_step(0), hardware)
    if n == 1:
        return [first]
    second = _row("decode[1]", run.decode_step(1), hardware)
    last = _row(f"decode[{n - 1}]", run.decode_step(n - 1), hardware)
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"stage": f"decode[{i}]", "weight_bytes": first["weight_bytes"]}
        for k in (*ADDITIVE, "kv_cache_bytes"):
            row[k] = first[k] + i * (second[k] - first[k])
        frac = i / (n - 1)
        row["activation_bytes"] = first["activation_bytes"] + frac * (last["activation_bytes"] -
                                                                      first["activation_bytes"])
        rows.append(row)
    if hardware is not None:  # the roofline time is not affine (a max of two bounds): evaluate it per step
        for row in rows:
            row["predicted_time_s"] = _seconds(row["flops_tensor"], row["flops_cuda"],
                                               row["bytes_read"] + row["bytes_written"], hardware)
    return rows


def stage_frame(run: RunShape, hardware: Any = None) -> pd.DataFrame:
    """One row per stage (``vision``, ``prefill``, ``decode[i]``, ``decode``, ``total``) with
    :data:`STAGE_COLUMNS`; ``predicted_time_s`` is the roofline bound on ``hardware`` (NaN without one)."""
    prefill, vision = run.prefill(), run.vision()
    rows = [_row("vision", vision, hardware), _row("prefill", prefill, hardware, minus=vision)]
    steps = _decode_rows(run, hardware)
    rows += steps
    if steps:
        decode = {"stage": "decode", **{k: sum(s[k] for s in steps) for k in ADDITIVE}}
        decode.update(weight_bytes=steps[-1]["weight_bytes"], kv_cache_bytes=steps[-1]["kv_cache_bytes"],
                      activation_bytes=max(s["activation_bytes"] for s in steps))
        rows.append(decode)
    parts = [r for r in rows if not r["stage"].startswith("decode[")]
    total = {"stage": "total", **{k: sum(p[k] for p in parts) for k in ADDITIVE}}
    total.update(weight_bytes=prefill.weight_bytes(), kv_cache_bytes=parts[-1]["kv_cache_bytes"],
                 activation_bytes=max(p["activation_bytes"] for p in parts))
    rows.append(total)
    return pd.DataFrame(rows, columns=STAGE_COLUMNS)


SUMMED = ("calls", "flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "self_flops_tensor",
          "self_flops_cuda", "self_bytes_read", "self_bytes_written")
"""Per-module columns that add up over calls."""


def _decode_frame(run: RunShape) -> pd.DataFrame | None:
    """Per-module rows of all decode steps: exact sums from steps 0 and 1 (affine in the cached length), the KV
    cache and the activation peak of the last step."""
    n = run.decode_steps
    if n == 0:
        return None
    first = layer_frame(run.decode_step(0)).set_index("module")
    if n == 1:
        return first
    second = layer_frame(run.decode_step(1)).set_index("module")
    last = layer_frame(run.decode_step(n - 1)).set_index("module")
    out = first.copy()
    tri = n * (n - 1) // 2
    for col in SUMMED:
        out[col] = n * first[col] + tri * (second[col] - first[col])
    out["kv_cache_bytes"] = last["kv_cache_bytes"]
    out["activation_bytes"] = last["activation_bytes"].combine(first["activation_bytes"], max)
    return out


def module_frame(run: RunShape) -> pd.DataFrame:
    """Per-module prediction of the whole run, keyed like the tracer's ``by_module()``."""
    pre = layer_frame(run.prefill()).set_index("module")
    dec = _decode_frame(run)
    if dec is None:
        return pre.reset_index()
    out = pre.copy()
    shared = dec.index.intersection(pre.index)
    for col in SUMMED:
        out.loc[shared, col] = pre.loc[shared, col] + dec.loc[shared, col]
    out.loc[shared, "activation_bytes"] = pre.loc[shared, "activation_bytes"].combine(
        dec.loc[shared, "activation_bytes"], max)
    out.loc[shared, "kv_cache_bytes"] = dec.loc[shared, "kv_cache_bytes"]
    extra = dec.loc[dec.index.difference(pre.index)]
    return pd.concat([out, extra]).reset_index()
