"""Backward ops go to the module whose forward produced them, in ``backward[i]`` stages; hooks never outlive the
tracer's effect."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from opmeter.trace import OpTracer


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU()), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 10))


def _torch_per_module(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with FlopCounterMode(display=False) as fc:
            model(x).sum().backward()
    model.zero_grad()
    counts = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    return {("<root>" if k == "Sequential" else k.removeprefix("Sequential.")): n for k, n in counts.items()
            if k != "Global"}


@pytest.mark.nothing_lost
def test_forward_plus_backward_per_module_equals_torchs_counter(clean: None) -> None:
    model, x = _net(), torch.randn(2, 3, 8, 8)
    expected = _torch_per_module(model, x)
    with OpTracer(model) as trace:
        model(x).sum().backward()
    mods = trace.by_module().set_index("module")
    for path, flops in expected.items():
        assert mods.loc[path, "flops_tensor"] == flops, path
    assert mods.loc["<outside>", "flops_tensor"] == 0  # nothing left unattributed
    split = trace.by_pass().set_index("module")
    assert split.loc["2.0", "backward_over_forward"] == 2.0  # grad of input and of weight
    assert split.loc["0", "backward_over_forward"] == 1.0  # the input needs no grad: weight only
    assert (mods["calls"] == split["calls"]).all() and mods.loc["2.0", "calls"] == 1  # forward calls only


@pytest.mark.nothing_lost
def test_training_steps_give_backward_stages_and_the_optimizer_its_glue(clean: None) -> None:
    model, x = _net(), torch.randn(2, 3, 8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with OpTracer(model) as trace:
        for _ in range(2):
            model(x).sum().backward()
            opt.step()
            opt.zero_grad()
    stages = trace.stages()
    assert [s for s in stages["stage"] if s.startswith("backward[")] == ["backward[0]", "backward[1]"]
    glue = stages.set_index("stage").loc["backward.glue"]
    assert glue["ops"] > 0 and glue["flops_tensor"] == 0  # the SGD update, outside every backward pass
    bw = trace.by_module(stage="backward").set_index("module")
    assert bw.loc["4", "flops_tensor"] == 2 * 2 * (2 * 2 * 128 * 10)  # 2 passes x (grad of input + of weight)


@pytest.mark.nothing_lost
def test_a_backward_after_the_tracer_exits_changes_nothing(clean: None) -> None:
    model, x = _net(), torch.randn(2, 3, 8, 8)
    with OpTracer(model) as trace:
        loss = model(x).sum()
    before = trace.totals()
    loss.backward()  # hooks registered in the block fire now: they must be inert
    assert trace.totals() == before and trace.complete


@pytest.mark.nothing_lost
def test_an_exception_inside_backward_marks_the_trace_and_restores(clean: None) -> None:
    model, x = _net(), torch.randn(2, 3, 8, 8)

    def bad_hook(grad: torch.Tensor) -> None:
        raise RuntimeError("hook failed mid-backward")

    with pytest.raises(RuntimeError, match="mid-backward"), OpTracer(model) as trace:
        out = model[0](x)
        out.register_hook(bad_hook)
        model[1:](out).sum().backward()
    assert not trace.complete and "mid-backward" in (trace.error or "")
    assert trace.totals()["flops_tensor"] > 0


def test_no_hooks_under_no_grad(clean: None) -> None:
    model, x = _net(), torch.randn(2, 3, 8, 8)
    with OpTracer(model) as trace, torch.no_grad():
        model(x)
    assert trace.by_pass()["backward_flops_tensor"].sum() == 0
