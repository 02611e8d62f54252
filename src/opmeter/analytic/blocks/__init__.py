"""Reusable analytic blocks: attention (MHA / GQA with rotary; eager, SDPA and flash cores; MLA), gated MLP and
mixture-of-experts layers. Parameterised by shapes only (keyword fields, no model defaults); a model's analytic
module subclasses them to give its class names and defaults."""

from opmeter.analytic.blocks.attention import (
    MultiLatentAttention,
    RotaryEmbedding,
    SelfAttention,
    rotary_apply_ops,
)
from opmeter.analytic.blocks.mlp import GatedMLP
from opmeter.analytic.blocks.moe import SparseMoE, TopKGate, balanced_active_experts, balanced_expert_tokens

__all__ = [
    "GatedMLP",
    "MultiLatentAttention",
    "RotaryEmbedding",
    "SelfAttention",
    "SparseMoE",
    "TopKGate",
    "balanced_active_experts",
    "balanced_expert_tokens",
    "rotary_apply_ops",
]
