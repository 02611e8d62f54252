"""FLOP / byte formulas: parity with torch.utils.flop_counter, hand-derived values, categories."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import flop_registry
from trace_helpers import torch_total

from opmeter import OpTracer
from opmeter import conventions as cv
from opmeter.errors import OpmeterError
from opmeter.trace import categories as cat
from opmeter.trace.formulas import op_cost

aten = torch.ops.aten


def ours(fn: Callable[[], Any]) -> Any:
    with OpTracer(torch.nn.Identity()) as trace:
        fn()
    return trace


torch.manual_seed(0)
X = torch.randn
CASES: dict[str, Callable[[], Any]] = {
    "mm": lambda: X(5, 7) @ X(7, 3),
    "addmm": lambda: torch.addmm(X(3), X(5, 7), X(7, 3)),
    "bmm": lambda: torch.bmm(X(2, 5, 7), X(2, 7, 3)),
    "baddbmm": lambda: torch.baddbmm(X(2, 5, 3), X(2, 5, 7), X(2, 7, 3)),
    "matmul_3d_2d": lambda: X(2, 5, 7) @ X(7, 3),
    "matmul_4d": lambda: X(2, 3, 5, 7) @ X(2, 3, 7, 4),
    "linear": lambda: F.linear(X(4, 6, 8), X(5, 8), X(5)),
    "conv1d": lambda: F.conv1d(X(2, 4, 17), X(6, 4, 3), X(6), stride=2, padding=1),
    "conv2d_groups": lambda: F.conv2d(X(2, 8, 9, 9), X(12, 2, 3, 3), None, padding=2, dilation=2, groups=4),
    "conv3d": lambda: F.conv3d(X(1, 2, 5, 6, 7), X(3, 2, 2, 3, 3)),
    "conv_transpose1d": lambda: F.conv_transpose1d(X(2, 4, 9), X(4, 3, 3), stride=2),
    "conv_transpose2d_groups": lambda: F.conv_transpose2d(X(1, 4, 5, 5), X(4, 3, 2, 2), groups=2, stride=2),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_tensor_flops_equal_torch_flop_counter(name: str) -> None:
    fn = CASES[name]
    expected = torch_total(fn)
    assert expected > 0
    with torch.no_grad():
        got = ours(fn).totals()["flops_tensor"]
    assert got == expected


def _meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


# Ops that do not run on this CPU machine (CUDA kernels): compare formula against torch's registry on meta tensors.
B, H, L, S, D = 2, 4, 8, 12, 16
REGISTRY_CASES: list[tuple[Any, tuple[Any, ...], Any]] = [
    (aten._scaled_dot_product_efficient_attention.default,
     (_meta(B, H, L, D), _meta(B, H, S, D), _meta(B, H, S, D), None, False), None),
    (aten._scaled_dot_product_flash_attention.default, (_meta(B, H, L, D), _meta(B, H, S, D), _meta(B, H, S, D)),
     None),
    (aten._scaled_dot_product_cudnn_attention.default,
     (_meta(B, H, L, D), _meta(B, H, S, D), _meta(B, H, S, D), None, False), None),
    (aten._scaled_dot_product_efficient_attention_backward.default,
     (_meta(B, H, L, D), _meta(B, H, L, D), _meta(B, H, S, D), _meta(B, H, S, D), _meta(B, H, L, D),
      _meta(B, H, L), _meta(2), _meta(2), (True, True, True, False)), None),
    (aten._scaled_dot_product_flash_attention_backward.default,
     (_meta(B, H, L, D), _meta(B, H, L, D), _meta(B, H, S, D), _meta(B, H, S, D), _meta(B, H, L, D),
      _meta(B, H, L), None, None, L, S, 0.0, False, _meta(2), _meta(2)), None),
]


@pytest.mark.parametrize("case", REGISTRY_CASES, ids=lambda c: str(c[0]) if not isinstance(c, tuple) else None)
def test_attention_flops_equal_torch_registry(case: tuple[Any, tuple[Any, ...], Any]) -> None:
    func, args, out = case
    expected = flop_registry[func._overloadpacket](*args, out_val=out)
    assert expected > 0
    assert op_cost(func, args, {}, out).flops_tensor == expected


def test_convolution_backward_equals_torch() -> None:
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, requires_grad=True)

    def fn() -> None:
        F.conv2d(x, w, stride=2, groups=2).sum().backward()

    expected = torch_total(fn)
    trace = ours(fn)
    assert trace.totals()["flops_tensor"] == expected
    assert "aten.convolution_backward.default" in set(trace.by_operator()["op"])


def test_cpu_flash_attention_counted_where_torch_misses_it() -> None:
    q, k, v = torch.randn(2, 4, 8, 16), torch.randn(2, 4, 10, 16), torch.randn(2, 4, 10, 16)
    with torch.no_grad():
        assert torch_total(lambda: F.scaled_dot_product_attention(q, k, v)) == 0  # torch drops CPU attention
        trace = ours(lambda: F.scaled_dot_product_attention(q, k, v))
        masked = ours(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=torch.zeros(8, 10)))
    row = trace.by_operator().set_index("op").loc["aten._scaled_dot_product_flash_attention_for_cpu.default"]
    scores = 2 * 4 * 8 * 10
    assert row["category"] == "attention" and bool(row["exact"])
    assert row["flops_tensor"] == 2 * scores * 16 + 2 * scores * 16 == 40960  # QK^T and PV
    assert row["flops_cuda"] == scores * cv.ATTENTION_SOFTMAX_FLOPS
    mrow = masked.by_operator().set_index("op").loc["aten._scaled_dot_product_flash_attention_for_cpu.default"]
    assert mrow["flops_cuda"] == scores * (cv.ATTENTION_SOFTMAX_FLOPS + cv.ATTENTION_MASK_FLOPS)
    # GQA: key/value heads broadcast to the query heads
    kq = torch.randn(1, 2, 8, 16)
    with torch.no_grad():
        gqa = ours(lambda: F.scaled_dot_product_attention(torch.randn(1, 4, 8, 16), kq, kq, enable_gqa=True))
    assert gqa.totals()["flops_tensor"] == 4 * 1 * 4 * 8 * 8 * 16


def test_attention_equals_explicit_matmuls() -> None:
    q, k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    fused = ours(lambda: F.scaled_dot_product_attention(q, k, v)).totals()["flops_tensor"]
    explicit = ours(lambda: torch.softmax(q @ k.transpose(-1, -2), -1) @ v).totals()["flops_tensor"]
    assert fused == explicit == torch_total(lambda: torch.softmax(q @ k.transpose(-1, -2), -1) @ v)


def test_bmhk_flash_forward_counts_real_layout() -> None:
    """torch's counter reads [B, M, H, K] as [B, H, M, K] for these kernels; we count the real layout."""
    q, k = _meta(2, 128, 4, 64), _meta(2, 96, 4, 64)
    args = (q, k, k, None, None, 128, 96, 0.0, False, False)
    cost = op_cost(aten._flash_attention_forward.default, args, {}, None)
    assert cost.flops_tensor == 4 * 2 * 4 * 128 * 96 * 64
    eff = op_cost(aten._efficient_attention_forward.default, (q, k, k, None, None, None, 128, 96, 0.0, 0), {}, None)
    assert eff.flops_tensor == cost.flops_tensor


