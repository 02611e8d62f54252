"""Helpers of the fault-injection suite (imported by name: pytest puts this directory on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules import module as nn_module
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from opmeter.trace import callpatch

TOY = "deepseek-ocr-toy"


def global_state() -> tuple[object, ...]:
    """Everything a tracer may install globally: dispatch modes, ``nn.Module.__call__``, global module hooks."""
    return (
        tuple(_get_current_dispatch_mode_stack()),
        nn.Module.__call__,
        callpatch.is_installed(),
        len(nn_module._global_forward_pre_hooks),
        len(nn_module._global_forward_hooks),
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> content)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def one_line(err: str) -> bool:
    """A one-line user error: a single line starting with ``opmeter``, no traceback."""
    return err.count("\n") == 1 and err.startswith("opmeter") and "Traceback" not in err


def run_cli(*argv: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m opmeter.cli ARGV`` in a subprocess (with ``env`` added to the environment)."""
    return subprocess.run([sys.executable, "-m", "opmeter.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, check=False)


class Small(nn.Module):
    """Two linear layers: a cheap model for tracer faults."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))
