"""Backward attribution: the ops of ``loss.backward()`` go to the module whose forward produced them.

A module call made with grad enabled (and outputs that require grad) gets two autograd hooks, as torch's own module
tracker does: one on its outputs, which fires when their gradients are ready (the module's backward begins), and one
on its inputs, which fires when theirs are (it ends). Between the two, backward ops are attributed to the call path
(*context*) that call had in the forward, so inclusive numbers roll up to the same parents as the forward's. When
several modules' backwards are open at once (a module and its last child share an output tensor), the deepest call
path takes the ops.

The first hook of a backward pass opens a ``backward[i]`` stage (group ``backward``); the end of the pass (an
autograd engine callback) switches to the ``backward.glue`` stage (``optimizer.step()``, ``zero_grad()``...). Under
``no_grad`` / ``inference_mode`` nothing is registered. A module's ``calls`` count forward calls only;
:func:`by_pass` puts the forward and backward numbers of each module side by side.
"""

from __future__ import annotations

import functools
from typing import Any, Final

import torch
from torch.utils._pytree import tree_leaves

BACKWARD: Final = "backward"


def _needing_grad(obj: Any) -> list[torch.Tensor]:
    try:
        leaves = tree_leaves(obj)
    except Exception:  # an output type pytree cannot walk: no hooks for it
        return []
    return [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]


class BackwardAttribution:
    """Autograd hooks of one tracer (see the module docstring); ``recorder`` is its live
    :class:`~opmeter.trace.recorder.Recorder`."""

    def __init__(self, recorder: Any) -> None:
        self.rec = recorder
        self.open: list[int] = []
        self.depth: dict[int, int] = {0: 0}
        self.passes = 0
        self.in_pass = False

    def after_call(self, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """A module call returned with grad enabled; its context is still on top of the recorder's stack."""
        stack = self.rec.stack
        ctx = stack[-1]
        if len(stack) < 2 or stack[-2] == ctx:  # a module outside the tree: its parent's hooks cover it
            return
        outputs = _needing_grad(out)
        if not outputs:
            return
        from torch.autograd.graph import register_multi_grad_hook

        register_multi_grad_hook(outputs, functools.partial(self._begin, ctx), mode="any")
        inputs = _needing_grad((args, kwargs))
        if inputs:
            register_multi_grad_hook(inputs, functools.partial(self._end, ctx))

    def _depth(self, ctx: int) -> int:
        d = self.depth.get(ctx)
        if d is None:
            d = self.depth[ctx] = self._depth(self.rec.contexts[ctx][0]) + 1
        return d

    def _retarget(self) -> None:
        rec = self.rec
        ctx = max(reversed(self.open), key=self._depth) if self.open else rec.stack[-1]
        rec.cell = rec._cell(ctx)

    def _begin(self, ctx: int, *grads: Any) -> None:
        rec = self.rec
        if rec.closed:
            return
        if not self.in_pass:
            self._start_pass()
        self.open.append(ctx)  # not a call: ``calls`` stays the number of forward calls
        self._retarget()

    def _end(self, ctx: int, *grads: Any) -> None:
        if self.rec.closed or ctx not in self.open:
            return
        del self.open[len(self.open) - 1 - self.open[::-1].index(ctx)]
        self._retarget()

    def _start_pass(self) -> None:
        from opmeter.trace import stages as st

        rec = self.rec
        self.in_pass = True
        rec._switch(rec._new_stage(f"{BACKWARD}[{self.passes}]", BACKWARD, st.AUTO))
        self.passes += 1
        torch.autograd.Variable._execution_engine.queue_callback(self._finish_pass)

    def _finish_pass(self) -> None:
        from opmeter.trace import stages as st

        rec = self.rec
        self.in_pass = False
        self.open.clear()
        if rec.closed:
            return
        name = st.glue_group(BACKWARD)
        idx = rec.glue.get(name)
        if idx is None:
            idx = rec.glue[name] = rec._new_stage(name, name, st.GLUE)
        rec._switch(idx)


def by_pass(trace: Any) -> Any:
    """Per module: forward and backward tensor-core FLOPs, CUDA-core FLOPs and bytes (inclusive), side by side.

    *Backward* is the ``backward`` stage group; *forward* every other group except ``backward.glue`` (the optimizer
    step and other work after a backward pass). Columns: ``module, class_name, calls``, then ``forward_*`` and
    ``backward_*`` for ``flops_tensor, flops_cuda, bytes``, and ``backward_over_forward`` (tensor-core FLOPs).
    """
    import pandas as pd

    from opmeter.trace.stages import glue_group

    groups = list(trace.groups)
    forward = [g for g in groups if g not in (BACKWARD, glue_group(BACKWARD))]
    cols = ["module", "class_name", "calls"]
    fw = trace.by_module(stage=forward)
    out = fw[cols].copy()
    bw = trace.by_module(stage=BACKWARD if BACKWARD in groups else []).set_index("module")
    for name, frame in (("forward", fw.set_index("module")), ("backward", bw)):
        for q in ("flops_tensor", "flops_cuda"):
            out[f"{name}_{q}"] = out["module"].map(frame[q]).fillna(0).to_numpy()
        out[f"{name}_bytes"] = out["module"].map(frame["bytes_read"] + frame["bytes_written"]).fillna(0).to_numpy()
    ratio = out["backward_flops_tensor"] / out["forward_flops_tensor"].where(out["forward_flops_tensor"] > 0)
    out["backward_over_forward"] = pd.to_numeric(ratio, errors="coerce")
    return out
