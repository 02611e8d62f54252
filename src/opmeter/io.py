"""File output shared by every exporter: atomic writes, so a crash never leaves a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, then rename).

    Parameters
    ----------
    path
        Destination file; parent directories are created.
    data
        The complete file content.

    Returns
    -------
    Path
        The destination path.

    Raises
    ------
    OpmeterError
        When the directory cannot be created or written.
    """
    dest = Path(path)
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
    return dest


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))
