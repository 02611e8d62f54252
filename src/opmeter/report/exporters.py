"""Table and graph exporters: CSV (always), Parquet (when ``pyarrow`` imports), DOT / Mermaid, Chrome trace.

Every file is written atomically (:mod:`opmeter.io`), so an interrupted report never leaves a torn file.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

import pandas as pd

from opmeter.io import atomic_write_bytes, atomic_write_text


def parquet_available() -> bool:
    """Whether pandas can write Parquet here (``pyarrow`` installed)."""
    return importlib.util.find_spec("pyarrow") is not None


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as CSV (no index) atomically."""
    return atomic_write_text(path, df.to_csv(index=False))


def write_parquet(df: pd.DataFrame, path: str | Path) -> Path | None:
    """Write ``df`` as Parquet atomically; ``None`` (nothing written) when ``pyarrow`` is missing."""
    if not parquet_available():
        return None
    buf = io.BytesIO()
    frame = df.copy()
    for col in frame.columns:  # mixed object columns (None + str) are fine for pyarrow; make them strings
        if frame[col].dtype == object:
            frame[col] = frame[col].map(lambda v: None if v is None else str(v))
    frame.to_parquet(buf, index=False)
    return atomic_write_bytes(path, buf.getvalue())


def write_table(df: pd.DataFrame, out_dir: str | Path, stem: str) -> list[Path]:
    """``<stem>.csv`` and, when possible, ``<stem>.parquet`` in ``out_dir``."""
    out = Path(out_dir)
    written = [write_csv(df, out / f"{stem}.csv")]
    pq = write_parquet(df, out / f"{stem}.parquet")
    if pq is not None:
        written.append(pq)
    return written


def write_callgraph(trace: Any, out_dir: str | Path) -> list[Path]:
    """``callgraph.dot`` and ``callgraph.mmd`` from the trace's class-level call graph (when it offers them)."""
    out = Path(out_dir)
    written = []
    for method, name in (("to_dot", "callgraph.dot"), ("to_mermaid", "callgraph.mmd")):
        fn = getattr(trace, method, None)
        if fn is None:
            continue
        text = fn()
        written.append(atomic_write_text(out / name, text if text.endswith("\n") else text + "\n"))
    return written


def write_chrome_trace(trace: Any, path: str | Path) -> Path | None:
    """Chrome/Perfetto trace of module spans when the trace was timed; ``None`` otherwise."""
    fn = getattr(trace, "to_chrome_trace", None)
    spans = getattr(trace, "spans", None)
    if fn is None:
        return None
    if spans is not None:
        try:
            if len(spans()) == 0:
                return None
        except Exception:
            return None
    result = fn(path)
    return Path(result) if result is not None else Path(path)
