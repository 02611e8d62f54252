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


def stage_frame(run: RunShape, hardware: Any = None) -> pd.DataFrame:
    """One row per stage (``vision``, ``prefill``, ``decode[i]``, ``decode``, ``total``) with
    :data:`STAGE_COLUMNS`; ``predicted_time_s`` is the roofline bound on ``hardware`` (NaN without one)."""
    prefill, vision = run.prefill(), run.vision()
    rows = [_row("vision", vision, hardware), _row("prefill", prefill, hardware, minus=vision)]
    steps = [_row(f"decode[{i}]", run.decode_step(i), hardware) for i in range(run.decode_steps)]
    rows += steps
    summed = ("flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "predicted_time_s")
    if steps:
        decode = {"stage": "decode", **{k: sum(s[k] for s in steps) for k in summed}}
        decode.update(weight_bytes=steps[-1]["weight_bytes"], kv_cache_bytes=steps[-1]["kv_cache_bytes"],
                      activation_bytes=max(s["activation_bytes"] for s in steps))
        rows.append(decode)
    parts = [r for r in rows if not r["stage"].startswith("decode[")]
    total = {"stage": "total", **{k: sum(p[k] for p in parts) for k in summed}}
    total.update(weight_bytes=prefill.weight_bytes(), kv_cache_bytes=parts[-1]["kv_cache_bytes"],
                 activation_bytes=max(p["activation_bytes"] for p in parts))
    rows.append(total)
    return pd.DataFrame(rows, columns=STAGE_COLUMNS)


def module_frame(run: RunShape) -> pd.DataFrame:
    """Per-module prediction of the whole run, keyed like the tracer's ``by_module()``."""
    return layer_frame(run.prefill(), calls=run.calls())