def test_elementwise_and_families_hand_derived() -> None:
    a, b = torch.randn(3, 4), torch.randn(4)
    c = op_cost(aten.add.Tensor, (a, b), {}, a + b)
    assert (c.flops_tensor, c.flops_cuda, c.bytes_read, c.bytes_written, c.exact) == (0, 12.0, 64, 48, False)
    x = torch.randn(2, 5, 6)
    assert op_cost(aten.silu.default, (x,), {}, F.silu(x)).flops_cuda == 60 * cv.SILU_FLOPS
    assert op_cost(aten.gelu.default, (x,), {}, F.gelu(x)).flops_cuda == 60 * cv.GELU_FLOPS
    assert op_cost(aten._softmax.default, (x, -1, False), {}, x.softmax(-1)).flops_cuda == 60 * cv.SOFTMAX_FLOPS
    s = op_cost(aten.sum.dim_IntList, (x, [-1]), {}, x.sum(-1))
    assert s.flops_cuda == 60 * cv.REDUCTION_FLOPS and s.bytes_written == 10 * 4
    ln = op_cost(aten.native_layer_norm.default, (x, [6], None, None, 1e-5), {}, F.layer_norm(x, (6,)))
    assert ln.flops_cuda == 60 * cv.LAYER_NORM_FLOPS
    with torch.no_grad():
        t = ours(lambda: x.to(torch.float16))
    cast = t.by_operator().set_index("op").loc["aten._to_copy.default"]
    assert cast["flops_cuda"] == 0 and cast["bytes_read"] == 240 and cast["bytes_written"] == 120


