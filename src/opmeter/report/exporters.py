"""Table and graph exporters: CSV (always), Parquet (when ``pyarrow`` imports), DOT / Mermaid, Chrome trace.

Every file is written atomically (:mod:`opmeter.io`), so an interrupted report never leaves a torn file.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
from pathlib import Path

import pandas as pd

from opmeter.io import atomic_write_bytes, atomic_write_text
from opmeter.trace import Trace


def parquet_available() -> bool:
    """Whether pandas can write Parquet here (``pyarrow`` installed)."""
    return importlib.util.find_spec("pyarrow") is not None


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip (no file name, mtime 0), so committed example files diff cleanly."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as fh:
        fh.write(data)
    return buf.getvalue()


COMPRESS_MIN_BYTES = 64 * 1024
"""With ``compress``, only files larger than this are gzipped (small tables stay readable in a browser)."""


def write_maybe_gzip(path: str | Path, data: bytes, compress: bool) -> Path:
    """Write ``data`` to ``path``, or gzipped to ``path.gz`` when ``compress`` and larger than
    :data:`COMPRESS_MIN_BYTES`; the other variant left by an earlier run is removed, so one format remains."""
    plain, packed = Path(path), Path(f"{path}.gz")
    if compress and len(data) > COMPRESS_MIN_BYTES:
        written = atomic_write_bytes(packed, gzip_bytes(data))
        plain.unlink(missing_ok=True)
    else:
        written = atomic_write_bytes(plain, data)
        packed.unlink(missing_ok=True)
    return written


def write_csv(df: pd.DataFrame, path: str | Path, compress: bool = False) -> Path:
    """Write ``df`` as CSV (no index) atomically; gzipped to ``<path>.gz`` when ``compress``."""
    return write_maybe_gzip(path, df.to_csv(index=False).encode("utf-8"), compress)


def write_trace_json(trace: Trace, path: str | Path, compress: bool = False) -> Path:
    """The trace as JSON (``Trace.save``), or gzipped to ``<path>.gz``."""
    if not compress:
        written = Path(trace.save(path))
        Path(f"{path}.gz").unlink(missing_ok=True)
        return written
    import orjson

    data = orjson.dumps(trace.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    return write_maybe_gzip(path, data, True)


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


def write_table(df: pd.DataFrame, out_dir: str | Path, stem: str, compress: bool = False) -> list[Path]:
    """``<stem>.csv`` (``.csv.gz`` when ``compress``) and, when possible, ``<stem>.parquet`` in ``out_dir``."""
    out = Path(out_dir)
    written = [write_csv(df, out / f"{stem}.csv", compress)]
    pq = write_parquet(df, out / f"{stem}.parquet")
    if pq is not None:
        written.append(pq)
    return written


def write_callgraph(trace: Trace, out_dir: str | Path) -> list[Path]:
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


def write_chrome_trace(trace: Trace, path: str | Path, compress: bool = False) -> Path | None:
    """Chrome/Perfetto trace of module spans when the trace was timed; ``None`` otherwise.

    With ``compress`` a file over :data:`COMPRESS_MIN_BYTES` is gzipped to ``<path>.gz`` (Perfetto and
    ``chrome://tracing`` open gzipped JSON traces as they are).
    """
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
    written = Path(result) if result is not None else Path(path)
    if written.is_file():
        return write_maybe_gzip(written, written.read_bytes(), compress)
    return written
