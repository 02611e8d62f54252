"""Crop-grid sweeps of the analytic DeepSeek-OCR model: vision, vision + prefill, and decode.

Pure arithmetic over :class:`~opmeter.models.deepseek_ocr.analytic.DeepseekOCRAnalytic` (no model is built per
point), for every crop grid ``rows x cols`` with ``rows <= cols`` and ``2 <= rows*cols <= 29`` (global view 1024,
crops 640) and both attention variants (``normal``: scores in memory; ``flash``: fused attention).

Outputs per sweep ``NAME`` in ``vision``, ``prefill``, ``decode``: ``NAME.csv``, ``NAME.md`` and SVG plots
``NAME_<field>.svg`` of every :class:`~opmeter.analytic.StageCost` field against image tokens (points labelled by
grid), ``NAME_split.svg`` (tensor-core vs CUDA-core TFLOPs, log scale) and the objective plots
(``prefill_required_tflops.svg``: TFLOP/s to meet a TTFT of 0.5 s / 1.0 s; ``decode_required.svg``: TFLOP/s and
GB/s to meet a TPOT of 50 ms), with some GPUs' dense peaks drawn for reference.

Units: TFLOPs (1e12 FLOPs), terabits (1e12 bits) of I/O, FLOPs per bit, GB (1e9 bytes), TFLOP/s, GB/s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pandas as pd

from opmeter.analytic.base import Layer
from opmeter.analytic.stage_cost import StageCost
from opmeter.errors import OpmeterError
from opmeter.io import atomic_write_text, ensure_output_dir
from opmeter.units import gigabytes, terabits, tflops

SWEEPS = ("vision", "prefill", "decode")
MAX_CROPS = 29
TTFT_BUDGETS_S = (0.5, 1.0)
TPOT_BUDGET_S = 0.05
REFERENCE_GPUS = ("H100-SXM", "A100-SXM-80GB", "L40S", "RTX-4090", "L4")
STAGE_FIELDS = ("flops_tflops", "io_tb", "arithmetic_intensity", "activations_gb", "kv_gb")


def sweep_grids(max_crops: int = MAX_CROPS) -> list[tuple[int, int]]:
    """Every ``(rows, cols)`` with ``rows <= cols`` and ``2 <= rows*cols <= max_crops``, by crop count."""
    grids = [(r, c) for r in range(1, max_crops + 1) for c in range(r, max_crops // r + 1) if r * c >= 2]
    return sorted(grids, key=lambda g: (g[0] * g[1], g[0]))


@attrs.frozen
class SweepConfig:
    """What to sweep.

    Attributes
    ----------
    preset
        DeepSeek-OCR preset (full size by default).
    variants
        Attention variants.
    decode_steps
        K, the decode steps after the prefill.
    text_tokens
        Text tokens of the prompt (default: the standard prompt under the built-in tokenizer).
    base_size, image_size
        Global-view and crop sizes.
    max_crops
        Largest ``rows * cols``.
    """

    preset: str = "deepseek-ocr-v1-base"
    variants: tuple[str, ...] = ("normal", "flash")
    decode_steps: int = 100
    text_tokens: int | None = None
    base_size: int = 1024
    image_size: int = 640
    max_crops: int = MAX_CROPS


def _cost_cols(c: StageCost, prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}tensor_tflops": c.flops_tensor_tflops,
        f"{prefix}cuda_tflops": c.flops_cuda_tflops,
        f"{prefix}flops_tflops": c.flops_tflops,
        f"{prefix}io_tb": c.io_tb,
        f"{prefix}arithmetic_intensity": c.arithmetic_intensity,
        f"{prefix}activations_gb": c.activations_gb,
        f"{prefix}kv_gb": c.kv_gb,
    }


def _component_tflops(vision: Layer) -> dict[str, float]:
    out = {"sam": 0.0, "clip": 0.0, "projector": 0.0}
    key = {"model.sam_model": "sam", "model.vision_model": "clip", "model.projector": "projector"}
    for name, child in vision.children():
        if name in key:
            out[key[name]] += tflops(child.flops())
    return out


def run_sweep(name: str, cfg: SweepConfig | None = None) -> pd.DataFrame:
    """One row per (grid, variant) for sweep ``name`` (``vision``, ``prefill`` or ``decode``)."""
    from opmeter.models.deepseek_ocr.analytic import DeepseekOCRAnalytic, prompt_text_tokens
    from opmeter.models.deepseek_ocr.config import get_config
    from opmeter.models.deepseek_ocr.geometry import VisionWorkload

    if name not in SWEEPS:
        raise OpmeterError(f"unknown sweep {name!r}; choose one of {', '.join(SWEEPS)}")
    c = cfg or SweepConfig()
    if c.decode_steps < 1 and name == "decode":
        raise OpmeterError(f"decode steps must be at least 1, got {c.decode_steps}")
    config = get_config(c.preset)
    text = prompt_text_tokens() if c.text_tokens is None else c.text_tokens
    rows_out: list[dict[str, Any]] = []
    for variant in c.variants:
        model = DeepseekOCRAnalytic(config, variant)
        for rows, cols in sweep_grids(c.max_crops):
            vw = VisionWorkload.from_grid(cols, rows, c.base_size, c.image_size, config)
            base: dict[str, Any] = {
                "rows": rows, "cols": cols, "grid": f"{rows}x{cols}", "crops": vw.num_crops,
                "image_tokens": vw.image_tokens, "variant": variant,
            }
            if name == "vision":
                layer = model.vision(vw)
                cost = StageCost.from_layer("vision", layer, kv_bytes=0)
                comp = _component_tflops(layer)
                total = sum(comp.values()) or 1.0
                rows_out.append({
                    **base, **_cost_cols(cost),
                    **{f"{k}_tflops": v for k, v in comp.items()},
                    **{f"{k}_share": v / total for k, v in comp.items()},
                })
                continue
            pred = model.predict(vw, text, decode_steps=c.decode_steps if name == "decode" else 0)
            st = pred.stages
            if name == "prefill":
                row = {**base, "text_tokens": text, "seq": pred.seq, **_cost_cols(st["prefill"])}
                for stage in ("vision", "decoder", "lm_head"):
                    row[f"{stage}_tflops"] = st[stage].flops_tflops
                    row[f"{stage}_tensor_tflops"] = st[stage].flops_tensor_tflops
                    row[f"{stage}_cuda_tflops"] = st[stage].flops_cuda_tflops
                    row[f"{stage}_io_tb"] = st[stage].io_tb
                for budget in TTFT_BUDGETS_S:
                    row[f"required_tflops_ttft_{budget:g}s"] = st["prefill"].flops_tflops / budget
                    row[f"required_gbps_ttft_{budget:g}s"] = gigabytes(st["prefill"].io_bytes) / budget
                rows_out.append(row)
            else:
                total_c, step = st["decode"], st["decode_step"]
                k = total_c.steps
                mean_flops = total_c.flops_tflops / k
                mean_bytes_gb = gigabytes(total_c.io_bytes) / k
                rows_out.append({
                    **base, "text_tokens": text, "seq": pred.seq, "decode_steps": k, **_cost_cols(total_c),
                    **_cost_cols(step, "step_"),
                    "mean_step_tflops": mean_flops,
                    "mean_step_gb": mean_bytes_gb,
                    f"required_tflops_tpot_{TPOT_BUDGET_S * 1000:g}ms": mean_flops / TPOT_BUDGET_S,
                    f"required_gbps_tpot_{TPOT_BUDGET_S * 1000:g}ms": mean_bytes_gb / TPOT_BUDGET_S,
                })
    return pd.DataFrame(rows_out)


# ---------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------


def to_markdown(name: str, df: pd.DataFrame, cfg: SweepConfig) -> str:
    """Markdown table of a sweep with a header stating units and settings."""
    lines = [
        f"# Sweep `{name}` ({cfg.preset}, base {cfg.base_size} + {cfg.image_size} crops)",
        "",
        "Units: TFLOPs (1e12), io in terabits (1e12 bits), arithmetic intensity in FLOPs per bit, memory in GB (1e9 "
        "bytes), required throughput in TFLOP/s and GB/s. `normal`: attention scores in memory; `flash`: fused.",
    ]
    if name == "decode":
        lines.append(f"Decode: K = {cfg.decode_steps} steps after the prefill; `step_*` is the first step, the "
                     f"unprefixed columns sum all K steps; TPOT budget {TPOT_BUDGET_S * 1000:g} ms.")
    if name == "prefill":
        lines.append("Prefill = vision + decoder + LM head over the merged sequence; TTFT budgets 0.5 s and 1.0 s.")
    lines += ["", _md_table(df), ""]
    return "\n".join(lines)


def _md_table(df: pd.DataFrame) -> str:
    cols = [c for c in df.columns if c != "grid"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rec in df[cols].to_dict("records"):
        cells = []
        for c in cols:
            v = rec[c]
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


_LABELS = {
    "flops_tflops": "TFLOPs (tensor + CUDA core)",
    "io_tb": "I/O (terabits)",
    "arithmetic_intensity": "arithmetic intensity (FLOPs / bit)",
    "activations_gb": "peak activations (GB)",
    "kv_gb": "KV cache (GB)",
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    import io

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _plt().close(fig)
    return atomic_write_text(path, buf.getvalue())


def _scatter_labelled(ax: Any, df: pd.DataFrame, y: str, label: str, marker: str = "o", annotate: bool = True) -> None:
    d = df.sort_values("image_tokens")
    ax.plot(d["image_tokens"], d[y], marker=marker, markersize=3, linewidth=0.8, label=label)
    if annotate:
        for x, v, g in zip(d["image_tokens"], d[y], d["grid"], strict=True):
            ax.annotate(g, (x, v), fontsize=5, xytext=(2, 2), textcoords="offset points")


def plot_sweep(name: str, df: pd.DataFrame, out: Path, cfg: SweepConfig) -> list[Path]:
    """SVG plots of a sweep (see the module docstring)."""
    plt = _plt()
    paths: list[Path] = []
    fields = [f for f in STAGE_FIELDS if not (name == "vision" and f == "kv_gb")]
    for field in fields:
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, (variant, d) in enumerate(df.groupby("variant", sort=False)):
            _scatter_labelled(ax, d, field, str(variant), "os"[i % 2], annotate=i == 0)
        measured = _measured_series(df, field)
        if measured is not None:
            ax.scatter(measured[0], measured[1], marker="x", s=40, color="black", zorder=5,
                       label="measured (traced, normal)")
        ax.set_xlabel("image tokens")
        ax.set_ylabel(_LABELS[field])
        ax.set_title(f"{name}: {_LABELS[field]} vs image tokens (labels: rows x cols)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        paths.append(_save(fig, out / f"{name}_{field}.svg"))
    fig, ax = plt.subplots(figsize=(8, 5))
    for variant, d in df.groupby("variant", sort=False):
        d = d.sort_values("image_tokens")
        ax.plot(d["image_tokens"], d["tensor_tflops"], marker="o", markersize=3, label=f"tensor core ({variant})")
        ax.plot(d["image_tokens"], d["cuda_tflops"], marker="s", markersize=3, label=f"CUDA core ({variant})")
    if "measured_tensor_tflops" in df.columns:
        m = df.dropna(subset=["measured_tensor_tflops"])
        ax.scatter(m["image_tokens"], m["measured_tensor_tflops"], marker="x", s=40, color="black", zorder=5,
                   label="measured tensor core")
        ax.scatter(m["image_tokens"], m["measured_cuda_tflops"], marker="+", s=50, color="black", zorder=5,
                   label="measured CUDA core")
    ax.set_yscale("log")
    ax.set_xlabel("image tokens")
    ax.set_ylabel("TFLOPs (log)")
    ax.set_title(f"{name}: tensor-core vs CUDA-core TFLOPs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    paths.append(_save(fig, out / f"{name}_split.svg"))
    if name == "vision":
        d = df[df["variant"] == df["variant"].iloc[0]].sort_values("image_tokens")
        fig, ax = plt.subplots(figsize=(8, 5))
        shares = [d[c].to_numpy(dtype=float) for c in ("sam_share", "clip_share", "projector_share")]
        ax.stackplot(d["image_tokens"].to_numpy(dtype=float), *shares, labels=["SAM", "CLIP", "projector"])
        ax.set_xlabel("image tokens")
        ax.set_ylabel("share of vision FLOPs")
        ax.set_title("vision: SAM vs CLIP vs projector share of FLOPs")
        ax.legend(loc="lower right")
        paths.append(_save(fig, out / "vision_shares.svg"))
    if name in ("prefill", "decode"):
        paths.append(_plot_required(name, df, out))
    return paths


def _measured_series(df: pd.DataFrame, field: str) -> tuple[pd.Series, pd.Series] | None:
    """Measured points for a plotted field, when the sweep has a measured column for it."""
    if "measured_tensor_tflops" not in df.columns:
        return None
    m = df.dropna(subset=["measured_tensor_tflops"])
    if field == "flops_tflops":
        return m["image_tokens"], m["measured_tensor_tflops"] + m["measured_cuda_tflops"]
    if field == "io_tb":
        return m["image_tokens"], m["measured_io_tb"]
    if field == "arithmetic_intensity":
        return m["image_tokens"], (m["measured_tensor_tflops"] + m["measured_cuda_tflops"]) / m["measured_io_tb"]
    return None


def _plot_required(name: str, df: pd.DataFrame, out: Path) -> Path:
    from opmeter.hardware import HARDWARE

    plt = _plt()
    if name == "prefill":
        cols = [(f"required_tflops_ttft_{b:g}s", f"TTFT {b:g} s") for b in TTFT_BUDGETS_S]
        fig, axes = plt.subplots(1, 1, figsize=(8, 5))
        ax_list = [axes]
        units = [("TFLOP/s", "tensor_tflops")]
    else:
        tag = f"{TPOT_BUDGET_S * 1000:g}ms"
        cols = [(f"required_tflops_tpot_{tag}", f"TPOT {tag}"), (f"required_gbps_tpot_{tag}", f"TPOT {tag}")]
        fig, axes = plt.subplots(1, 2, figsize=(13, 5))
        ax_list = list(axes)
        units = [("TFLOP/s", "tensor_tflops"), ("GB/s", "bandwidth_gbps")]
    for k, (ax, (unit, attr)) in enumerate(zip(ax_list, units, strict=True)):
        use = cols if name == "prefill" else [cols[k]]
        for col, label in use:
            for variant, d in df.groupby("variant", sort=False):
                d = d.sort_values("image_tokens")
                ax.plot(d["image_tokens"], d[col], marker="o", markersize=3, label=f"{label} ({variant})")
        for gpu in REFERENCE_GPUS:
            value = getattr(HARDWARE[gpu], attr)
            ax.axhline(value, linestyle="--", linewidth=0.7, color="grey")
            ax.annotate(f"{gpu} {value:g}", (0.01, value), xycoords=("axes fraction", "data"), fontsize=6)
        ax.set_yscale("log")
        ax.set_xlabel("image tokens")
        ax.set_ylabel(f"required {unit} (log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    title = ("prefill: TFLOP/s needed for a TTFT budget (dashed: dense tensor-core peaks)" if name == "prefill"
             else "decode: TFLOP/s and GB/s needed for a TPOT budget (dashed: peaks)")
    fig.suptitle(title)
    return _save(fig, out / f"{name}_required.svg")


@attrs.frozen
class SweepResult:
    """A finished sweep: its table, the files written and the elapsed seconds."""

    name: str
    frame: pd.DataFrame
    files: tuple[Path, ...]
    seconds: float


def write_sweep(
    name: str,
    out: str | Path,
    cfg: SweepConfig | None = None,
    plots: bool = True,
    measured: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> SweepResult:
    """Run sweep ``name`` and write ``NAME.csv``, ``NAME.md`` and the SVG plots into ``out``."""
    c = cfg or SweepConfig()
    t0 = time.perf_counter()
    df = run_sweep(name, c)
    if measured is not None:
        df = measured(df)
    out_dir = Path(out)
    files = [
        atomic_write_text(out_dir / f"{name}.csv", df.to_csv(index=False)),
        atomic_write_text(out_dir / f"{name}.md", to_markdown(name, df, c)),
    ]
    if plots:
        files += plot_sweep(name, df, out_dir, c)
    return SweepResult(name, df, tuple(files), time.perf_counter() - t0)


def measured_vision_column(
    preset: str, grids: Sequence[tuple[int, int]] | None = None, max_points: int = 3
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """A hook adding ``measured_tensor_tflops`` / ``measured_cuda_tflops`` / ``measured_io_tb`` to a vision sweep
    by tracing the reference vision path shape-only (meta) for a few grids (``normal`` variant rows only; a few
    seconds per point, the other rows stay empty)."""

    def hook(df: pd.DataFrame) -> pd.DataFrame:
        import torch

        from opmeter.models.deepseek_ocr.geometry import VisionWorkload
        from opmeter.models.deepseek_ocr.model import build_reference
        from opmeter.models.deepseek_ocr.preprocess import prepare_inputs_from_geometry
        from opmeter.models.deepseek_ocr.tokenizer import BuiltinTokenizer
        from opmeter.trace import OpTracer

        model = build_reference(preset, device="meta")
        ocr: Any = model.model
        cfg = model.config
        chosen = list(grids) if grids is not None else sorted(set(zip(df["rows"], df["cols"], strict=True)))
        if grids is None and len(chosen) > max_points:
            step = (len(chosen) - 1) / (max_points - 1) if max_points > 1 else 0
            chosen = [chosen[round(i * step)] for i in range(max_points)]
        df = df.copy()
        for col in ("measured_tensor_tflops", "measured_cuda_tflops", "measured_io_tb"):
            df[col] = float("nan")
        for rows, cols in chosen:
            vw = VisionWorkload.from_grid(cols, rows, config=cfg)
            inp = prepare_inputs_from_geometry("<image>\n", BuiltinTokenizer(), vw, cfg)
            kw = inp.model_kwargs("meta", torch.bfloat16)
            patches, image_ori = kw["images"][0]
            with OpTracer(ocr, nvtx=False) as tr, torch.no_grad():
                ocr._image_features(patches, image_ori, tuple(vw.crop_grid))
            tot = tr.totals()
            sel = (df["rows"] == rows) & (df["cols"] == cols) & (df["variant"] == "normal")
            df.loc[sel, "measured_tensor_tflops"] = tflops(tot["flops_tensor"])
            df.loc[sel, "measured_cuda_tflops"] = tflops(tot["flops_cuda"])
            df.loc[sel, "measured_io_tb"] = terabits(tot["bytes_read"] + tot["bytes_written"])
        return df

    return hook


MAX_MEASURED_CROPS = 36
"""Largest ``--max-crops`` with ``--measured`` (those grids are traced)."""

MAX_SWEEP_CROPS = 256
"""Largest ``--max-crops``: the analytic sweep is cheap, but the model's own tiling stops at 9 crops."""