def test_bytes_views_gathers_and_scattered_writes() -> None:
    x = torch.randn(4, 6)
    assert op_cost(aten.view.default, (x, [24]), {}, x.view(24)).bytes_read == 0
    assert op_cost(aten.transpose.int, (x, 0, 1), {}, x.t()).bytes_written == 0
    table = torch.randn(1000, 8)
    idx = torch.tensor([[1, 2, 3]])
    emb = op_cost(aten.embedding.default, (table, idx), {}, F.embedding(idx, table))
    assert emb.bytes_written == 3 * 8 * 4 and emb.bytes_read == 3 * 8 * 4 + 3 * 8  # rows fetched, not the table
    cache = torch.zeros(1, 2, 100, 8)
    new = torch.randn(1, 2, 1, 8)
    cp = op_cost(aten.copy_.default, (cache[:, :, 5:6], new), {}, cache[:, :, 5:6])
    assert (cp.bytes_read, cp.bytes_written) == (64, 64)
    pos = torch.tensor([5])
    ip = op_cost(aten.index_copy_.default, (cache, 2, pos, new), {}, cache)
    assert ip.bytes_written == 64 and ip.bytes_read == 64 + 8
    inplace = op_cost(aten.add_.Tensor, (x, x), {}, x)
    assert (inplace.bytes_read, inplace.bytes_written) == (192, 96)


def test_category_table_is_consistent() -> None:
    seen: dict[str, str] = {}
    for category, names in cat.CATEGORY_TABLE.items():
        assert category in cat.CATEGORIES and category != cat.UNCLASSIFIED
        for name in names:
            assert name, f"empty rule in {category}"
            assert seen.setdefault(name, category) == category, f"{name} is in {seen[name]} and {category}"
    expected = {
        aten.mm.default: "gemm", aten.addmm.default: "gemm", aten.convolution.default: "convolution",
        aten._scaled_dot_product_flash_attention_for_cpu.default: "attention",
        aten.native_layer_norm.default: "normalization", aten.silu.default: "activation",
        aten.add_.Tensor: "elementwise", aten.where.self: "elementwise", aten._softmax.default: "reduction",
        aten.embedding.default: "embedding", aten.view.default: "data_movement", aten.cat.default: "data_movement",
        aten.topk.default: "moe_routing", aten.scatter_add.default: "moe_routing", aten.index.Tensor: "moe_routing",
        aten.multinomial.default: "rng_sampling", aten.upsample_bicubic2d.default: "other",
        aten._unsafe_index.Tensor: "embedding",
    }
    for func, category in expected.items():
        assert cat.category_of(func) == category, func
    assert cat.category_of_name("flash_attn::_flash_attn_forward") == "attention"
    assert cat.category_of_name("mylib::fused_thing") == cat.UNCLASSIFIED
    cat.register_category("mylib::fused_*", "gemm")
    assert cat.category_of_name("mylib::fused_thing") == "gemm"
    with pytest.raises(OpmeterError, match="unknown category"):
        cat.register_category("x", "nonsense")


def test_every_op_of_a_transformer_has_a_category() -> None:
    from opmeter.trace.demo import DemoConfig, DemoTransformer

    model = DemoTransformer(DemoConfig(n_layers=1)).eval()
    with OpTracer(model) as trace:
        model.generate(torch.randint(0, 100, (1, 4)), max_new_tokens=2)
    assert trace.unclassified()["reason"].eq("no category").sum() == 0
    assert not trace.formula_errors


def test_registering_a_cost_for_a_custom_op() -> None:
    from opmeter.trace import formulas

    lib = torch.library.Library("opmeter_cost", "FRAGMENT")
    lib.define("scaled(Tensor x, float s) -> Tensor")
    lib.impl("scaled", lambda x, s: x * s, "CompositeExplicitAutograd")
    cat.register_category("opmeter_cost::scaled", "elementwise")

    @formulas.register_cost(torch.ops.opmeter_cost.scaled, exact=True)
    def _scaled(args: Any, kwargs: Any, out: Any) -> tuple[int, float, int, int]:
        return 0, float(out.numel()), int(args[0].nbytes), int(out.nbytes)

    x = torch.ones(5)
    trace = ours(lambda: torch.ops.opmeter_cost.scaled(x, 2.0))
    row = trace.by_operator().set_index("op").loc["opmeter_cost.scaled.default"]
    assert (row["category"], row["flops_cuda"], row["bytes_read"], row["bytes_written"]) == ("elementwise", 5, 20, 20)
    assert bool(row["exact"])


def test_category_registered_after_the_op_was_traced() -> None:
    lib = torch.library.Library("opmeter_late", "FRAGMENT")
    lib.define("twice(Tensor x) -> Tensor")
    lib.impl("twice", lambda x: x * 2, "CompositeExplicitAutograd")
    x = torch.ones(3)

    def category() -> str:
        ops = ours(lambda: torch.ops.opmeter_late.twice(x)).by_operator().set_index("op")
        return str(ops.loc["opmeter_late.twice.default", "category"])

    assert category() == cat.UNCLASSIFIED
    cat.register_category("opmeter_late::twice", "elementwise")
    assert category() == "elementwise"  # not the category compiled by the first trace
