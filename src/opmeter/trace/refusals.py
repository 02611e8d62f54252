"""What the tracer cannot count op by op: refused with one clear :class:`~opmeter.errors.OpmeterError`, or counted
whole where a formula exists.

* **Nested tensors** (``torch.nested``, jagged or strided): their ops have no dense shapes, so neither the stage
  detection nor the FLOP formulas apply. A nested input to the model, an op on a jagged tensor, or a formula failing
  on a nested argument stops the trace with a message (instead of a ``RecursionError`` or ``AttributeError`` from
  deep inside torch).
* **Higher-order ops** (``torch.cond``, ``while_loop``, ``map``, ``scan``, ``invoke_subgraph``...) run subgraphs
  the dispatch mode does not see op by op: refused, naming the op. ``flex_attention`` is counted as one attention
  op with the attention convention (:mod:`opmeter.conventions`: both matmuls, ``4*B*H*L*S*D`` for ``D == D_v``;
  the scale and softmax as CUDA-core FLOPs per score, not exact since a ``score_mod`` adds unknown work), and its
  eager implementation runs unobserved beneath it, so its parts are not counted twice.
"""

from __future__ import annotations

from typing import Any

import torch

from opmeter import conventions as conv
from opmeter.errors import OpmeterError
from opmeter.trace.formulas import OpInfo

_NESTED = "opmeter cannot count nested (jagged) tensors: their ops have no dense shapes; pad the batch (or " \
          "trace one sequence at a time)"
_allowed_types: set[type] = {torch.Tensor}


def refuse_nested_input(t: torch.Tensor) -> None:
    """Refuse a nested tensor given to the traced model."""
    if t.is_nested:
        raise OpmeterError(f"{_NESTED} (the model's input is a nested tensor)")


def check_subclass_types(types: Any, func: Any) -> None:
    """Refuse an op dispatched on a nested tensor subclass (``types`` of ``__torch_dispatch__``, rarely non-empty)."""
    for t in types:
        if t in _allowed_types:
            continue
        if "nested" in t.__module__ and t.__name__ == "NestedTensor":
            raise OpmeterError(f"{_NESTED} ({func} was called on one)")
        _allowed_types.add(t)


def refuse_nested_args(args: Any, name: str) -> None:
    """Refuse when a formula failed because an argument is a (strided) nested tensor."""
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_nested:
            raise OpmeterError(f"{_NESTED} ({name} was called on one)")


def _tensor_bytes(t: Any) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def flex_attention_cost(args: Any, kwargs: Any, out: Any) -> tuple[int, float, int, int]:
    """``(tensor FLOPs, CUDA-core FLOPs, bytes read, bytes written)`` of one ``flex_attention`` call.

    Query ``[B, Hq, L, D]``, key ``[B, Hkv, S, D]``, value ``[B, Hkv, S, Dv]``; grouped heads broadcast to ``Hq``.
    """
    q, k, v = args[0], args[1], args[2]
    b, hq, length, d = q.shape
    s, dv = k.shape[-2], v.shape[-1]
    scores = b * hq * length * s
    tensor = 2 * scores * d + 2 * scores * dv
    cuda = float(scores * conv.ATTENTION_SOFTMAX_FLOPS)
    read = _tensor_bytes(q) + _tensor_bytes(k) + _tensor_bytes(v)
    written = sum(_tensor_bytes(o) for o in out) if isinstance(out, (tuple, list)) else _tensor_bytes(out)
    return int(tensor), cuda, int(read), int(written)


_COUNTED = {"flex_attention": (flex_attention_cost, "attention")}


def _refusing(name: str) -> Any:
    def handler(mode: Any, *args: Any, **kwargs: Any) -> Any:
        raise OpmeterError(f"opmeter cannot count the higher-order op {name!r}: it runs a subgraph the tracer does "
                           f"not see op by op; trace the model with it written as plain Python (counted: "
                           f"{', '.join(sorted(_COUNTED))})")

    return handler


def _counting(hop: Any, name: str) -> Any:
    cost, category = _COUNTED[name]
    info = OpInfo(name=f"higher_order.{name}", category=category, exact=False, is_view=False, decompose=False,
                  cost=cost)

    def handler(mode: Any, *args: Any, **kwargs: Any) -> Any:
        out = hop(*args, **kwargs)  # the mode is off the stack here: the eager implementation runs unobserved
        mode.count_whole(hop, info, args, kwargs, out)
        return out

    return handler


_registered: set[tuple[int, type]] = set()


def register_higher_order(mode_types: tuple[type, ...]) -> None:
    """Give every higher-order op known now a handler for ``mode_types``: count it (formula) or refuse it.

    Called when a tracer starts (higher-order ops defined later get theirs at the next tracer).
    """
    from torch._ops import _higher_order_ops

    for name, hop in list(_higher_order_ops.items()):
        for mode_type in mode_types:
            if (id(hop), mode_type) in _registered or mode_type in hop.python_key_table:
                continue
            handler = _counting(hop, name) if name in _COUNTED else _refusing(name)
            # under torch.compile (eager flex_attention compiles its call) the handler runs as plain Python
            hop.py_impl(mode_type)(torch._disable_dynamo(handler, recursive=True))
            _registered.add((id(hop), mode_type))


_FLEX_MODULE = "torch.nn.attention.flex_attention"
_FLEX_SWITCH = "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG"


def flex_eager_on() -> Any:
    """Make eager ``flex_attention`` call its op directly while a tracer counts; returns what :func:`flex_eager_off`
    restores.

    Outside ``torch.compile``, ``flex_attention`` wraps its op in a ``torch.compile(fullgraph=True)`` call, which
    refuses to run under a dispatch mode; torch's switch for calling the op directly gives the same unfused
    computation, which the tracer then counts as one attention op.
    """
    import sys

    module = sys.modules.get(_FLEX_MODULE)
    if module is None or not hasattr(module, _FLEX_SWITCH):
        return None
    previous = getattr(module, _FLEX_SWITCH)
    setattr(module, _FLEX_SWITCH, True)
    return (module, previous)


def flex_eager_off(saved: Any) -> None:
    """Restore what :func:`flex_eager_on` changed."""
    if saved is not None:
        module, previous = saved
        setattr(module, _FLEX_SWITCH, previous)
