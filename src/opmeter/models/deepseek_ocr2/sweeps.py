"""Crop-grid sweeps of the analytic DeepSeek-OCR-2 model (``opmeter sweep --model deepseek-ocr-2``).

Pure arithmetic over :class:`~opmeter.models.deepseek_ocr2.predict.RunShape`: every grid the image processor can pick
(no tiles, then every ``cols x rows`` tiling of 2 to 6 tiles) on the preset, with the standard prompt. Per grid:
image tokens, prompt positions, tensor-core FLOPs and bytes of ``vision`` and ``prefill``, of ``K`` decode steps, the
KV cache at the end, and the roofline TTFT and TPOT on ``--hardware``-style entries (H100-SXM).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from opmeter.errors import OpmeterError
from opmeter.io import atomic_write_text, ensure_output_dir

MIN_TILES, MAX_TILES = 2, 6
"""The image processor's tile counts with crop mode on (``min_patches``, ``max_patches``)."""

COLUMNS = {
    "vision": ("grid", "image_tokens", "vision_tflops", "vision_gb", "vision_roofline_s"),
    "prefill": ("grid", "image_tokens", "prompt_tokens", "vision_tflops", "prefill_tflops", "ttft_tflops",
                "prefill_gb", "ttft_roofline_s"),
    "decode": ("grid", "prompt_tokens", "decode_steps", "decode_tflops", "decode_gb", "kv_cache_gb",
               "tpot_roofline_s"),
}


def grids() -> list[tuple[int, int]]:
    """``(0, 0)`` (global view only), then every ``(cols, rows)`` of 2 to 6 tiles."""
    tiled = [(c, r) for n in range(MIN_TILES, MAX_TILES + 1) for c in range(1, n + 1) for r in [n // c]
             if c * r == n]
    return [(0, 0), *tiled]


def sweep_frame(preset_name: str, decode_steps: int, hardware: Any) -> pd.DataFrame:
    """One row per grid (see the module docstring)."""
    from opmeter.models.deepseek_ocr2.analytic import ViewBatch
    from opmeter.models.deepseek_ocr2.config import get_preset
    from opmeter.models.deepseek_ocr2.predict import RunShape, stage_frame
    from opmeter.models.deepseek_ocr2.workloads import STANDARD, ImageViews, get_workload

    preset = get_preset(preset_name)
    text = get_workload(STANDARD).text_tokens()
    rows = []
    for cols, rows_ in grids():
        tiles = cols * rows_
        views = ImageViews(preset.global_size, preset.tile_size, tiles, (cols, rows_))
        batches = (ViewBatch(1, preset.global_size),) + ((ViewBatch(tiles, preset.tile_size),) if tiles else ())
        image = views.image_tokens(preset)
        run = RunShape(preset, text + image, batches, decode_steps)
        by: dict[Any, dict[Any, Any]] = {r["stage"]: r for r in stage_frame(run, hardware).to_dict("records")}
        vis, pre, dec = by["vision"], by["prefill"], by["decode"]
        rows.append({
            "grid": f"{cols}x{rows_}" if tiles else "global only", "image_tokens": image,
            "prompt_tokens": text + image, "decode_steps": decode_steps,
            "vision_tflops": vis["flops_tensor"] / 1e12, "vision_gb": _gb(vis),
            "vision_roofline_s": vis["predicted_time_s"],
            "prefill_tflops": pre["flops_tensor"] / 1e12, "prefill_gb": _gb(pre),
            "ttft_tflops": (vis["flops_tensor"] + pre["flops_tensor"]) / 1e12,
            "ttft_roofline_s": vis["predicted_time_s"] + pre["predicted_time_s"],
            "decode_tflops": dec["flops_tensor"] / 1e12, "decode_gb": _gb(dec),
            "kv_cache_gb": dec["kv_cache_bytes"] / 1e9, "tpot_roofline_s": dec["predicted_time_s"] / decode_steps,
        })
    return pd.DataFrame(rows)


def _gb(row: dict[Any, Any]) -> float:
    return float(row["bytes_read"] + row["bytes_written"]) / 1e9


def run_sweeps(args: Any) -> list[str]:
    """``opmeter sweep`` for DeepSeek-OCR-2: one CSV and one Markdown table per sweep; one line per sweep."""
    from opmeter.hardware import HARDWARE
    from opmeter.models.deepseek_ocr2.config import get_preset

    preset = get_preset(args.preset)
    if not 1 <= args.decode_steps <= preset.text.max_position_embeddings:
        raise OpmeterError(f"--decode-steps must be between 1 and {preset.text.max_position_embeddings}, got "
                           f"{args.decode_steps}")
    if args.measured:
        raise OpmeterError("--measured: the DeepSeek-OCR-2 sweep is analytic only (trace a grid with opmeter report)")
    out = ensure_output_dir(args.out)
    frame = sweep_frame(args.preset, args.decode_steps, HARDWARE["H100-SXM"])
    names = tuple(COLUMNS) if args.name == "all" else (args.name,)
    lines = []
    for name in names:
        table = frame[list(COLUMNS[name])]
        atomic_write_text(Path(out) / f"{name}.csv", table.to_csv(index=False))
        atomic_write_text(Path(out) / f"{name}.md", _markdown(name, table, args.preset, args.decode_steps))
        lines.append(f"{name}: {len(table)} grids, 2 files")
    return lines


def _markdown(name: str, table: pd.DataFrame, preset: str, decode_steps: int) -> str:
    head = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "---|" * len(table.columns)
    body = ["| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |"
            for row in table.itertuples(index=False)]
    return "\n".join([f"# DeepSeek-OCR-2 {name} sweep ({preset}, standard prompt, {decode_steps} decode steps)", "",
                      "Analytic; roofline times on H100-SXM. TFLOPs = tensor-core FLOPs / 1e12, GB = bytes / 1e9.",
                      "", head, rule, *body, ""])
