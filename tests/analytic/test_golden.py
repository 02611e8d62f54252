"""Hand-derived golden values for analytic layers at small and full DeepSeek-OCR shapes."""

from __future__ import annotations

import pytest

from opmeter.analytic import Composite, Conv2d, LayerNorm, Linear, Op, RMSNorm, StageCost, layer_frame, sdpa_ops
from opmeter.conventions import ATTENTION_SOFTMAX_FLOPS, LAYER_NORM_FLOPS
from opmeter.models.deepseek_ocr import analytic as A
from opmeter.models.deepseek_ocr.config import get_config
from opmeter.models.deepseek_ocr.geometry import VisionWorkload

FULL = get_config("deepseek-ocr-v1-base")


def test_linear_by_hand() -> None:
    lin = Linear(tokens=4, in_features=8, out_features=16, bias=True, dtype=2)
    assert lin.tensor_core_flops() == 2 * 4 * 16 * 8
    assert lin.bytes_read() == (4 * 8 + 8 * 16 + 16) * 2  # input, weight, bias
    assert lin.bytes_written() == 4 * 16 * 2
    assert lin.weight_bytes() == (8 * 16 + 16) * 2
    assert lin.arithmetic_intensity() == pytest.approx(1024 / ((352 + 128) * 8))


def test_conv_and_norms_by_hand() -> None:
    conv = Conv2d(batch=1, in_channels=3, out_channels=4, height=8, width=8, kernel=3, padding=1, bias=False)
    assert conv.out_hw == (8, 8)
    assert conv.tensor_core_flops() == 2 * (4 * 8 * 8) * (3 * 3 * 3)
    ln = LayerNorm(rows=10, dim=32)
    assert ln.cuda_core_flops() == LAYER_NORM_FLOPS * 320
    assert ln.tensor_core_flops() == 0
    rms = RMSNorm(rows=10, dim=32, dtype=2)
    # pow, mean (per input), mul, mul per element; add + rsqrt per row
    assert rms.cuda_core_flops() == 4 * 320 + 2 * 10


def test_fused_attention_by_hand() -> None:
    (op,) = sdpa_ops(2, 3, 5, 7, 8, impl="fused")
    assert op.tensor_flops == 4 * 2 * 3 * 5 * 7 * 8
    assert op.cuda_flops == ATTENTION_SOFTMAX_FLOPS * 2 * 3 * 5 * 7
    math_ops = sdpa_ops(2, 3, 5, 7, 8, impl="math")
    assert sum(o.tensor_flops for o in math_ops) == op.tensor_flops


def test_sam_one_view_matches_the_flop_counter_figure() -> None:
    assert A.sam_layer(FULL, 1, 1024).tensor_core_flops() == 976_909_172_736


def test_sam_windowed_padding_and_global_blocks() -> None:
    blk = A.Block(batch=1, grid=64, window=14)
    assert blk.padded == 70
    assert blk.windows == 25
    sam = A.sam_layer(FULL, 1, 1024)
    windows = {name: layer.window for name, layer in sam.children() if isinstance(layer, A.Block)}
    assert [n for n, w in windows.items() if w == 0] == ["blocks.2", "blocks.5", "blocks.8", "blocks.11"]


def test_lm_head_rotary_and_token_counts() -> None:
    vw = VisionWorkload.from_grid(2, 3)
    assert vw.image_tokens == 273 + (10 * 2 + 1) * 10 * 3
    root = A.DeepseekOCRAnalytic(FULL).prefill(vw, 9)
    s = root.seq
    assert s == 9 + 903
    assert root.lm_head().tensor_core_flops() == 2 * s * 1280 * 129280
    rot = A.LlamaRotaryEmbedding(batch=1, seq=s)
    assert rot.tensor_core_flops() == 2 * 64 * s


def test_moe_counts_routed_pairs_plus_shared() -> None:
    t = 17
    moe = A.DeepseekV2MoE(tokens=t)
    expert_gemms = 3 * 2 * 1280 * 896
    routed = 6 * t * expert_gemms
    shared = t * 3 * 2 * 1280 * 1792
    gate = 2 * t * 64 * 1280
    assert moe.tensor_core_flops() == routed + shared + gate
    called = [n for n, _ in moe.children() if n.startswith("experts.")]
    assert len(called) == min(64, 6 * t)
    assert sum(A.balanced_expert_tokens(t, 6, 64)) == 6 * t


def test_decoder_layer_and_kv_cache() -> None:
    layer = A.decoder_layer(FULL, 3, 1, q_len=1, past=99)
    assert layer.kv_cache_bytes() == 2 * 10 * 100 * 128 * 2
    attn = dict(layer.children())["self_attn"]
    # q.kᵀ and p.v over 100 keys, plus the four 1280x1280 projections and the rotary bmm
    assert attn.tensor_core_flops() == 4 * 10 * 1 * 100 * 128 + 4 * 2 * 1280 * 1280 + 2 * 64


def test_parameter_footprint_matches_the_model_card() -> None:
    fp = A.parameter_footprint(FULL)
    assert fp.parameters == 3_336_106_240
    assert fp.by_component["sam_model"] == 95_569_152
    assert fp.by_component["vision_model"] == 303_177_728
    assert fp.by_component["layers"] == 2_603_776_000


def test_stage_cost_units() -> None:
    layer = Composite((("a", Linear(1000, 1000, 1000, bias=False)),), own=(Op("x", cuda_flops=1e9),))
    c = StageCost.from_layer("s", layer)
    assert c.flops_tensor_tflops == pytest.approx(2e9 / 1e12)
    assert c.flops_cuda_tflops == pytest.approx(1e-3)
    assert c.io_tb == pytest.approx(layer.io_bytes() * 8 / 1e12)
    assert c.arithmetic_intensity == pytest.approx(layer.flops() / (layer.io_bytes() * 8))
    frame = layer_frame(layer, calls=[("", layer), ("", layer)])
    assert frame.set_index("module").loc["a", "calls"] == 2


def test_prediction_stages_add_up() -> None:
    p = A.DeepseekOCRAnalytic(FULL).predict(VisionWorkload.from_grid(2, 3), 9, decode_steps=10)
    st = p.stages
    parts = st["vision"].flops_tflops + st["decoder"].flops_tflops + st["lm_head"].flops_tflops
    assert parts == pytest.approx(st["prefill"].flops_tflops, rel=1e-9)
    brute = sum(A.DeepseekOCRAnalytic(FULL).decode_step(p.seq + i).flops() for i in range(10)) / 1e12
    assert st["decode"].flops_tflops == pytest.approx(brute, rel=1e-12)
    assert st["decode"].kv_gb == pytest.approx(2 * 12 * 10 * 128 * (p.seq + 10) * 2 / 1e9)
