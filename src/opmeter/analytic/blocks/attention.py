"""Self-attention blocks: rotary embedding, multi-head / grouped-query attention, multi-head latent attention.

Op sequences follow LLaMA-style code as transformers writes it: q/k/v projections, rotary applied to q and k, the
KV-cache append, the attention core, the head merge and ``o_proj``. The core is one of

* eager (``sdpa=None``, ``flash=False``): ``matmul(q, kᵀ)``, ``/ √d``, additive causal mask, fp32 softmax, cast back,
  ``matmul(p, v)``;
* SDPA (``sdpa="math"`` or ``"fused"``): ``F.scaled_dot_product_attention``, decomposed or as one fused kernel;
* flash (``flash=True``): one fused flash-attention call (causal, no mask tensor).

All cores have the same tensor-core FLOPs (both matmuls, causal masking not discounted, GQA heads broadcast); they
differ in CUDA-core work, I/O and activation memory. Every field is keyword-only and model dimensions have no
default: a model's analytic module subclasses a block to set its class names and defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from opmeter.analytic.base import Layer, Op
from opmeter.analytic.primitives import (
    FP32,
    INT64,
    Linear,
    RMSNorm,
    cast,
    copy,
    elementwise,
    gemm,
    sdpa_ops,
    softmax_op,
)


@attrs.frozen(repr=False, kw_only=True)
class RotaryEmbedding(Layer):
    """RoPE angles, computed once per forward: positions to fp32, the outer product ``inv_freq x positions``, ``cat``,
    ``cos``, ``sin``, two scalings, two casts to the model dtype.

    The product is a ``bmm`` ``inv_freq [B, D/2, 1] @ positions [B, 1, S]`` (``2 * B * D/2 * S`` tensor-core FLOPs)
    with ``matmul``, else a broadcast multiply; ``cast_inv_freq`` adds the explicit ``inv_freq.float()`` some
    implementations write; ``buffers`` is the number of fp32 ``inv_freq`` buffers the module holds.
    """

    batch: int
    seq: int
    head_dim: int
    dtype: int
    matmul: bool = True
    cast_inv_freq: bool = False
    buffers: int = 1
    class_name: str = "RotaryEmbedding"

    def ops(self) -> Sequence[Op]:
        b, s, hd, d = self.batch, self.seq, self.head_dim, self.dtype
        half = hd // 2
        n = b * s * hd
        product = (gemm("bmm", half, s, 1, batch=b, a=FP32, b=FP32, out=FP32) if self.matmul
                   else elementwise("mul", b * s * half, [b * s * FP32, half * FP32], FP32))
        return [
            *cast(b * s, INT64, FP32),
            *(cast(half, FP32, FP32) if self.cast_inv_freq else ()),
            product,
            copy("cat", n, FP32, FP32),
            elementwise("cos", n, [n * FP32], FP32),
            elementwise("sin", n, [n * FP32], FP32),
            elementwise("mul", n, [n * FP32], FP32),
            elementwise("mul", n, [n * FP32], FP32),
            *cast(n, FP32, d),
            *cast(n, FP32, d),
        ]

    def own_weight_bytes(self) -> int:
        return self.head_dim // 2 * FP32 * self.buffers


def rotary_apply_ops(numel: int, cos_numel: int, dtype: int) -> list[Op]:
    """``x * cos + rotate_half(x) * sin`` for one of q / k: mul, neg, cat, mul, add."""
    n, d = numel, dtype
    return [
        elementwise("mul", n, [n * d, cos_numel * d], d),
        elementwise("neg", n // 2, [n // 2 * d], d),
        copy("cat", n, d, d),
        elementwise("mul", n, [n * d, cos_numel * d], d),
        elementwise("add", n, [n * d, n * d], d),
    ]


@attrs.frozen(repr=False, kw_only=True)
class SelfAttention(Layer):
    """Causal self-attention (MHA when ``kv_heads == heads``, else GQA) for ``q_len`` new tokens over ``past``
    cached positions (prefill: ``past = 0``; a decode step: ``q_len = 1``).

    ``rotary_inside``: the layer computes its rotary angles itself (a ``rotary_emb`` child, as transformers 4.46's
    LLaMA); otherwise the model computes them once and the layer only applies them. ``qkv_bias``: biased q/k/v
    projections (Qwen2).
    """

    batch: int
    q_len: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: int
    past: int = 0
    masked: bool = True
    sdpa: str | None = None
    """``None``: eager (or flash); ``"math"`` / ``"fused"``: one ``F.scaled_dot_product_attention``."""
    flash: bool = False
    rotary_inside: bool = True
    qkv_bias: bool = False
    class_name: str = "SelfAttention"
    rotary_class_name: str = "RotaryEmbedding"

    @property
    def kv_len(self) -> int:
        """Keys attended to: cached plus new positions."""
        return self.past + self.q_len

    def children(self) -> Sequence[tuple[str, Layer]]:
        t, h, d = self.batch * self.q_len, self.hidden, self.dtype
        qd, kd = self.heads * self.head_dim, self.kv_heads * self.head_dim
        kids: list[tuple[str, Layer]] = [
            ("q_proj", Linear(t, h, qd, bias=self.qkv_bias, dtype=d)),
            ("k_proj", Linear(t, h, kd, bias=self.qkv_bias, dtype=d)),
            ("v_proj", Linear(t, h, kd, bias=self.qkv_bias, dtype=d)),
        ]
        if self.rotary_inside:
            kids.append(("rotary_emb", RotaryEmbedding(batch=self.batch, seq=self.q_len, head_dim=self.head_dim,
                                                       dtype=d, class_name=self.rotary_class_name)))
        kids.append(("o_proj", Linear(t, qd, h, bias=False, dtype=d)))
        return kids

    def _pre_ops(self) -> list[Op]:
        b, s, d = self.batch, self.q_len, self.dtype
        nq = b * self.heads * s * self.head_dim
        nk = b * self.kv_heads * s * self.head_dim
        cos_n = b * s * self.head_dim
        ops = rotary_apply_ops(nq, cos_n, d) + rotary_apply_ops(nk, cos_n, d)
        if self.past:
            ncache = b * self.kv_heads * self.past * self.head_dim
            nall = b * self.kv_heads * self.kv_len * self.head_dim
            for _ in range(2):
                ops.append(Op("cat", bytes_read=(ncache + nk) * d, bytes_written=nall * d,
                              kv_bytes=(ncache + nall) * d))
        return ops

    def _sdpa_ops(self) -> list[Op]:
        b, s, lk, nh, hd, d = self.batch, self.q_len, self.kv_len, self.heads, self.head_dim, self.dtype
        ops: list[Op] = []
        if s > 1:  # .contiguous() of the rotated q (a transposed layout); k, v too unless they come from the cache
            ops.append(copy("clone", b * nh * s * hd, d, d))
            if not self.past:
                ops += [copy("clone", b * self.kv_heads * s * hd, d, d)] * 2
        mask = b * s * lk if self.masked else 0
        kv = 2 * b * self.kv_heads * lk * hd * d if self.past else 0
        ops += [attrs.evolve(op, kv_bytes=kv if op.tensor_flops else 0) for op in sdpa_ops(
            b, nh, s, lk, hd, dtype=d, mask_numel=mask, impl=self.sdpa or "math")]
        if s > 1:
            ops.append(copy("clone", b * s * nh * hd, d, d))  # attn_output.transpose(1, 2).contiguous()
        return ops

    def _flash_ops(self) -> list[Op]:
        b, s, lk, nh, hd, d = self.batch, self.q_len, self.kv_len, self.heads, self.head_dim, self.dtype
        kv = 2 * b * self.kv_heads * lk * hd * d if self.past else 0
        return [attrs.evolve(op, kv_bytes=kv) for op in sdpa_ops(b, nh, s, lk, hd, dtype=d, impl="fused")]

    def _eager_ops(self) -> list[Op]:
        b, s, lk, nh, hd, d = self.batch, self.q_len, self.kv_len, self.heads, self.head_dim, self.dtype
        scores = b * nh * s * lk
        kv = b * self.kv_heads * lk * hd * d if self.past else 0  # K and V come from the cache in decode
        ops = [
            attrs.evolve(gemm("bmm", s, lk, hd, batch=b * nh, a=d, b=d), kv_bytes=kv),
            elementwise("div", scores, [scores * d], d),
        ]
        if self.masked:
            ops.append(elementwise("add", scores, [scores * d, b * s * lk * d], d))
        ops += [
            *cast(scores, d, FP32),
            softmax_op(scores, FP32),
            *cast(scores, FP32, d),
            attrs.evolve(gemm("bmm", s, hd, lk, batch=b * nh, a=d, b=d), kv_bytes=kv),
        ]
        if s > 1:
            ops.append(copy("clone", b * s * nh * hd, d, d))  # attn_output.transpose(1, 2).contiguous()
        return ops

    def core_ops(self) -> list[Op]:
        """The attention core (after the projections and rotary, before ``o_proj``)."""
        if self.flash:
            return self._flash_ops()
        if self.sdpa is not None:
            return self._sdpa_ops()
        return self._eager_ops()

    def ops(self) -> Sequence[Op]:
        return self._pre_ops() + self.core_ops()

    def own_kv_cache_bytes(self) -> int:
        return 2 * self.batch * self.kv_heads * self.kv_len * self.head_dim * self.dtype


@attrs.frozen(repr=False, kw_only=True)
class MultiLatentAttention(Layer):
    """Multi-head latent attention: low-rank query and key-value projections with a shared
    rotary key.

    Children: ``q_a_proj`` -> ``q_a_layernorm`` -> ``q_b_proj`` (or one ``q_proj`` when ``q_lora_rank`` is 0),
    ``kv_a_proj_with_mqa`` (latent plus rotary key), ``kv_a_layernorm``, ``kv_b_proj`` (keys' non-rotary part and
    values), ``o_proj``. The core attends with ``qk_nope_head_dim + qk_rope_head_dim`` for scores and
    ``v_head_dim`` for values (eager, or one fused call with ``fused``). The cache holds the expanded keys and
    values, as transformers does.
    """

    batch: int
    q_len: int
    hidden: int
    heads: int
    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    dtype: int
    past: int = 0
    fused: bool = False
    class_name: str = "MultiLatentAttention"
    norm_class_name: str = "RMSNorm"

    @property
    def kv_len(self) -> int:
        """Keys attended to: cached plus new positions."""
        return self.past + self.q_len

    @property
    def qk_head_dim(self) -> int:
        """Score head dimension: non-rotary plus rotary part."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def children(self) -> Sequence[tuple[str, Layer]]:
        t, h, d, nh = self.batch * self.q_len, self.hidden, self.dtype, self.heads
        kids: list[tuple[str, Layer]] = []
        if self.q_lora_rank:
            kids += [
                ("q_a_proj", Linear(t, h, self.q_lora_rank, bias=False, dtype=d)),
                ("q_a_layernorm", RMSNorm(t, self.q_lora_rank, d, class_name=self.norm_class_name)),
                ("q_b_proj", Linear(t, self.q_lora_rank, nh * self.qk_head_dim, bias=False, dtype=d)),
            ]
        else:
            kids.append(("q_proj", Linear(t, h, nh * self.qk_head_dim, bias=False, dtype=d)))
        kids += [
            ("kv_a_proj_with_mqa", Linear(t, h, self.kv_lora_rank + self.qk_rope_head_dim, bias=False, dtype=d)),
            ("kv_a_layernorm", RMSNorm(t, self.kv_lora_rank, d, class_name=self.norm_class_name)),
            ("kv_b_proj", Linear(t, self.kv_lora_rank, nh * (self.qk_nope_head_dim + self.v_head_dim), bias=False,
                                 dtype=d)),
            ("o_proj", Linear(t, nh * self.v_head_dim, h, bias=False, dtype=d)),
        ]
        return kids

    def ops(self) -> Sequence[Op]:
        b, s, lk, nh, d = self.batch, self.q_len, self.kv_len, self.heads, self.dtype
        dq, dv = self.qk_head_dim, self.v_head_dim
        rope_q, rope_k = b * nh * s * self.qk_rope_head_dim, b * s * self.qk_rope_head_dim
        cos_n = b * s * self.qk_rope_head_dim
        ops = rotary_apply_ops(rope_q, cos_n, d) + rotary_apply_ops(rope_k, cos_n, d)
        ops += [copy("cat", b * nh * s * dq, d, d), copy("cat", b * nh * s * dq, d, d)]  # q and k: nope | rope
        kv = b * nh * lk * (dq + dv) * d if self.past else 0
        if self.fused:
            fused = sdpa_ops(b, nh, s, lk, dq, v_dim=dv, dtype=d, impl="fused")
            return [*ops, *(attrs.evolve(op, kv_bytes=kv) for op in fused)]
        scores = b * nh * s * lk
        return [
            *ops,
            attrs.evolve(gemm("bmm", s, lk, dq, batch=b * nh, a=d, b=d), kv_bytes=kv),
            elementwise("mul", scores, [scores * d], d),
            elementwise("add", scores, [scores * d, b * s * lk * d], d),
            *cast(scores, d, FP32),
            softmax_op(scores, FP32),
            *cast(scores, FP32, d),
            gemm("bmm", s, dv, lk, batch=b * nh, a=d, b=d),
        ]

    def own_kv_cache_bytes(self) -> int:
        return self.batch * self.heads * self.kv_len * (self.qk_head_dim + self.v_head_dim) * self.dtype
