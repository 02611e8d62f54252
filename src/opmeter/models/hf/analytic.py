"""Analytic model of the decoder-only families the adapter predicts, from their transformers config alone.

:func:`decoder_spec` reads a config into a :class:`DecoderSpec` (``None`` for a family it does not know);
:class:`CausalLM` is one model call (the prefill, or one decode step over a cached prefix) as a layer tree whose
paths are the module paths transformers gives these families (``model.layers.3.self_attn.q_proj``, ``lm_head``),
built from the shared blocks of :mod:`opmeter.analytic.blocks`:

* attention: grouped-query :class:`SelfAttention` with the rotary angles computed once per forward
  (:class:`RotaryAngles`) and one SDPA call (Llama, Qwen2 with biased q/k/v, Mixtral, Qwen2-MoE), or multi-head
  latent attention with a latent cache (:class:`LatentCacheAttention`, DeepSeek-V2/V3);
* MLP: :class:`GatedMLP`, or a fused-experts MoE block (:class:`FusedSparseMoE`) on the layers the config makes
  sparse, with the shared experts the family has;
* RMSNorms, the token embedding, the final norm, and the LM head over the last position (``logits_to_keep=1``).

What differs between transformers releases (rotary as a ``bmm``, per-expert MoE modules before 5) is a field of
:class:`DecoderSpec` set from the installed major version.

The MoE layout modelled is transformers >= 5's (one fused ``experts`` module per block); :func:`decoder_spec`
returns ``None`` for an MoE model of an older layout (per-expert modules), which is then measured only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from opmeter.analytic.base import Layer, Op
from opmeter.analytic.blocks import FusedSparseMoE, GatedMLP, LatentCacheAttention, LMHead, RotaryAngles, SelfAttention
from opmeter.analytic.primitives import Embedding, RMSNorm, elementwise

DENSE = ("llama", "qwen2")
MOE = ("mixtral", "qwen2_moe", "deepseek_v2", "deepseek_v3")
FAMILIES = DENSE + MOE
"""Model types with an analytic model."""


@attrs.frozen
class MoESpec:
    """Routed experts of the sparse layers."""

    experts: int
    top_k: int
    intermediate: int
    shared_intermediate: int = 0
    shared_name: str = "shared_experts"
    shared_gate_name: str = ""
    fp32_router: bool = False
    scoring: str = "softmax"


@attrs.frozen
class LatentSpec:
    """Multi-head latent attention sizes (``q_lora_rank`` 0: one ``q_proj``)."""

    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@attrs.frozen
class DecoderSpec:
    """What the analytic model needs from a decoder-only config."""

    family: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    dtype: int
    qkv_bias: bool = False
    tied: bool = False
    moe: MoESpec | None = None
    sparse_layers: tuple[int, ...] = ()
    latent: LatentSpec | None = None
    sdpa: str = "fused"
    rotary_matmul: bool = False
    """The rotary angles' outer product is a ``bmm`` (transformers < 5), not a broadcast multiply."""

    @property
    def rotary_dim(self) -> int:
        """Head dimension the rotary angles are computed for."""
        return self.latent.qk_rope_head_dim if self.latent is not None else self.head_dim


def _sparse_layers(config: Any) -> tuple[int, ...]:
    n = int(config.num_hidden_layers)
    kind = config.model_type
    if kind == "mixtral":
        return tuple(range(n))
    if kind == "qwen2_moe":
        skip, step = set(config.mlp_only_layers or ()), int(config.decoder_sparse_step or 1)
        return tuple(i for i in range(n) if i not in skip and config.num_experts > 0 and (i + 1) % step == 0)
    return tuple(range(int(config.first_k_dense_replace or 0), n))


def _moe(config: Any) -> MoESpec:
    kind = config.model_type
    if kind == "mixtral":
        return MoESpec(int(config.num_local_experts), int(config.num_experts_per_tok), int(config.intermediate_size))
    if kind == "qwen2_moe":
        return MoESpec(int(config.num_experts), int(config.num_experts_per_tok), int(config.moe_intermediate_size),
                       int(config.shared_expert_intermediate_size), "shared_expert", "shared_expert_gate")
    shared = int(config.moe_intermediate_size) * int(config.n_shared_experts or 0)
    v3 = kind == "deepseek_v3"
    return MoESpec(int(config.n_routed_experts), int(config.num_experts_per_tok), int(config.moe_intermediate_size),
                   shared, fp32_router=v3, scoring="sigmoid" if v3 else "softmax")


def _latent(config: Any) -> LatentSpec:
    return LatentSpec(int(config.q_lora_rank or 0), int(config.kv_lora_rank), int(config.qk_nope_head_dim),
                      int(config.qk_rope_head_dim), int(config.v_head_dim))


