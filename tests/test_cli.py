"""The console script's basic contract: --version, --help, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from opmeter import __version__
from opmeter.cli import main


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"opmeter {__version__}"


def test_help_lists_subcommands_via_console_entry() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "opmeter.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "usage: opmeter" in out


def test_no_subcommand_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: opmeter" in capsys.readouterr().out
