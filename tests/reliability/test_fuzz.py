"""The artifact fuzzer (``fuzz_artifacts.py``) in a subprocess bounded in memory and time: every mutation of a
saved trace, joined file, report summary, device profile or sidecar is accepted whole or refused in one line with
nothing written; no traceback, no file lost."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
MEMORY_LIMIT = 8 << 30
"""Address space of the fuzzing process: a mutation that drives an allocation dies here, not on the machine."""


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (900, 900))


@pytest.mark.clean_error
@pytest.mark.nothing_lost
def test_every_mutated_artifact_is_accepted_or_refused_in_one_line(tmp_path: Path,
                                                                   fuzz_summary: dict[str, str]) -> None:
    env = {**os.environ, "OPMETER_MAX_READ_MB": "64"}  # the gzip bomb (96 MiB of spaces) must hit the cap
    proc = subprocess.run([sys.executable, str(HERE / "fuzz_artifacts.py"), str(tmp_path), str(HERE.parents[1])],
                          capture_output=True, text=True, timeout=1200, check=False, env=env,
                          preexec_fn=_limits)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    fuzz_summary["line"] = (
        f"fuzz: {result['cases']} cases, {result['clean']} clean errors, {result['accepted']} accepted, "
        f"{result['traceback']} tracebacks, {result['lost']} files lost, {result['wrote']} written on failure, "
        f"{result['noisy']} noisy, {result['hang']} hangs")
    assert result["cases"] >= 150 and result["clean"] >= 100
    assert result["failures"] == []
