"""Generic analytic primitives: op builders and the layers every model uses.

Op builders (``gemm``, ``pointwise``, ``copy``, ``reduction``, ``softmax_op``, ``sdpa_ops``) return :class:`Op`
records with the FLOP and byte conventions of :mod:`opmeter.conventions`; layers (:class:`Linear`,
:class:`Conv2d`, :class:`LayerNorm`, :class:`RMSNorm`, :class:`Embedding`, :class:`Activation`,
:class:`Elementwise`, :class:`AttentionCore`) assemble them as the corresponding PyTorch modules dispatch them.

Units: FLOPs and bytes (plain counts); ``dtype`` arguments are element sizes in bytes (2 for bf16/fp16, 4 for fp32).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from opmeter.analytic.base import Layer, Op
from opmeter.conventions import (
    ATTENTION_MASK_FLOPS,
    ATTENTION_SOFTMAX_FLOPS,
    ELEMENTWISE_FLOPS,
    GELU_FLOPS,
    LAYER_NORM_FLOPS,
    REDUCTION_FLOPS,
    RELU_FLOPS,
    SIGMOID_FLOPS,
    SILU_FLOPS,
    SOFTMAX_FLOPS,
    TANH_FLOPS,
)

FP32 = 4
INT64 = 8

ACTIVATION_FLOPS: dict[str, float] = {
    "gelu": GELU_FLOPS,
    "silu": SILU_FLOPS,
    "relu": RELU_FLOPS,
    "sigmoid": SIGMOID_FLOPS,
    "tanh": TANH_FLOPS,
}
"""CUDA-core FLOPs per element of the fused activation ops."""


# ---- op builders -------------------------------------------------------------------------------------------------


def gemm(
    name: str,
    m: int,
    n: int,
    k: int,
    *,
    batch: int = 1,
    a: int = 2,
    b: int = 2,
    out: int | None = None,
    bias: int = 0,
    b_is_weight: bool = False,
    b_numel: int | None = None,
) -> Op:
    """A (batched) GEMM ``[batch, m, k] x [batch, k, n]``: ``2*batch*m*n*k`` tensor-core FLOPs.

    ``a``, ``b``, ``out`` are element sizes; ``bias`` the bias element count (``addmm``), read but not counted as
    FLOPs (as ``torch.utils.flop_counter``). ``b_numel`` overrides the elements of ``b`` read (an expanded operand
    is read once). ``b_is_weight`` marks ``b`` as a parameter.
    """
    out_size = a if out is None else out
    b_elems = batch * k * n if b_numel is None else b_numel
    b_bytes = b_elems * b
    bias_bytes = bias * b
    return Op(
        name,
        tensor_flops=2 * batch * m * n * k,
        bytes_read=batch * m * k * a + b_bytes + bias_bytes,
        bytes_written=batch * m * n * out_size,
        weights_read=(b_bytes + bias_bytes) if b_is_weight else 0,
    )


def pointwise(
    name: str,
    numel: int,
    flops_per_element: float,
    reads: Sequence[int],
    out: int,
    *,
    weights_read: int = 0,
    out_numel: int | None = None,
) -> Op:
    """An elementwise op over ``numel`` output elements; ``reads`` are the input tensors' byte sizes."""
    n_out = numel if out_numel is None else out_numel
    return Op(
        name,
        cuda_flops=flops_per_element * numel,
        bytes_read=sum(reads),
        bytes_written=n_out * out,
        weights_read=weights_read,
    )


def copy(name: str, numel: int, src: int, dst: int) -> Op:
    """A data movement op (``_to_copy``, ``clone``, ``cat``, ``constant_pad_nd``...): no FLOPs."""
    return Op(name, bytes_read=numel * src, bytes_written=numel * dst)


def elementwise(name: str, numel: int, reads: Sequence[int], out: int, weights_read: int = 0) -> Op:
    """A plain arithmetic elementwise op (``ELEMENTWISE_FLOPS`` per output element)."""
    return pointwise(name, numel, ELEMENTWISE_FLOPS, reads, out, weights_read=weights_read)


def cast(numel: int, src: int, dst: int) -> list[Op]:
    """``tensor.to(dtype)``: a ``_to_copy`` unless the element size does not change (then no op at all)."""
    return [] if src == dst else [copy("_to_copy", numel, src, dst)]


