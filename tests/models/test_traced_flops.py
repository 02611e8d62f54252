"""Traced tensor-core FLOPs of the full-size standard workload (shape-only) equal hand-derived values."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from opmeter.models.deepseek_ocr import BuiltinTokenizer, DeepseekOCRForCausalLM, load_workload

trace_mod = pytest.importorskip("opmeter.trace")

H, V, HEADS, HD = 1280, 129280, 10, 128


def sam_flops(side: int) -> int:
    """SAM ViT-B on one ``side x side`` view: patch conv, 8 windowed + 4 global blocks, neck, net_2, net_3."""
    d, heads, hd, win = 768, 12, 64, 14
    g = side // 16
    t = g * g
    total = 2 * t * d * 3 * 16 * 16  # patch_embed conv
    gp = math.ceil(g / win) * win
    nw = (gp // win) ** 2
    windowed = (
        2 * gp * gp * d * 4 * d  # qkv + proj on the zero-padded windows
        + 4 * nw * heads * win**4 * hd  # q k^T and p v
        + 4 * nw * heads * win**3 * hd  # two rel-pos einsums
        + 16 * t * d * d  # MLP (unpadded)
    )
    global_ = 8 * t * d * d + 4 * heads * t * t * hd + 4 * heads * g**3 * hd + 16 * t * d * d
    total += 8 * windowed + 4 * global_
    total += 2 * t * 256 * d + 2 * t * 256 * 256 * 9  # neck convs
    total += 2 * (g // 2) ** 2 * 512 * 256 * 9 + 2 * (g // 4) ** 2 * 1024 * 512 * 9  # net_2, net_3
    return total


def clip_flops(g: int) -> int:
    """CLIP-L tower on a ``g x g`` SAM feature grid (+ class token), 24 layers."""
    n, d = g * g + 1, 1024
    return 24 * (2 * n * d * 3 * d + 2 * n * d * d + 4 * 16 * n * n * 64 + 2 * 2 * n * d * 4 * d)


def attn_flops(q: int, kv: int) -> int:
    """Decoder attention: q/k/v/o projections, the rotary angle GEMM, q k^T and p v."""
    return 8 * q * H * H + 2 * 64 * q + 4 * HEADS * q * kv * HD


@pytest.fixture(scope="module")
def traced(full_meta: DeepseekOCRForCausalLM, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, int]:
    wl = load_workload("dsocr-standard-v1", max_new_tokens=3)
    image = wl.save_image(tmp_path_factory.mktemp("page"))
    with trace_mod.OpTracer(full_meta) as trace:
        full_meta.infer(BuiltinTokenizer(), **wl.infer_kwargs(image))
    return trace, wl.prefill_length()


def _flops(df: pd.DataFrame, module: str) -> int:
    return int(df.set_index("module").loc[module, "flops_tensor"])


def _experts_flops(df: pd.DataFrame, layer: int) -> int:
    """Routed experts are called through ``experts[i]`` (the ModuleList itself is never called): sum them."""
    prefix = f"model.layers.{layer}.mlp.experts."
    rows = df[df["module"].str.startswith(prefix) & (df["module"].str.count(r"\.") == 5)]
    return int(rows["flops_tensor"].sum())


def test_sam_one_global_view_matches_issue_value() -> None:
    assert sam_flops(1024) == 976_909_172_736


def test_prefill_flops_per_module(traced: tuple[object, int]) -> None:
    trace, s = traced
    df = trace.by_module(stage="prefill")  # type: ignore[attr-defined]
    assert s == 912
    assert _flops(df, "model.sam_model") == 6 * sam_flops(640) + sam_flops(1024)
    assert _flops(df, "model.vision_model") == 6 * clip_flops(10) + clip_flops(16)
    assert _flops(df, "model.projector") == 2 * (6 * 100 + 256) * 2048 * H
    assert _flops(df, "lm_head") == 2 * s * H * V
    assert _flops(df, "model.layers.0.self_attn") == attn_flops(s, s)
    assert _flops(df, "model.layers.0.self_attn.rotary_emb") == 2 * 64 * s
    assert _flops(df, "model.layers.0.mlp") == 6 * s * H * 6848
    assert _flops(df, "model.layers.5.mlp.gate") == 2 * s * H * 64
    assert _experts_flops(df, 5) == 6 * s * 6 * H * 896  # exactly 6 routed pairs per token
    assert _flops(df, "model.layers.5.mlp.shared_experts") == 6 * s * H * 1792
    decoder = attn_flops(s, s) * 12 + 6 * s * H * 6848 + 11 * (2 * s * H * 64 + 36 * s * H * 896 + 6 * s * H * 1792)
    vision = 6 * sam_flops(640) + sam_flops(1024) + 6 * clip_flops(10) + clip_flops(16) + 2 * 856 * 2048 * H
    assert _flops(df, "model") == decoder + vision


def test_decode_flops_and_calls(traced: tuple[object, int]) -> None:
    trace, s = traced
    df = trace.by_module(stage="decode")  # type: ignore[attr-defined]
    idx = df.set_index("module")
    assert "model.sam_model" not in idx.index or int(idx.loc["model.sam_model", "calls"]) == 0
    assert _flops(df, "lm_head") == 2 * 2 * H * V
    assert _flops(df, "model.layers.3.self_attn") == attn_flops(1, s + 1) + attn_flops(1, s + 2)
    assert _experts_flops(df, 3) == 2 * 36 * H * 896
    experts = idx[idx.index.str.startswith("model.layers.3.mlp.experts.") & (idx.index.str.count(r"\.") == 5)]
    assert int((experts["calls"] > 0).sum()) == 6  # balanced policy: one token -> 6 experts (0..5) per step


def test_prefill_calls_and_metadata(traced: tuple[object, int]) -> None:
    trace, _ = traced
    idx = trace.by_module(stage="prefill").set_index("module")  # type: ignore[attr-defined]
    assert int(idx.loc["model.sam_model", "calls"]) == 2  # crops batch, then the global view
    assert int(idx.loc["model.vision_model", "calls"]) == 2
    assert int(idx.loc["model.layers.1.mlp.experts.63", "calls"]) == 1
    meta = trace.metadata  # type: ignore[attr-defined]
    assert meta["execution"] == "shape-only" and meta["moe_routing"] == "balanced-deterministic"
