"""Helpers for the tracer tests (imported by name: pytest puts this directory on sys.path)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as nn_module
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
from torch.utils.flop_counter import FlopCounterMode

from opmeter.trace import callpatch


def global_state() -> tuple[Any, ...]:
    """Everything a tracer may install globally: dispatch modes, ``nn.Module.__call__``, global module hooks."""
    return (
        len(_get_current_dispatch_mode_stack()),
        nn.Module.__call__,
        callpatch.is_installed(),
        len(nn_module._global_forward_pre_hooks),
        len(nn_module._global_forward_hooks),
        len(nn_module._global_forward_hooks_always_called),
    )



def torch_total(fn: Any) -> int:
    """torch's own FLOP count of everything ``fn()`` runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with FlopCounterMode(display=False) as fc:
            fn()
    return int(fc.get_total_flops())


def torch_flops_per_module(model: nn.Module, fn: Any) -> dict[str, int]:
    """Tensor-core FLOPs per module path (our naming) measured by ``torch.utils.flop_counter``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with FlopCounterMode(display=False) as fc:
            fn()
    root = type(model).__name__
    out: dict[str, int] = {}
    for name, counts in fc.get_flop_counts().items():
        if name == "Global":
            out["<global>"] = sum(counts.values())
        elif name == root:
            out["<root>"] = sum(counts.values())
        elif name.startswith(root + "."):
            out[name[len(root) + 1:]] = sum(counts.values())
    return out


class MLP(nn.Module):
    def __init__(self, d: int = 16, h: int = 32) -> None:
        super().__init__()
        self.up = nn.Linear(d, h)
        self.act = nn.GELU()
        self.down = nn.Linear(h, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, groups=4)
        self.c3 = nn.Conv1d(8, 4, 2)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.c1(x)))
        y = self.c2(y)
        z = self.c3(y.flatten(2))
        return self.up(y).sum() + z.sum()


class ManualAttention(nn.Module):
    """Attention with explicit matmuls (bmm / softmax), which torch's counter sees too."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class Nested(nn.Module):
    """Nested, repeated and shared modules: ``shared`` is registered twice (``shared`` first, then ``a.shared``)."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(8, 8)
        self.a = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.a.add_module("shared", self.shared)
        self.b = MLP(8, 4)
        self.unused = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)  # a.0, a.1, then the shared module (reported as ``shared``, its first name)
        for _ in range(3):
            x = self.b(x)  # b called 3 times from the root
        return self.shared(x)  # the same shared module, now called from the root

