"""Atomic writes: the destination is either the old content or the new, never a torn file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from opmeter.cli import main
from opmeter.errors import OpmeterError
from opmeter.io import atomic_write_bytes, atomic_write_text, ensure_output_dir


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


def test_parent_that_is_a_file_is_named_in_the_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OpmeterError, match=r"file exists and is not a directory"):
        atomic_write_text(blocker / "sub" / "x.json", "data")
    with pytest.raises(OpmeterError, match=r"file exists and is not a directory"):
        ensure_output_dir(blocker)


def test_ensure_output_dir_creates_and_leaves_no_probe(tmp_path: Path) -> None:
    out = ensure_output_dir(tmp_path / "a" / "b")
    assert out.is_dir()
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("argv", [["verify", "--fast"], ["sweep", "vision"], ["demo"]])
def test_commands_refuse_an_unusable_out_dir_before_working(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert main([*argv, "--out", str(blocker)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a directory" in err
    assert blocker.read_text() == "keep me"
