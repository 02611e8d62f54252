"""SVG plots of a report (matplotlib, Agg backend: no display needed).

Each function takes a DataFrame in the shape :class:`opmeter.join.Joined` returns and writes one SVG atomically.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from opmeter.io import atomic_write_bytes

# Deterministic SVG output (no random ids, no date), so committed example reports diff cleanly.
matplotlib.rcParams["svg.hashsalt"] = "opmeter"
matplotlib.rcParams["svg.fonttype"] = "none"


def _save(fig: Figure, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _empty(path: str | Path, title: str, message: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center")
    return _save(fig, path)


def flops_by_component(components: pd.DataFrame, path: str | Path, title: str = "FLOPs by component") -> Path:
    """Horizontal stacked bars: tensor-core and CUDA-core FLOPs per component (measured).

    ``components`` needs ``component``, ``flops_tensor``, ``flops_cuda``.
    """
    df = components[(components["flops_tensor"] + components["flops_cuda"]) > 0]
    if df.empty:
        return _empty(path, title, "no FLOPs recorded")
    df = df.iloc[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(df) + 1.2))
    y = range(len(df))
    ax.barh(y, df["flops_tensor"] / 1e9, label="tensor-core", color="#4c72b0")
    ax.barh(y, df["flops_cuda"] / 1e9, left=df["flops_tensor"] / 1e9, label="CUDA-core", color="#dd8452")
    ax.set_yticks(list(y), list(df["component"]))
    ax.set_xlabel("GFLOP")
    ax.set_xscale("log" if _wide_range(df["flops_tensor"] + df["flops_cuda"]) else "linear")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _wide_range(values: pd.Series) -> bool:
    positive = values[values > 0]
    return bool(len(positive) > 1 and positive.max() / positive.min() > 1e3)


def categories(by_category: pd.DataFrame, path: str | Path, title: str = "Operator categories") -> Path:
    """Grouped bars: each category's share of FLOPs, bytes and (when measured) time.

    ``by_category`` needs ``category``, ``flops_share``, ``bytes_share`` and optionally ``time_share``.
    """
    df = by_category.copy()
    cols = [c for c in ("flops_share", "bytes_share", "time_share") if c in df and df[c].notna().any()]
    df = df[df[cols].fillna(0).sum(axis=1) > 0]
    if df.empty:
        return _empty(path, title, "no operators recorded")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(df) + 2), 4))
    width = 0.8 / len(cols)
    labels = {"flops_share": "FLOPs", "bytes_share": "bytes", "time_share": "time"}
    for i, col in enumerate(cols):
        xs = [x + (i - (len(cols) - 1) / 2) * width for x in range(len(df))]
        ax.bar(xs, df[col].fillna(0) * 100, width=width, label=labels[col])
    ax.set_xticks(range(len(df)), list(df["category"]), rotation=35, ha="right")
    ax.set_ylabel("share of total (%)")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def time_by_stage(
    stages: pd.DataFrame, path: str | Path, title: str = "Time by stage", hardware: str | None = None
) -> Path:
    """Bars of predicted (roofline) and measured time per stage.

    ``stages`` needs ``stage`` and at least one of ``predicted_time_s`` / ``measured_time_s``
    (and optionally ``measured_time_std_s`` for error bars).
    """
    cols = [c for c in ("predicted_time_s", "measured_time_s") if c in stages and stages[c].notna().any()]
    if not cols or stages.empty:
        return _empty(path, title, "no stage times (shape-only run without a hardware peak)")
    df = stages
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(df) + 2), 4))
    width = 0.8 / len(cols)
    predicted = f"predicted (roofline, {hardware})" if hardware else "predicted (roofline)"
    labels = {"predicted_time_s": predicted, "measured_time_s": "measured"}
    for i, col in enumerate(cols):
        xs = [x + (i - (len(cols) - 1) / 2) * width for x in range(len(df))]
        err = None
        if col == "measured_time_s" and "measured_time_std_s" in df:
            err = df["measured_time_std_s"].fillna(0).to_numpy()
        values = df[col].astype(float).fillna(0).to_numpy()
        ax.bar(xs, values * 1e3, width=width, label=labels[col], yerr=None if err is None else err * 1e3)
    ax.set_xticks(range(len(df)), list(df["stage"]), rotation=20, ha="right")
    ax.set_ylabel("ms")
    finite = df[cols].astype(float).to_numpy().ravel()
    finite = finite[[math.isfinite(v) and v > 0 for v in finite]]
    if len(finite) > 1 and finite.max() / finite.min() > 1e3:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def ttft_against(pages: pd.DataFrame, x: str, path: str | Path, title: str = "TTFT per page") -> Path:
    """Predicted (and, when executed, measured) TTFT of each page against one of its columns (e.g. image tokens).

    ``pages`` is a set report's per-page table (``predicted_ttft_s``, ``measured_ttft_s``, ``error``).
    """
    ok = pages[pages["error"].isna()] if "error" in pages else pages
    series = [(c, label, marker) for c, label, marker in (
        ("predicted_ttft_s", "predicted (time model)", "o"), ("roofline_ttft_s", "roofline bound", "^"),
        ("measured_ttft_s", "measured", "s")) if c in ok and pd.to_numeric(ok[c], errors="coerce").notna().any()]
    if ok.empty or x not in ok or not series:
        return _empty(path, title, "no page with a TTFT")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = pd.to_numeric(ok[x], errors="coerce")
    for col, label, marker in series:
        ax.scatter(xs, pd.to_numeric(ok[col], errors="coerce") * 1e3, label=label, marker=marker, alpha=0.8)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel("TTFT (ms)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)
