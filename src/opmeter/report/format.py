"""Number formatting and Markdown tables shared by the report writers.

Markdown tables are rendered here (pandas' ``to_markdown`` needs ``tabulate``, which opmeter does not depend on).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def number(value: Any) -> float | None:
    """``value`` as a float, or ``None`` when it is missing, not a number or NaN (the cells shown as "—")."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def si(value: Any, unit: str = "", digits: int = 3) -> str:
    """``1.234e12`` -> ``"1.23 T<unit>"``; ``None``/NaN -> ``"—"``."""
    v = number(value)
    if v is None:
        return "—"
    if math.isinf(v):
        return "∞"
    for scale, prefix in _PREFIXES:
        if abs(v) >= scale:
            return f"{v / scale:.{digits}g} {prefix}{unit}".rstrip()
    return f"{v:.{digits}g} {unit}".rstrip()


def flops(value: Any) -> str:
    """FLOPs with an SI prefix."""
    return si(value, "FLOP")


def nbytes(value: Any) -> str:
    """Bytes with an SI prefix (decimal, as hardware bandwidths are quoted)."""
    return si(value, "B")


def seconds(value: Any) -> str:
    """Seconds, switching to ms / µs for small values."""
    v = number(value)
    if v is None:
        return "—"
    if abs(v) >= 1:
        return f"{v:.3g} s"
    if abs(v) >= 1e-3:
        return f"{v * 1e3:.3g} ms"
    return f"{v * 1e6:.3g} µs"


def pct(value: Any, digits: int = 1) -> str:
    """A fraction as a percentage."""
    v = number(value)
    if v is None:
        return "—"
    return f"{100 * v:.{digits}f} %"


def rel(value: Any) -> str:
    """A signed relative difference as a percentage with 2 decimals."""
    v = number(value)
    if v is None:
        return "—"
    return f"{100 * v:+.2f} %"


def integer(value: Any) -> str:
    """An integer with thousands separators."""
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return "—"


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def table(
    df: pd.DataFrame,
    columns: Sequence[str] | None = None,
    formats: Mapping[str, Callable[[Any], str]] | None = None,
    headers: Mapping[str, str] | None = None,
    max_rows: int | None = None,
) -> str:
    """Render ``df`` as a GitHub Markdown table.

    Parameters
    ----------
    columns
        Columns to show, in order (default: all).
    formats
        Per-column formatter; other cells use ``str`` (floats with 4 significant digits).
    headers
        Display names per column.
    max_rows
        Truncate to this many rows and add a "... n more rows" line.
    """
    cols = list(columns) if columns is not None else list(df.columns)
    formats = formats or {}
    headers = headers or {}
    shown = df if max_rows is None else df.head(max_rows)
    numeric = {c: pd.api.types.is_numeric_dtype(df[c]) for c in cols if c in df}
    lines = [
        "| " + " | ".join(_escape(headers.get(c, c)) for c in cols) + " |",
        "|" + "|".join("---:" if numeric.get(c) else "---" for c in cols) + "|",
    ]
    for record in shown[cols].itertuples(index=False, name=None):
        cells = []
        for col, value in zip(cols, record, strict=True):
            if col in formats:
                text = formats[col](value)
            elif isinstance(value, float):
                text = "—" if math.isnan(value) else f"{value:.4g}"
            else:
                text = str(value)
            cells.append(_escape(text))
        lines.append("| " + " | ".join(cells) + " |")
    if max_rows is not None and len(df) > max_rows:
        lines.append(f"\n*… {len(df) - max_rows} more rows in the CSV/JSON exports.*")
    return "\n".join(lines)


def uncounted(ops: Mapping[str, int] | None, listed: int = 5) -> str:
    """Compute ops whose FLOPs are unknown (no formula), most calls first: ``"none"`` or ``"2 ops: a (24 calls),
    b (3 calls)"``, at most ``listed`` of them named."""
    if not ops:
        return "none"
    ranked = sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))
    names = ", ".join(f"`{op}` ({calls} calls)" for op, calls in ranked[:listed])
    more = f", and {len(ranked) - listed} more" if len(ranked) > listed else ""
    return f"{len(ranked)} op{'s' if len(ranked) > 1 else ''}: {names}{more}"
