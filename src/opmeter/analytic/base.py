"""The analytic layer contract: cost of one call of one module, from shapes alone.

A :class:`Layer` describes **one call** of an ``nn.Module`` at given shapes. It predicts what the tracer measures
for that call:

* ``tensor_core_flops()`` — GEMM / batched GEMM / convolution / attention-matmul FLOPs (``2*M*N*K``);
* ``cuda_core_flops()`` — elementwise, normalisation, softmax, activation and reduction FLOPs, with the per-element
  constants of :mod:`opmeter.conventions`;
* ``io_bytes()`` = ``bytes_read()`` + ``bytes_written()`` — per aten op, the sizes of the tensors it reads and
  writes (views move nothing), summed over the ops;
* ``weight_bytes()`` — parameters and buffers of the module (counted once per module, however often it runs);
* ``activation_bytes()`` — estimated peak of live activation memory during the call (inference, no autograd);
* ``kv_cache_bytes()`` — KV cache held after the call;
* ``arithmetic_intensity()`` — FLOPs per **bit** of I/O (the unit of :class:`~opmeter.analytic.StageCost`).

Every layer is built from :class:`Op` records (its own ops) and named children. Children carry the attribute
path of the sub-module they model, so the layer tree mirrors the module tree and :func:`layer_frame` yields a
table keyed like the tracer's ``by_module()``. A child name may repeat: that is a module called more than once in
one call of its parent. Nothing here imports the tracer.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import pandas as pd

from opmeter.units import flops_per_bit

DTYPE_BYTES: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8": 1,
    "int64": 8,
    "int32": 4,
    "bool": 1,
}
"""Element sizes by dtype name."""

ROOT = "<root>"
"""Path of the root module, as the tracer names it."""


def dtype_bytes(dtype: str | int) -> int:
    """Element size in bytes of a dtype name (``"bfloat16"``) or pass an int through."""
    if isinstance(dtype, int):
        return dtype
    name = dtype.removeprefix("torch.")
    try:
        return DTYPE_BYTES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}") from None


@attrs.frozen
class Op:
    """One aten-level operation as the analytic model predicts it.

    Attributes
    ----------
    name
        aten-style name (``"mm"``, ``"addmm"``, ``"bmm"``, ``"convolution"``, ``"mul"``, ``"_softmax"``, ...).
    tensor_flops
        Tensor-core FLOPs (GEMM-like work only).
    cuda_flops
        CUDA-core FLOPs (elementwise / reduction estimate).
    bytes_read
        Bytes of all tensor inputs (weights included).
    bytes_written
        Bytes of all outputs.
    weights_read
        The part of ``bytes_read`` that is parameters or buffers (not activations).
    workspace
        Transient bytes beyond inputs and outputs (for the activation-peak estimate only).
    kv_bytes
        The part of ``bytes_read + bytes_written`` that is KV cache (resident state, not activations).
    """

    name: str
    tensor_flops: int = 0
    cuda_flops: float = 0.0
    bytes_read: int = 0
    bytes_written: int = 0
    weights_read: int = 0
    workspace: int = 0
    kv_bytes: int = 0

    @property
    def activation_peak(self) -> int:
        """Live activation bytes while this op runs: activation inputs, outputs and workspace (no weights, no KV)."""
        return self.bytes_read - self.weights_read + self.bytes_written + self.workspace - self.kv_bytes


class Layer:
    """Base of every analytic layer: one call of one module.

    Subclasses override :meth:`ops` (their own ops, outside children), :meth:`children`, and the memory hooks
    :meth:`own_weight_bytes`, :meth:`own_kv_cache_bytes`, :meth:`held_bytes` as needed. Everything else is derived.
    """

    class_name: str = "Layer"
    """Vendor module class this layer models."""

    # ---- to override -------------------------------------------------------------------------------------------
    def ops(self) -> Sequence[Op]:
        """Ops executed by this module itself (not by its children), in execution order."""
        return ()

    def children(self) -> Sequence[tuple[str, Layer]]:
        """Sub-module calls as ``(attribute path relative to this module, layer)``, in execution order."""
        return ()

    def own_weight_bytes(self) -> int:
        """Parameters and buffers owned directly by this module (not by children)."""
        return 0

    def own_kv_cache_bytes(self) -> int:
        """KV cache owned by this module after the call."""
        return 0

    def held_bytes(self) -> int:
        """Activations this module keeps alive while its children run (e.g. a residual input)."""
        return 0

    # ---- derived ---------------------------------------------------------------------------------------------------
    def all_ops(self) -> Iterator[tuple[str, Op]]:
        """Every op of the call, own and children's, with the relative module path that runs it."""
        for op in self.ops():
            yield "", op
        for name, child in self.children():
            for path, op in child.all_ops():
                yield (f"{name}.{path}" if path else name), op

    def totals(self) -> tuple[int, float, int, int]:
        """``(tensor-core FLOPs, CUDA-core FLOPs, bytes read, bytes written)`` of the call, own and children's."""
        return _totals(self)

    def tensor_core_flops(self) -> int:
        """Tensor-core FLOPs of the call (GEMM, batched GEMM, convolution, attention matmuls)."""
        return self.totals()[0]

    def cuda_core_flops(self) -> float:
        """CUDA-core FLOPs of the call (elementwise, normalisation, softmax, activation, reductions)."""
        return self.totals()[1]

    def flops(self) -> float:
        """All FLOPs: tensor-core plus CUDA-core."""
        return self.tensor_core_flops() + self.cuda_core_flops()

    def bytes_read(self) -> int:
        """Bytes read by all ops of the call."""
        return self.totals()[2]

    def bytes_written(self) -> int:
        """Bytes written by all ops of the call."""
        return self.totals()[3]

    def io_bytes(self) -> int:
        """Bytes read plus bytes written."""
        return self.bytes_read() + self.bytes_written()

    def weight_bytes(self) -> int:
        """Parameter footprint of the module: own plus each distinct child module once."""
        seen: dict[str, int] = {}
        for name, child in self.children():
            seen.setdefault(name, child.weight_bytes())
        return self.own_weight_bytes() + sum(seen.values())

    def kv_cache_bytes(self) -> int:
        """KV cache after the call: own plus each distinct child module once (the last call's)."""
        last: dict[str, int] = {}
        for name, child in self.children():
            last[name] = child.kv_cache_bytes()
        return self.own_kv_cache_bytes() + sum(last.values())

    def activation_bytes(self) -> int:
        """Estimated peak live activation bytes during the call.

        The largest of the own ops' peaks and the children's peaks, plus what this module holds while its
        children run (:meth:`held_bytes`). An estimate of allocator pressure, not a measurement.
        """
        return _activation(self)

    def arithmetic_intensity(self) -> float:
        """FLOPs (tensor-core + CUDA-core) per bit of I/O; 0 when there is no I/O."""
        return flops_per_bit(self.flops(), self.io_bytes())

    def summary(self) -> dict[str, float]:
        """All contract quantities in one dict (plain units: FLOPs, bytes)."""
        return {
            "flops_tensor": self.tensor_core_flops(),
            "flops_cuda": self.cuda_core_flops(),
            "bytes_read": self.bytes_read(),
            "bytes_written": self.bytes_written(),
            "weight_bytes": self.weight_bytes(),
            "activation_bytes": self.activation_bytes(),
            "kv_cache_bytes": self.kv_cache_bytes(),
            "arithmetic_intensity": self.arithmetic_intensity(),
        }

    def walk(self, path: str = "") -> Iterator[tuple[str, Layer]]:
        """Pre-order ``(path, layer)`` over this call and all sub-calls (paths joined with dots)."""
        yield path, self
        for name, child in self.children():
            yield from child.walk(f"{path}.{name}" if path else name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.class_name})"