def reduction(name: str, numel_in: int, numel_out: int, size: int) -> Op:
    """A reduction (``mean``, ``sum``...): ``REDUCTION_FLOPS`` per input element."""
    return Op(name, cuda_flops=REDUCTION_FLOPS * numel_in, bytes_read=numel_in * size, bytes_written=numel_out * size)


def softmax_op(numel: int, size: int, name: str = "_softmax") -> Op:
    """A softmax over ``numel`` elements of ``size`` bytes."""
    return Op(name, cuda_flops=SOFTMAX_FLOPS * numel, bytes_read=numel * size, bytes_written=numel * size)


def sdpa_ops(
    batch: int,
    heads: int,
    q_len: int,
    kv_len: int,
    head_dim: int,
    *,
    v_dim: int | None = None,
    dtype: int = 2,
    mask_numel: int = 0,
    mask_dtype: int | None = None,
    impl: str = "fused",
    seq_major: bool = False,
) -> list[Op]:
    """Ops of ``F.scaled_dot_product_attention``.

    Parameters
    ----------
    impl
        ``"fused"``: one fused kernel (flash / memory-efficient / CPU flash) reading q, k, v (and the mask) and
        writing the output plus an fp32 log-sum-exp ``[B, H, L]``; the score matrix never reaches memory.
        ``"math"``: the decomposition PyTorch runs where no fused kernel applies (e.g. on the meta device):
        upcast of reduced-precision inputs to fp32, scaling of q and kᵀ, ``bmm``, mask add, ``_safe_softmax``,
        ``bmm``, downcast.
    mask_numel
        Elements of an additive mask (0: no mask).
    seq_major
        q, k, v are ``[B, L, H, D]`` tensors viewed as ``[B, H, L, D]`` (a permute, as after a fused QKV projection).
        The math path then copies each of them before its ``bmm`` when ``batch > 1``.
    """
    dv = head_dim if v_dim is None else v_dim
    bh = batch * heads
    nq, nk, nv = bh * q_len * head_dim, bh * kv_len * head_dim, bh * kv_len * dv
    scores = bh * q_len * kv_len
    nout = bh * q_len * dv
    mdt = dtype if mask_dtype is None else mask_dtype
    tensor = 2 * scores * head_dim + 2 * scores * dv
    if impl == "fused":
        cuda = ATTENTION_SOFTMAX_FLOPS * scores + (ATTENTION_MASK_FLOPS * scores if mask_numel else 0.0)
        return [
            Op(
                "scaled_dot_product_attention",
                tensor_flops=tensor,
                cuda_flops=cuda,
                bytes_read=(nq + nk + nv) * dtype + mask_numel * mdt,
                bytes_written=nout * dtype + bh * q_len * FP32,
            )
        ]
    if impl != "math":
        raise ValueError(f"unknown SDPA implementation {impl!r} (fused or math)")
    ops: list[Op] = []
    up = dtype != FP32
    c = FP32 if up else dtype
    if up:
        ops += [copy("_to_copy", nq, dtype, FP32), copy("_to_copy", nk, dtype, FP32), copy("_to_copy", nv, dtype, FP32)]
    ops.append(pointwise("mul", nq, ELEMENTWISE_FLOPS, [nq * c], c))
    ops.append(pointwise("mul", nk, ELEMENTWISE_FLOPS, [nk * c], c))
    relayout = seq_major and batch > 1
    if relayout:
        ops += [copy("clone", nq, c, c), copy("clone", nk, c, c)]
    ops.append(gemm("bmm", q_len, kv_len, head_dim, batch=bh, a=c, b=c, out=c))
    if mask_numel:
        ops.append(pointwise("add", scores, ELEMENTWISE_FLOPS, [scores * c, mask_numel * mdt], c))
    ops.append(softmax_op(scores, c, "_safe_softmax"))
    if up:
        ops.append(copy("_to_copy", scores, FP32, dtype))
    if relayout:
        ops.append(copy("clone", nv, c, c))
    ops.append(gemm("bmm", q_len, dv, kv_len, batch=bh, a=c, b=c, out=c))
    if up:
        ops.append(copy("_to_copy", nout, FP32, dtype))
    return ops


