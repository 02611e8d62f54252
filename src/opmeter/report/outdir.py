"""The report directory as one unit: checked before the work, written beside it, swapped in at the end.

``opmeter report`` never writes into ``--out`` file by file. :func:`check_report_dir` proves, before any long work
and without creating anything, that the directory can be replaced; :func:`staged_report` yields a sibling temporary
directory that receives every file, and swaps it in only when all of them are written: on Linux with one
``renameat2(RENAME_EXCHANGE)`` (the old report and the new one change places atomically), elsewhere by moving the
old directory aside and the new one in. The old report is removed afterwards, and so is the partial trace an earlier
failed run left beside it. An exception, Ctrl-C or a full disk
while writing removes the temporary directory and leaves ``--out`` as it was; a ``kill -9`` leaves at most a hidden
``.<name>.opmeter-*`` sibling, removed by the next run once its process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from opmeter.errors import OpmeterError

log = logging.getLogger(__name__)

_STAGING = "opmeter-new"
_ASIDE = "opmeter-old"
_RENAME_EXCHANGE = 2


def partial_trace_path(out: Path) -> Path:
    """Where an interrupted report saves what it traced: beside ``--out``, never inside it."""
    return out.parent / f"{out.name}.trace.partial.json"


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path("/")


def check_report_dir(out: str | os.PathLike[str]) -> Path:
    """Prove that ``out`` can receive a report, creating nothing; returns its absolute path (symlinks resolved).

    ``out`` may be missing (it is created at the end), empty, or hold an earlier report (a ``report.md``), which
    is replaced as a whole.

    Raises
    ------
    OpmeterError
        When ``out`` is empty text, a file, a mount point, the current directory or one of its parents, a directory
        holding something other than a report, or when its parent is missing-and-uncreatable or not writable.
    """
    if not str(out).strip():
        raise OpmeterError("--out is empty; give the report directory (for example reports/latest)")
    path = Path(os.path.realpath(Path(out).expanduser()))
    if path == Path(path.anchor) or os.path.ismount(path):
        raise OpmeterError(f"output directory {path} is a mount point; use a directory inside it")
    if path == Path.cwd() or path in Path.cwd().parents:
        raise OpmeterError(f"output directory {path} contains the current directory; use a directory of its own")
    if path.exists():
        if not path.is_dir():
            raise OpmeterError(f"output directory {path} cannot be created: {path} exists and is not a directory")
        entries = [p.name for p in path.iterdir()]
        if entries and "report.md" not in entries:
            raise OpmeterError(f"output directory {path} holds files that are not an opmeter report "
                               f"({', '.join(sorted(entries)[:3])}...); the report replaces --out as a whole, so "
                               "choose a new or empty directory")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise OpmeterError(f"output directory {path} cannot be created: {base} exists and is not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OpmeterError(f"output directory {path} is not writable: {base} does not allow it")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(out: Path) -> None:
    """Remove the temporary siblings of ``out`` left by killed runs (their process no longer exists)."""
    if not out.parent.is_dir():
        return
    for entry in out.parent.glob(f".{out.name}.opmeter-*"):
        try:
            pid = int(entry.name.split(".")[-1].split("-")[0])
        except ValueError:
            continue
        if entry.is_dir() and not _alive(pid):
            log.info("removing %s, left by an interrupted report (process %d)", entry, pid)
            shutil.rmtree(entry, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False when the system cannot."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap_in(staging: Path, out: Path) -> None:
    """Put ``staging`` at ``out``; the previous ``out`` (if any) is removed afterwards."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, out)
        return
    if _exchange(staging, out):
        shutil.rmtree(staging)  # now the old report
        return
    aside = out.parent / f".{out.name}.{_ASIDE}.{os.getpid()}-{os.urandom(3).hex()}"
    os.rename(out, aside)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(aside, out)
        raise
    shutil.rmtree(aside)


@contextlib.contextmanager
def staged_report(out: Path, carry: Sequence[Path] = ()) -> Iterator[Path]:
    """Yield an empty sibling directory of ``out`` to write a report into; swap it in when the block succeeds.

    Parameters
    ----------
    out
        The report directory (from :func:`check_report_dir`).
    carry
        Files inside ``out`` that the new report keeps when it does not write them itself (the saved trace a
        report is being rebuilt from).
    """
    remove_leftovers(out)
    base = _nearest_existing(out.parent)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.{_STAGING}.{os.getpid()}-", dir=base))
        mask = os.umask(0)
        os.umask(mask)
        # mkdtemp makes it 0700: the report keeps the mode of the one it replaces, or gets the one mkdir would give
        os.chmod(staging, stat.S_IMODE(out.stat().st_mode) if out.is_dir() else 0o777 & ~mask)
    except OSError as exc:
        raise OpmeterError(f"output directory {out} is not writable: {exc.strerror or exc}") from None
    try:
        yield staging
        for src in carry:
            dest = staging / src.name
            if src.parent == out and src.is_file() and not dest.exists():
                shutil.copy2(src, dest)
        if staging.parent != out.parent:  # the parent did not exist: create it, then move the staging beside out
            out.parent.mkdir(parents=True, exist_ok=True)
            moved = out.parent / staging.name
            os.rename(staging, moved)
            staging = moved
        _swap_in(staging, out)
        stale = partial_trace_path(out)
        if stale.is_file():  # left by an earlier failed run of this report: superseded now
            log.info("removing %s, the partial trace of an earlier run", stale)
            stale.unlink()
    except OSError as exc:
        raise OpmeterError(f"cannot write the report into {out}: {exc.strerror or exc} (the previous report, if "
                           "any, is unchanged)") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
