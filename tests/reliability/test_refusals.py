"""Inputs the tracer cannot count op by op are refused with one clear error (or counted whole with a formula)."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import pytest
import torch
from helpers import global_state
from torch import nn

from opmeter.errors import OpmeterError
from opmeter.trace import OpTracer


@pytest.fixture
def clean() -> Any:
    before = global_state()
    flex = sys.modules.get("torch.nn.attention.flex_attention")
    switch = getattr(flex, "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG", None)
    yield
    assert global_state() == before
    assert getattr(flex, "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG", None) == switch  # torch's switch restored


@pytest.mark.clean_error
@pytest.mark.nothing_lost
@pytest.mark.parametrize("layout", [torch.jagged, torch.strided])
def test_a_nested_input_is_refused(clean: None, layout: torch.layout) -> None:
    model = nn.Linear(4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nt = torch.nested.nested_tensor([torch.randn(2, 4), torch.randn(3, 4)], layout=layout)
    with pytest.raises(OpmeterError, match="nested"), OpTracer(model) as trace:
        model(torch.randn(1, 4))
        model(nt)
    assert not trace.complete and "nested" in (trace.error or "")
    assert trace.totals()["flops_tensor"] == 2 * 4 * 4  # the call before is kept


class MakesNested(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt = torch.nested.as_nested_tensor([x[:2], x[2:]], layout=torch.jagged)
        return torch.relu(nt).values()


@pytest.mark.clean_error
def test_a_jagged_tensor_made_inside_the_model_is_refused(clean: None) -> None:
    with pytest.raises(OpmeterError, match="nested"), OpTracer(MakesNested()):
        MakesNested()(torch.randn(5, 4))


class Branches(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda t: t.sin(), lambda t: t.cos(), (x,))


@pytest.mark.clean_error
def test_a_higher_order_op_without_a_formula_is_refused_by_name(clean: None) -> None:
    model = Branches()
    with pytest.raises(OpmeterError, match="higher-order op 'cond'"), OpTracer(model):
        model(torch.randn(3))


class Flex(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(q, k, v, enable_gqa=q.shape[1] != k.shape[1])


@pytest.mark.parametrize(("hq", "hkv"), [(2, 2), (4, 2)])
def test_flex_attention_is_counted_as_one_attention_op(clean: None, hq: int, hkv: int) -> None:
    import torch.nn.attention.flex_attention  # the switch exists once imported

    b, length, s, d = 1, 16, 24, 8
    q, k, v = torch.randn(b, hq, length, d), torch.randn(b, hkv, s, d), torch.randn(b, hkv, s, d)
    model = Flex()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with OpTracer(model) as trace:
            out = model(q, k, v)
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=hq != hkv)
    assert trace.complete
    assert torch.allclose(out, expected, atol=1e-5)
    ops = trace.by_operator().set_index("op")
    flex = ops.loc["higher_order.flex_attention"]
    assert flex["category"] == "attention" and flex["calls"] == 1
    assert flex["flops_tensor"] == 4 * b * hq * length * s * d
    assert trace.totals()["flops_tensor"] == flex["flops_tensor"]  # its eager parts are not counted again
