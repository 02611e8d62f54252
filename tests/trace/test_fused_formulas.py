"""FLOPs and bytes of flash-attn's custom ops, the aten attention backwards and grouped / quantised GEMMs.

flash-attn's ops are CPU stand-ins with the exact schemas (``flash_attn_standin``); counts are checked against
hand-derived values and against ``torch.utils.flop_counter`` wherever torch counts the same work.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from flash_attn_standin import SCHEMAS, ensure_registered
from torch.utils.flop_counter import flop_registry
from trace_helpers import torch_total

from opmeter import OpTracer
from opmeter import conventions as cv
from opmeter.trace import categories as cat
from opmeter.trace.formulas import compile_op, op_cost

aten = torch.ops.aten
ensure_registered()
fa = torch.ops.flash_attn
GROUPED_MM = getattr(aten, "_grouped_mm", None)
needs_grouped_mm = pytest.mark.skipif(GROUPED_MM is None, reason="this torch has no aten._grouped_mm")


def _torch_sdpa_counts_gqa() -> bool:
    try:
        flop_registry[aten._scaled_dot_product_flash_attention]((1, 4, 2, 8), (1, 2, 2, 8), (1, 2, 2, 8))
    except AssertionError:  # older torch (2.6) asserts equal query and key/value heads
        return False
    return True


TORCH_SDPA_COUNTS_GQA = _torch_sdpa_counts_gqa()


def _grouped_mm_device() -> str:
    """``cpu`` when this torch has a CPU kernel for ``_grouped_mm`` (2.13 has one), else ``meta`` (formula only)."""
    try:
        torch._grouped_mm(torch.ones(2, 8, dtype=torch.bfloat16), torch.ones(1, 8, 8, dtype=torch.bfloat16),
                          offs=torch.tensor([2], dtype=torch.int32))
    except (RuntimeError, NotImplementedError, AttributeError):
        return "meta"
    return "cpu"


def traced(fn: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing here may be uncounted
        with torch.no_grad(), OpTracer(torch.nn.Identity()) as trace:
            fn()
    return trace


def op_row(trace: Any, op: str) -> Any:
    return trace.by_operator().set_index("op").loc[op]


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(*shape, device="meta", dtype=dtype)


def _bhld(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


# ----------------------------------------------------------------------------------------------- flash-attn ops


def test_standins_have_flash_attn_schemas() -> None:
    for name, schema in SCHEMAS.items():
        assert str(getattr(fa, name).default._schema) == schema
        assert cat.category_of(getattr(fa, name).default) == cat.ATTENTION
        assert not compile_op(getattr(fa, name).default).uncounted


@pytest.mark.parametrize("heads_kv", [4, 2])
def test_flash_attn_forward_counts_both_matmuls(heads_kv: int) -> None:
    b, lq, lk, h, d = 2, 6, 9, 4, 8
    q, k, v = torch.randn(b, lq, h, d), torch.randn(b, lk, heads_kv, d), torch.randn(b, lk, heads_kv, d)
    trace = traced(lambda: fa._flash_attn_forward(q, k, v, 0.0, d ** -0.5, False, -1, -1, 0.0, None, False))
    row = op_row(trace, "flash_attn._flash_attn_forward.default")
    scores = b * h * lq * lk
    assert row["category"] == "attention" and bool(row["exact"])
    assert row["flops_tensor"] == 4 * scores * d  # Q K^T and P V, GQA heads broadcast
    # torch counts the same attention in [B, H, L, D] layout (its SDPA formula) and as explicit matmuls
    if heads_kv == h or TORCH_SDPA_COUNTS_GQA:
        shapes = (_bhld(q).shape, _bhld(k).shape, _bhld(v).shape)
        assert row["flops_tensor"] == flop_registry[aten._scaled_dot_product_flash_attention](*shapes)
    kx = _bhld(k).repeat_interleave(h // heads_kv, 1)
    assert row["flops_tensor"] == torch_total(lambda: torch.softmax(_bhld(q) @ kx.transpose(-1, -2), -1) @ kx)
    assert row["flops_cuda"] == scores * cv.ATTENTION_SOFTMAX_FLOPS
    out_bytes = q.nbytes + b * h * lq * 4 + 16  # out, softmax_lse (fp32), empty S_dmask, rng_state (2 x int64)
    assert (row["bytes_read"], row["bytes_written"]) == (q.nbytes + k.nbytes + v.nbytes, out_bytes)


def test_flash_attn_causal_window_not_discounted_alibi_softcap_on_cuda_cores() -> None:
    b, length, h, d = 1, 8, 2, 4
    q = torch.randn(b, length, h, d)
    slopes = torch.tensor([0.5, 0.25])

    def run(causal: bool, left: int, softcap: float, alibi: torch.Tensor | None) -> Any:
        return op_row(traced(lambda: fa._flash_attn_forward(q, q, q, 0.0, 0.5, causal, left, -1, softcap, alibi,
                                                            False)), "flash_attn._flash_attn_forward.default")

    plain, masked = run(False, -1, 0.0, None), run(True, 2, 0.0, None)
    assert masked["flops_tensor"] == plain["flops_tensor"] == 4 * b * h * length * length * d  # convention
    assert masked["flops_cuda"] == plain["flops_cuda"]
    extra = run(False, -1, 30.0, slopes)["flops_cuda"] - plain["flops_cuda"]
    assert extra == b * h * length * length * (cv.ATTENTION_MASK_FLOPS + cv.TANH_FLOPS + 2)


def _varlen_inputs(lengths: list[int], h: int, hk: int, d: int) -> tuple[torch.Tensor, ...]:
    total = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return torch.randn(total, h, d), torch.randn(total, hk, d), torch.randn(total, hk, d), cu


def test_flash_attn_varlen_counts_each_sequence_from_cu_seqlens() -> None:
    lengths, h, hk, d = [3, 7, 2], 4, 2, 8
    q, k, v, cu = _varlen_inputs(lengths, h, hk, d)
    trace = traced(lambda: fa._flash_attn_varlen_forward(q, k, v, cu, cu, max(lengths), max(lengths), 0.0, 0.5, True))
    row = op_row(trace, "flash_attn._flash_attn_varlen_forward.default")
    assert row["flops_tensor"] == sum(4 * h * n * n * d for n in lengths) == 4 * h * d * (9 + 49 + 4)
    # the same as the sequences run one by one through the dense op
    dense = 0
    for i in range(len(lengths)):
        part = slice(int(cu[i]), int(cu[i + 1]))
        one = traced(lambda p=part: fa._flash_attn_forward(q[p][None], k[p][None], v[p][None], 0.0, 0.5, True, -1, -1,
                                                           0.0, None, False))
        dense += int(one.totals()["flops_tensor"])
    assert row["flops_tensor"] == dense


def test_flash_attn_varlen_on_meta_counts_every_sequence_at_max_length() -> None:
    """Shape-only: offsets hold no values, so each sequence is counted at ``max_seqlen`` (an upper bound, as torch
    does for its own packed attention)."""
    h, d = 4, 8
    q, cu = _meta(12, h, d), _meta(4, dtype=torch.int32)
    args = (q, q, q, cu, cu, 7, 7, 0.0, 0.5, True)
    assert op_cost(fa._flash_attn_varlen_forward.default, args, {}, None).flops_tensor == 3 * 4 * h * 7 * 7 * d


def test_flash_attn_backward_matches_torch_backward_formula() -> None:
    b, length, h, d = 2, 5, 2, 4
    q, k, v = (torch.randn(b, length, h, d) for _ in range(3))
    out, lse, _, rng = fa._flash_attn_forward(q, k, v, 0.0, 0.5, True, -1, -1, 0.0, None, False)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dout = torch.randn_like(out)
    trace = traced(lambda: fa._flash_attn_backward(dout, q, k, v, out, lse, dq, dk, dv, 0.0, 0.5, True, -1, -1, 0.0,
                                                   None, False, rng))
    row = op_row(trace, "flash_attn._flash_attn_backward.default")
    expected = flop_registry[aten._scaled_dot_product_flash_attention_backward](
        _bhld(dout).shape, _bhld(q).shape, _bhld(k).shape, _bhld(v).shape)
    assert row["flops_tensor"] == expected == 5 * 2 * b * h * length * length * d  # 2.5x the forward
    # the stand-in really computes the gradients (so the op is exercised, not stubbed)
    qq, kk, vv = (x.clone().requires_grad_(True) for x in (q, k, v))
    ref = F.scaled_dot_product_attention(_bhld(qq), _bhld(kk), _bhld(vv), is_causal=True, scale=0.5)
    torch.autograd.backward(_bhld(ref), dout)
    for got, ref_grad in ((dq, qq.grad), (dk, kk.grad), (dv, vv.grad)):
        assert ref_grad is not None and torch.allclose(got, ref_grad, atol=1e-5)
    grads = dq.nbytes + dk.nbytes + dv.nbytes
    read = dout.nbytes + q.nbytes + k.nbytes + v.nbytes + out.nbytes + lse.nbytes + rng.nbytes
    assert (row["bytes_read"], row["bytes_written"]) == (read, grads + b * h * length * 4)


def test_flash_attn_varlen_backward_sums_sequences() -> None:
    lengths, h, d = [4, 1, 6], 2, 8
    q, k, v, cu = _varlen_inputs(lengths, h, h, d)
    out, lse, _, rng = fa._flash_attn_varlen_forward(q, k, v, cu, cu, 6, 6, 0.0, 0.5, False)
    grads = [torch.empty_like(x) for x in (q, k, v)]
    trace = traced(lambda: fa._flash_attn_varlen_backward(torch.ones_like(out), q, k, v, out, lse, *grads, cu, cu, 6, 6,
                                                          0.0, 0.5, False, -1, -1, 0.0, None, False, rng))
    row = op_row(trace, "flash_attn._flash_attn_varlen_backward.default")
    assert row["flops_tensor"] == sum(10 * h * n * n * d for n in lengths)


# ------------------------------------------------------------------------------------- aten attention backwards

B, M, H, K = 2, 4, 4, 8  # M == H: torch's [B, H, M, K] reading of these [B, M, H, K] kernels then agrees with ours


def test_aten_flash_and_efficient_backward_equal_torch_when_layouts_agree() -> None:
    q = _meta(B, M, H, K)
    lse, rng = _meta(B, H, M), _meta(2)
    flash = (q, q, q, q, q, lse, None, None, M, M, 0.0, False, rng, rng)
    got = op_cost(aten._flash_attention_backward.default, flash, {}, None).flops_tensor
    assert got == flop_registry[aten._flash_attention_backward](*flash, out_val=None) > 0
    eff = (q, q, q, q, None, q, None, None, M, M, lse, 0.0, rng, rng, 0, False)
    got_eff = op_cost(aten._efficient_attention_backward.default, eff, {}, None).flops_tensor
    assert got_eff == flop_registry[aten._efficient_attention_backward](*eff, out_val=None) == got


def test_aten_flash_backward_counts_real_layout() -> None:
    b, m, n, h, k = 1, 16, 12, 2, 8
    q, kv = _meta(b, m, h, k), _meta(b, n, h, k)
    args = (q, q, kv, kv, q, _meta(b, h, m), None, None, m, n, 0.0, True, _meta(2), _meta(2))
    assert op_cost(aten._flash_attention_backward.default, args, {}, None).flops_tensor == 10 * b * h * m * n * k


@pytest.mark.skipif(not hasattr(aten, "_cudnn_attention_backward"),
                    reason="this torch has no aten._cudnn_attention_backward")
def test_aten_cudnn_backward_equals_sdpa_cudnn_backward() -> None:
    q, k = _meta(B, H, M, K), _meta(B, H, 6, K)
    args = (q, q, k, k, q, _meta(B, H, M), _meta(1), _meta(1), _meta(B, H, M, 6), _meta(0), _meta(0), M, 6, 0.0, False)
    got = op_cost(aten._cudnn_attention_backward.default, args, {}, None).flops_tensor
    assert got == flop_registry[aten._scaled_dot_product_cudnn_attention_backward](q.shape, q.shape, k.shape, k.shape)


# ------------------------------------------------------------------------------------ grouped / quantised GEMMs


def _bf16(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).to(torch.bfloat16)


@needs_grouped_mm
def test_grouped_mm_2d_3d_counts_rows_up_to_the_last_offset() -> None:
    """The MoE layout: tokens sorted by expert ``[rows, K]`` times expert weights ``[G, K, N]``."""
    a, w = _bf16(10, 16), _bf16(3, 16, 8)
    offs = torch.tensor([2, 6, 9], dtype=torch.int32)  # row 9 belongs to no group
    bounds = [(0, 2), (2, 6), (6, 9)]
    per_group = torch_total(lambda: [a[s:e].float() @ w[g].float() for g, (s, e) in enumerate(bounds)])
    assert per_group == 2 * 9 * 8 * 16
    if _grouped_mm_device() == "cpu":
        row = op_row(traced(lambda: torch._grouped_mm(a, w, offs=offs)), "aten._grouped_mm.default")
        assert row["category"] == "gemm" and row["flops_tensor"] == per_group
    real = op_cost(aten._grouped_mm.default, (a, w, offs), {}, None)
    assert real.flops_tensor == per_group
    on_meta = op_cost(aten._grouped_mm.default, (a.to("meta"), w.to("meta"), offs.to("meta")), {}, None)
    assert on_meta.flops_tensor == 2 * 10 * 8 * 16  # offsets unknown: every row


@needs_grouped_mm
def test_grouped_mm_other_layouts() -> None:
    device = _grouped_mm_device()

    def flops(*args: torch.Tensor, offs: torch.Tensor | None = None) -> int:
        args = tuple(x.to(device) for x in args)
        if device == "meta":  # no CPU kernel in this torch: the formula on meta tensors
            return op_cost(aten._grouped_mm.default, (*args, offs), {}, None).flops_tensor
        return int(op_row(traced(lambda: torch._grouped_mm(*args, offs=offs)), "aten._grouped_mm.default")[
            "flops_tensor"])

    a3, w3 = _bf16(3, 5, 16), _bf16(3, 16, 8)
    assert flops(a3, w3) == torch_total(lambda: torch.bmm(a3.float(), w3.float())) == 2 * 3 * 5 * 16 * 8
    cols = torch.tensor([8, 16, 24], dtype=torch.int32).to(device)
    assert flops(a3, _bf16(16, 24), offs=cols) == 2 * 5 * 16 * 24
    assert flops(_bf16(8, 24), _bf16(24, 8), offs=cols) == 2 * 8 * 8 * 24


@pytest.mark.skipif(not hasattr(aten, "_scaled_grouped_mm"), reason="this torch has no aten._scaled_grouped_mm")
def test_scaled_grouped_mm_on_meta() -> None:
    fp8 = torch.float8_e4m3fn
    a, w = _meta(10, 16, dtype=fp8), _meta(3, 16, 8, dtype=fp8)
    args = (a, w, _meta(10), _meta(3, 8), _meta(3, dtype=torch.int32))
    assert op_cost(aten._scaled_grouped_mm.default, args, {}, None).flops_tensor == 2 * 10 * 8 * 16
    assert op_cost(aten._scaled_grouped_mm.default, args[:4], {"offs": args[4]}, None).flops_tensor == 2 * 10 * 8 * 16


def test_weight_int8pack_mm_and_addbmm_equal_their_plain_gemms() -> None:
    x, w, scales = torch.randn(6, 32), torch.randint(-128, 127, (12, 32), dtype=torch.int8), torch.rand(12)
    int8 = op_row(traced(lambda: torch._weight_int8pack_mm(x, w, scales)), "aten._weight_int8pack_mm.default")
    assert int8["flops_tensor"] == torch_total(lambda: x @ w.float().t()) == 2 * 6 * 12 * 32
    b1, b2 = torch.randn(3, 4, 5), torch.randn(3, 5, 6)
    addbmm = op_row(traced(lambda: torch.addbmm(torch.zeros(4, 6), b1, b2)), "aten.addbmm.default")
    assert addbmm["flops_tensor"] == torch_total(lambda: torch.bmm(b1, b2)) == 2 * 3 * 4 * 5 * 6


def test_scaled_and_int_mm_match_torch() -> None:
    a, b = _meta(16, 32, dtype=torch.float8_e4m3fn), _meta(32, 8, dtype=torch.float8_e4m3fn)
    args = (a, b, _meta(()), _meta(()))
    assert op_cost(aten._scaled_mm.default, args, {}, None).flops_tensor == 2 * 16 * 8 * 32
    if aten._scaled_mm in flop_registry:  # newer torch counts it too (2.6 does not)
        assert flop_registry[aten._scaled_mm](a.shape, b.shape, (), ()) == 2 * 16 * 8 * 32
    ia, ib = torch.randint(-8, 8, (32, 16), dtype=torch.int8), torch.randint(-8, 8, (16, 8), dtype=torch.int8)
    assert op_row(traced(lambda: torch._int_mm(ia, ib)), "aten._int_mm.default")["flops_tensor"] == 2 * 32 * 8 * 16


def test_every_aten_compute_op_has_a_formula_or_decomposes() -> None:
    """The category table's gemm / attention / convolution ops either have a FLOP formula or are composite (their
    parts are counted): none would be uncounted if it ran."""
    missing = []
    for category in sorted(cat.COMPUTE):
        for name in cat.CATEGORY_TABLE[category]:
            packet = getattr(aten, name, None) if "::" not in name else None
            for overload in packet.overloads() if packet is not None else ():
                info = compile_op(getattr(packet, overload))
                if info.uncounted and not info.decompose and overload != "sublist":  # einsum.sublist: Python only
                    missing.append(info.name)
    assert missing == []


def _tiny_mixtral(experts_implementation: str) -> Any:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("transformers.integrations.moe", reason="transformers < 5 has no experts implementations")
    if GROUPED_MM is None:
        pytest.skip("this torch has no aten._grouped_mm")
    config = transformers.MixtralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        experts_implementation=experts_implementation)
    torch.manual_seed(0)
    return transformers.MixtralForCausalLM(config).eval()


def test_transformers_moe_grouped_mm_counts_what_the_eager_experts_count() -> None:
    """transformers 5 runs MoE experts through ``_grouped_mm``: the routed-expert GEMMs must count the same as the
    eager loop of per-expert ``mm`` (they used to count zero: 68 % of this model's GEMM FLOPs)."""
    ids = torch.randint(0, 64, (1, 8))
    totals = {}
    for impl in ("eager", "grouped_mm"):
        model = _tiny_mixtral(impl)
        with torch.no_grad(), OpTracer(model) as trace:
            model(ids)
        totals[impl] = trace.totals()["flops_tensor"]
        assert trace.uncounted_ops == []
    grouped = op_row(trace, "aten._grouped_mm.default")
    assert grouped["calls"] == 2 and grouped["flops_tensor"] == 2 * (2 * 8 * 2 * 32 * 64) + 2 * 8 * 2 * 64 * 32
    assert totals["grouped_mm"] == totals["eager"] > 0
    assert grouped["flops_tensor"] / totals["eager"] == pytest.approx(0.68, abs=0.005)


def test_transformers_grouped_mm_fallback_custom_op() -> None:
    pytest.importorskip("transformers.integrations.moe")
    x, w = torch.randn(10, 16), torch.randn(3, 16, 8)
    offs = torch.tensor([2, 6, 10], dtype=torch.int32)
    trace = traced(lambda: torch.ops.transformers.grouped_mm_fallback(x, w, offs))
    row = op_row(trace, "transformers.grouped_mm_fallback.default")
    assert row["category"] == "gemm" and row["flops_tensor"] == 2 * 10 * 16 * 8
    back = traced(lambda: torch.ops.transformers.grouped_mm_fallback_backward(x, w, offs, torch.randn(10, 8)))
    assert back.totals()["flops_tensor"] == 2 * row["flops_tensor"]


# ------------------------------------------------------------------------------------- math SDPA stays attention


def _sdpa_trace(device: str, backend: Any, gqa: bool) -> Any:
    from torch.nn.attention import sdpa_kernel

    q = torch.randn(2, 4, 6, 8, device=device)
    kv = torch.randn(2, 2 if gqa else 4, 10, 8, device=device)
    with torch.inference_mode(), sdpa_kernel(backend), OpTracer(torch.nn.Identity()) as trace:
        F.scaled_dot_product_attention(q, kv, kv, is_causal=False, enable_gqa=gqa)
    return trace


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_math_sdpa_fallback_keeps_the_attention_category(device: str) -> None:
    """Where SDPA falls back to its math decomposition (meta device, a forced backend, GQA on older torch), its
    parts are one row of the attention op: same FLOPs and bytes as the parts, category ``attention``."""
    from torch.nn.attention import SDPBackend

    trace = _sdpa_trace(device, SDPBackend.MATH, gqa=True)
    ops = trace.by_operator()
    assert list(ops["op"]) == ["aten._scaled_dot_product_attention_math.default"]
    row = ops.iloc[0]
    assert row["category"] == "attention" and row["calls"] == 1
    assert row["flops_tensor"] == 4 * 2 * 4 * 6 * 10 * 8
    assert trace.totals()["ops"] == 1 and trace.uncounted_ops == []
    # the parts, as a trace that cannot see SDPA (outside inference_mode) records them: same FLOPs and bytes
    q, kv = torch.randn(2, 4, 6, 8, device=device), torch.randn(2, 2, 10, 8, device=device)
    from torch.nn.attention import sdpa_kernel

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), OpTracer(torch.nn.Identity()) as parts:
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
    assert "aten.bmm.default" in set(parts.by_operator()["op"])
    for key in ("flops_tensor", "flops_cuda", "bytes_read", "bytes_written"):
        assert trace.totals()[key] == parts.totals()[key]