@functools.lru_cache(maxsize=1 << 16)
def _totals(layer: Layer) -> tuple[int, float, int, int]:
    tensor, cuda, read, written = 0, 0.0, 0, 0
    for op in layer.ops():
        tensor += op.tensor_flops
        cuda += op.cuda_flops
        read += op.bytes_read
        written += op.bytes_written
    for _, child in layer.children():
        t, c, r, w = _totals(child)
        tensor += t
        cuda += c
        read += r
        written += w
    return tensor, cuda, read, written


@functools.lru_cache(maxsize=1 << 16)
def _activation(layer: Layer) -> int:
    peaks = [op.activation_peak for op in layer.ops()]
    peaks += [child.activation_bytes() for _, child in layer.children()]
    return max(peaks, default=0) + layer.held_bytes()


@attrs.frozen(repr=False)
class Composite(Layer):
    """A generic named group of calls (a whole stage, a ``Sequential``); sums its children."""

    parts: tuple[tuple[str, Layer], ...]
    class_name: str = "Composite"  # type: ignore[misc]
    own: tuple[Op, ...] = ()
    held: int = 0

    def ops(self) -> Sequence[Op]:
        return self.own

    def children(self) -> Sequence[tuple[str, Layer]]:
        return self.parts

    def held_bytes(self) -> int:
        return self.held


