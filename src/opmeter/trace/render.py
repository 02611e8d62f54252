"""Rich tables of a :class:`~opmeter.trace.trace.Trace` for the terminal (``opmeter demo``, ``opmeter show``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from opmeter.trace.trace import Trace


def human(x: Any, unit: str = "") -> str:
    """``1.23G`` style numbers; ``-`` for NaN / None."""
    if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
        return "-"
    v = float(x)
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}{unit}"
    return f"{v:.3g}{unit}" if v != int(v) else f"{int(v)}{unit}"


def seconds(x: Any) -> str:
    """Milliseconds with 3 significant digits, ``-`` when not timed."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{float(x) * 1e3:.3g} ms"


def terminal() -> Console:
    """A rich console; 150 columns when stdout is not a terminal (CI logs, files)."""
    import sys

    return Console() if sys.stdout.isatty() else Console(width=150)


def _table(title: str, df: pd.DataFrame, columns: Sequence[tuple[str, str, Any]]) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for _, header, _ in columns:
        t.add_column(header, justify="left" if header in ("module", "op", "stage", "category", "class", "reason",
                                                          "group", "kind") else "right")
    for row in df.to_dict(orient="records"):
        t.add_row(*[fmt(row[col]) if fmt else str(row[col]) for col, _, fmt in columns])
    return t


def print_trace(trace: Trace, console: Console | None = None, *, top: int = 15, max_depth: int = 3,
                stage: str | None = None) -> None:
    """Print stages, the module tree (to ``max_depth``), top operators, categories and the unclassified bucket."""
    c = console or Console()
    c.print(trace.summary())
    stages = trace.stages()
    if len(stages) > 12:  # many decode steps: show per group
        c.print(_table("Stage groups", trace.stage_groups(), [
            ("group", "group", None), ("stages", "stages", None), ("ops", "ops", human),
            ("flops_tensor", "tensor FLOPs", human), ("flops_cuda", "CUDA FLOPs", human),
            ("bytes_read", "read", lambda v: human(v, "B")), ("bytes_written", "written", lambda v: human(v, "B")),
            ("time_s", "time", seconds)]))
    else:
        c.print(_table("Stages", stages, [
            ("stage", "stage", None), ("group", "group", None), ("tokens", "tokens", human), ("ops", "ops", human),
            ("flops_tensor", "tensor FLOPs", human), ("flops_cuda", "CUDA FLOPs", human),
            ("bytes_read", "read", lambda v: human(v, "B")), ("bytes_written", "written", lambda v: human(v, "B")),
            ("time_s", "time", seconds)]))
    mods = trace.by_module(stage)
    mods = mods[(mods["depth"] <= max_depth) & (mods["calls"] > 0) | (mods["module"] == "<outside>")].copy()
    mods["module"] = ["  " * int(d) + str(m) for d, m in zip(mods["depth"], mods["module"], strict=True)]
    c.print(_table(f"Modules (inclusive, depth <= {max_depth}{', stage ' + stage if stage else ''})", mods, [
        ("module", "module", None), ("class_name", "class", None), ("calls", "calls", human), ("ops", "ops", human),
        ("flops_tensor", "tensor FLOPs", human), ("flops_cuda", "CUDA FLOPs", human),
        ("bytes_read", "read", lambda v: human(v, "B")), ("bytes_written", "written", lambda v: human(v, "B")),
        ("time_s", "time", seconds)]))
    c.print(_table(f"Top {top} operators", trace.by_operator(stage).head(top), [
        ("op", "op", None), ("category", "category", None), ("calls", "calls", human),
        ("flops_tensor", "tensor FLOPs", human), ("flops_cuda", "CUDA FLOPs", human),
        ("bytes_read", "read", lambda v: human(v, "B")), ("bytes_written", "written", lambda v: human(v, "B")),
        ("exact", "exact", None)]))
    c.print(_table("Categories", trace.by_category(stage), [
        ("category", "category", None), ("calls", "calls", human), ("flops_tensor", "tensor FLOPs", human),
        ("flops_cuda", "CUDA FLOPs", human), ("bytes_read", "read", lambda v: human(v, "B")),
        ("bytes_written", "written", lambda v: human(v, "B"))]))
    unc = trace.unclassified(stage)
    if unc.empty:
        c.print("Unclassified: nothing (every op has a category and runs inside a module).")
    else:
        c.print(_table("Unclassified (no category / uncounted / outside every module)", unc.head(top), [
            ("reason", "reason", None), ("op", "op", None), ("calls", "calls", human),
            ("share_flops", "FLOPs share", lambda v: f"{float(v):.2%}"),
            ("share_bytes", "bytes share", lambda v: f"{float(v):.2%}")]))