def decoder_spec(config: Any, dtype: int, transformers_major: int = 5) -> DecoderSpec | None:
    """The spec of a known family's config (element size ``dtype``), ``None`` for any other family.

    ``transformers_major``: the installed release's major version. Before 5 MoE experts are per-expert modules (the
    MoE families are then not modelled: ``None``)) and the rotary angles are a ``bmm``.
    """
    fused_experts = transformers_major >= 5
    kind = config.model_type
    if kind not in FAMILIES or (kind in MOE and not fused_experts):
        return None
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
    moe = _moe(config) if kind in MOE else None
    return DecoderSpec(
        family=kind, hidden=int(config.hidden_size), layers=int(config.num_hidden_layers), heads=heads,
        kv_heads=int(getattr(config, "num_key_value_heads", None) or heads), head_dim=int(head_dim),
        intermediate=int(config.intermediate_size), vocab=int(config.vocab_size), dtype=dtype,
        qkv_bias=kind in ("qwen2", "qwen2_moe") or bool(getattr(config, "attention_bias", False)),
        tied=bool(getattr(config, "tie_word_embeddings", False)), moe=moe,
        sparse_layers=_sparse_layers(config) if moe is not None else (),
        latent=_latent(config) if kind.startswith("deepseek") else None, rotary_matmul=transformers_major < 5,
    )


@attrs.frozen(repr=False, kw_only=True)
class DecoderLayer(Layer):
    """One decoder layer: pre-norm attention and MLP (or MoE) with their residual adds."""

    spec: DecoderSpec
    index: int
    batch: int
    q_len: int
    past: int
    class_name: str = "DecoderLayer"

    def _attention(self) -> Layer:
        s, b, q = self.spec, self.batch, self.q_len
        if s.latent is not None:
            lat = s.latent
            return LatentCacheAttention(batch=b, q_len=q, hidden=s.hidden, heads=s.heads, q_lora_rank=lat.q_lora_rank,
                                        kv_lora_rank=lat.kv_lora_rank, qk_nope_head_dim=lat.qk_nope_head_dim,
                                        qk_rope_head_dim=lat.qk_rope_head_dim, v_head_dim=lat.v_head_dim,
                                        dtype=s.dtype, past=self.past, fused=True)
        return SelfAttention(batch=b, q_len=q, hidden=s.hidden, heads=s.heads, kv_heads=s.kv_heads,
                             head_dim=s.head_dim, dtype=s.dtype, past=self.past, masked=False, sdpa=s.sdpa,
                             rotary_inside=False, qkv_bias=s.qkv_bias)

    def _mlp(self) -> Layer:
        s, t = self.spec, self.batch * self.q_len
        m = s.moe
        if m is None or self.index not in s.sparse_layers:
            return GatedMLP(tokens=t, hidden=s.hidden, intermediate=s.intermediate, dtype=s.dtype)
        return FusedSparseMoE(tokens=t, hidden=s.hidden, experts=m.experts, top_k=m.top_k,
                              moe_intermediate=m.intermediate, dtype=s.dtype, shared_intermediate=m.shared_intermediate,
                              shared_name=m.shared_name, shared_gate_name=m.shared_gate_name,
                              fp32_router=m.fp32_router, scoring=m.scoring)

    def children(self) -> Sequence[tuple[str, Layer]]:
        rows, s = self.batch * self.q_len, self.spec
        return [
            ("input_layernorm", RMSNorm(rows, s.hidden, s.dtype)),
            ("self_attn", self._attention()),
            ("post_attention_layernorm", RMSNorm(rows, s.hidden, s.dtype)),
            ("mlp", self._mlp()),
        ]

    def ops(self) -> Sequence[Op]:
        n, d = self.batch * self.q_len * self.spec.hidden, self.spec.dtype
        return [elementwise("add", n, [n * d, n * d], d)] * 2

    def held_bytes(self) -> int:
        return self.batch * self.q_len * self.spec.hidden * self.spec.dtype


@attrs.frozen(repr=False, kw_only=True)
class CausalLM(Layer):
    """One call of a decoder-only causal LM: ``q_len`` new positions over ``past`` cached ones (module docstring)."""

    spec: DecoderSpec
    batch: int
    q_len: int
    past: int = 0
    class_name: str = "CausalLM"

    def children(self) -> Sequence[tuple[str, Layer]]:
        s, b, q = self.spec, self.batch, self.q_len
        return [("model", _Backbone(spec=s, batch=b, q_len=q, past=self.past)),
                ("lm_head", LMHead(batch=b, kept=1, hidden=s.hidden, vocab=s.vocab, dtype=s.dtype, tied=s.tied))]


@attrs.frozen(repr=False, kw_only=True)
class _Backbone(Layer):
    """The decoder stack: token embedding, rotary angles, the layers, the final norm."""

    spec: DecoderSpec
    batch: int
    q_len: int
    past: int
    class_name: str = "DecoderModel"

    def children(self) -> Sequence[tuple[str, Layer]]:
        s, b, q = self.spec, self.batch, self.q_len
        kids: list[tuple[str, Layer]] = [
            ("embed_tokens", Embedding(s.vocab, s.hidden, b * q, s.dtype)),
            ("rotary_emb", RotaryAngles(batch=b, seq=q, head_dim=s.rotary_dim, dtype=s.dtype,
                                        matmul=s.rotary_matmul)),
        ]
        kids += [(f"layers.{i}", DecoderLayer(spec=s, index=i, batch=b, q_len=q, past=self.past))
                 for i in range(s.layers)]
        kids.append(("norm", RMSNorm(b * q, s.hidden, s.dtype)))
        return kids
