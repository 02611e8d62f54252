"""The exporter registry and the formats it writes: CSV (always), Parquet (when ``pyarrow`` imports), DOT / Mermaid,
JSON, Chrome trace.

An :class:`Exporter` is one output of a command (a table, a graph, a plot...): a name, a function that writes it
from the command's data, and whether the output is required. :func:`write_all` runs a command's exporters in order:
a required exporter that fails stops the write (the output directory is then left as it was, see
:mod:`opmeter.report.outdir`); an optional one that fails is logged and returned as a failure, so the command names
it in its output instead of skipping it in silence. Every file is written atomically (:mod:`opmeter.io`).
"""

from __future__ import annotations

import importlib.util
import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

import attrs
import pandas as pd

from opmeter.io import atomic_write_bytes, atomic_write_text, gzip_bytes, json_bytes
from opmeter.trace import Trace

log = logging.getLogger(__name__)

D = TypeVar("D")


@attrs.frozen
class Exporter(Generic[D]):
    """One output of a command, written from its data ``D`` into an output directory."""

    name: str
    """What the output is, in the words a reader of the report sees ("Chrome trace", "module table")."""
    write: Callable[[D, Path], Sequence[Path]]
    """Writes the output into the directory; returns the paths it wrote (none when there is nothing to write)."""
    required: bool = True
    """A required output's failure stops the command; an optional one's is logged and named."""


@attrs.frozen
class Failure:
    """An optional output that could not be written, and why."""

    name: str
    reason: str


def failures_markdown(failures: Sequence[Failure]) -> str:
    """The section of a Markdown report that names the outputs that could not be written ('' when none)."""
    if not failures:
        return ""
    return "\n## Files not written\n\n" + "".join(f"- {f.name}: {f.reason}\n" for f in failures)


def write_all(exporters: Sequence[Exporter[D]], data: D, out_dir: Path) -> tuple[list[str], list[Failure]]:
    """Run ``exporters`` in order into ``out_dir``; returns the names of the files written and the failures.

    Raises
    ------
    Exception
        Whatever a required exporter raised, and ``OSError`` / ``KeyboardInterrupt`` from any exporter (a full disk
        or Ctrl-C is never an optional output's failure).
    """
    files: list[str] = []
    failures: list[Failure] = []
    for exporter in exporters:
        try:
            files += [p.name for p in exporter.write(data, out_dir)]
        except (OSError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if exporter.required:
                raise
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
            log.warning("%s not written: %s", exporter.name, reason)
            failures.append(Failure(exporter.name, reason))
    return sorted(set(files)), failures


def parquet_available() -> bool:
    """Whether pandas can write Parquet here (``pyarrow`` installed)."""
    return importlib.util.find_spec("pyarrow") is not None


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
    return write_maybe_gzip(path, json_bytes(trace.to_dict()), True)


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
    """``callgraph.dot`` and ``callgraph.mmd`` from the trace's class-level call graph."""
    out = Path(out_dir)
    written = []
    for text, name in ((trace.to_dot(), "callgraph.dot"), (trace.to_mermaid(), "callgraph.mmd")):
        written.append(atomic_write_text(out / name, text if text.endswith("\n") else text + "\n"))
    return written


def write_chrome_trace(trace: Trace, path: str | Path, compress: bool = False) -> Path | None:
    """Chrome/Perfetto trace of module spans when the trace was timed; ``None`` (nothing written) when it has no
    spans. A failure to build the spans propagates (the registry names it).

    With ``compress`` a file over :data:`COMPRESS_MIN_BYTES` is gzipped to ``<path>.gz`` (Perfetto and
    ``chrome://tracing`` open gzipped JSON traces as they are).
    """
    if len(trace.spans()) == 0:
        return None
    written = Path(trace.to_chrome_trace(path))
    return write_maybe_gzip(written, written.read_bytes(), compress)