def test_fused_sdpa_inside_the_decomposition_stays_its_own_row() -> None:
    from torch.nn.attention import SDPBackend

    ops = _sdpa_trace("cpu", SDPBackend.FLASH_ATTENTION, gqa=False).by_operator()
    assert list(ops["op"]) == ["aten._scaled_dot_product_flash_attention_for_cpu.default"]


def test_flash_attn_ops_count_on_meta_tensors() -> None:
    """Shape-only runs: flash-attn's ops run their fake kernels on meta tensors and count as on real ones."""
    q, kv = _meta(2, 6, 4, 8), _meta(2, 9, 2, 8)
    trace = traced(lambda: fa._flash_attn_forward(q, kv, kv, 0.0, 0.5, True, -1, -1, 0.0, None, False))
    assert op_row(trace, "flash_attn._flash_attn_forward.default")["flops_tensor"] == 4 * 2 * 4 * 6 * 9 * 8
    packed, cu = _meta(12, 4, 8), _meta(3, dtype=torch.int32)
    varlen = traced(lambda: fa._flash_attn_varlen_forward(packed, packed, packed, cu, cu, 7, 7, 0.0, 0.5, True))
    assert varlen.totals()["flops_tensor"] == 2 * 4 * 4 * 7 * 7 * 8  # two sequences, each at max_seqlen
