"""Vision-transformer blocks: patch embedding, relative-position (windowed or global) attention, the ViT block with
window partitioning, a channels-first LayerNorm, and the RoPE angles computed as a broadcast product.

Op sequences follow the SAM ViT code as transformers writes it (``qkv`` linear, decomposed relative-position bias from
two einsums, attention with the bias as an additive mask, ``proj``; blocks zero-pad to a multiple of the window,
partition, attend, unpartition and crop). Every field is keyword-only and model dimensions have no default.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from opmeter.analytic.base import Layer, Op
from opmeter.analytic.blocks.attention import RotaryEmbedding
from opmeter.analytic.primitives import (
    FP32,
    INT64,
    Activation,
    Conv2d,
    LayerNorm,
    Linear,
    cast,
    copy,
    elementwise,
    gemm,
    pointwise,
    sdpa_ops,
)
from opmeter.conventions import ELEMENTWISE_FLOPS


@attrs.frozen(repr=False, kw_only=True)
class PatchEmbedding(Layer):
    """``projection``: a ``Conv2d(channels, dim, patch, stride=patch)`` on ``batch`` square images of ``size``
    pixels, then a permute (a view) to channels-last."""

    batch: int
    size: int
    patch: int
    channels: int
    dim: int
    dtype: int
    class_name: str = "PatchEmbedding"

    def children(self) -> Sequence[tuple[str, Layer]]:
        return [("projection", Conv2d(self.batch, self.channels, self.dim, self.size, self.size, self.patch,
                                      stride=self.patch, dtype=self.dtype))]


@attrs.frozen(repr=False, kw_only=True)
class ChannelsFirstLayerNorm(Layer):
    """LayerNorm over the channels of a ``[B, C, H, W]`` map: permute (a view), ``native_layer_norm``, permute."""

    batch: int
    channels: int
    height: int
    width: int
    dtype: int
    class_name: str = "ChannelsFirstLayerNorm"

    def ops(self) -> Sequence[Op]:
        rows = self.batch * self.height * self.width
        return LayerNorm(rows, self.channels, self.dtype).ops()

    def own_weight_bytes(self) -> int:
        return 2 * self.channels * self.dtype


def interpolated_rel_pos_ops(size: int, table: int, head_dim: int, dtype: int) -> list[Op]:
    """``get_rel_pos`` with an unconditional linear resize: ``upsample_linear1d`` of the ``[table, C]`` table to
    ``2*size - 1`` rows (decomposed: index arithmetic, two gathers, a lerp), coordinate arithmetic, one gather."""
    n, c, d = size, head_dim, dtype
    need = 2 * n - 1
    return [
        Op("arange", bytes_written=need * INT64),
        elementwise("mul", need, [need * FP32], FP32),
        elementwise("clamp", need, [need * FP32], FP32),
        *cast(need, FP32, INT64),
        Op("index", bytes_read=2 * need * c * d + 2 * need * INT64, bytes_written=2 * need * c * d),
        elementwise("sub", need, [need * FP32, need * INT64], FP32),
        elementwise("mul", need * c, [need * c * d, need * FP32], d),
        elementwise("add", need * c, [need * c * d, need * c * d], d),
        Op("arange", bytes_written=n * INT64),
        Op("arange", bytes_written=n * INT64),
        elementwise("sub", n * n, [n * INT64, n * INT64], INT64),
        elementwise("add", n * n, [n * n * INT64], INT64),
        Op("index", bytes_read=n * n * c * d + n * n * INT64, bytes_written=n * n * c * d),
    ]


@attrs.frozen(repr=False, kw_only=True)
class RelPosAttention(Layer):
    """Attention over ``[B, h, w, C]`` with a decomposed relative-position bias (SAM's, as transformers writes it).

    ``qkv`` linear, the head split (a copy when ``B > 1``), per axis the resized table and one einsum (a ``bmm``
    with a copy of the queries), the broadcast add that materialises the ``[B*heads, hw, h, w]`` bias, attention
    with that bias as an additive mask (``sdpa``: ``"math"`` or ``"fused"``), the head merge (a copy) and ``proj``.
    """

    batch: int
    height: int
    width: int
    dim: int
    heads: int
    rel_table: int
    """Rows of each relative-position table (``2 * input_size - 1``)."""
    dtype: int
    qkv_bias: bool = True
    sdpa: str = "math"
    class_name: str = "RelPosAttention"

    @property
    def head_dim(self) -> int:
        """Per-head width."""
        return self.dim // self.heads

    def children(self) -> Sequence[tuple[str, Layer]]:
        t, c, d = self.batch * self.height * self.width, self.dim, self.dtype
        return [("qkv", Linear(t, c, 3 * c, bias=self.qkv_bias, dtype=d)), ("proj", Linear(t, c, c, dtype=d))]

    def ops(self) -> Sequence[Op]:
        b, h, w, nh, hd, d = self.batch, self.height, self.width, self.heads, self.head_dim, self.dtype
        bh, hw = b * nh, h * w
        ops: list[Op] = []
        if b > 1:
            ops.append(copy("clone", 3 * bh * hw * hd, d, d))
        for i, (axis, other) in enumerate(((h, w), (w, h))):
            ops += interpolated_rel_pos_ops(axis, self.rel_table, hd, d)
            if i == 0:  # the first einsum copies the permuted queries; the second reuses that layout
                ops.append(copy("clone", bh * hw * hd, d, d))
            ops.append(gemm("bmm", bh * other, axis, hd, batch=axis, a=d, b=d, b_numel=axis * axis * hd))
        ops += [copy("clone", bh * hw * h, d, d), copy("clone", bh * hw * w, d, d)]
        bias = bh * hw * hw
        ops.append(pointwise("add", bias, ELEMENTWISE_FLOPS, [bh * hw * h * d, bh * hw * w * d], d))
        ops.append(copy("clone", bias, d, d))  # the [B*heads, hw, h, w] bias, made contiguous as the SDPA mask
        ops += sdpa_ops(b, nh, hw, hw, hd, dtype=d, mask_numel=bias, impl=self.sdpa)
        ops.append(copy("clone", bh * hw * hd, d, d))
        return ops

    def own_weight_bytes(self) -> int:
        return 2 * self.rel_table * self.head_dim * self.dtype


@attrs.frozen(repr=False, kw_only=True)
class ViTMLP(Layer):
    """``lin1 -> act -> lin2`` over ``tokens``."""

    tokens: int
    dim: int
    mlp_dim: int
    dtype: int
    act: str = "gelu"
    class_name: str = "ViTMLP"
    act_class_name: str = "GELU"

    def children(self) -> Sequence[tuple[str, Layer]]:
        t, d = self.tokens, self.dtype
        return [
            ("lin1", Linear(t, self.dim, self.mlp_dim, dtype=d)),
            ("act", Activation(self.act, t * self.mlp_dim, d, class_name=self.act_class_name)),
            ("lin2", Linear(t, self.mlp_dim, self.dim, dtype=d)),
        ]


@attrs.frozen(repr=False, kw_only=True)
class ViTBlock(Layer):
    """Pre-norm ViT block on ``[B, g, g, C]``: ``layer_norm1``, (pad + window partition), ``attn``, (unpartition +
    crop), residual add, ``layer_norm2``, ``mlp``, residual add. ``window == 0``: global attention."""

    batch: int
    grid: int
    dim: int
    heads: int
    mlp_dim: int
    window: int
    rel_table: int
    dtype: int
    sdpa: str = "math"
    class_name: str = "ViTBlock"
    attention_class_name: str = "RelPosAttention"
    mlp_class_name: str = "ViTMLP"
    act_class_name: str = "GELU"

    @property
    def padded(self) -> int:
        """Grid side after zero-padding to a multiple of the window (the grid itself for global blocks)."""
        return self.grid if self.window == 0 else -(-self.grid // self.window) * self.window

    def children(self) -> Sequence[tuple[str, Layer]]:
        t, d = self.batch * self.grid * self.grid, self.dtype
        side = self.window or self.grid
        views = self.batch * (self.padded // side) ** 2
        attn = RelPosAttention(batch=views, height=side, width=side, dim=self.dim, heads=self.heads,
                               rel_table=self.rel_table, dtype=d, sdpa=self.sdpa, class_name=self.attention_class_name)
        mlp = ViTMLP(tokens=t, dim=self.dim, mlp_dim=self.mlp_dim, dtype=d, class_name=self.mlp_class_name,
                     act_class_name=self.act_class_name)
        return [("layer_norm1", LayerNorm(t, self.dim, d)), ("attn", attn), ("layer_norm2", LayerNorm(t, self.dim, d)),
                ("mlp", mlp)]

    def ops(self) -> Sequence[Op]:
        n = self.batch * self.grid * self.grid * self.dim
        d = self.dtype
        ops: list[Op] = []
        if self.window:
            npad = self.batch * self.padded * self.padded * self.dim
            ops.append(Op("constant_pad_nd", bytes_read=n * d, bytes_written=npad * d))
            ops += [copy("clone", npad, d, d), copy("clone", npad, d, d)]  # partition, unpartition
            ops.append(copy("clone", n, d, d))  # crop: [:, :h, :w].contiguous()
        ops += [elementwise("add", n, [n * d, n * d], d), elementwise("add", n, [n * d, n * d], d)]
        return ops

    def held_bytes(self) -> int:
        return self.batch * self.grid * self.grid * self.dim * self.dtype


@attrs.frozen(repr=False, kw_only=True)
class BroadcastRotaryEmbedding(RotaryEmbedding):
    """RoPE angles as transformers 5 computes them for a vision encoder: ``positions[..., None].float() * inv_freq``
    (a broadcast product after an explicit ``inv_freq.float()``), with ``inv_freq`` and ``original_inv_freq``
    buffers."""

    matmul: bool = False
    cast_inv_freq: bool = True
    buffers: int = 2
    class_name: str = "BroadcastRotaryEmbedding"
