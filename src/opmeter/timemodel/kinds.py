"""Op kinds of the time model: which host cost, which achieved rate and which bandwidth a traced op is charged.

An op (``aten.addmm.default``) with its category (:mod:`opmeter.trace.categories`) maps to one :class:`OpKind`:

* ``host``: the host-cost kind (what one eager call costs on the host: Python binding, dispatcher, allocation,
  launch). Views and other metadata-only ops (no bytes, no FLOPs) are ``view``, the cheapest;
* ``compute``: the compute kind whose achieved FLOP/s applies (``mm``, ``addmm``, ``bmm``, ``sdpa``, ``conv``; every
  other op with FLOPs is ``vector``: CUDA-core work such as GELU or softmax);
* ``memory``: ``read_write`` (bytes read at the read bandwidth, bytes written into a freshly allocated output: at the
  fill bandwidth plus the first touch of new memory, page faults, when the profile measured them apart; else at the
  write bandwidth, which includes both), ``in_place`` (an in-place or ``out=`` op writes into memory that exists:
  no first touch) or ``arg_reduction`` (argmax, top-k, sort: kernels that walk one row serially, their own measured
  bandwidth).
"""

from __future__ import annotations

from typing import Final

import attrs

from opmeter.trace import categories as cat

HOST_KINDS: Final = ("view", "mm", "addmm", "bmm", "sdpa", "conv", "elementwise", "activation", "normalization",
                     "reduction", "copy", "creation", "index", "routing", "scalar", "other")
"""Host-cost kinds the calibration measures (one representative op each, tiny tensors)."""

COMPUTE_KINDS: Final = ("mm", "addmm", "bmm", "linear", "sdpa", "conv", "vector")
MEMORY_KINDS: Final = ("read", "write", "arg_reduction")
"""Bandwidth curves of a profile; ``read_write`` ops use ``read`` and ``write``."""
RW: Final = "read_write"
IN_PLACE: Final = "in_place"
FILL: Final = "fill"
"""Bandwidth curve of writing into an existing buffer (CPU profiles)."""
FIRST_TOUCH: Final = "first_touch"
"""Curve of the extra cost of writing a freshly allocated output over writing an existing buffer: page faults and
the return of large buffers to the operating system (CPU profiles; bytes per second of that extra cost)."""
RELEASE: Final = "release"
"""Bandwidth curve of releasing a written buffer (CPU profiles only; see :mod:`opmeter.timemodel.model`)."""

_GEMM_KIND: Final = {"mm": "mm", "addmm": "addmm", "bmm": "bmm", "baddbmm": "bmm", "matmul": "mm", "linear": "linear",
                     "mv": "mm", "addmv": "addmm", "dot": "mm", "vdot": "mm", "_addmm_activation": "addmm"}
_CREATION: Final = frozenset({"empty", "empty_like", "empty_strided", "empty_permuted", "new_empty",
                              "new_empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like",
                              "new_zeros", "new_ones", "new_full", "arange", "linspace", "scalar_tensor", "eye",
                              "lift_fresh", "lift_fresh_copy", "tensor"})
_ARG_REDUCTIONS: Final = frozenset({"argmax", "argmin", "topk", "sort", "argsort", "max", "min", "kthvalue", "mode",
                                    "median"})
_SCALAR: Final = frozenset({"_local_scalar_dense", "item", "_assert_async", "_assert_scalar", "is_nonzero", "equal",
                            "allclose"})


@attrs.frozen
class OpKind:
    """Host, compute and memory kind of one op (see the module docstring)."""

    host: str
    compute: str
    memory: str


def packet(op: str) -> str:
    """Packet name of a traced op: ``aten.addmm.default`` -> ``addmm``; ``mylib::fused.default`` -> ``mylib::fused``."""
    if op.startswith("aten."):
        return op.split(".")[1]
    return op.rsplit(".", 1)[0] if op.count(".") else op


def writes_in_place(op: str) -> bool:
    """An in-place (``add_``) or ``out=`` overload: its output is memory that already exists."""
    parts = op.split(".")
    overload = parts[2] if op.startswith("aten.") and len(parts) > 2 else ""
    name = packet(op)
    in_place_name = name.endswith("_") and not name.endswith("__")  # add_, not __and__
    return in_place_name or overload == "out" or overload.endswith("_out")


def classify(op: str, category: str, flops: float = 1.0, nbytes: float = 1.0) -> OpKind:
    """The :class:`OpKind` of ``op`` (traced name) in ``category``; ``flops`` / ``nbytes`` tell views apart."""
    kind = _classify(op, category, flops, nbytes)
    return attrs.evolve(kind, memory=IN_PLACE) if kind.memory == RW and writes_in_place(op) else kind


def _classify(op: str, category: str, flops: float, nbytes: float) -> OpKind:
    name = packet(op)
    base = name.rstrip("_").lstrip("_") if name.endswith("_") else name
    if category == cat.GEMM:
        kind = _GEMM_KIND.get(base, _GEMM_KIND.get(name, "mm"))
        return OpKind(kind if kind != "linear" else "addmm", kind, RW)
    if category == cat.ATTENTION:
        return OpKind("sdpa", "sdpa", RW)
    if category == cat.CONVOLUTION:
        return OpKind("conv", "conv", RW)
    if name in _SCALAR:
        return OpKind("scalar", "vector", RW)
    if flops == 0 and nbytes == 0:
        return OpKind("creation" if base in _CREATION else "view", "vector", RW)
    if base in _CREATION or name in _CREATION:
        return OpKind("creation", "vector", RW)
    if base in _ARG_REDUCTIONS:
        return OpKind("routing" if category == cat.MOE_ROUTING else "reduction", "vector", "arg_reduction")
    return OpKind(_HOST_BY_CATEGORY.get(category, "other"), "vector", RW)


_HOST_BY_CATEGORY: Final[dict[str, str]] = {
    cat.ELEMENTWISE: "elementwise", cat.ACTIVATION: "activation", cat.NORMALIZATION: "normalization",
    cat.REDUCTION: "reduction", cat.DATA_MOVEMENT: "copy", cat.EMBEDDING: "index", cat.MOE_ROUTING: "routing",
    cat.RNG_SAMPLING: "elementwise", cat.OTHER: "other",
}

__all__ = ["COMPUTE_KINDS", "FILL", "FIRST_TOUCH", "HOST_KINDS", "IN_PLACE", "MEMORY_KINDS", "RELEASE", "RW", "OpKind",
           "classify", "packet", "writes_in_place"]
