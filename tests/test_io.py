"""Atomic writes: the destination is either the old content or the new, never a torn file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from opmeter.errors import OpmeterError
from opmeter.io import atomic_write_bytes, atomic_write_text


def test_atomic_write_creates_parents_and_replaces(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "b" / "x.json"
    atomic_write_text(dest, "one")
    atomic_write_bytes(dest, b"two")
    assert dest.read_bytes() == b"two"
    assert [p.name for p in dest.parent.iterdir()] == ["x.json"]


def test_atomic_write_gives_the_usual_file_mode(tmp_path: Path) -> None:
    dest = atomic_write_text(tmp_path / "x.md", "report")
    mask = os.umask(0)
    os.umask(mask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_write_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OpmeterError, match="cannot write"):
        atomic_write_text(blocker / "x.json", "data")
    assert blocker.read_text() == "not a directory"