# ---- layers --------------------------------------------------------------------------------------------------------


@attrs.frozen(repr=False)
class Linear(Layer):
    """``nn.Linear`` over ``tokens`` rows.

    ``contiguous=False`` models an input that is not viewable as 2-D (a permuted tensor): PyTorch then copies it
    first, and with a bias runs ``mm`` + ``add`` instead of ``addmm``.
    """

    tokens: int
    in_features: int
    out_features: int
    bias: bool = True
    dtype: int = 2
    contiguous: bool = True
    class_name: str = "Linear"

    def ops(self) -> Sequence[Op]:
        t, i, o, d = self.tokens, self.in_features, self.out_features, self.dtype
        if self.contiguous:
            name = "addmm" if self.bias else "mm"
            return [gemm(name, t, o, i, a=d, b=d, bias=o if self.bias else 0, b_is_weight=True)]
        ops = [copy("clone", t * i, d, d), gemm("mm", t, o, i, a=d, b=d, b_is_weight=True)]
        if self.bias:
            ops.append(pointwise("add", t * o, ELEMENTWISE_FLOPS, [t * o * d, o * d], d, weights_read=o * d))
        return ops

    def own_weight_bytes(self) -> int:
        return (self.in_features * self.out_features + (self.out_features if self.bias else 0)) * self.dtype


@attrs.frozen(repr=False)
class Conv2d(Layer):
    """``nn.Conv2d`` (one ``convolution`` op): ``2 * out_elements * in/groups * kh * kw`` tensor-core FLOPs."""

    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = True
    dtype: int = 2
    class_name: str = "Conv2d"

    @property
    def out_hw(self) -> tuple[int, int]:
        """Output height and width."""
        oh = (self.height + 2 * self.padding - self.kernel) // self.stride + 1
        ow = (self.width + 2 * self.padding - self.kernel) // self.stride + 1
        return oh, ow

    def ops(self) -> Sequence[Op]:
        oh, ow = self.out_hw
        out = self.batch * self.out_channels * oh * ow
        per = self.in_channels // self.groups * self.kernel * self.kernel
        wbytes = self.own_weight_bytes()
        return [
            Op(
                "convolution",
                tensor_flops=2 * out * per,
                bytes_read=self.batch * self.in_channels * self.height * self.width * self.dtype + wbytes,
                bytes_written=out * self.dtype,
                weights_read=wbytes,
            )
        ]

    def own_weight_bytes(self) -> int:
        w = self.out_channels * self.in_channels // self.groups * self.kernel * self.kernel
        return (w + (self.out_channels if self.bias else 0)) * self.dtype


@attrs.frozen(repr=False)
class LayerNorm(Layer):
    """``nn.LayerNorm`` (``native_layer_norm``) over ``rows`` vectors of ``dim``; writes fp32 mean and rstd."""

    rows: int
    dim: int
    dtype: int = 2
    affine: bool = True
    stats_dtype: int = FP32
    class_name: str = "LayerNorm"

    def ops(self) -> Sequence[Op]:
        n = self.rows * self.dim
        w = self.own_weight_bytes()
        return [
            Op(
                "native_layer_norm",
                cuda_flops=LAYER_NORM_FLOPS * n,
                bytes_read=n * self.dtype + w,
                bytes_written=n * self.dtype + 2 * self.rows * self.stats_dtype,
                weights_read=w,
            )
        ]

    def own_weight_bytes(self) -> int:
        return 2 * self.dim * self.dtype if self.affine else 0


