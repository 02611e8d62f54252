"""DeepSeek-OCR-2 analytic layers: transformers' module classes as pure functions of shapes.

Each class models one call of the transformers module of the same name, built from the shared blocks
(:mod:`opmeter.analytic.blocks`): the SAM-style encoder from the ViT blocks, the Qwen2-style visual encoder (image
patches followed by learned queries, one hybrid mask: bidirectional over the patches, causal over the queries) and
the DeepSeek-V2 MoE decoder from the attention, gated-MLP and router blocks. Children carry the module attribute
paths, so :func:`~opmeter.analytic.base.layer_frame` is keyed like the tracer's ``by_module()``.

Variants: ``sdpa="math"`` is PyTorch's decomposition of ``F.scaled_dot_product_attention`` (meta device, scores in
memory), ``"fused"`` one fused kernel (CPU flash, GPU kernels). The routed experts run transformers' default
``grouped_mm`` implementation: two grouped GEMMs over all ``tokens * top_k`` routed rows, whatever the routing.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from opmeter.analytic.base import Composite, Layer, Op
from opmeter.analytic.blocks import GatedMLP, SelfAttention, TopKGate
from opmeter.analytic.blocks.vit import (
    BroadcastRotaryEmbedding,
    ChannelsFirstLayerNorm,
    PatchEmbedding,
    ViTBlock,
)
from opmeter.analytic.primitives import (
    FP32,
    INT64,
    Activation,
    Conv2d,
    Embedding,
    Linear,
    RMSNorm,
    cast,
    copy,
    elementwise,
    gemm,
    reduction,
)
from opmeter.models.deepseek_ocr2.config import QUERIES_GLOBAL, QUERIES_LOCAL, Ocr2Preset

BOOL = 1


def upsample_op(name: str, channels: int, src: int, dst: int, size: int = FP32) -> Op:
    """An interpolation kernel: data movement, no FLOPs counted."""
    return Op(name, bytes_read=channels * src * size, bytes_written=channels * dst * size)


@attrs.frozen(repr=False, kw_only=True)
class MaskedAttention(SelfAttention):
    """:class:`SelfAttention` as transformers 5 calls SDPA: with a boolean mask (``mask="bool"``: the math path
    turns it into an additive bias with one ``where``), or causal without a mask tensor (``mask="causal"``: the math
    path builds the bias from ``ones``, ``tril``, ``zeros``, ``masked_fill``), or no mask (``mask=""``)."""

    mask: str = ""
    caches: bool = True
    """Whether the layer keeps a KV cache (the visual encoder runs once and keeps none)."""

    def own_kv_cache_bytes(self) -> int:
        return super().own_kv_cache_bytes() if self.caches else 0

    def core_ops(self) -> list[Op]:
        ops = super().core_ops()
        b, s, lk, d = self.batch, self.q_len, self.kv_len, self.dtype
        c = FP32 if self.sdpa == "math" else d
        if self.mask == "bool":  # the SDPA composite turns a boolean mask into an additive bias
            extra = [elementwise("where", b * s * lk, [b * s * lk * BOOL], c)]
        elif self.mask != "causal" or self.sdpa != "math":
            return ops
        else:
            extra = [Op("ones", bytes_written=s * lk * BOOL), copy("tril", s * lk, BOOL, BOOL),
                     Op("zeros", bytes_written=s * lk * c),
                     elementwise("masked_fill", s * lk, [s * lk * (c + BOOL)], c)]
        return extra + ops


# ---- SAM-style encoder ---------------------------------------------------------------------------------------------


@attrs.frozen(repr=False, kw_only=True)
class SamEncoder(Layer):
    """``DeepseekOcr2SamVisionEncoder`` on ``batch`` views of ``size`` pixels: patch embedding, absolute position
    embedding (bicubic-resized when the grid differs from the native one), the blocks, ``neck`` and ``proj``."""

    preset: Ocr2Preset
    batch: int
    size: int
    dtype: int
    sdpa: str = "math"
    class_name: str = "DeepseekOcr2SamVisionEncoder"

    @property
    def grid(self) -> int:
        """Patch grid side of this view size."""
        return self.size // self.preset.sam.patch_size

    @property
    def out_grid(self) -> int:
        """Output grid side after the downsampling convolutions (kernel 3, stride 2, padding 1 each)."""
        g = self.grid
        for _ in self.preset.sam.downsample_channels:
            g = (g - 1) // 2 + 1
        return g

    def _blocks(self) -> list[tuple[str, Layer]]:
        s, g, d = self.preset.sam, self.grid, self.dtype
        native = s.image_size // s.patch_size
        blocks: list[tuple[str, Layer]] = []
        for i in range(s.num_hidden_layers):
            glob = i in s.global_attn_indexes
            blocks.append((f"layers.{i}", ViTBlock(
                batch=self.batch, grid=g, dim=s.hidden_size, heads=s.num_attention_heads,
                mlp_dim=int(s.hidden_size * s.mlp_ratio), window=0 if glob else s.window_size,
                rel_table=2 * (native if glob else s.window_size) - 1, dtype=d, sdpa=self.sdpa,
                class_name="DeepseekOcr2SamVisionLayer", attention_class_name=self._attention_class(),
                mlp_class_name="DeepseekOcr2SamMLPBlock", act_class_name="GELUActivation",
            )))
        return blocks

    def _attention_class(self) -> str:
        return "DeepseekOcr2SamVisionSdpaAttention"

    def children(self) -> Sequence[tuple[str, Layer]]:
        s, b, g, d = self.preset.sam, self.batch, self.grid, self.dtype
        oc, (c1, c2) = s.output_channels, s.downsample_channels
        g2 = (g - 1) // 2 + 1
        patch = PatchEmbedding(batch=b, size=self.size, patch=s.patch_size, channels=3, dim=s.hidden_size, dtype=d,
                               class_name="DeepseekOcr2SamPatchEmbeddings")
        neck = Composite((
            ("conv1", Conv2d(b, s.hidden_size, oc, g, g, 1, bias=False, dtype=d)),
            ("layer_norm1", ChannelsFirstLayerNorm(batch=b, channels=oc, height=g, width=g, dtype=d,
                                                   class_name="DeepseekOcr2SamLayerNorm")),
            ("conv2", Conv2d(b, oc, oc, g, g, 3, padding=1, bias=False, dtype=d)),
            ("layer_norm2", ChannelsFirstLayerNorm(batch=b, channels=oc, height=g, width=g, dtype=d,
                                                   class_name="DeepseekOcr2SamLayerNorm")),
        ), class_name="DeepseekOcr2SamVisionNeck")
        proj = Composite((
            ("conv1", Conv2d(b, oc, c1, g, g, 3, stride=2, padding=1, bias=False, dtype=d)),
            ("conv2", Conv2d(b, c1, c2, g2, g2, 3, stride=2, padding=1, bias=False, dtype=d)),
        ), class_name="DeepseekOcr2SamVisionProj")
        return [("patch_embed", patch), *self._blocks(), ("neck", neck), ("proj", proj)]

    def ops(self) -> Sequence[Op]:
        s, b, g, d = self.preset.sam, self.batch, self.grid, self.dtype
        c, ng = s.hidden_size, s.image_size // s.patch_size
        n = b * g * g * c
        if g == ng:
            return [elementwise("add", n, [n * d, c * g * g * d], d, weights_read=c * g * g * d)]
        return [
            *cast(c * ng * ng, d, FP32),
            upsample_op("_upsample_bicubic2d_aa", c, ng * ng, g * g),
            *cast(c * g * g, FP32, d),
            elementwise("add", n, [n * d, c * g * g * d], d),
        ]

    def own_weight_bytes(self) -> int:
        s = self.preset.sam
        ng = s.image_size // s.patch_size
        return ng * ng * s.hidden_size * self.dtype


# ---- Qwen2-style visual encoder ------------------------------------------------------------------------------------


@attrs.frozen(repr=False, kw_only=True)
class VisionEncoderLayer(Layer):
    """``DeepseekOcr2VisionEncoderLayer``: RMSNorm, GQA self-attention (biased q/k/v, RoPE, the hybrid mask),
    residual add, RMSNorm, gated MLP, residual add."""

    preset: Ocr2Preset
    batch: int
    seq: int
    dtype: int
    sdpa: str = "math"
    class_name: str = "DeepseekOcr2VisionEncoderLayer"

    def children(self) -> Sequence[tuple[str, Layer]]:
        e, t, d = self.preset.encoder, self.batch * self.seq, self.dtype
        attn = MaskedAttention(batch=self.batch, q_len=self.seq, hidden=e.hidden_size, heads=e.num_attention_heads,
                               kv_heads=e.num_key_value_heads, head_dim=e.hidden_size // e.num_attention_heads,
                               dtype=d, sdpa=self.sdpa, rotary_inside=False, qkv_bias=True, mask="bool", caches=False,
                               class_name="DeepseekOcr2VisionAttention")
        mlp = GatedMLP(tokens=t, hidden=e.hidden_size, intermediate=e.intermediate_size, dtype=d,
                       class_name="DeepseekOcr2VisionMLP", act_class_name="SiLUActivation")
        norm = "DeepseekOcr2VisionRMSNorm"
        return [
            ("input_layernorm", RMSNorm(t, e.hidden_size, d, class_name=norm)),
            ("self_attn", attn),
            ("post_attention_layernorm", RMSNorm(t, e.hidden_size, d, class_name=norm)),
            ("mlp", mlp),
        ]

    def ops(self) -> Sequence[Op]:
        n, d = self.batch * self.seq * self.preset.encoder.hidden_size, self.dtype
        return [elementwise("add", n, [n * d, n * d], d), elementwise("add", n, [n * d, n * d], d)]

    def held_bytes(self) -> int:
        return self.batch * self.seq * self.preset.encoder.hidden_size * self.dtype


def hybrid_mask_ops(batch: int, seq: int, dtype: int) -> list[Op]:
    """The hybrid attention mask (causal, or both positions among the first ``num_patches``): block ids, the
    boolean ``[B, 1, S, S]`` mask from comparisons."""
    n = batch * seq * seq
    return [
        Op("full", bytes_written=batch * seq * INT64),
        Op("fill_", bytes_written=batch * seq * INT64),
        Op("arange", bytes_written=seq * INT64),
        Op("arange", bytes_written=seq * INT64),
        elementwise("le", seq * seq, [seq * INT64, seq * INT64], BOOL),
        elementwise("eq", n, [batch * seq * INT64, batch * seq * INT64], BOOL),
        elementwise("ge", batch * seq, [batch * seq * INT64], BOOL),
        elementwise("bitwise_and", n, [n * BOOL, batch * seq * BOOL], BOOL),
        elementwise("bitwise_or", n, [seq * seq * BOOL, n * BOOL], BOOL),
    ]


@attrs.frozen(repr=False, kw_only=True)
class VisionEncoder(Layer):
    """``DeepseekOcr2VisionEncoder`` over ``batch`` sequences of ``patches`` image features then ``queries``
    learned queries: positions, the hybrid mask, ``rotary_emb``, the layers, ``norm``."""

    preset: Ocr2Preset
    batch: int
    patches: int
    queries: int
    dtype: int
    sdpa: str = "math"
    class_name: str = "DeepseekOcr2VisionEncoder"

    @property
    def seq(self) -> int:
        """Sequence length: patches then queries."""
        return self.patches + self.queries

    def children(self) -> Sequence[tuple[str, Layer]]:
        e, b, s, d = self.preset.encoder, self.batch, self.seq, self.dtype
        kids: list[tuple[str, Layer]] = [
            ("rotary_emb", BroadcastRotaryEmbedding(batch=1, seq=s, head_dim=e.hidden_size // e.num_attention_heads,
                                                    dtype=d, class_name="DeepseekOcr2VisionRotaryEmbedding")),
        ]
        kids += [(f"layers.{i}", VisionEncoderLayer(preset=self.preset, batch=b, seq=s, dtype=d, sdpa=self.sdpa))
                 for i in range(e.num_hidden_layers)]
        kids.append(("norm", RMSNorm(b * s, e.hidden_size, d, class_name="DeepseekOcr2VisionRMSNorm")))
        return kids

    def ops(self) -> Sequence[Op]:
        return [Op("arange", bytes_written=self.seq * INT64), *hybrid_mask_ops(self.batch, self.seq, self.dtype)]


@attrs.frozen(repr=False, kw_only=True)
class VisionModel(Layer):
    """``DeepseekOcr2VisionModel`` on ``batch`` views of ``size`` pixels: ``sam_encoder``, the SAM features
    flattened and concatenated with the learned queries (144 when the view has at most 144 patches, else 256),
    ``vision_encoder``; the query positions are the output."""

    preset: Ocr2Preset
    batch: int
    size: int
    dtype: int
    sdpa: str = "math"
    class_name: str = "DeepseekOcr2VisionModel"

    def sam(self) -> SamEncoder:
        """The ``sam_encoder`` call."""
        return SamEncoder(preset=self.preset, batch=self.batch, size=self.size, dtype=self.dtype, sdpa=self.sdpa)

    @property
    def patches(self) -> int:
        """SAM output positions per view."""
        return self.sam().out_grid ** 2

    @property
    def queries(self) -> int:
        """Learned queries per view (= image tokens per view)."""
        return QUERIES_LOCAL if self.patches <= QUERIES_LOCAL else QUERIES_GLOBAL

    def children(self) -> Sequence[tuple[str, Layer]]:
        enc = VisionEncoder(preset=self.preset, batch=self.batch, patches=self.patches, queries=self.queries,
                            dtype=self.dtype, sdpa=self.sdpa)
        return [("sam_encoder", self.sam()), ("vision_encoder", enc)]

    def ops(self) -> Sequence[Op]:
        b, h, d = self.batch, self.preset.encoder.hidden_size, self.dtype
        return [copy("cat", b * (self.patches + self.queries) * h, d, d)]

    def own_weight_bytes(self) -> int:
        return (QUERIES_LOCAL + QUERIES_GLOBAL) * self.preset.encoder.hidden_size * self.dtype


# ---- DeepSeek-V2 MoE decoder ---------------------------------------------------------------------------------------


@attrs.frozen(repr=False, kw_only=True)
class GroupedExperts(Layer):
    """``DeepseekOcr2TextExperts`` with transformers' ``grouped_mm`` implementation over ``tokens``.

    Sort the ``tokens * top_k`` routed pairs by expert, gather their hidden states and weights, histogram and
    cumulative offsets, one grouped GEMM for gate and up (``[pairs, H] x [E, H, 2I]``), ``act_fn`` on the gate half
    times the up half, one grouped GEMM down, the routing weights, the inverse permutation, the sum over ``top_k``
    and the cast back. A grouped GEMM costs ``2 * rows * N * K`` over all routed rows, whatever the routing.
    """

    tokens: int
    hidden: int
    experts: int
    top_k: int
    intermediate: int
    dtype: int
    class_name: str = "DeepseekOcr2TextExperts"

    def children(self) -> Sequence[tuple[str, Layer]]:
        p = self.tokens * self.top_k
        return [("act_fn", Activation("silu", p * self.intermediate, self.dtype, class_name="SiLUActivation"))]

    def ops(self) -> Sequence[Op]:
        t, h, e, i, d = self.tokens, self.hidden, self.experts, self.intermediate, self.dtype
        p = t * self.top_k
        w_up, w_down = e * 2 * i * h * d, e * h * i * d
        return [
            Op("sort", bytes_read=p * INT64, bytes_written=2 * p * INT64),
            elementwise("floor_divide", p, [p * INT64], INT64),
            Op("index", bytes_read=p * h * d + p * INT64, bytes_written=p * h * d),
            Op("index", bytes_read=p * FP32 + p * INT64, bytes_written=p * FP32),
            *cast(p, INT64, FP32),
            Op("histc", bytes_read=p * FP32, bytes_written=e * FP32),
            Op("cumsum", cuda_flops=e, bytes_read=e * FP32, bytes_written=e * 4),
            Op("_grouped_mm", tensor_flops=2 * p * 2 * i * h, bytes_read=p * h * d + w_up + e * 4,
               bytes_written=p * 2 * i * d, weights_read=w_up),
            elementwise("mul", p * i, [p * i * d, p * i * d], d),
            Op("_grouped_mm", tensor_flops=2 * p * h * i, bytes_read=p * i * d + w_down + e * 4,
               bytes_written=p * h * d, weights_read=w_down),
            elementwise("mul", p * h, [p * h * d, p * FP32], FP32),  # fp32 routing weights promote
            Op("empty_like", bytes_read=p * INT64, bytes_written=p * INT64),
            Op("arange", bytes_written=p * INT64),
            Op("index_put_", bytes_read=2 * p * INT64, bytes_written=p * INT64),
            Op("index", bytes_read=p * h * FP32 + p * INT64, bytes_written=p * h * FP32),
            reduction("sum", p * h, t * h, FP32),
            *cast(t * h, FP32, d),
        ]

    def own_weight_bytes(self) -> int:
        return 3 * self.experts * self.intermediate * self.hidden * self.dtype


@attrs.frozen(repr=False, kw_only=True)
class TextMoe(Layer):
    """``DeepseekOcr2TextMoe``: ``gate`` (fp32 router, softmax, greedy top-k), ``experts`` (grouped), then
    ``shared_experts`` on every token, added."""

    preset: Ocr2Preset
    tokens: int
    dtype: int
    class_name: str = "DeepseekOcr2TextMoe"

    def children(self) -> Sequence[tuple[str, Layer]]:
        t, d, tx = self.tokens, self.dtype, self.preset.text
        gate = TopKGate(tokens=t, hidden=tx.hidden_size, experts=tx.n_routed_experts, top_k=tx.num_experts_per_tok,
                        dtype=d, class_name="DeepseekOcr2TextTopkRouter")
        experts = GroupedExperts(tokens=t, hidden=tx.hidden_size, experts=tx.n_routed_experts,
                                 top_k=tx.num_experts_per_tok, intermediate=tx.moe_intermediate_size, dtype=d)
        shared = GatedMLP(tokens=t, hidden=tx.hidden_size, intermediate=tx.moe_intermediate_size * tx.n_shared_experts,
                          dtype=d, class_name="DeepseekOcr2TextMLP", act_class_name="SiLUActivation")
        return [("gate", gate), ("experts", experts), ("shared_experts", shared)]

    def ops(self) -> Sequence[Op]:
        n, d = self.tokens * self.preset.text.hidden_size, self.dtype
        return [elementwise("add", n, [n * d, n * d], d)]

    def held_bytes(self) -> int:
        return self.tokens * self.preset.text.hidden_size * self.dtype


@attrs.frozen(repr=False, kw_only=True)
class TextDecoderLayer(Layer):
    """``DeepseekOcr2TextDecoderLayer`` for ``q_len`` new positions after ``past`` cached ones: RMSNorm, MHA with
    RoPE and the KV cache, residual add, RMSNorm, dense MLP or MoE, residual add."""

    preset: Ocr2Preset
    index: int
    batch: int
    q_len: int
    dtype: int
    past: int = 0
    sdpa: str = "math"
    class_name: str = "DeepseekOcr2TextDecoderLayer"

    def children(self) -> Sequence[tuple[str, Layer]]:
        tx, t, d = self.preset.text, self.batch * self.q_len, self.dtype
        causal = self.q_len > 1
        attn = MaskedAttention(batch=self.batch, q_len=self.q_len, hidden=tx.hidden_size,
                               heads=tx.num_attention_heads, kv_heads=tx.num_key_value_heads, head_dim=tx.head_dim,
                               dtype=d, past=self.past, masked=causal and self.sdpa == "math",
                               mask="causal" if causal else "",
                               sdpa=self.sdpa, rotary_inside=False, class_name="DeepseekOcr2TextAttention")
        mlp: Layer
        if tx.mlp_layer_types[self.index] == "sparse":
            mlp = TextMoe(preset=self.preset, tokens=t, dtype=d)
        else:
            mlp = GatedMLP(tokens=t, hidden=tx.hidden_size, intermediate=tx.intermediate_size, dtype=d,
                           class_name="DeepseekOcr2TextMLP", act_class_name="SiLUActivation")
        norm = "DeepseekOcr2TextRMSNorm"
        return [
            ("input_layernorm", RMSNorm(t, tx.hidden_size, d, class_name=norm)),
            ("self_attn", attn),
            ("post_attention_layernorm", RMSNorm(t, tx.hidden_size, d, class_name=norm)),
            ("mlp", mlp),
        ]

    def ops(self) -> Sequence[Op]:
        n, d = self.batch * self.q_len * self.preset.text.hidden_size, self.dtype
        return [elementwise("add", n, [n * d, n * d], d), elementwise("add", n, [n * d, n * d], d)]

    def held_bytes(self) -> int:
        return self.batch * self.q_len * self.preset.text.hidden_size * self.dtype


@attrs.frozen(repr=False, kw_only=True)
class TextModel(Layer):
    """``DeepseekOcr2TextModel`` on embeddings: positions, ``rotary_emb``, the layers, ``norm``."""

    preset: Ocr2Preset
    batch: int
    q_len: int
    dtype: int
    past: int = 0
    sdpa: str = "math"
    class_name: str = "DeepseekOcr2TextModel"

    def children(self) -> Sequence[tuple[str, Layer]]:
        tx, b, s, d = self.preset.text, self.batch, self.q_len, self.dtype
        kids: list[tuple[str, Layer]] = [
            ("rotary_emb", BroadcastRotaryEmbedding(batch=b, seq=s, head_dim=tx.head_dim, dtype=d,
                                                    class_name="DeepseekOcr2TextRotaryEmbedding")),
        ]
        kids += [(f"layers.{i}", TextDecoderLayer(preset=self.preset, index=i, batch=b, q_len=s, dtype=d,
                                                  past=self.past, sdpa=self.sdpa))
                 for i in range(tx.num_hidden_layers)]
        kids.append(("norm", RMSNorm(b * s, tx.hidden_size, d, class_name="DeepseekOcr2TextRMSNorm")))
        return kids

    def ops(self) -> Sequence[Op]:
        s = self.q_len
        return [Op("arange", bytes_written=s * INT64), elementwise("add", s, [s * INT64], INT64)]


# ---- the whole model -----------------------------------------------------------------------------------------------


@attrs.frozen
class ViewBatch:
    """One call of the vision tower: ``count`` views of ``size`` pixels."""

    count: int
    size: int


@attrs.frozen(repr=False, kw_only=True)
class BatchedLinear(Layer):
    """``nn.Linear`` on a ``[B, rows, in]`` input that is not viewable as 2-D (a slice of a longer sequence):
    PyTorch runs one ``bmm`` with the weight broadcast over the batch, then adds the bias."""

    batch: int
    rows: int
    in_features: int
    out_features: int
    dtype: int
    class_name: str = "Linear"

    def ops(self) -> Sequence[Op]:
        b, r, i, o, d = self.batch, self.rows, self.in_features, self.out_features, self.dtype
        n = b * r * o
        return [gemm("bmm", r, o, i, batch=b, a=d, b=d, b_is_weight=True),
                elementwise("add", n, [n * d, o * d], d, weights_read=o * d)]

    def own_weight_bytes(self) -> int:
        return (self.in_features + 1) * self.out_features * self.dtype


@attrs.frozen(repr=False, kw_only=True)
class Ocr2Model(Layer):
    """``DeepseekOcr2Model``: token embedding, the vision tower and projector per view batch (global first, then
    the tiles), the features written into the image-token positions, ``language_model``."""

    preset: Ocr2Preset
    batch: int
    q_len: int
    dtype: int
    past: int = 0
    views: tuple[ViewBatch, ...] = ()
    sdpa: str = "math"
    class_name: str = "DeepseekOcr2Model"

    def vision_calls(self) -> list[tuple[str, Layer]]:
        """Vision tower and projector calls (paths relative to this module)."""
        tx, enc, d = self.preset.text, self.preset.encoder, self.dtype
        calls: list[tuple[str, Layer]] = []
        for v in self.views:
            tower = VisionModel(preset=self.preset, batch=v.count, size=v.size, dtype=d, sdpa=self.sdpa)
            rows = v.count * tower.queries
            proj: Layer = Linear(rows, enc.hidden_size, tx.hidden_size, dtype=d)
            if v.count > 1:
                proj = BatchedLinear(batch=v.count, rows=tower.queries, in_features=enc.hidden_size,
                                     out_features=tx.hidden_size, dtype=d)
            calls += [("vision_tower", tower), ("multi_modal_projector", proj)]
        return calls

    @property
    def image_tokens(self) -> int:
        """Image features written into the sequence (one separator included)."""
        if not self.views:
            return 0
        towers = [VisionModel(preset=self.preset, batch=v.count, size=v.size, dtype=self.dtype) for v in self.views]
        return sum(t.batch * t.queries for t in towers) + 1

    def children(self) -> Sequence[tuple[str, Layer]]:
        tx, b, s, d = self.preset.text, self.batch, self.q_len, self.dtype
        embed = Embedding(tx.vocab_size, tx.hidden_size, b * s, d)
        text = TextModel(preset=self.preset, batch=b, q_len=s, dtype=d, past=self.past, sdpa=self.sdpa)
        return [("language_model.embed_tokens", embed), *self.vision_calls(), ("language_model", text)]

    def ops(self) -> Sequence[Op]:
        if not self.views:
            return []
        h, d, n = self.preset.text.hidden_size, self.dtype, self.batch * self.q_len
        feats = self.image_tokens * h
        return [
            copy("cat", feats, d, d),
            elementwise("eq", n, [n * INT64], BOOL),
            reduction("sum", n, 1, INT64),
            Op("masked_scatter", bytes_read=n * h * d + n * BOOL + feats * d, bytes_written=n * h * d),
        ]

    def own_weight_bytes(self) -> int:
        return self.preset.text.hidden_size * self.dtype  # view_separator


@attrs.frozen(repr=False, kw_only=True)
class Ocr2ForConditionalGeneration(Layer):
    """The root call: ``model`` then ``lm_head`` on the last position only (``logits_to_keep=1``)."""

    preset: Ocr2Preset
    q_len: int
    dtype: int
    past: int = 0
    views: tuple[ViewBatch, ...] = ()
    batch: int = 1
    sdpa: str = "math"
    class_name: str = "DeepseekOcr2ForConditionalGeneration"

    def model(self) -> Ocr2Model:
        """The ``model`` child."""
        return Ocr2Model(preset=self.preset, batch=self.batch, q_len=self.q_len, dtype=self.dtype, past=self.past,
                         views=self.views, sdpa=self.sdpa)

    def children(self) -> Sequence[tuple[str, Layer]]:
        tx = self.preset.text
        return [("model", self.model()), ("lm_head", Linear(self.batch, tx.hidden_size, tx.vocab_size, bias=False,
                                                             dtype=self.dtype))]


PARAMETER_GROUPS: dict[str, str] = {
    "sam_encoder": "model.vision_tower.sam_encoder",
    "vision_encoder": "model.vision_tower.vision_encoder",
    "learned_queries": "model.vision_tower.query_",
    "projector": "model.multi_modal_projector",
    "embed_tokens": "model.language_model.embed_tokens",
    "decoder_layers": "model.language_model.layers",
    "final_norm": "model.language_model.norm",
    "view_separator": "model.view_separator",
    "lm_head": "lm_head",
}
"""Parameter groups and the module-path prefix of their parameters."""


def parameter_counts(preset: Ocr2Preset) -> dict[str, int]:
    """Parameters per group of :data:`PARAMETER_GROUPS`, counted from the analytic layers (buffers excluded)."""
    e, tx = preset.encoder, preset.text
    tower = VisionModel(preset=preset, batch=1, size=preset.global_size, dtype=1)
    sam, encoder = (layer for _, layer in tower.children())
    rotary = next(layer for name, layer in encoder.children() if name == "rotary_emb")
    text = TextModel(preset=preset, batch=1, q_len=1, dtype=1)
    layers = sum(layer.weight_bytes() for name, layer in text.children() if name.startswith("layers."))
    return {
        "sam_encoder": sam.weight_bytes(),
        "vision_encoder": encoder.weight_bytes() - rotary.weight_bytes(),
        "learned_queries": (QUERIES_LOCAL + QUERIES_GLOBAL) * e.hidden_size,
        "projector": (e.hidden_size + 1) * tx.hidden_size,
        "embed_tokens": tx.vocab_size * tx.hidden_size,
        "decoder_layers": layers,
        "final_norm": tx.hidden_size,
        "view_separator": tx.hidden_size,
        "lm_head": tx.vocab_size * tx.hidden_size,
    }
