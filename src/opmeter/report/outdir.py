"""Output directories opmeter owns: checked before the work, written beside it, swapped in at the end.

opmeter writes only into directories it made and marked as its own. Every directory a command writes (``report``,
``compare``, ``demo``, ``verify``, ``sweep``) carries a manifest, :data:`MANIFEST_NAME`, that names the entries
opmeter wrote there. A new run replaces those entries and only those: every other entry (a file the user added,
an input image, a folder of pages) is kept, hard-linked into the new directory before the swap. A non-empty
directory without the manifest is refused before any work, unless ``--force`` adopts it (its files are kept; a
file with the name of one the command writes is replaced, and the log says so).

Nothing is written into ``--out`` file by file. :func:`check_output_dir` proves, before any long work and without
creating anything, that the directory can be replaced; :func:`staged_output` yields a sibling temporary directory
that receives every file, and swaps it in only when all of them are written: on Linux with one
``renameat2(RENAME_EXCHANGE)`` (the old directory and the new one change places atomically), elsewhere by moving
the old directory aside and the new one in. The old directory is removed afterwards (everything in it that was not
opmeter's now lives in the new one), and so is the partial trace an earlier failed run left beside it. An
exception, Ctrl-C or a full disk while writing removes the temporary directory and leaves ``--out`` as it was; a
``kill -9`` leaves at most a hidden ``.<name>.opmeter-*`` sibling, removed by the next run once its process is gone.
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

import orjson

from opmeter.errors import OpmeterError
from opmeter.io import write_json

log = logging.getLogger(__name__)

MANIFEST_NAME = ".opmeter-output.json"
MANIFEST_SCHEMA = "opmeter.output_dir/1"
_MANIFEST_MAX_BYTES = 1 << 20

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


FORCE_HELP = ("write into an existing directory opmeter did not make: its files are kept, those named like a file "
              "this command writes are replaced")


def read_manifest(directory: Path) -> frozenset[str] | None:
    """The names of the entries opmeter wrote into ``directory``; ``None`` when it carries no valid manifest."""
    path = directory / MANIFEST_NAME
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _MANIFEST_MAX_BYTES:
            return None
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    names = data.get("files") if isinstance(data, dict) and data.get("schema_version") == MANIFEST_SCHEMA else None
    if not isinstance(names, list) or not all(_plain_name(n) for n in names):
        return None
    return frozenset(names)


def _plain_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..", MANIFEST_NAME) and "/" not in name and "\0" not in name


def _refusal(path: Path, entries: list[str]) -> OpmeterError:
    shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
    return OpmeterError(f"output directory {path} holds files opmeter did not write ({shown}) and no {MANIFEST_NAME}; "
                        "choose a new or empty directory, or add --force to write into it (its files are kept, those "
                        "named like a file opmeter writes are replaced)")


def check_output_dir(out: str | os.PathLike[str], force: bool = False) -> Path:
    """Prove that ``out`` can receive a command's output, creating nothing; returns its absolute path.

    ``out`` may be missing (it is created at the end), empty, or a directory opmeter wrote before (it carries
    :data:`MANIFEST_NAME`); with ``force``, any directory (its files are kept). Symlinks are resolved.

    Raises
    ------
    OpmeterError
        When ``out`` is empty text, a file, a mount point, the current directory or one of its parents, a non-empty
        directory without opmeter's manifest (unless ``force``), or when its parent is missing-and-uncreatable or
        not writable.
    """
    if not str(out).strip():
        raise OpmeterError("--out is empty; give the output directory (for example reports/latest)")
    try:
        str(out).encode("utf-8")
    except UnicodeEncodeError:
        raise OpmeterError(f"--out {str(out).encode('utf-8', 'backslashreplace').decode()} is not valid UTF-8 (the "
                           "report names its directory in text); choose a name that is") from None
    path = Path(os.path.realpath(Path(out).expanduser()))
    if path == Path(path.anchor) or os.path.ismount(path):
        raise OpmeterError(f"output directory {path} is a mount point; use a directory inside it")
    if path == Path.cwd() or path in Path.cwd().parents:
        raise OpmeterError(f"output directory {path} contains the current directory; use a directory of its own")
    if path.exists():
        if not path.is_dir():
            raise OpmeterError(f"output directory {path} cannot be created: {path} exists and is not a directory")
        entries = [p.name for p in path.iterdir()]
        if entries and not force and read_manifest(path) is None:
            raise _refusal(path, entries)
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


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _keep(entry: Path, dest: Path) -> None:
    """Put ``entry`` (not opmeter's) into the new directory without touching it: hard links, else copies."""
    if entry.is_symlink():
        os.symlink(os.readlink(entry), dest)
    elif entry.is_dir():
        shutil.copytree(entry, dest, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(str(entry), str(dest))


def _owned(out: Path, force: bool) -> frozenset[str]:
    """What opmeter wrote into ``out`` (re-read at the swap: another run may have written it meanwhile)."""
    if not out.is_dir():
        return frozenset()
    owned = read_manifest(out)
    if owned is not None:
        return owned
    entries = [p.name for p in out.iterdir()]
    if entries and not force:
        raise _refusal(out, entries)
    return frozenset()


def _merge_into(staging: Path, out: Path, carry: Sequence[Path], force: bool, command: str, accumulate: bool) -> None:
    """Complete ``staging`` before the swap: carried inputs (with ``accumulate``, every earlier output this run did
    not write again), the manifest, then every entry of ``out`` that is not opmeter's (so the swap loses nothing of
    the user's)."""
    owned = _owned(out, force)
    for src in carry:
        dest = staging / src.name
        if src.parent == out and src.name in owned and src.is_file() and not dest.exists():
            shutil.copy2(src, dest)
    if accumulate:
        for name in sorted(owned):
            if (out / name).exists() and not (staging / name).exists():
                _keep(out / name, staging / name)
    written = sorted(p.name for p in staging.iterdir())
    kept: list[str] = []
    if out.is_dir():
        for entry in sorted(out.iterdir()):
            if entry.name in owned or entry.name == MANIFEST_NAME:
                continue
            dest = staging / entry.name
            if dest.exists() or dest.is_symlink():
                if not force:
                    raise OpmeterError(f"{entry} is not opmeter's and the new output writes a file of that name; "
                                       "move it away (or add --force to replace it)")
                log.warning("replacing %s, which opmeter did not write (--force)", entry)
                continue
            _keep(entry, dest)
            kept.append(entry.name)
    write_manifest(staging, written, command, kept)


def write_manifest(directory: Path, files: Sequence[str], command: str, kept: Sequence[str] = ()) -> Path:
    """Mark ``directory`` as opmeter's: ``files`` are the entries it wrote, ``kept`` those it kept for the user."""
    manifest = {"schema_version": MANIFEST_SCHEMA, "command": command, "files": sorted(files), "kept": sorted(kept)}
    path = directory / MANIFEST_NAME
    return write_json(path, manifest, indent=True)


@contextlib.contextmanager
def staged_output(out: Path, carry: Sequence[Path] = (), force: bool = False, command: str = "report",
                  accumulate: bool = False) -> Iterator[Path]:
    """Yield an empty sibling directory of ``out`` to write into; swap it in when the block succeeds.

    Parameters
    ----------
    out
        The output directory (from :func:`check_output_dir`).
    carry
        Files inside ``out`` that the new output keeps when it does not write them itself (the saved trace or
        profile a report is being rebuilt from).
    force
        Write into a directory opmeter did not mark (``--force``): its files are kept, same-named ones replaced.
    command
        The command whose output this is, recorded in the manifest.
    accumulate
        Keep the files earlier runs wrote that this one does not write again (sweeps and verifications add to a
        directory; a report replaces its own files).
    """
    remove_leftovers(out)
    base = _nearest_existing(out.parent)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.{_STAGING}.{os.getpid()}-", dir=base))
        mask = os.umask(0)
        os.umask(mask)
        # mkdtemp makes it 0700: the output keeps the mode of the one it replaces, or gets the one mkdir would give
        os.chmod(staging, stat.S_IMODE(out.stat().st_mode) if out.is_dir() else 0o777 & ~mask)
    except OSError as exc:
        raise OpmeterError(f"output directory {out} is not writable: {exc.strerror or exc}") from None
    try:
        yield staging
        _merge_into(staging, out, carry, force, command, accumulate)
        if staging.parent != out.parent:  # the parent did not exist: create it, then move the staging beside out
            out.parent.mkdir(parents=True, exist_ok=True)
            moved = out.parent / staging.name
            os.rename(staging, moved)
            staging = moved
        _swap_in(staging, out)
        stale = partial_trace_path(out)
        if stale.is_file():  # left by an earlier failed run of this output: superseded now
            log.info("removing %s, the partial trace of an earlier run", stale)
            stale.unlink()
    except OSError as exc:
        raise OpmeterError(f"cannot write into {out}: {exc.strerror or exc} (what was there before, if anything, "
                           "is unchanged)") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)