@attrs.frozen(repr=False)
class RMSNorm(Layer):
    """RMSNorm written out op by op, as eager decoder implementations do.

    ``x.to(fp32)``; ``pow(2)``; ``mean(-1)``; ``+ eps``; ``rsqrt``; ``x * r``; ``.to(dtype)``; ``weight * x``.
    The casts vanish when the input is already fp32.
    """

    rows: int
    dim: int
    dtype: int = 2
    class_name: str = "RMSNorm"

    def ops(self) -> Sequence[Op]:
        n, r, d = self.rows * self.dim, self.rows, self.dtype
        up = d != FP32
        ops: list[Op] = []
        if up:
            ops.append(copy("_to_copy", n, d, FP32))
        ops += [
            pointwise("pow", n, ELEMENTWISE_FLOPS, [n * FP32], FP32),
            reduction("mean", n, r, FP32),
            pointwise("add", r, ELEMENTWISE_FLOPS, [r * FP32], FP32),
            pointwise("rsqrt", r, ELEMENTWISE_FLOPS, [r * FP32], FP32),
            pointwise("mul", n, ELEMENTWISE_FLOPS, [n * FP32, r * FP32], FP32),
        ]
        if up:
            ops.append(copy("_to_copy", n, FP32, d))
        ops.append(pointwise("mul", n, ELEMENTWISE_FLOPS, [self.dim * d, n * d], d, weights_read=self.dim * d))
        return ops

    def own_weight_bytes(self) -> int:
        return self.dim * self.dtype


@attrs.frozen(repr=False)
class Embedding(Layer):
    """``nn.Embedding`` lookup of ``tokens`` rows (``embedding``).

    ``table_read``: bytes the op is charged for reading the table. ``"rows"`` (default) charges only the gathered
    rows; ``"table"`` charges the whole table (the op's input tensor size).
    """

    num_embeddings: int
    dim: int
    tokens: int
    dtype: int = 2
    table_read: str = "rows"
    class_name: str = "Embedding"

    def ops(self) -> Sequence[Op]:
        out = self.tokens * self.dim * self.dtype
        table = out if self.table_read == "rows" else self.own_weight_bytes()
        return [
            Op(
                "embedding",
                bytes_read=table + self.tokens * INT64,
                bytes_written=out,
                weights_read=table,
            )
        ]

    def own_weight_bytes(self) -> int:
        return self.num_embeddings * self.dim * self.dtype


@attrs.frozen(repr=False)
class Activation(Layer):
    """A fused activation module (``nn.GELU``, ``nn.SiLU``, ...) over ``numel`` elements."""

    kind: str
    numel: int
    dtype: int = 2
    class_name: str = "Activation"

    def ops(self) -> Sequence[Op]:
        return [pointwise(self.kind, self.numel, ACTIVATION_FLOPS[self.kind], [self.numel * self.dtype], self.dtype)]


@attrs.frozen(repr=False)
class Elementwise(Layer):
    """Any sequence of explicit ops, for glue code that is not a module of its own."""

    own: tuple[Op, ...]
    class_name: str = "Elementwise"

    def ops(self) -> Sequence[Op]:
        return self.own


@attrs.frozen(repr=False)
class AttentionCore(Layer):
    """Scaled-dot-product attention math on ``[B, H, L, D]`` inputs with a KV length ``S``.

    ``variant="flash"``: one fused kernel (see :func:`sdpa_ops` ``"fused"``); ``variant="normal"``: the eager
    composition ``matmul(q, kᵀ)``, scale, optional mask add, fp32 softmax, cast back, ``matmul(p, v)``, which
    writes the ``[B, H, L, S]`` scores to memory several times. Both have the same tensor-core FLOPs.
    """

    batch: int
    heads: int
    q_len: int
    kv_len: int
    head_dim: int
    dtype: int = 2
    masked: bool = True
    variant: str = "normal"
    class_name: str = "AttentionCore"

    def ops(self) -> Sequence[Op]:
        b, h, lq, s, d, dt = self.batch, self.heads, self.q_len, self.kv_len, self.head_dim, self.dtype
        if self.variant == "flash":
            return sdpa_ops(b, h, lq, s, d, dtype=dt, impl="fused")
        scores = b * h * lq * s
        ops = [
            gemm("bmm", lq, s, d, batch=b * h, a=dt, b=dt),
            pointwise("div", scores, ELEMENTWISE_FLOPS, [scores * dt], dt),
        ]
        if self.masked:
            ops.append(pointwise("add", scores, ELEMENTWISE_FLOPS, [scores * dt, b * lq * s * dt], dt))
        if dt != FP32:
            ops.append(copy("_to_copy", scores, dt, FP32))
        ops.append(softmax_op(scores, FP32))
        if dt != FP32:
            ops.append(copy("_to_copy", scores, FP32, dt))
        ops.append(gemm("bmm", lq, d, s, batch=b * h, a=dt, b=dt))
        return ops
