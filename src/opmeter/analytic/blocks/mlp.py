"""Gated MLP: ``down_proj(act(gate_proj(x)) * up_proj(x))`` ).

The gated feed-forward of most decoder LLMs and of their experts."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from opmeter.analytic.base import Layer, Op
from opmeter.analytic.primitives import Activation, Linear, pointwise
from opmeter.conventions import ELEMENTWISE_FLOPS


@attrs.frozen(repr=False, kw_only=True)
class GatedMLP(Layer):
    """Gated MLP over ``tokens``: ``gate_proj``, ``act_fn``, ``up_proj``, the product, ``down_proj``."""

    tokens: int
    hidden: int
    intermediate: int
    dtype: int
    act: str = "silu"
    class_name: str = "GatedMLP"
    act_class_name: str = "SiLU"

    def children(self) -> Sequence[tuple[str, Layer]]:
        t, h, i, d = self.tokens, self.hidden, self.intermediate, self.dtype
        return [
            ("gate_proj", Linear(t, h, i, bias=False, dtype=d)),
            ("act_fn", Activation(self.act, t * i, d, class_name=self.act_class_name)),
            ("up_proj", Linear(t, h, i, bias=False, dtype=d)),
            ("down_proj", Linear(t, i, h, bias=False, dtype=d)),
        ]

    def ops(self) -> Sequence[Op]:
        n, d = self.tokens * self.intermediate, self.dtype
        return [pointwise("mul", n, ELEMENTWISE_FLOPS, [n * d, n * d], d)]
