"""The reusable analytic blocks: hand-derived FLOPs, scaling properties, and tensor-core FLOPs equal to traced
transformers modules (tiny random configs) for the families the blocks serve."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opmeter.analytic.blocks import GatedMLP, MultiLatentAttention, SelfAttention, SparseMoE, TopKGate
from opmeter.trace import OpTracer

dims = st.integers(min_value=1, max_value=64)


@given(t=dims, h=dims, i=dims)
@settings(max_examples=30, deadline=None)
def test_gated_mlp_is_three_gemms_and_linear_in_tokens(t: int, h: int, i: int) -> None:
    one = GatedMLP(tokens=t, hidden=h, intermediate=i, dtype=2)
    assert one.tensor_core_flops() == 3 * 2 * t * h * i
    assert GatedMLP(tokens=2 * t, hidden=h, intermediate=i, dtype=2).tensor_core_flops() == 2 * one.tensor_core_flops()
    assert one.weight_bytes() == 3 * h * i * 2


@given(s=st.integers(1, 32), past=st.integers(0, 64), heads=st.sampled_from([2, 4, 8]), group=st.sampled_from([1, 2]))
@settings(max_examples=30, deadline=None)
def test_attention_cores_share_tensor_flops_and_gqa_shrinks_the_cache(s: int, past: int, heads: int,
                                                                       group: int) -> None:
    hd, hidden = 16, 64
    kw: dict[str, Any] = dict(batch=1, q_len=s, past=past, hidden=hidden, heads=heads, kv_heads=heads // group,
                              head_dim=hd, dtype=2, rotary_inside=False)
    eager, fused, flash = SelfAttention(**kw), SelfAttention(**kw, sdpa="fused"), SelfAttention(**kw, flash=True)
    proj = 2 * s * hidden * (2 * heads * hd + 2 * heads // group * hd)
    core = 2 * 2 * heads * s * (past + s) * hd
    assert eager.tensor_core_flops() == fused.tensor_core_flops() == flash.tensor_core_flops() == proj + core
    assert eager.kv_cache_bytes() == 2 * (heads // group) * (past + s) * hd * 2
    assert flash.io_bytes() < eager.io_bytes() or s * (past + s) < 4  # no score matrix in memory


def test_mla_hand_count() -> None:
    mla = MultiLatentAttention(batch=1, q_len=12, hidden=64, heads=4, q_lora_rank=32, kv_lora_rank=16,
                               qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, dtype=2)
    t, h = 12, 64
    proj = 2 * t * (h * 32 + 32 * 4 * 24 + h * (16 + 8) + 16 * 4 * (16 + 16) + 4 * 16 * h)
    core = 2 * 4 * 12 * 12 * 24 + 2 * 4 * 12 * 12 * 16
    assert mla.tensor_core_flops() == proj + core
    no_lora = MultiLatentAttention(batch=1, q_len=12, hidden=64, heads=4, q_lora_rank=0, kv_lora_rank=16,
                                   qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, dtype=2)
    assert next(n for n, _ in no_lora.children()) == "q_proj"


def test_moe_routes_top_k_pairs_and_calls_only_loaded_experts() -> None:
    moe = SparseMoE(tokens=3, hidden=8, experts=16, top_k=2, moe_intermediate=4, dtype=2, shared_intermediate=8)
    experts = [n for n, _ in moe.children() if n.startswith("experts.")]
    assert len(experts) == 6  # 3 tokens x top-2 = 6 pairs over 16 experts
    routed = sum(c.tensor_core_flops() for n, c in moe.children() if n.startswith("experts."))
    assert routed == 6 * 3 * 2 * 8 * 4
    assert moe.weight_bytes() == (16 * 3 * 8 * 4 + 16 * 8 + 3 * 8 * 8) * 2
    gate = TopKGate(tokens=3, hidden=8, experts=16, top_k=2, dtype=2)
    assert gate.tensor_core_flops() == 2 * 3 * 16 * 8


# ---- against transformers' own modules ----------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")


def _traced_by_class(model: torch.nn.Module, tokens: int) -> dict[str, tuple[int, int]]:
    ids = torch.randint(0, model.config.vocab_size, (1, tokens))
    with OpTracer(model) as trace, torch.no_grad():
        model(ids)
    df = trace.by_class()
    return {r.class_name: (int(r.calls), int(r.flops_tensor)) for r in df.itertuples()}


def _tiny(name: str, **extra: Any) -> torch.nn.Module:
    config_cls = getattr(transformers, name, None)
    if config_cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {name}")
    base = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                intermediate_size=128, vocab_size=256)
    cfg = config_cls(**{**base, **extra})
    cfg._attn_implementation = "sdpa"
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("family", ["LlamaConfig", "Qwen2Config"])
def test_self_attention_and_mlp_match_dense_families(family: str) -> None:
    t = 12
    traced = _traced_by_class(_tiny(family), t)
    prefix = family.removesuffix("Config")
    attn = SelfAttention(batch=1, q_len=t, hidden=64, heads=4, kv_heads=2, head_dim=16, dtype=4, sdpa="fused",
                         rotary_inside=False, qkv_bias=family == "Qwen2Config")
    mlp = GatedMLP(tokens=t, hidden=64, intermediate=128, dtype=4)
    attention = next(k for k in traced if k.startswith(prefix) and k.endswith("Attention"))  # 4.46: *SdpaAttention
    assert traced[attention] == (2, 2 * attn.tensor_core_flops())
    assert traced[f"{prefix}MLP"] == (2, 2 * mlp.tensor_core_flops())


def test_mla_matches_deepseek_v3_attention() -> None:
    model = _tiny("DeepseekV3Config", num_key_value_heads=4, moe_intermediate_size=32, n_routed_experts=8,
                  num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1, q_lora_rank=32,
                  kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)
    traced = _traced_by_class(model, 12)
    mla = MultiLatentAttention(batch=1, q_len=12, hidden=64, heads=4, q_lora_rank=32, kv_lora_rank=16,
                               qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, dtype=4)
    assert traced["DeepseekV3Attention"] == (2, 2 * mla.tensor_core_flops())


def test_top_k_gate_matches_mixtral_router() -> None:
    model = _tiny("MixtralConfig", num_local_experts=4, num_experts_per_tok=2)
    traced = _traced_by_class(model, 12)
    router = next((k for k in traced if k.startswith("Mixtral") and ("Router" in k or "Gate" in k)), None)
    if router is None:
        pytest.skip("this transformers version has no separate Mixtral router module")
    gate = TopKGate(tokens=12, hidden=64, experts=4, top_k=2, dtype=4)
    assert traced[router] == (2, 2 * gate.tensor_core_flops())
