"""File output shared by every exporter: atomic writes, so a crash never leaves a half-written file."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tempfile
import zlib
from pathlib import Path
from typing import IO, Any

import orjson

from opmeter.errors import OpmeterError


def _mkdir(path: Path, what: str) -> None:
    """``mkdir -p``; ``what`` starts the error message when some component exists as a regular file."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise OpmeterError(f"{what}: {blocker} exists and is not a directory") from None


def ensure_output_dir(out: str | os.PathLike[str]) -> Path:
    """Create the output directory ``out`` if needed and prove it is writable, before any long work starts.

    Raises
    ------
    OpmeterError
        When ``out`` (or a parent) is a regular file, or the directory cannot be created or written.
    """
    path = Path(out)
    try:
        _mkdir(path, f"output directory {path} cannot be created")
        fd, probe = tempfile.mkstemp(prefix=".opmeter-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OpmeterError(f"output directory {path} is not writable: {exc.strerror or exc}") from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_stream(path: Path, data: bytes) -> None:
    """Write to a character device or a pipe as it is (``/dev/null``, ``/dev/stdout``, a FIFO): no rename there."""
    try:
        with open(path, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise OpmeterError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _destination(path: Path) -> tuple[Path, bool]:
    """Where a write of ``path`` goes, and whether it is a stream (written in place) rather than a regular file.

    A symbolic link is written through (its target is replaced, the link stays, also when it dangles); a character
    device or a FIFO is written directly; a directory or a block device is refused.
    """
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):  # created by the write (a file in the way is named then)
        return path, False
    except OSError as exc:
        raise OpmeterError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(mode):
        raise OpmeterError(f"cannot write {path}: it is a directory")
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return path, True
    if not stat.S_ISREG(mode):
        raise OpmeterError(f"cannot write {path}: not a regular file (a block device or a socket)")
    return path, False


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, then rename).

    A symbolic link is written through: its target gets the new content and the link stays. A character device or
    a FIFO (``/dev/null``, a pipe) is written directly, as there is nothing to rename over; a directory or a block
    device is refused.

    Parameters
    ----------
    path
        Destination file; parent directories are created.
    data
        The complete file content.

    Returns
    -------
    Path
        ``path`` as given.

    Raises
    ------
    OpmeterError
        When the directory cannot be created or written.
    """
    dest, stream = _destination(Path(path))
    if stream:
        _write_stream(dest, data)
        return Path(path)
    try:
        _mkdir(dest.parent, f"cannot write {dest}")
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the mode open() would
    except OSError as exc:
        raise OpmeterError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OpmeterError(f"cannot write {dest}: {exc.strerror or exc}") from exc
        raise
    return Path(path)


def json_bytes(obj: Any, indent: bool = False) -> bytes:
    """The one JSON encoding of every file opmeter writes: orjson, NumPy values and non-string keys allowed, values
    JSON cannot hold (a ``Path``, a dtype) as their ``str()``, NaN as ``null``; indented for files people read.

    Raises
    ------
    OpmeterError
        When the value cannot be encoded (an integer past 64 bits, a cycle).
    """
    option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    try:
        return orjson.dumps(obj, default=str, option=option)
    except orjson.JSONEncodeError as exc:
        raise OpmeterError(f"cannot encode as JSON: {exc}") from None


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip (no file name, mtime 0), so committed example files diff cleanly."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as fh:
        fh.write(data)
    return buf.getvalue()


def write_json(path: str | os.PathLike[str], obj: Any, indent: bool = False) -> Path:
    """Write ``obj`` as JSON (:func:`json_bytes`) atomically, gzipped when the name ends in ``.gz``."""
    data = json_bytes(obj, indent)
    return atomic_write_bytes(path, gzip_bytes(data) if str(path).endswith(".gz") else data)


_OWN_FILE_MAX_BYTES = 64 << 20


def _schema_of(path: Path) -> object:
    """The ``schema_version`` of the JSON object in ``path`` (at most 64 MiB read), or ``None``."""
    try:
        if path.stat().st_size > _OWN_FILE_MAX_BYTES:
            return None
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data.get("schema_version") if isinstance(data, dict) else None


def check_output_file(path: str | os.PathLike[str], schema: str, force: bool = False) -> Path:
    """Prove that ``path`` may receive one of opmeter's JSON files, before any work, creating nothing.

    A missing file, a stream (``/dev/null``, a pipe) and a file opmeter wrote before (a JSON object whose
    ``schema_version`` is ``schema``) may be written; any other existing file only with ``force``.

    Raises
    ------
    OpmeterError
        When ``path`` is a directory or an existing file that is not opmeter's (without ``force``).
    """
    p = Path(path)
    dest, stream = _destination(p)
    if stream or force or not dest.exists():
        return p
    if _schema_of(dest) != schema:
        raise OpmeterError(f"{p} exists and is not an opmeter file ({schema}); choose another name, or add --force "
                           "to replace it")
    return p


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


MAX_READ_ENV = "OPMETER_MAX_READ_MB"
"""Environment variable raising (or lowering) the size cap of every artifact opmeter reads, in MiB."""
DEFAULT_MAX_READ_MB = 256
"""The default cap: plain bytes, and bytes after decompression (a full-size trace with 512 new tokens is 6 MB)."""
_CHUNK = 1 << 20
MAX_JSON_DEPTH = 64
"""No artifact opmeter writes nests deeper; deeper JSON is refused before anything walks it."""


def max_read_bytes() -> int:
    """The size cap of one artifact read (``OPMETER_MAX_READ_MB``, default 256 MiB).

    Raises
    ------
    OpmeterError
        When the environment value is not a positive number.
    """
    raw = os.environ.get(MAX_READ_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_READ_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        mb = float("nan")
    if not mb > 0 or mb == float("inf"):
        raise OpmeterError(f"{MAX_READ_ENV}={raw!r} is not a positive number of MiB")
    return int(mb * (1 << 20))


def _too_big(p: Path, what: str, limit: int, unpacked: bool = False) -> OpmeterError:
    how = "decompresses to more than" if unpacked else "is larger than"
    return OpmeterError(f"{what} {p} {how} the {limit / (1 << 20):.0f} MiB opmeter reads (set {MAX_READ_ENV} to "
                        "raise the cap)")


def _read_capped(fh: IO[bytes], p: Path, what: str, limit: int) -> bytes:
    """Read at most ``limit`` bytes in chunks (Ctrl-C is seen between chunks)."""
    parts, total = [], 0
    while chunk := fh.read(_CHUNK):
        total += len(chunk)
        if total > limit:
            raise _too_big(p, what, limit)
        parts.append(chunk)
    return b"".join(parts)


def _gunzip_capped(raw: bytes, p: Path, what: str, limit: int) -> bytes:
    """Decompress gzip members chunk by chunk, refusing output beyond ``limit``."""
    parts, total, data = [], 0, raw
    while data:
        inflater = zlib.decompressobj(wbits=31)
        pending = data
        while pending and not inflater.eof:
            out = inflater.decompress(pending, _CHUNK)
            total += len(out)
            if total > limit:
                raise _too_big(p, what, limit, unpacked=True)
            parts.append(out)
            pending = inflater.unconsumed_tail
        if not inflater.eof:
            raise OpmeterError(f"{p} is a damaged gzip file: it ends inside its compressed data")
        data = inflater.unused_data.lstrip(b"\0")  # a concatenated member follows, or padding
    return b"".join(parts)


def read_bounded(path: str | os.PathLike[str], what: str, limit: int | None = None) -> bytes:
    """The bytes of an artifact a user may have been handed: a regular file, at most ``limit`` bytes, gzip
    transparently decompressed (its output capped too).

    Parameters
    ----------
    path
        The file; a gzip file is recognised by its magic bytes, whatever its name.
    what
        The file kind, for the errors ("trace", "device profile").
    limit
        The cap in bytes, plain and decompressed (default :func:`max_read_bytes`).

    Raises
    ------
    OpmeterError
        One line when the file is missing, not a regular file (a device, a FIFO, a directory), too large, or a
        damaged gzip file.
    """
    p = Path(path)
    cap = max_read_bytes() if limit is None else limit
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise OpmeterError(f"cannot read {what} {p}: no such file") from None
    except OSError as exc:
        raise OpmeterError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise OpmeterError(f"{what} {p} is not a regular file")
    try:
        with open(p, "rb") as fh:
            raw = _read_capped(fh, p, what, cap)
    except OSError as exc:
        raise OpmeterError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return _gunzip_capped(raw, p, what, cap)
    except zlib.error as exc:
        raise OpmeterError(f"{p} is a damaged gzip file: {exc}") from None


def read_json(path: str | os.PathLike[str], what: str, limit: int | None = None) -> Any:
    """Read a JSON file, plain or gzipped (``--compress`` writes ``*.json.gz``), for a loader, within the size
    cap of :func:`read_bounded`.

    ``what`` names the file kind in the errors ("trace", "device profile").

    Raises
    ------
    OpmeterError
        One line when the file cannot be read, is too large, is a damaged gzip file, or is not JSON.
    """
    from opmeter.checks import nesting_depth_at_most

    p = Path(path)
    raw = read_bounded(p, what, limit)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OpmeterError(f"{p} is not a JSON {what}: {exc}") from None
    nesting_depth_at_most(data, MAX_JSON_DEPTH, f"{what} {p}")
    return data
