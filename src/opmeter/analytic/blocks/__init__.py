"""Reusable analytic blocks: attention (MHA / GQA with rotary; eager, SDPA and flash cores; MLA), gated MLP and
mixture-of-experts layers (per-expert modules, or fused experts as transformers >= 5 writes them); rotary angles
and the LM head. Norms and token embeddings are the primitives of :mod:`opmeter.analytic.primitives`.
Parameterised by shapes only (keyword fields, no model defaults); a model's analytic module subclasses them to give
its class names and defaults."""

from opmeter.analytic.blocks.attention import (
    MultiLatentAttention,
    RotaryEmbedding,
    SelfAttention,
    rotary_apply_ops,
)
from opmeter.analytic.blocks.embedding import LMHead, RotaryAngles
from opmeter.analytic.blocks.fused_moe import FusedExperts, FusedSparseMoE, Router
from opmeter.analytic.blocks.latent_cache import LatentCacheAttention
from opmeter.analytic.blocks.mlp import GatedMLP
from opmeter.analytic.blocks.moe import SparseMoE, TopKGate, balanced_active_experts, balanced_expert_tokens

__all__ = [
    "FusedExperts",
    "FusedSparseMoE",
    "GatedMLP",
    "LMHead",
    "LatentCacheAttention",
    "MultiLatentAttention",
    "RotaryAngles",
    "RotaryEmbedding",
    "Router",
    "SelfAttention",
    "SparseMoE",
    "TopKGate",
    "balanced_active_experts",
    "balanced_expert_tokens",
    "rotary_apply_ops",
]