def run_sweeps(args: Any) -> list[str]:
    """``opmeter sweep`` for DeepSeek-OCR: check the sizes, run the sweep(s), return one line per sweep."""
    from opmeter.models.deepseek_ocr.analytic import VARIANTS
    from opmeter.models.deepseek_ocr.config import get_config

    cfg = get_config(args.preset)
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise OpmeterError(f"unknown variant(s) {bad or args.variants!r}; use {', '.join(VARIANTS)}")
    if not 2 <= args.max_crops <= MAX_SWEEP_CROPS:
        raise OpmeterError(f"--max-crops must be between 2 and {MAX_SWEEP_CROPS}, got {args.max_crops}")
    if args.measured and args.max_crops > MAX_MEASURED_CROPS:  # measured points trace their grids
        raise OpmeterError(f"--measured traces grids: --max-crops must be at most {MAX_MEASURED_CROPS} with it, got "
                           f"{args.max_crops}")
    if not 1 <= args.decode_steps <= cfg.decoder.max_position_embeddings:
        raise OpmeterError(f"--decode-steps must be between 1 and {cfg.decoder.max_position_embeddings} (the "
                           f"model's max_position_embeddings), got {args.decode_steps}")
    if args.measured < 0:
        raise OpmeterError(f"--measured must be >= 0, got {args.measured}")
    if args.measured and "normal" not in variants:  # the measured column sits in the 'normal' rows only
        raise OpmeterError("--measured traces the reference's attention, the 'normal' variant: add it to --variants")
    sweep_cfg = SweepConfig(
        preset=args.preset, variants=variants, decode_steps=args.decode_steps, base_size=cfg.base_size,
        image_size=cfg.image_size, max_crops=args.max_crops,
    )
    ensure_output_dir(args.out)  # fail now, not after the run
    names = SWEEPS if args.name == "all" else (args.name,)
    lines = []
    for name in names:
        hook = None
        if name == "vision" and args.measured:
            hook = measured_vision_column(args.preset, max_points=args.measured)
        res = write_sweep(name, args.out, sweep_cfg, plots=not args.no_plots, measured=hook)
        lines.append(f"{name}: {len(res.frame)} rows, {len(res.files)} files ({res.seconds:.1f} s)")
    return lines
