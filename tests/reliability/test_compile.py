"""torch.compile: ops are counted (dynamo runs eager under the dispatch mode) and attributed to the user's module
tree, whether the compiled model is traced or a compiled wrapper of the traced model is called."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from helpers import Small, global_state
from torch import nn

from opmeter.trace import OpTracer

EXPECTED = {"<root>": 2 * 2 * (8 * 8 + 8 * 4), "a": 2 * 2 * 8 * 8, "b": 2 * 2 * 8 * 4}


@pytest.fixture(autouse=True)
def quiet_and_clean() -> Any:
    before = global_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    assert global_state() == before


def _check(trace: Any, root_class: str = "Small") -> None:
    mods = trace.by_module().set_index("module")
    assert trace.complete
    assert not any("_orig_mod" in m for m in mods.index)
    for path, flops in EXPECTED.items():
        assert mods.loc[path, "calls"] == 1 and mods.loc[path, "flops_tensor"] == flops, path
    assert mods.loc["<root>", "class_name"] == root_class
    stages = trace.stages()
    assert list(stages.loc[stages["ops"] > 0, "stage"]) == ["forward[0]"]  # the root call opened its stage


@pytest.mark.nothing_lost
def test_tracing_a_compiled_model_names_the_users_tree() -> None:
    model = Small()
    compiled = torch.compile(model)
    x = torch.randn(2, 8)
    with OpTracer(compiled) as trace:
        compiled(x)
    _check(trace)
    assert trace.metadata["model_class"] == "Small"


@pytest.mark.nothing_lost
def test_a_warmed_compiled_wrapper_of_the_traced_model_opens_stages_and_attributes() -> None:
    model = Small()
    compiled = torch.compile(model)
    x = torch.randn(2, 8)
    compiled(x)  # warmed outside the tracer
    with OpTracer(model) as trace:
        compiled(x)
    _check(trace)


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Small()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


@pytest.mark.nothing_lost
def test_a_compiled_submodule_keeps_its_path() -> None:
    model = Outer()
    model.inner = torch.compile(model.inner)  # type: ignore[assignment]
    with OpTracer(model) as trace:
        model(torch.randn(2, 8))
    mods = trace.by_module().set_index("module")
    assert not any("_orig_mod" in m for m in mods.index)
    assert mods.loc["inner", "class_name"] == "Small" and mods.loc["inner", "calls"] == 1
    assert mods.loc["inner.a", "flops_tensor"] == EXPECTED["a"]
