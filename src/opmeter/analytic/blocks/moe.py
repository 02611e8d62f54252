"""Mixture of experts: a top-k router, routed experts (one module per expert, or one grouped module) and shared
experts.

Routing. Shape-only runs cannot route by value, so unless the measured tokens per expert are given, ``top_k``
token-expert pairs per token are spread by the balanced policy (token ``t`` to experts ``(t*k + j) mod E``): expert
``i`` receives ``T*k // E`` pairs, plus one when ``i < T*k mod E``.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from opmeter.analytic.base import Layer, Op
from opmeter.analytic.blocks.mlp import GatedMLP
from opmeter.analytic.primitives import FP32, INT64, cast, copy, elementwise, gemm, reduction, softmax_op


def balanced_active_experts(tokens: int, top_k: int, experts: int) -> int:
    """Experts called under the balanced policy."""
    return min(experts, tokens * top_k)


def balanced_expert_tokens(tokens: int, top_k: int, experts: int) -> list[int]:
    """Tokens per expert under the balanced policy (the pair ids ``t*k + j`` are ``0 .. T*k - 1``)."""
    pairs = tokens * top_k
    base, extra = divmod(pairs, experts)
    return [base + (1 if i < extra else 0) for i in range(experts)]


@attrs.frozen(repr=False, kw_only=True)
class TopKGate(Layer):
    """Router: fp32 casts of hidden states and weight, ``mm``, softmax, top-k, ``* routed_scaling``."""

    tokens: int
    hidden: int
    experts: int
    top_k: int
    dtype: int
    class_name: str = "TopKGate"

    def ops(self) -> Sequence[Op]:
        t, h, e, k, d = self.tokens, self.hidden, self.experts, self.top_k, self.dtype
        return [
            *cast(t * h, d, FP32),
            *(attrs.evolve(op, weights_read=e * h * d) for op in cast(e * h, d, FP32)),
            gemm("mm", t, e, h, a=FP32, b=FP32, out=FP32),
            softmax_op(t * e, FP32),
            Op("topk", bytes_read=t * e * FP32, bytes_written=t * k * (FP32 + INT64)),
            elementwise("mul", t * k, [t * k * FP32], FP32),
        ]

    def own_weight_bytes(self) -> int:
        return self.experts * self.hidden * self.dtype


@attrs.frozen(repr=False, kw_only=True)
class SparseMoE(Layer):
    """MoE over ``tokens``: ``gate``; pair bookkeeping (count, ``argsort``, gather); the called ``experts.i``
    (``top_k`` pairs per token in all); ``cat``, ``index_put``, fp32 weighting and sum; ``shared_experts`` (when
    ``shared_intermediate``); residual add of the two paths. Only experts that received tokens are called."""

    tokens: int
    hidden: int
    experts: int
    top_k: int
    moe_intermediate: int
    dtype: int
    shared_intermediate: int = 0
    expert_tokens: tuple[int, ...] | None = None
    """Tokens routed to each expert (sums to ``tokens * top_k``); default: the balanced policy."""
    class_name: str = "SparseMoE"
    gate_class_name: str = "TopKGate"
    expert_class_name: str = "GatedMLP"

    @property
    def pairs(self) -> int:
        """Routed token-expert pairs: ``tokens * top_k``."""
        return self.tokens * self.top_k

    def _gate(self, tokens: int) -> TopKGate:
        return TopKGate(tokens=tokens, hidden=self.hidden, experts=self.experts, top_k=self.top_k, dtype=self.dtype,
                        class_name=self.gate_class_name)

    def _expert(self, tokens: int, intermediate: int) -> GatedMLP:
        return GatedMLP(tokens=tokens, hidden=self.hidden, intermediate=intermediate, dtype=self.dtype,
                        class_name=self.expert_class_name)

    def children(self) -> Sequence[tuple[str, Layer]]:
        t = self.tokens
        counts = self.expert_tokens
        if counts is None:
            counts = tuple(balanced_expert_tokens(t, self.top_k, self.experts))
        kids: list[tuple[str, Layer]] = [("gate", self._gate(t))]
        kids += [(f"experts.{i}", self._expert(n, self.moe_intermediate)) for i, n in enumerate(counts) if n]
        if self.shared_intermediate:
            kids.append(("shared_experts", self._expert(t, self.shared_intermediate)))
        return kids

    def weight_bytes(self) -> int:
        # every expert is resident, called or not
        total = self.experts * self._expert(1, self.moe_intermediate).weight_bytes() + self._gate(1).weight_bytes()
        if self.shared_intermediate:
            total += self._expert(1, self.shared_intermediate).weight_bytes()
        return total

    def ops(self) -> Sequence[Op]:
        t, h, e, d = self.tokens, self.hidden, self.experts, self.dtype
        p = self.pairs
        ops = [
            Op("new_zeros", bytes_read=p * INT64, bytes_written=t * e * INT64),  # reads its template (topk ids)
            Op("scatter_", bytes_read=2 * p * INT64, bytes_written=p * INT64),  # scalar source: index-sized
            reduction("sum", t * e, e, INT64),
            Op("sort", bytes_read=p * INT64, bytes_written=2 * p * INT64),
            elementwise("floor_divide", p, [p * INT64], INT64),
            Op("index", bytes_read=p * h * d + p * INT64, bytes_written=p * h * d),
            copy("cat", p * h, d, d),
            Op("empty_like", bytes_read=p * h * d, bytes_written=p * h * d),
            Op("index_put_", bytes_read=p * h * d + p * INT64, bytes_written=p * h * d),
            *cast(p * h, d, FP32),
            elementwise("mul", p * h, [p * h * FP32, p * FP32], FP32),
            reduction("sum", p * h, t * h, FP32),
            *cast(t * h, FP32, d),
        ]
        if self.shared_intermediate:
            ops.append(elementwise("add", t * h, [t * h * d, t * h * d], d))
        return ops

    def held_bytes(self) -> int:
        return self.tokens * self.hidden * self.dtype