FRAME_COLUMNS = [
    "module",
    "class_name",
    "calls",
    "flops_tensor",
    "flops_cuda",
    "bytes_read",
    "bytes_written",
    "self_flops_tensor",
    "self_flops_cuda",
    "self_bytes_read",
    "self_bytes_written",
    "weight_bytes",
    "activation_bytes",
    "kv_cache_bytes",
]


def layer_frame(root: Layer, root_path: str = ROOT, calls: Sequence[tuple[str, Layer]] | None = None) -> pd.DataFrame:
    """Per-module prediction table, keyed like the tracer's ``by_module()``.

    Parameters
    ----------
    root
        The layer of the root call (ignored when ``calls`` is given).
    root_path
        Name of the root row (``"<root>"`` as the tracer names it).
    calls
        Alternatively, several top-level calls as ``(module path, layer)``; paths ``""`` mean the root. Calls of the
        same path add up (``calls`` counts them).

    Returns
    -------
    pandas.DataFrame
        One row per module path with ``calls``, inclusive ``flops_tensor``, ``flops_cuda``, ``bytes_read``,
        ``bytes_written``, the ``self_*`` variants, ``weight_bytes`` (once per module), ``activation_bytes`` (max
        over calls) and ``kv_cache_bytes`` (last call).
    """
    rows: dict[str, dict[str, Any]] = {}
    top = calls if calls is not None else [("", root)]
    for prefix, layer in top:
        for path, node in layer.walk(prefix):
            key = path or root_path
            own = node.ops()
            row = rows.setdefault(
                key,
                {c: 0 for c in FRAME_COLUMNS} | {"module": key, "class_name": node.class_name, "flops_cuda": 0.0},
            )
            row["calls"] += 1
            row["flops_tensor"] += node.tensor_core_flops()
            row["flops_cuda"] += node.cuda_core_flops()
            row["bytes_read"] += node.bytes_read()
            row["bytes_written"] += node.bytes_written()
            row["self_flops_tensor"] += sum(op.tensor_flops for op in own)
            row["self_flops_cuda"] += sum(op.cuda_flops for op in own)
            row["self_bytes_read"] += sum(op.bytes_read for op in own)
            row["self_bytes_written"] += sum(op.bytes_written for op in own)
            row["weight_bytes"] = node.weight_bytes()
            row["activation_bytes"] = max(row["activation_bytes"], node.activation_bytes())
            row["kv_cache_bytes"] = node.kv_cache_bytes()
    return pd.DataFrame(list(rows.values()), columns=FRAME_COLUMNS)


def op_frame(layer: Layer) -> pd.DataFrame:
    """Every predicted op of a call: ``module`` (relative path), ``op``, FLOPs and bytes, aggregated by both."""
    recs = [
        {
            "module": path,
            "op": op.name,
            "calls": 1,
            "flops_tensor": op.tensor_flops,
            "flops_cuda": op.cuda_flops,
            "bytes_read": op.bytes_read,
            "bytes_written": op.bytes_written,
        }
        for path, op in layer.all_ops()
    ]
    cols = ["module", "op", "calls", "flops_tensor", "flops_cuda", "bytes_read", "bytes_written"]
    if not recs:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(recs, columns=cols)
    return df.groupby(["module", "op"], as_index=False, sort=False).sum()
