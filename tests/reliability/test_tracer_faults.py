"""The tracer under faults: exceptions and signals at every depth, foreign and nested modes, replaced
``nn.Module.__call__``, threads. It always restores global state and never loses what it recorded in silence."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest
import torch
from helpers import Small
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack, _pop_mode
from torch.utils.flop_counter import FlopCounterMode

from opmeter.trace import OpTracer, callpatch


class Deep(nn.Module):
    """Four levels: root -> outer -> inner -> leaf (a Linear), so a fault can be injected at each depth."""

    def __init__(self) -> None:
        super().__init__()
        self.outer = nn.Sequential(nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(x).sum(-1)


_DEPTHS = ["", "outer", "outer.0", "outer.0.0", "outer.1"]


@pytest.mark.nothing_lost
@pytest.mark.parametrize("fault", [RuntimeError("boom"), KeyboardInterrupt(), MemoryError()])
@pytest.mark.parametrize("where", _DEPTHS)
def test_a_fault_at_any_depth_keeps_the_records_and_restores_globals(clean: None, where: str,
                                                                     fault: BaseException) -> None:
    model = Deep()
    target = model.get_submodule(where)

    seen = {"n": 0}

    def hook(mod: nn.Module, args: Any) -> None:
        seen["n"] += 1
        if seen["n"] == 2:  # the first call completes, the second fails at ``where``
            raise fault

    x = torch.randn(2, 8)
    with OpTracer(model) as trace:
        model(x)
    done = trace.totals()["ops"]
    target.register_forward_pre_hook(hook)
    with pytest.raises(type(fault)), OpTracer(model) as trace:
        model(x)
        model(x)
    assert not trace.complete and type(fault).__name__ in (trace.error or "")
    assert trace.totals()["ops"] >= done


@pytest.mark.nothing_lost
def test_flop_counter_exiting_first_marks_the_trace_incomplete_and_keeps_its_own_mode(clean: None) -> None:
    model = Small()
    fc = FlopCounterMode(display=False)
    fc.__enter__()
    tracer = OpTracer(model)
    trace = tracer.__enter__()
    model(torch.randn(2, 8))
    fc.__exit__(None, None, None)  # torch pops the top mode: the tracer's
    left = list(_get_current_dispatch_mode_stack())
    model(torch.randn(2, 8))
    tracer.__exit__(None, None, None)
    assert list(_get_current_dispatch_mode_stack()) == left  # other modes' stack as it was
    while _get_current_dispatch_mode_stack():  # the test's own clean-up of FlopCounterMode's leftover
        _pop_mode()
    assert not trace.complete and "taken off the stack" in (trace.error or "")
    assert trace.totals()["flops_tensor"] > 0  # the ops counted before are kept


class Foreign(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.seen += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.nothing_lost
@pytest.mark.parametrize("order", ["tracer_inside", "foreign_inside", "foreign_exits_last_inside"])
def test_foreign_modes_nested_either_way_keep_both_counts(clean: None, order: str) -> None:
    model = Small()
    x = torch.randn(2, 8)
    foreign = Foreign()
    if order == "tracer_inside":
        with foreign, OpTracer(model) as trace:
            model(x)
    elif order == "foreign_inside":
        with OpTracer(model) as trace, foreign:
            model(x)
    else:  # entered inside the tracer, left open past the tracer's exit
        tracer = OpTracer(model)
        trace = tracer.__enter__()
        foreign.__enter__()
        model(x)
        tracer.__exit__(None, None, None)
        assert _get_current_dispatch_mode_stack()[-1] is foreign  # the other mode is where its owner left it
        foreign.__exit__(None, None, None)
    assert trace.complete and trace.totals()["ops"] > 0 and foreign.seen > 0


@pytest.mark.nothing_lost
@pytest.mark.parametrize("first_out", ["outer", "inner"])
def test_nested_tracers_exit_in_either_order(clean: None, first_out: str) -> None:
    model = Small()
    outer, inner = OpTracer(model), OpTracer(model)
    a = outer.__enter__()
    b = inner.__enter__()
    model(torch.randn(2, 8))
    for t in ((outer, inner) if first_out == "outer" else (inner, outer)):
        t.__exit__(None, None, None)
    assert a.complete and b.complete
    assert a.totals()["flops_tensor"] == b.totals()["flops_tensor"] > 0


def _other_tool_wrapper(calls_through: bool) -> Any:
    below = nn.Module.__call__

    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return below(self, *args, **kwargs)

    return wrapper if calls_through else nn.Module.__call__


@pytest.mark.nothing_lost
def test_a_wrapper_left_stranded_by_another_tool_removes_itself(clean: None) -> None:
    model = Small()
    torch_call = nn.Module.__call__
    with OpTracer(model) as trace:
        saved = nn.Module.__call__  # the other tool saves ours and wraps it
        nn.Module.__call__ = _other_tool_wrapper(True)  # type: ignore[method-assign]
        model(torch.randn(2, 8))
    assert trace.complete and trace.by_module().set_index("module").loc["a", "calls"] == 1
    nn.Module.__call__ = saved  # type: ignore[method-assign]  # the tool restores what it saw: ours, stranded
    assert callpatch.stranded()
    model(torch.randn(2, 8))  # the next module call removes it
    assert not callpatch.stranded() and nn.Module.__call__ is torch_call


@pytest.mark.nothing_lost
def test_a_tool_that_drops_our_wrapper_mid_trace_is_reported(clean: None) -> None:
    model = Small()
    x = torch.randn(2, 8)
    with OpTracer(model) as trace:
        model(x)
        restored = callpatch._original  # another tool "restores" torch's own __call__ while we are active
        nn.Module.__call__ = restored  # type: ignore[method-assign]
        model(x)
    assert not trace.complete and "replaced during the trace" in (trace.error or "")


@pytest.mark.nothing_lost
def test_tracers_in_two_threads_count_their_own_calls(clean: None) -> None:
    results: dict[str, Any] = {}

    def work(name: str, batch: int) -> None:
        model = Small()
        with OpTracer(model) as trace:
            for _ in range(20):
                model(torch.randn(batch, 8))
        results[name] = trace

    threads = [threading.Thread(target=work, args=(f"t{i}", i + 1)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, batch in (("t0", 1), ("t1", 2)):
        t = results[name]
        assert t.complete
        assert t.by_module().set_index("module").loc["a", "calls"] == 20
        assert t.totals()["flops_tensor"] == 20 * batch * 2 * (8 * 8 + 8 * 4)


@pytest.mark.clean_error
@pytest.mark.nothing_lost
def test_an_exit_from_another_thread_is_refused_and_leaves_both_threads_clean(clean: None) -> None:
    from opmeter.errors import OpmeterError

    model = Small()
    tracer = OpTracer(model)
    tracer.__enter__()
    model(torch.randn(1, 8))
    seen: dict[str, Any] = {}

    def exit_elsewhere() -> None:
        before = tuple(_get_current_dispatch_mode_stack())
        try:
            tracer.__exit__(None, None, None)
        except OpmeterError as exc:
            seen["error"] = str(exc)
        seen["stack_unchanged"] = tuple(_get_current_dispatch_mode_stack()) == before

    worker = threading.Thread(target=exit_elsewhere)
    worker.start()
    worker.join()
    assert "thread that entered it" in seen["error"] and "\n" not in seen["error"] and seen["stack_unchanged"]
    model(torch.randn(1, 8))  # still tracing on the entering thread
    tracer.__exit__(None, None, None)
    trace = tracer.trace
    assert trace is not None and trace.complete
    assert trace.by_module().set_index("module").loc["a", "calls"] == 2


_SIGINT_IN_TRACE = """
import os, signal, torch
from torch import nn
from opmeter.trace import OpTracer, callpatch
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
calls = [0]
def hook(mod, args):
    calls[0] += 1
    if calls[0] == {at}:
        os.kill(os.getpid(), signal.SIGINT)
model[{depth}].register_forward_pre_hook(hook)
torch_call = nn.Module.__call__
try:
    with OpTracer(model) as trace:
        for _ in range(1000):
            model(torch.randn(2, 8))
except KeyboardInterrupt:
    pass
assert not trace.complete and "KeyboardInterrupt" in trace.error
assert trace.by_module().set_index("module").loc["0", "calls"] >= {at} - 1
assert not _get_current_dispatch_mode_stack() and nn.Module.__call__ is torch_call
print("ok", trace.totals()["ops"])
"""


@pytest.mark.nothing_lost
@pytest.mark.parametrize(("at", "depth"), [(1, 0), (7, 1), (50, 2)])
def test_a_real_sigint_during_the_trace(at: int, depth: int) -> None:
    code = textwrap.dedent(_SIGINT_IN_TRACE.format(at=at, depth=depth))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr
