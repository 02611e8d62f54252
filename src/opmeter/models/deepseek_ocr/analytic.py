"""DeepSeek-OCR analytic layers: every vendor module class as a pure function of shapes.

Each class models one call of the vendor module of the same name, op for op as the reference implementation
(``vision.py``, ``decoder.py``) dispatches it in bf16, so predicted and traced FLOPs and bytes line up. Children are
named with the module attribute paths, so a layer tree mirrors the module tree.

Variants. ``sdpa="math"`` reproduces ``F.scaled_dot_product_attention`` where no fused kernel applies (meta device,
"normal" attention: scores reach memory); ``sdpa="fused"`` is one fused kernel ("flash" attention). The decoder's
``LlamaAttention`` is the eager composition; ``LlamaFlashAttention2`` the fused one. Both variants have the same
tensor-core FLOPs and differ in I/O and activation memory.

Routing. The MoE is counted as ``num_experts_per_tok`` routed token-expert pairs per token plus the shared experts on
every token; the experts that are *called* follow the reference model's shape-only balanced policy (token ``t`` to
experts ``(t*k + j) mod E``), i.e. ``min(E, T*k)`` experts each read their weights once.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import pandas as pd

from opmeter.analytic.base import Composite, Layer, Op, layer_frame
from opmeter.analytic.blocks import (
    GatedMLP,
    RotaryEmbedding,
    SelfAttention,
    SparseMoE,
    TopKGate,
    balanced_active_experts,
    balanced_expert_tokens,
)
from opmeter.analytic.primitives import (
    FP32,
    INT64,
    Activation,
    Conv2d,
    Embedding,
    LayerNorm,
    Linear,
    RMSNorm,
    cast,
    copy,
    elementwise,
    gemm,
    pointwise,
    reduction,
    sdpa_ops,
)
from opmeter.analytic.stage_cost import ParameterFootprint, StageCost
from opmeter.conventions import SIGMOID_FLOPS
from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr.config import DeepseekOCRConfig, get_config
from opmeter.models.deepseek_ocr.geometry import VisionWorkload

BF16 = 2

SDPA_IMPLS = ("math", "fused")
VARIANTS = ("normal", "flash")
"""Whole-model attention variants: ``normal`` (scores materialised: SDPA math path, eager decoder attention) and
``flash`` (fused attention kernels everywhere)."""




def upsample_op(name: str, c: int, src: int, dst: int, size: int = FP32) -> Op:
    """An interpolation (``_upsample_bicubic2d_aa``, ``upsample_linear1d``): data movement, no FLOPs counted."""
    return Op(name, bytes_read=c * src * size, bytes_written=c * dst * size)


# =====================================================================================================================
# SAM ViT-B
# =====================================================================================================================


@attrs.frozen(repr=False)
class PatchEmbed(Layer):
    """``Conv2d(3, 768, k16, s16)`` then a permute (a view) to ``[B, H, W, C]``."""

    batch: int
    img: int
    patch: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    dtype: int = BF16
    class_name: str = "PatchEmbed"

    def children(self) -> Sequence[tuple[str, Layer]]:
        g = self.img
        conv = Conv2d(self.batch, self.in_chans, self.embed_dim, g, g, self.patch, stride=self.patch, dtype=self.dtype)
        return [("proj", conv)]


@attrs.frozen(repr=False)
class LayerNorm2d(Layer):
    """Channel LayerNorm written out: ``mean, sub, pow, mean, sub, add, sqrt, div, mul (weight), add (bias)``."""

    batch: int
    channels: int
    height: int
    width: int
    dtype: int = BF16
    class_name: str = "LayerNorm2d"

    def ops(self) -> Sequence[Op]:
        d, c = self.dtype, self.channels
        n = self.batch * c * self.height * self.width
        r = self.batch * self.height * self.width
        return [
            reduction("mean", n, r, d),
            elementwise("sub", n, [n * d, r * d], d),
            elementwise("pow", n, [n * d], d),
            reduction("mean", n, r, d),
            elementwise("sub", n, [n * d, r * d], d),
            elementwise("add", r, [r * d], d),
            elementwise("sqrt", r, [r * d], d),
            elementwise("div", n, [n * d, r * d], d),
            elementwise("mul", n, [c * d, n * d], d, weights_read=c * d),
            elementwise("add", n, [n * d, c * d], d, weights_read=c * d),
        ]

    def own_weight_bytes(self) -> int:
        return 2 * self.channels * self.dtype


def rel_pos_ops(size: int, table: int, head_dim: int, dtype: int) -> list[Op]:
    """``get_rel_pos(size, size, rel_pos)``: optional linear resize of the table, coordinate arithmetic, gather."""
    n, c, d = size, head_dim, dtype
    need = 2 * n - 1
    ops: list[Op] = []
    if table != need:
        ops += [
            *cast(table * c, d, FP32),
            upsample_op("upsample_linear1d", c, table, need),
            *cast(need * c, FP32, d),
        ]
    ops += [
        Op("arange", bytes_written=n * INT64),
        elementwise("mul", n, [n * INT64], FP32),
        Op("arange", bytes_written=n * INT64),
        elementwise("mul", n, [n * INT64], FP32),
        elementwise("sub", n * n, [n * FP32, n * FP32], FP32),
        elementwise("add", n * n, [n * n * FP32], FP32),
        *cast(n * n, FP32, INT64),
        Op("index", bytes_read=n * n * c * d + n * n * INT64, bytes_written=n * n * c * d),  # gathers rows
    ]
    return ops


@attrs.frozen(repr=False)
class Attention(Layer):
    """SAM attention on ``[B, h, w, C]`` (windows or the global grid) with decomposed relative-position bias.

    ``qkv`` linear; a copy to split heads; per axis ``get_rel_pos`` and an einsum (a ``bmm`` with a copy of the
    permuted queries) and a copy of the result; the broadcast add that materialises the ``[B, heads, hw, hw]`` bias;
    SDPA with that bias as ``attn_mask``; a copy to merge heads; ``proj`` linear.
    """

    batch: int
    height: int
    width: int
    dim: int = 768
    heads: int = 12
    qkv_bias: bool = True
    use_rel_pos: bool = True
    rel_table: int = 127
    """Rows of ``rel_pos_h`` / ``rel_pos_w`` (``2 * input_size - 1``: 27 for windows of 14, 127 for the 64 grid)."""
    sdpa: str = "math"
    dtype: int = BF16
    class_name: str = "Attention"

    @property
    def head_dim(self) -> int:
        """Per-head width."""
        return self.dim // self.heads

    @property
    def tokens(self) -> int:
        """Tokens of the call: ``B * h * w``."""
        return self.batch * self.height * self.width

    def children(self) -> Sequence[tuple[str, Layer]]:
        t, c, d = self.tokens, self.dim, self.dtype
        return [
            ("qkv", Linear(t, c, 3 * c, bias=self.qkv_bias, dtype=d)),
            ("proj", Linear(t, c, c, bias=True, dtype=d)),
        ]

    def ops(self) -> Sequence[Op]:
        b, h, w, nh, hd, d = self.batch, self.height, self.width, self.heads, self.head_dim, self.dtype
        t, c = self.tokens, self.dim
        bh, hw = b * nh, h * w
        ops: list[Op] = []
        if b > 1:  # qkv.reshape(3, B*heads, hw, hd) of a permuted view is a copy unless B == 1
            ops.append(copy("clone", 3 * t * c, d, d))
        mask = 0
        if self.use_rel_pos:
            for i, (axis_len, other) in enumerate(((h, w), (w, h))):
                ops += rel_pos_ops(axis_len, self.rel_table, hd, d)
                if i == 0 or b == 1:  # einsum copies the permuted queries (the second one only if q is strided)
                    ops.append(copy("clone", bh * hw * hd, d, d))
                ops.append(
                    gemm("bmm", bh * other, axis_len, hd, batch=axis_len, a=d, b=d, b_numel=axis_len * axis_len * hd)
                )
            ops.append(copy("clone", bh * hw * h, d, d))  # rel_h.reshape of a permuted einsum result
            ops.append(copy("clone", bh * hw * w, d, d))  # rel_w.reshape
            mask = bh * hw * h * w
            ops.append(elementwise("add", mask, [bh * hw * h * d, bh * hw * w * d], d))
        ops += sdpa_ops(b, nh, hw, hw, hd, dtype=d, mask_numel=mask, impl=self.sdpa)
        if self.sdpa == "math" or b > 1:
            # x.view(...).permute(...).reshape(B, h, w, C) copies a head-major output; a fused kernel writes its
            # output in the layout of q, which is sequence-major (a view of the qkv output) when B == 1
            ops.append(copy("clone", t * c, d, d))
        return ops

    def own_weight_bytes(self) -> int:
        return 2 * self.rel_table * self.head_dim * self.dtype if self.use_rel_pos else 0


@attrs.frozen(repr=False)
class MLPBlock(Layer):
    """``lin1 -> GELU -> lin2`` over ``tokens``."""

    tokens: int
    dim: int = 768
    mlp_dim: int = 3072
    dtype: int = BF16
    class_name: str = "MLPBlock"

    def children(self) -> Sequence[tuple[str, Layer]]:
        t, d = self.tokens, self.dtype
        return [
            ("lin1", Linear(t, self.dim, self.mlp_dim, dtype=d)),
            ("act", Activation("gelu", t * self.mlp_dim, d, class_name="GELU")),
            ("lin2", Linear(t, self.mlp_dim, self.dim, dtype=d)),
        ]


@attrs.frozen(repr=False)
class Block(Layer):
    """SAM block on ``[B, g, g, C]``: ``norm1``, (pad + window partition), ``attn``, (unpartition + crop), residual
    add, ``norm2``, ``mlp``, residual add. ``window == 0`` is global attention."""

    batch: int
    grid: int
    dim: int = 768
    heads: int = 12
    mlp_dim: int = 3072
    window: int = 14
    rel_table: int | None = None
    """Relative-position table rows; default ``2*window - 1`` (windowed) or ``2*grid - 1`` (global)."""
    sdpa: str = "math"
    dtype: int = BF16
    class_name: str = "Block"

    @property
    def padded(self) -> int:
        """Grid side after zero-padding to a multiple of the window (the grid itself for global blocks)."""
        if self.window == 0:
            return self.grid
        return -(-self.grid // self.window) * self.window

    @property
    def windows(self) -> int:
        """Attention batch: windows per image times images (images for global blocks)."""
        if self.window == 0:
            return self.batch
        return self.batch * (self.padded // self.window) ** 2

    def _attention(self) -> Attention:
        side = self.window or self.grid
        table = self.rel_table if self.rel_table is not None else 2 * side - 1
        return Attention(
            self.windows, side, side, self.dim, self.heads, rel_table=table, sdpa=self.sdpa, dtype=self.dtype
        )

    def children(self) -> Sequence[tuple[str, Layer]]:
        t, d = self.batch * self.grid * self.grid, self.dtype
        return [
            ("norm1", LayerNorm(t, self.dim, d)),
            ("attn", self._attention()),
            ("norm2", LayerNorm(t, self.dim, d)),
            ("mlp", MLPBlock(t, self.dim, self.mlp_dim, d)),
        ]

    def ops(self) -> Sequence[Op]:
        n = self.batch * self.grid * self.grid * self.dim
        d = self.dtype
        ops: list[Op] = []
        if self.window:
            np_ = self.batch * self.padded * self.padded * self.dim
            if self.padded != self.grid:
                ops.append(copy("constant_pad_nd", n, d, d))
                ops[-1] = attrs.evolve(ops[-1], bytes_written=np_ * d)
            ops.append(copy("clone", np_, d, d))  # window_partition: permute(...).contiguous()
            ops.append(copy("clone", np_, d, d))  # window_unpartition: permute(...).contiguous()
            if self.padded != self.grid:
                ops.append(copy("clone", n, d, d))  # [:, :h, :w, :].contiguous()
        ops.append(elementwise("add", n, [n * d, n * d], d))  # shortcut + x
        ops.append(elementwise("add", n, [n * d, n * d], d))  # x + mlp(norm2(x))
        return ops

    def held_bytes(self) -> int:
        return self.batch * self.grid * self.grid * self.dim * self.dtype


@attrs.frozen(repr=False)
class ImageEncoderViT(Layer):
    """SAM ViT-B with the DeepSeek-OCR neck and ``net_2`` / ``net_3`` on ``batch`` views of ``img`` pixels."""

    batch: int
    img: int = 1024
    patch: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    window: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    native_grid: int = 64
    """Grid of the ``pos_embed`` table and of the global blocks' relative-position tables (``img_size / patch``)."""
    out_chans: int = 256
    net_2_chans: int = 512
    net_3_chans: int = 1024
    in_chans: int = 3
    sdpa: str = "math"
    dtype: int = BF16
    class_name: str = "ImageEncoderViT"

    @property
    def grid(self) -> int:
        """Patch grid side of this view size."""
        return self.img // self.patch

    @property
    def out_grid(self) -> int:
        """Output grid side after ``net_2`` and ``net_3`` (stride 2, padding 1, kernel 3 each)."""
        return (self._g2() - 1) // 2 + 1

    def _g2(self) -> int:
        return (self.grid - 1) // 2 + 1

    def children(self) -> Sequence[tuple[str, Layer]]:
        b, g, d = self.batch, self.grid, self.dtype
        kids: list[tuple[str, Layer]] = [
            ("patch_embed", PatchEmbed(b, self.img, self.patch, self.in_chans, self.dim, d)),
        ]
        for i in range(self.depth):
            glob = i in self.global_attn_indexes
            blk = Block(
                b, g, self.dim, self.heads, self.mlp_dim, window=0 if glob else self.window,
                rel_table=2 * self.native_grid - 1 if glob else 2 * self.window - 1, sdpa=self.sdpa, dtype=d,
            )
            kids.append((f"blocks.{i}", blk))
        oc, g2 = self.out_chans, self._g2()
        neck = Composite(
            (
                ("0", Conv2d(b, self.dim, oc, g, g, 1, bias=False, dtype=d)),
                ("1", LayerNorm2d(b, oc, g, g, d)),
                ("2", Conv2d(b, oc, oc, g, g, 3, padding=1, bias=False, dtype=d)),
                ("3", LayerNorm2d(b, oc, g, g, d)),
            ),
            class_name="Sequential",
        )
        kids += [
            ("neck", neck),
            ("net_2", Conv2d(b, oc, self.net_2_chans, g, g, 3, stride=2, padding=1, bias=False, dtype=d)),
            (
                "net_3",
                Conv2d(b, self.net_2_chans, self.net_3_chans, g2, g2, 3, stride=2, padding=1, bias=False, dtype=d),
            ),
        ]
        return kids

    def ops(self) -> Sequence[Op]:
        b, g, c, d = self.batch, self.grid, self.dim, self.dtype
        ng = self.native_grid
        ops: list[Op] = []
        pos_w = 0
        if g != ng:
            ops += [
                *cast(c * ng * ng, d, FP32),
                upsample_op("_upsample_bicubic2d_aa", c, ng * ng, g * g),
                *cast(c * g * g, FP32, d),
            ]
        else:
            pos_w = c * g * g * d
        n = b * g * g * c
        ops.append(elementwise("add", n, [n * d, c * g * g * d], d, weights_read=pos_w))
        g2 = self._g2()
        ops.append(copy("clone", b * self.net_2_chans * g2 * g2, d, d))  # net_3(x2.clone())
        return ops

    def own_weight_bytes(self) -> int:
        return self.native_grid * self.native_grid * self.dim * self.dtype


# =====================================================================================================================
# CLIP-L tower
# =====================================================================================================================


@attrs.frozen(repr=False)
class CLIPVisionEmbeddings(Layer):
    """Class token + SAM features (passed in, ``[B, C, g, g]``) + position embeddings resized to the grid."""

    batch: int
    grid: int
    hidden: int = 1024
    native_grid: int = 16
    patch: int = 14
    in_chans: int = 3
    dtype: int = BF16
    class_name: str = "CLIPVisionEmbeddings"

    def children(self) -> Sequence[tuple[str, Layer]]:
        npos = self.native_grid**2 + 1
        return [("position_embedding", Embedding(npos, self.hidden, npos, self.dtype))]

    def ops(self) -> Sequence[Op]:
        b, g, c, d, ng = self.batch, self.grid, self.hidden, self.dtype, self.native_grid
        seq = g * g + 1
        ops = [Op("cat", bytes_read=(b * c + b * g * g * c) * d, bytes_written=b * seq * c * d, weights_read=b * c * d)]
        if g != ng:
            ops += [
                copy("clone", ng * ng * c, d, d),
                *cast(ng * ng * c, d, FP32),
                upsample_op("_upsample_bicubic2d_aa", c, ng * ng, g * g),
                *cast(g * g * c, FP32, d),
                copy("cat", seq * c, d, d),
            ]
        ops.append(elementwise("add", b * seq * c, [b * seq * c * d, seq * c * d], d))
        return ops

    def own_weight_bytes(self) -> int:
        # class_embedding plus the (unused) patch_embedding convolution, which still occupies memory
        return (self.hidden + self.hidden * self.in_chans * self.patch * self.patch) * self.dtype


@attrs.frozen(repr=False)
class NoTPAttention(Layer):
    """CLIP attention: ``qkv_proj``, head split (views), SDPA without mask, head merge (a copy), ``out_proj``."""

    batch: int
    seq: int
    hidden: int = 1024
    heads: int = 16
    sdpa: str = "math"
    dtype: int = BF16
    class_name: str = "NoTPAttention"

    def children(self) -> Sequence[tuple[str, Layer]]:
        t, c, d = self.batch * self.seq, self.hidden, self.dtype
        return [("qkv_proj", Linear(t, c, 3 * c, dtype=d)), ("out_proj", Linear(t, c, c, dtype=d))]

    def ops(self) -> Sequence[Op]:
        b, s, c, nh, d = self.batch, self.seq, self.hidden, self.heads, self.dtype
        ops = sdpa_ops(b, nh, s, s, c // nh, dtype=d, impl=self.sdpa, seq_major=True)
        if self.sdpa == "math":  # a fused kernel's output follows q's sequence-major layout: the merge is a view
            ops.append(copy("clone", b * s * c, d, d))
        return ops


@attrs.frozen(repr=False)
class NoTPFeedForward(Layer):
    """CLIP MLP: ``fc1``, ``quick_gelu`` (``x * sigmoid(1.702 x)``: mul, sigmoid, mul), ``fc2``."""

    tokens: int
    hidden: int = 1024
    ffn: int = 4096
    dtype: int = BF16
    class_name: str = "NoTPFeedForward"

    def children(self) -> Sequence[tuple[str, Layer]]:
        t, d = self.tokens, self.dtype
        return [("fc1", Linear(t, self.hidden, self.ffn, dtype=d)), ("fc2", Linear(t, self.ffn, self.hidden, dtype=d))]

    def ops(self) -> Sequence[Op]:
        n, d = self.tokens * self.ffn, self.dtype
        return [
            elementwise("mul", n, [n * d], d),
            pointwise("sigmoid", n, SIGMOID_FLOPS, [n * d], d),
            elementwise("mul", n, [n * d, n * d], d),
        ]


@attrs.frozen(repr=False)
class NoTPTransformerBlock(Layer):
    """Pre-norm CLIP block. Like the vendor it calls ``self_attn.forward`` / ``mlp.forward`` directly, so their own
    ops belong to the block and only their ``Linear`` children appear as separate module calls."""

    batch: int
    seq: int
    hidden: int = 1024
    heads: int = 16
    ffn: int = 4096
    sdpa: str = "math"
    dtype: int = BF16
    class_name: str = "NoTPTransformerBlock"

    def attention(self) -> NoTPAttention:
        """The attention sub-layer (called through ``forward``)."""
        return NoTPAttention(self.batch, self.seq, self.hidden, self.heads, self.sdpa, self.dtype)

    def feed_forward(self) -> NoTPFeedForward:
        """The MLP sub-layer (called through ``forward``)."""
        return NoTPFeedForward(self.batch * self.seq, self.hidden, self.ffn, self.dtype)

    def children(self) -> Sequence[tuple[str, Layer]]:
        t, d = self.batch * self.seq, self.dtype
        kids: list[tuple[str, Layer]] = [("layer_norm1", LayerNorm(t, self.hidden, d))]
        kids += [(f"self_attn.{n}", c) for n, c in self.attention().children()]
        kids.append(("layer_norm2", LayerNorm(t, self.hidden, d)))
        kids += [(f"mlp.{n}", c) for n, c in self.feed_forward().children()]
        return kids

    def ops(self) -> Sequence[Op]:
        n, d = self.batch * self.seq * self.hidden, self.dtype
        return [
            *self.attention().ops(),
            elementwise("add", n, [n * d, n * d], d),
            *self.feed_forward().ops(),
            elementwise("add", n, [n * d, n * d], d),
        ]

    def held_bytes(self) -> int:
        return self.batch * self.seq * self.hidden * self.dtype


@attrs.frozen(repr=False)
class NoTPTransformer(Layer):
    """The stack of ``NoTPTransformerBlock``."""

    batch: int
    seq: int
    layers: int = 24
    hidden: int = 1024
    heads: int = 16
    ffn: int = 4096
    sdpa: str = "math"
    dtype: int = BF16
    class_name: str = "NoTPTransformer"

    def children(self) -> Sequence[tuple[str, Layer]]:
        blk = NoTPTransformerBlock(self.batch, self.seq, self.hidden, self.heads, self.ffn, self.sdpa, self.dtype)
        return [(f"layers.{i}", blk) for i in range(self.layers)]


@attrs.frozen(repr=False)
class VitModel(Layer):
    """CLIP tower fed with SAM features: ``embeddings``, ``pre_layrnorm``, ``transformer`` on ``g*g + 1`` tokens."""

    batch: int
    grid: int
    hidden: int = 1024
    layers: int = 24
    heads: int = 16
    ffn: int = 4096
    native_grid: int = 16
    sdpa: str = "math"
    dtype: int = BF16
    class_name: str = "VitModel"

    @property
    def seq(self) -> int:
        """Tokens per view: the grid plus the class token."""
        return self.grid * self.grid + 1

    def children(self) -> Sequence[tuple[str, Layer]]:
        b, d = self.batch, self.dtype
        return [
            ("embeddings", CLIPVisionEmbeddings(b, self.grid, self.hidden, self.native_grid, dtype=d)),
            ("pre_layrnorm", LayerNorm(b * self.seq, self.hidden, d)),
            (
                "transformer",
                NoTPTransformer(b, self.seq, self.layers, self.hidden, self.heads, self.ffn, self.sdpa, d),
            ),
        ]


@attrs.frozen(repr=False)
class MlpProjector(Layer):
    """``projector_type == "linear"``: one ``Linear(2048, 1280)`` named ``layers``."""

    tokens: int
    input_dim: int = 2048
    n_embed: int = 1280
    dtype: int = BF16
    class_name: str = "MlpProjector"

    def children(self) -> Sequence[tuple[str, Layer]]:
        return [("layers", Linear(self.tokens, self.input_dim, self.n_embed, dtype=self.dtype))]


# =====================================================================================================================
# Decoder (DeepSeek-V2 with LLaMA attention)
# =====================================================================================================================


@attrs.frozen(repr=False)
class DeepseekV2RMSNorm(RMSNorm):
    """RMSNorm in fp32, weight applied in the input dtype (the vendor op sequence, see :class:`RMSNorm`)."""

    class_name: str = "DeepseekV2RMSNorm"


@attrs.frozen(repr=False, kw_only=True)
class LlamaRotaryEmbedding(RotaryEmbedding):
    """Default RoPE of transformers 4.46, called inside every attention layer (see
    :class:`~opmeter.analytic.blocks.RotaryEmbedding`)."""

    head_dim: int = 128
    dtype: int = BF16
    class_name: str = "LlamaRotaryEmbedding"


@attrs.frozen(repr=False, kw_only=True)
class LlamaAttention(SelfAttention):
    """Eager LLaMA attention of transformers 4.46 with DeepSeek-OCR's decoder sizes (10 heads x 128, no GQA), its
    rotary angles computed inside (see :class:`~opmeter.analytic.blocks.SelfAttention`)."""

    hidden: int = 1280
    heads: int = 10
    kv_heads: int = 10
    head_dim: int = 128
    dtype: int = BF16
    class_name: str = "LlamaAttention"
    rotary_class_name: str = "LlamaRotaryEmbedding"


@attrs.frozen(repr=False, kw_only=True)
class LlamaFlashAttention2(LlamaAttention):
    """LLaMA attention through one fused flash-attention call (causal, no mask tensor); same tensor-core FLOPs as
    :class:`LlamaAttention`, no score matrix in memory."""

    flash: bool = True
    masked: bool = False
    class_name: str = "LlamaFlashAttention2"


@attrs.frozen(repr=False, kw_only=True)
class DeepseekV2MLP(GatedMLP):
    """SiLU-gated MLP (dense layer 0: 6848 wide; experts 896; shared experts 1792)."""

    hidden: int = 1280
    intermediate: int = 6848
    dtype: int = BF16
    class_name: str = "DeepseekV2MLP"


@attrs.frozen(repr=False, kw_only=True)
class MoEGate(TopKGate):
    """DeepSeek-V2 router: 64 experts, greedy top-6 of an fp32 softmax, no renormalisation."""

    hidden: int = 1280
    experts: int = 64
    top_k: int = 6
    dtype: int = BF16
    class_name: str = "MoEGate"


@attrs.frozen(repr=False, kw_only=True)
class DeepseekV2MoE(SparseMoE):
    """DeepSeek-V2 MoE: 64 routed experts of 896, top-6, ``shared`` shared experts on every token."""

    hidden: int = 1280
    experts: int = 64
    top_k: int = 6
    moe_intermediate: int = 896
    dtype: int = BF16
    shared: int = 2
    shared_intermediate: int = attrs.field(
        default=attrs.Factory(lambda self: self.moe_intermediate * self.shared, takes_self=True))
    class_name: str = "DeepseekV2MoE"

    def _gate(self, tokens: int) -> TopKGate:
        return MoEGate(tokens=tokens, hidden=self.hidden, experts=self.experts, top_k=self.top_k, dtype=self.dtype)

    def _expert(self, tokens: int, intermediate: int) -> GatedMLP:
        return DeepseekV2MLP(tokens=tokens, hidden=self.hidden, intermediate=intermediate, dtype=self.dtype)


@attrs.frozen(repr=False)
class DeepseekV2DecoderLayer(Layer):
    """Pre-norm decoder layer: ``input_layernorm``, ``self_attn``, residual add, ``post_attention_layernorm``,
    ``mlp`` (dense ``DeepseekV2MLP`` or ``DeepseekV2MoE``), residual add."""

    batch: int
    q_len: int
    past: int = 0
    moe: bool = True
    flash: bool = False
    hidden: int = 1280
    heads: int = 10
    kv_heads: int = 10
    head_dim: int = 128
    intermediate: int = 6848
    experts: int = 64
    top_k: int = 6
    moe_intermediate: int = 896
    shared: int = 2
    dtype: int = BF16
    attn_sdpa: str | None = None
    """``attn_implementation="sdpa"``: the SDPA path (``"math"`` / ``"fused"``) of :class:`LlamaAttention`."""
    expert_tokens: tuple[int, ...] | None = None
    """Tokens per routed expert (MoE layers); default: the balanced policy."""
    class_name: str = "DeepseekV2DecoderLayer"

    def children(self) -> Sequence[tuple[str, Layer]]:
        b, s, h, d = self.batch, self.q_len, self.hidden, self.dtype
        t = b * s
        attn_cls = LlamaFlashAttention2 if self.flash else LlamaAttention
        attn = attn_cls(batch=b, q_len=s, past=self.past, hidden=h, heads=self.heads, kv_heads=self.kv_heads,
                        head_dim=self.head_dim, dtype=d, sdpa=None if self.flash else self.attn_sdpa)
        mlp: Layer
        if self.moe:
            mlp = DeepseekV2MoE(tokens=t, hidden=h, experts=self.experts, top_k=self.top_k,
                                moe_intermediate=self.moe_intermediate, shared=self.shared,
                                expert_tokens=self.expert_tokens, dtype=d)
        else:
            mlp = DeepseekV2MLP(tokens=t, hidden=h, intermediate=self.intermediate, dtype=d)
        return [
            ("input_layernorm", DeepseekV2RMSNorm(t, h, d)),
            ("self_attn", attn),
            ("post_attention_layernorm", DeepseekV2RMSNorm(t, h, d)),
            ("mlp", mlp),
        ]

    def ops(self) -> Sequence[Op]:
        n, d = self.batch * self.q_len * self.hidden, self.dtype
        return [elementwise("add", n, [n * d, n * d], d), elementwise("add", n, [n * d, n * d], d)]

    def held_bytes(self) -> int:
        return self.batch * self.q_len * self.hidden * self.dtype


@attrs.frozen(repr=False)
class LMHead(Layer):
    """``lm_head``: ``Linear(1280, 129280, bias=False)`` on every position (prefill) or the new one (decode)."""

    tokens: int
    hidden: int = 1280
    vocab: int = 129280
    dtype: int = BF16
    class_name: str = "Linear"

    def ops(self) -> Sequence[Op]:
        return Linear(self.tokens, self.hidden, self.vocab, bias=False, dtype=self.dtype).ops()

    def own_weight_bytes(self) -> int:
        return self.hidden * self.vocab * self.dtype


# =====================================================================================================================
# The whole model
# =====================================================================================================================


def _sdpa_impl(variant: str, override: str | None = None) -> str:
    if variant not in VARIANTS:
        raise OpmeterError(f"unknown attention variant {variant!r}; use one of {', '.join(VARIANTS)}")
    if override is not None:
        if override not in SDPA_IMPLS:
            raise OpmeterError(f"unknown SDPA implementation {override!r}; use one of {', '.join(SDPA_IMPLS)}")
        return override
    return "fused" if variant == "flash" else "math"


def sam_layer(
    cfg: DeepseekOCRConfig, batch: int, side: int, variant: str = "normal", dtype: int = BF16, sdpa: str | None = None
) -> ImageEncoderViT:
    """``ImageEncoderViT`` of a preset on ``batch`` views of ``side`` pixels."""
    c = cfg.sam
    return ImageEncoderViT(
        batch, side, c.patch_size, c.embed_dim, c.depth, c.num_heads, int(c.embed_dim * c.mlp_ratio), c.window_size,
        tuple(c.global_attn_indexes), c.img_size // c.patch_size, c.out_chans, c.net_2_chans, c.net_3_chans,
        c.in_chans, _sdpa_impl(variant, sdpa), dtype,
    )


def clip_layer(
    cfg: DeepseekOCRConfig, batch: int, grid: int, variant: str = "normal", dtype: int = BF16, sdpa: str | None = None
) -> VitModel:
    """``VitModel`` of a preset on ``batch`` views whose SAM output grid is ``grid``."""
    c = cfg.clip
    return VitModel(
        batch, grid, c.hidden_size, c.num_layers, c.num_heads, c.ffn_hidden_size, c.image_size // c.patch_size,
        _sdpa_impl(variant, sdpa), dtype,
    )


def decoder_layer(
    cfg: DeepseekOCRConfig, index: int, batch: int, q_len: int, past: int = 0, variant: str = "normal",
    dtype: int = BF16, expert_tokens: tuple[int, ...] | None = None, attn_sdpa: str | None = None,
) -> DeepseekV2DecoderLayer:
    """Decoder layer ``index`` (dense or MoE as the preset says) for ``q_len`` new tokens over ``past``."""
    d = cfg.decoder
    _sdpa_impl(variant)
    return DeepseekV2DecoderLayer(
        batch, q_len, past, d.is_moe_layer(index), variant == "flash", d.hidden_size, d.num_attention_heads,
        d.num_key_value_heads, d.head_dim, d.intermediate_size, d.n_routed_experts, d.num_experts_per_tok,
        d.moe_intermediate_size, d.n_shared_experts, dtype, attn_sdpa, expert_tokens,
    )


def vision_calls(
    cfg: DeepseekOCRConfig, vision: VisionWorkload, variant: str = "normal", dtype: int = BF16,
    sdpa: str | None = None,
) -> tuple[list[tuple[str, Layer]], list[Op]]:
    """Module calls (paths relative to ``DeepseekOCRModel``) and glue ops of the vision part of one image.

    Per batch of views (crops first, then the global view): ``sam_model``, ``vision_model``, the feature ``cat``,
    ``projector``; then the ``image_newline`` / ``view_seperator`` layout and ``masked_scatter_`` (glue ops of
    ``DeepseekOCRModel``).
    """
    calls: list[tuple[str, Layer]] = []
    glue: list[Op] = []
    d = dtype
    n = cfg.projector.n_embed
    sam_c = cfg.sam.net_3_chans
    grids: list[int] = []
    for batch, side in vision.views:
        sam = sam_layer(cfg, batch, side, variant, dtype, sdpa)
        assert isinstance(sam, ImageEncoderViT)
        g = sam.out_grid
        grids.append(g)
        clip = clip_layer(cfg, batch, g, variant, dtype, sdpa)
        calls += [("sam_model", sam), ("vision_model", clip)]
        feats = batch * g * g
        glue.append(
            Op("cat", bytes_read=feats * (cfg.clip.hidden_size + sam_c) * d,
               bytes_written=feats * cfg.projector.input_dim * d)
        )
        calls.append(("projector", MlpProjector(feats, cfg.projector.input_dim, n, dtype)))
    gg = grids[-1]
    glob = gg * (gg + 1)
    glue.append(Op("cat", bytes_read=(gg * gg + gg) * n * d, bytes_written=glob * n * d, weights_read=gg * n * d))
    if vision.has_crops:
        cols, rows = vision.crop_grid
        gl = grids[0]
        local = rows * gl * cols * gl
        if cols > 1:
            glue.append(copy("clone", local * n, d, d))  # view/permute/reshape of the crop grid
        lrows = rows * gl
        glue.append(Op("cat", bytes_read=(local + lrows) * n * d, bytes_written=(local + lrows) * n * d,
                       weights_read=lrows * n * d))
        total = local + lrows + glob + 1
        glue.append(Op("cat", bytes_read=total * n * d, bytes_written=total * n * d, weights_read=n * d))
    else:
        glue.append(Op("cat", bytes_read=(glob + 1) * n * d, bytes_written=(glob + 1) * n * d, weights_read=n * d))
    return calls, glue


def masked_scatter_op(seq: int, image_tokens: int, hidden: int, dtype: int, batch: int = 1) -> Op:
    """``inputs_embeds[idx].masked_scatter_(mask[:, None], features)`` for one image."""
    return Op(
        "masked_scatter_",
        bytes_read=seq * hidden * dtype + seq + image_tokens * hidden * dtype,
        bytes_written=seq * hidden * dtype,
    )


@attrs.frozen(repr=False)
class DeepseekOCRModel(Layer):
    """``DeepseekOCRModel`` for one forward: ``embed_tokens``, the vision calls (prefill with an image), the decoder
    layers over ``seq`` new tokens after ``past`` cached ones, and ``norm``; glue ops are its own."""

    config: DeepseekOCRConfig
    seq: int
    past: int = 0
    vision: VisionWorkload | None = None
    variant: str = "normal"
    sdpa: str | None = None
    """Vision SDPA implementation override (``"math"`` / ``"fused"``); default from ``variant``."""
    batch: int = 1
    dtype: int = BF16
    expert_tokens: tuple[tuple[int, ...] | None, ...] | None = None
    """Per decoder layer, tokens per routed expert (measured routing); default: the balanced policy."""
    decoder_sdpa: str | None = None
    """Decoder ``attn_implementation="sdpa"`` path (``"math"`` / ``"fused"``); ``None``: eager."""
    host_checks: bool = False
    """Real tensors: the vendor's "is there an image / are there crops" pixel sums read on the host."""
    class_name: str = "DeepseekOCRModel"

    def vision_parts(self) -> tuple[list[tuple[str, Layer]], list[Op]]:
        """Vision calls and glue (empty without an image)."""
        if self.vision is None:
            return [], []
        calls, glue = vision_calls(self.config, self.vision, self.variant, self.dtype, self.sdpa)
        h = self.config.decoder.hidden_size
        glue.append(masked_scatter_op(self.seq, self.vision.image_tokens, h, self.dtype))
        pre: list[Op] = []  # images_spatial_crop is read on the host with dispatch modes disabled: no ops
        if self.host_checks:
            # forward(): torch.sum(image_ori).item(); _image_features(): torch.sum(patches).item()
            d, g = self.dtype, self.vision.global_view_size
            n_ori = 3 * g * g
            crops = self.vision.num_crops
            n_patch = 3 * crops * self.vision.image_size**2 if crops else 3 * self.vision.base_size**2
            check = [reduction("sum", n_ori, 1, d), Op("_local_scalar_dense", bytes_read=d)]
            pre = [*check, reduction("sum", n_patch, 1, d), Op("_local_scalar_dense", bytes_read=d)]
        return calls, [*pre, *glue]

    def decoder_ops(self) -> list[Op]:
        """Position ids and the causal mask built by ``DeepseekV2Model.decode``."""
        b, s, p, d = self.batch, self.seq, self.past, self.dtype
        ops = [Op("arange", bytes_written=s * INT64)]
        if self.variant == "flash":
            return ops
        if s == 1:
            ops.append(Op("zeros", bytes_written=b * (p + 1) * d))
        else:
            ops += [Op("full", bytes_written=s * s * d), copy("triu", s * s, d, d)]
            if p:
                ops += [Op("zeros", bytes_written=s * p * d), copy("cat", s * (s + p), d, d)]
        return ops

    def decoder_calls(self) -> list[tuple[str, Layer]]:
        """The decoder layers and the final norm."""
        d = self.config.decoder
        routed = self.expert_tokens or ()
        calls: list[tuple[str, Layer]] = [
            (
                f"layers.{i}",
                decoder_layer(self.config, i, self.batch, self.seq, self.past, self.variant, self.dtype,
                              routed[i] if i < len(routed) else None, self.decoder_sdpa),
            )
            for i in range(d.num_hidden_layers)
        ]
        calls.append(("norm", DeepseekV2RMSNorm(self.batch * self.seq, d.hidden_size, self.dtype)))
        return calls

    def children(self) -> Sequence[tuple[str, Layer]]:
        d = self.config.decoder
        embed = Embedding(d.vocab_size, d.hidden_size, self.batch * self.seq, self.dtype)
        return [("embed_tokens", embed), *self.vision_parts()[0], *self.decoder_calls()]

    def ops(self) -> Sequence[Op]:
        return [*self.vision_parts()[1], *self.decoder_ops()]

    def own_weight_bytes(self) -> int:
        return 2 * self.config.projector.n_embed * self.dtype

    def weight_bytes(self) -> int:
        # Vision modules are not called in decode steps, but their parameters are resident.
        own = super().weight_bytes()
        if self.vision is None:
            cfg, d = self.config, self.dtype
            own += sam_layer(cfg, 1, cfg.base_size, dtype=d).weight_bytes()
            own += clip_layer(cfg, 1, cfg.queries_per_side(cfg.base_size), dtype=d).weight_bytes()
            own += MlpProjector(1, cfg.projector.input_dim, cfg.projector.n_embed, d).weight_bytes()
        return own


@attrs.frozen(repr=False)
class DeepseekOCRForCausalLM(Layer):
    """The root call: ``model`` then ``lm_head`` on every new position, logits cast to fp32."""

    config: DeepseekOCRConfig
    seq: int
    past: int = 0
    vision: VisionWorkload | None = None
    variant: str = "normal"
    sdpa: str | None = None
    """Vision SDPA implementation override (``"math"`` / ``"fused"``); default from ``variant``."""
    batch: int = 1
    dtype: int = BF16
    expert_tokens: tuple[tuple[int, ...] | None, ...] | None = None
    """Per decoder layer, tokens per routed expert (measured routing); default: the balanced policy."""
    decoder_sdpa: str | None = None
    """Decoder ``attn_implementation="sdpa"`` path (``"math"`` / ``"fused"``); ``None``: eager."""
    host_checks: bool = False
    """Real tensors: the vendor's "is there an image / are there crops" pixel sums read on the host."""
    class_name: str = "DeepseekOCRForCausalLM"

    def model(self) -> DeepseekOCRModel:
        """The ``model`` child."""
        return DeepseekOCRModel(
            self.config, self.seq, self.past, self.vision, self.variant, self.sdpa, batch=self.batch, dtype=self.dtype,
            expert_tokens=self.expert_tokens, host_checks=self.host_checks, decoder_sdpa=self.decoder_sdpa,
        )

    def lm_head(self) -> LMHead:
        """The ``lm_head`` child."""
        d = self.config.decoder
        return LMHead(self.batch * self.seq, d.hidden_size, d.vocab_size, self.dtype)

    def children(self) -> Sequence[tuple[str, Layer]]:
        return [("model", self.model()), ("lm_head", self.lm_head())]

    def ops(self) -> Sequence[Op]:
        return cast(self.batch * self.seq * self.config.decoder.vocab_size, self.dtype, FP32)


def parameter_footprint(cfg: DeepseekOCRConfig, dtype: int = BF16) -> ParameterFootprint:
    """Parameters of the whole model (counted from the layer tree; buffers excluded)."""
    d = cfg.decoder
    sam = sam_layer(cfg, 1, cfg.base_size, dtype=dtype).weight_bytes()
    clip = clip_layer(cfg, 1, cfg.queries_per_side(cfg.base_size), dtype=dtype).weight_bytes()
    proj = MlpProjector(1, cfg.projector.input_dim, cfg.projector.n_embed, dtype).weight_bytes()
    inv_freq = d.head_dim // 2 * FP32  # non-persistent rotary buffer, not a parameter
    layers = sum(decoder_layer(cfg, i, 1, 1, dtype=dtype).weight_bytes() - inv_freq for i in range(d.num_hidden_layers))
    embed = d.vocab_size * d.hidden_size * dtype
    comp = {
        "sam_model": sam // dtype,
        "vision_model": clip // dtype,
        "projector": proj // dtype,
        "embed_tokens": embed // dtype,
        "layers": layers // dtype,
        "norm": d.hidden_size,
        "image_newline+view_seperator": 2 * cfg.projector.n_embed,
        "lm_head": embed // dtype,
    }
    total = sum(comp.values())
    return ParameterFootprint(parameters=total, bytes=total * dtype, by_component=comp)


STANDARD_PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


def prompt_text_tokens(prompt: str = STANDARD_PROMPT) -> int:
    """Text tokens of a prompt under the built-in tokenizer, BOS included, image placeholder excluded."""
    from opmeter.models.deepseek_ocr.tokenizer import BuiltinTokenizer

    tok = BuiltinTokenizer()
    pieces = prompt.split("<image>")
    return 1 + sum(len(tok.encode(p, add_special_tokens=False)) for p in pieces if p)


@attrs.frozen
class Prediction:
    """Analytic prediction of one DeepSeek-OCR run: prefill (with vision) and ``decode_steps`` decode steps.

    Attributes
    ----------
    stages
        ``vision``, ``decoder`` (prefill decoder part incl. embeddings), ``lm_head`` (prefill), ``prefill`` (the whole
        first forward), ``decode_step`` (the first decode step), ``decode`` (all decode steps), ``total``.
    parameters
        The parameter footprint, reported once.
    """

    stages: dict[str, StageCost]
    parameters: ParameterFootprint
    seq: int
    image_tokens: int
    decode_steps: int
    variant: str

    def frame(self) -> pd.DataFrame:
        """One row per stage with every :class:`StageCost` field."""
        return pd.DataFrame([c.as_dict() for c in self.stages.values()])


@attrs.frozen
class DeepseekOCRAnalytic:
    """Whole-model analytic model of DeepSeek-OCR for a preset, an attention variant and a dtype.

    Examples
    --------
    >>> from opmeter.models.deepseek_ocr.geometry import VisionWorkload
    >>> m = DeepseekOCRAnalytic.from_preset("deepseek-ocr-v1-base")
    >>> p = m.predict(VisionWorkload.from_grid(3, 2), decode_steps=100)
    >>> round(p.stages["vision"].flops_tensor_tflops, 1) > 0
    True
    """

    config: DeepseekOCRConfig
    variant: str = "normal"
    dtype: int = BF16
    batch: int = 1
    host_checks: bool = False
    """Model real tensors: add the vendor's host-side pixel-sum checks (absent in shape-only runs)."""
    attn_implementation: str = "eager"
    """Decoder attention of the ``normal`` variant: ``"eager"`` (two matmuls) or ``"sdpa"`` (one
    ``F.scaled_dot_product_attention``, decomposed or fused as ``sdpa`` says)."""
    sdpa: str | None = None
    """Vision ``F.scaled_dot_product_attention`` implementation: ``"math"`` (decomposed, scores in memory: meta
    device, CPU/GPU without a fused kernel) or ``"fused"`` (CPU flash / GPU flash or memory-efficient kernels);
    default: ``"math"`` for the ``normal`` variant, ``"fused"`` for ``flash``."""

    def _decoder_sdpa(self) -> str | None:
        if self.attn_implementation not in ("eager", "sdpa"):
            raise OpmeterError(
                f"attn_implementation {self.attn_implementation!r}: use 'eager' or 'sdpa' (variant='flash' for "
                "flash_attention_2)"
            )
        if self.attn_implementation == "eager" or self.variant == "flash":
            return None
        return _sdpa_impl(self.variant, self.sdpa)

    @classmethod
    def from_preset(cls, preset: str, variant: str = "normal", dtype: int = BF16) -> DeepseekOCRAnalytic:
        """Build from a preset name."""
        return cls(get_config(preset), variant, dtype)

    def prefill(
        self, vision: VisionWorkload | None, text_tokens: int,
        expert_tokens: tuple[tuple[int, ...] | None, ...] | None = None,
    ) -> DeepseekOCRForCausalLM:
        """The root call of the prefill: ``text_tokens`` text positions plus the image tokens.

        ``expert_tokens``: per decoder layer, measured tokens per routed expert (default: balanced routing).
        """
        seq = text_tokens + (vision.image_tokens if vision is not None else 0)
        return DeepseekOCRForCausalLM(
            self.config, seq, 0, vision, self.variant, self.sdpa, batch=self.batch, dtype=self.dtype,
            host_checks=self.host_checks, expert_tokens=expert_tokens, decoder_sdpa=self._decoder_sdpa(),
        )

    def decode_step(
        self, past: int, expert_tokens: tuple[tuple[int, ...] | None, ...] | None = None
    ) -> DeepseekOCRForCausalLM:
        """The root call of one decode step after ``past`` cached positions."""
        return DeepseekOCRForCausalLM(
            self.config, 1, past, None, self.variant, self.sdpa, batch=self.batch, dtype=self.dtype,
            host_checks=self.host_checks, expert_tokens=expert_tokens, decoder_sdpa=self._decoder_sdpa(),
        )

    def vision(self, vision: VisionWorkload) -> Composite:
        """The vision part of the prefill as a composite (paths relative to the root)."""
        calls, glue = vision_calls(self.config, vision, self.variant, self.dtype, self.sdpa)
        return Composite(tuple((f"model.{p}", layer) for p, layer in calls), "vision", tuple(glue))

    def kv_cache_bytes(self, positions: int) -> int:
        """KV cache of all layers holding ``positions`` positions."""
        d = self.config.decoder
        return 2 * self.batch * d.num_hidden_layers * d.num_key_value_heads * d.head_dim * positions * self.dtype

    def decode_cost(self, past: int, steps: int) -> StageCost:
        """Sum of ``steps`` decode steps starting after ``past`` positions (costs are affine in the KV length, so
        two evaluated steps give the exact sum)."""
        first = StageCost.from_layer("decode_step", self.decode_step(past))
        if steps <= 1:
            return attrs.evolve(first, stage="decode", steps=max(steps, 0))
        second = StageCost.from_layer("decode_step", self.decode_step(past + 1))
        tri = steps * (steps - 1) / 2

        def tot(f: str) -> float:
            a, b = getattr(first, f), getattr(second, f)
            return float(steps * a + tri * (b - a))

        last = self.decode_step(past + steps - 1)
        return StageCost(
            stage="decode",
            flops_tensor=tot("flops_tensor"),
            flops_cuda=tot("flops_cuda"),
            io_bytes=tot("io_bytes"),
            activation_bytes=last.activation_bytes(),
            kv_bytes=last.kv_cache_bytes(),
            steps=steps,
        )

    def predict(
        self, vision: VisionWorkload | None, text_tokens: int | None = None, decode_steps: int = 100
    ) -> Prediction:
        """Stage costs of a prefill (with vision when given) followed by ``decode_steps`` decode steps."""
        text = prompt_text_tokens() if text_tokens is None else text_tokens
        root = self.prefill(vision, text)
        model = root.model()
        seq = root.seq
        stages: dict[str, StageCost] = {}
        if vision is not None:
            stages["vision"] = StageCost.from_layer("vision", self.vision(vision), kv_bytes=0)
        calls = [("model.embed_tokens", model.children()[0][1]), *((f"model.{p}", c) for p, c in model.decoder_calls())]
        dec = Composite(tuple(calls), "decoder", tuple(model.decoder_ops()))
        stages["decoder"] = StageCost.from_layer("decoder", dec)
        head = Composite((("lm_head", root.lm_head()),), "lm_head", tuple(root.ops()))
        stages["lm_head"] = StageCost.from_layer("lm_head", head, kv_bytes=0)
        stages["prefill"] = StageCost.from_layer("prefill", root)
        stages["decode_step"] = StageCost.from_layer("decode_step", self.decode_step(seq))
        if decode_steps > 0:
            stages["decode"] = self.decode_cost(seq, decode_steps)
            stages["total"] = StageCost.total("total", [stages["prefill"], stages["decode"]])
        else:
            stages["total"] = attrs.evolve(stages["prefill"], stage="total")
        return Prediction(
            stages=stages,
            parameters=parameter_footprint(self.config, self.dtype),
            seq=seq,
            image_tokens=vision.image_tokens if vision is not None else 0,
            decode_steps=decode_steps,
            variant=self.variant,
        )

    def by_module(
        self, vision: VisionWorkload | None, text_tokens: int | None = None, decode_steps: int = 0
    ) -> pd.DataFrame:
        """Per-module prediction table for prefill plus ``decode_steps`` decode steps, keyed like the tracer's
        ``by_module()`` (root ``"<root>"``)."""
        text = prompt_text_tokens() if text_tokens is None else text_tokens
        root = self.prefill(vision, text)
        calls: list[tuple[str, Layer]] = [("", root)]
        calls += [("", self.decode_step(root.seq + i)) for i in range(decode_steps)]
        return layer_frame(root, calls=calls)


__all__ = [
    "SDPA_IMPLS",
    "STANDARD_PROMPT",
    "VARIANTS",
    "Attention",
    "Block",
    "CLIPVisionEmbeddings",
    "DeepseekOCRAnalytic",
    "DeepseekOCRForCausalLM",
    "DeepseekOCRModel",
    "DeepseekV2DecoderLayer",
    "DeepseekV2MLP",
    "DeepseekV2MoE",
    "DeepseekV2RMSNorm",
    "ImageEncoderViT",
    "LMHead",
    "LayerNorm2d",
    "LlamaAttention",
    "LlamaFlashAttention2",
    "LlamaRotaryEmbedding",
    "MLPBlock",
    "MlpProjector",
    "MoEGate",
    "NoTPAttention",
    "NoTPFeedForward",
    "NoTPTransformer",
    "NoTPTransformerBlock",
    "PatchEmbed",
    "Prediction",
    "VitModel",
    "balanced_active_experts",
    "balanced_expert_tokens",
    "clip_layer",
    "decoder_layer",
    "parameter_footprint",
    "prompt_text_tokens",
    "sam_layer",
    "vision_calls",
]
