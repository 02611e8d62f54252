"""Per-module FLOP parity with torch.utils.flop_counter on a battery of models, through generate() too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from trace_helpers import MLP, ConvNet, ManualAttention, torch_flops_per_module

from opmeter import OpTracer, Trace
from opmeter.trace.demo import DemoConfig, DemoTransformer

pytestmark = pytest.mark.usefixtures("clean_globals")


def _ours_minus_attention(trace: Trace) -> dict[str, int]:
    """Our tensor FLOPs per module, without the fused attention ops torch's counter does not see on CPU."""
    mo = trace.by_module_and_operator()
    att = mo[mo["op"].str.contains("_scaled_dot_product_flash_attention_for_cpu")]
    extra = att.groupby("module")["flops_tensor"].sum().to_dict()
    mods = trace.by_module()
    return {m: int(f) - int(extra.get(m, 0)) for m, f in zip(mods["module"], mods["flops_tensor"], strict=True)}


def check_parity(model: nn.Module, fn: Callable[[], Any], *, minus_cpu_attention: bool = False) -> Trace:
    expected = torch_flops_per_module(model, fn)
    with OpTracer(model) as trace:
        fn()
    got = _ours_minus_attention(trace) if minus_cpu_attention else {
        r["module"]: int(r["flops_tensor"]) for r in trace.by_module().to_dict(orient="records")}
    compared = 0
    for module, flops in got.items():
        if module == "<outside>":
            continue
        assert flops == expected.get(module, 0), f"{module}: ours {flops} vs torch {expected.get(module, 0)}"
        compared += flops > 0
    assert compared >= 2
    assert sum(v for k, v in got.items() if k in ("<root>", "<outside>")) == expected["<global>"]
    return trace


def test_parity_mlp_conv_manual_attention() -> None:
    torch.manual_seed(0)
    mlp = MLP(16, 64)
    check_parity(mlp, lambda: mlp(torch.randn(3, 5, 16)))
    conv = ConvNet()
    check_parity(conv, lambda: conv(torch.randn(2, 3, 12, 12)))
    att = ManualAttention()
    with torch.no_grad():
        check_parity(att, lambda: att(torch.randn(2, 7, 16)))


def test_parity_with_backward() -> None:
    torch.manual_seed(0)
    mlp = MLP(8, 16)
    x = torch.randn(4, 8)
    expected = torch_flops_per_module(mlp, lambda: mlp(x).sum().backward())
    with OpTracer(mlp) as trace:
        mlp(x).sum().backward()
    # backward ops run outside module forwards: equal in total
    assert trace.totals()["flops_tensor"] == expected["<global>"]


def test_parity_demo_transformer_generate() -> None:
    torch.manual_seed(0)
    model = DemoTransformer(DemoConfig(n_layers=2)).eval()
    ids = torch.randint(0, 100, (1, 7))
    trace = check_parity(model, lambda: model.generate(ids, max_new_tokens=3), minus_cpu_attention=True)
    # and the attention torch misses is there, with the hand formula: 4*B*H*L*S*D summed over the calls
    ops = trace.by_operator().set_index("op")
    cfg = model.config
    lengths = [(7, 7), (1, 8), (1, 9)]
    hand = sum(4 * cfg.n_heads * lq * s * cfg.head_dim for lq, s in lengths) * cfg.n_layers
    assert ops.loc["aten._scaled_dot_product_flash_attention_for_cpu.default", "flops_tensor"] == hand


transformers = pytest.importorskip("transformers")


def _tiny_gpt2(attn: str) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=128, n_positions=64, bos_token_id=0,
                     eos_token_id=0)
    cfg._attn_implementation = attn
    return GPT2LMHeadModel(cfg).eval()


def _tiny_llama(attn: str) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                      intermediate_size=64, vocab_size=128, bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).eval()


def _generate(model: Any, prompt: int = 6, new: int = 4) -> Callable[[], Any]:
    ids = torch.randint(1, 128, (1, prompt))

    def fn() -> Any:
        return model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)

    return fn


@pytest.mark.parametrize("build", [_tiny_gpt2, _tiny_llama], ids=["gpt2", "llama"])
def test_parity_transformers_generate_eager(build: Callable[[str], Any]) -> None:
    model = build("eager")
    trace = check_parity(model, _generate(model))
    st = trace.stages()
    assert list(st[st["kind"] == "auto"]["stage"]) == ["prefill", "decode[0]", "decode[1]", "decode[2]"]
    assert trace.by_module(stage="decode").iloc[0]["calls"] == 3
    lm = trace.by_module(stage="prefill").set_index("module").loc["lm_head"]
    assert lm["flops_tensor"] in (2 * 1 * 32 * 128, 2 * 6 * 32 * 128)  # last position only, or all positions
    assert trace.unclassified()["reason"].eq("no category").sum() == 0


def test_parity_transformers_generate_sdpa() -> None:
    model = _tiny_llama("sdpa")
    trace = check_parity(model, _generate(model), minus_cpu_attention=True)
    att = trace.by_category().set_index("category").loc["attention"]
    # 2 layers x 4 calls, each 4*B*H*L*S*D with D=8: prefill L=S=6, then L=1 with S=7, 8, 9
    assert att["calls"] == 8
    assert att["flops_tensor"] == 2 * sum(4 * 4 * lq * s * 8 for lq, s in [(6, 6), (1, 7), (1, 8), (1, 9)])
