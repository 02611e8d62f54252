"""Fault-injection suite: every case is marked with what it proves, and the run ends with the counts.

Markers: ``clean_error`` (bad input or a fault gives one clear line / an :class:`~opmeter.errors.OpmeterError`, no
traceback), ``nothing_lost`` (what was written or recorded before the fault is still there, or the loss is said).
The terminal summary prints ``reliability: N cases, C clean errors, L nothing lost`` over the cases that passed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import global_state

_PASSED: dict[str, set[str]] = {"all": set(), "clean_error": set(), "nothing_lost": set()}
_FUZZ: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "clean_error: the case checks a one-line error (no traceback)")
    config.addinivalue_line("markers", "nothing_lost: the case checks that earlier output or records survive")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.passed and "reliability" in str(item.fspath):
        _PASSED["all"].add(item.nodeid)
        for name in ("clean_error", "nothing_lost"):
            if item.get_closest_marker(name) is not None:
                _PASSED[name].add(item.nodeid)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _PASSED["all"]:
        terminalreporter.write_line(
            f"reliability: {len(_PASSED['all'])} cases, {len(_PASSED['clean_error'])} clean errors, "
            f"{len(_PASSED['nothing_lost'])} nothing lost")
    if "line" in _FUZZ:
        terminalreporter.write_line(_FUZZ["line"])


@pytest.fixture
def fuzz_summary() -> dict[str, str]:
    """Where the artifact fuzzer puts its summary line (printed at the end of the run)."""
    return _FUZZ


@pytest.fixture(scope="session")
def toy_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished shape-only report of the toy preset, 2 new tokens (copy it before changing it)."""
    from helpers import TOY

    from opmeter.cli import main

    out = tmp_path_factory.mktemp("toy-report") / "report"
    assert main(["report", "--preset", TOY, "--device", "meta", "--decode-tokens", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture
def clean() -> Any:
    """The dispatch-mode stack and ``nn.Module.__call__`` are the same after the test as before it."""
    before = global_state()
    yield
    assert global_state() == before
