"""Mixture of experts with fused expert weights (one module holding every expert as 3-D tensors), as transformers
>= 5 writes its MoE decoders: a router module, one ``experts`` module that runs every routed token-expert pair as
grouped GEMMs, and optional shared experts.

The grouped GEMMs cover the ``tokens * top_k`` pairs whatever the routing (each pair is multiplied once by its
expert's weights), so the tensor-core FLOPs do not depend on it; the weights read do: every expert that received a
pair is read once (balanced policy unless the counts are given, :func:`~opmeter.analytic.blocks.moe.
balanced_active_experts`).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from opmeter.analytic.base import Layer, Op
from opmeter.analytic.blocks.mlp import GatedMLP
from opmeter.analytic.blocks.moe import balanced_active_experts
from opmeter.analytic.primitives import (
    FP32,
    INT64,
    Activation,
    Linear,
    cast,
    elementwise,
    gemm,
    reduction,
    softmax_op,
)


@attrs.frozen(repr=False, kw_only=True)
class Router(Layer):
    """Top-k router: logits ``[tokens, experts]`` (in fp32 when ``fp32_logits``), softmax or sigmoid scores, top-k
    and the renormalisation of the kept weights."""

    tokens: int
    hidden: int
    experts: int
    top_k: int
    dtype: int
    fp32_logits: bool = False
    scoring: str = "softmax"
    class_name: str = "Router"

    def ops(self) -> Sequence[Op]:
        t, h, e, k, d = self.tokens, self.hidden, self.experts, self.top_k, self.dtype
        c = FP32 if self.fp32_logits else d
        ops: list[Op] = [*cast(t * h, d, c)] if self.fp32_logits else []
        ops.append(gemm("mm", t, e, h, a=c, b=c, out=c, b_is_weight=True))
        ops += [*cast(t * e, c, FP32),
                softmax_op(t * e, FP32) if self.scoring == "softmax" else elementwise("sigmoid", t * e, [t * e * 4], 4),
                Op("topk", bytes_read=t * e * FP32, bytes_written=t * k * (FP32 + INT64)),
                reduction("sum", t * k, t, FP32),
                elementwise("div", t * k, [t * k * FP32, t * FP32], FP32)]
        return ops

    def own_weight_bytes(self) -> int:
        return self.experts * self.hidden * (FP32 if self.fp32_logits else self.dtype)


@attrs.frozen(repr=False, kw_only=True)
class FusedExperts(Layer):
    """Every routed pair through its expert: gather, grouped ``gate_up`` GEMM, activation (``act_fn`` child) times
    up, grouped ``down`` GEMM, routing weights, and the per-token sum."""

    tokens: int
    hidden: int
    intermediate: int
    experts: int
    top_k: int
    dtype: int
    act: str = "silu"
    active_experts: int | None = None
    class_name: str = "FusedExperts"

    @property
    def pairs(self) -> int:
        """Routed token-expert pairs."""
        return self.tokens * self.top_k

    def children(self) -> Sequence[tuple[str, Layer]]:
        return [("act_fn", Activation(self.act, self.pairs * self.intermediate, self.dtype, class_name="SiLU"))]

    def ops(self) -> Sequence[Op]:
        s, h, i, d = self.pairs, self.hidden, self.intermediate, self.dtype
        active = self.active_experts
        if active is None:
            active = balanced_active_experts(self.tokens, self.top_k, self.experts)
        up = gemm("_grouped_mm", s, 2 * i, h, a=d, b=d, b_numel=active * 2 * i * h, b_is_weight=True)
        down = gemm("_grouped_mm", s, h, i, a=d, b=d, b_numel=active * i * h, b_is_weight=True)
        return [
            Op("sort", bytes_read=s * INT64, bytes_written=2 * s * INT64),
            Op("index", bytes_read=s * h * d + s * INT64, bytes_written=s * h * d),
            up,
            elementwise("mul", s * i, [2 * s * i * d], d),
            down,
            elementwise("mul", s * h, [s * h * d, s * FP32], d),
            Op("index", bytes_read=s * h * d + s * INT64, bytes_written=s * h * d),
            reduction("sum", s * h, self.tokens * h, d),
        ]

    def own_weight_bytes(self) -> int:
        return 3 * self.experts * self.hidden * self.intermediate * self.dtype


@attrs.frozen(repr=False, kw_only=True)
class FusedSparseMoE(Layer):
    """An MoE block: ``gate`` (:class:`Router`), ``experts`` (:class:`FusedExperts`), and shared experts when
    ``shared_intermediate`` (a :class:`GatedMLP` at ``shared_name``, scaled by a sigmoid ``shared_gate_name``
    projection to one value per token when that name is given), summed with the routed output."""

    tokens: int
    hidden: int
    experts: int
    top_k: int
    moe_intermediate: int
    dtype: int
    shared_intermediate: int = 0
    shared_name: str = "shared_experts"
    shared_gate_name: str = ""
    fp32_router: bool = False
    scoring: str = "softmax"
    class_name: str = "FusedSparseMoE"

    def children(self) -> Sequence[tuple[str, Layer]]:
        t, h, d = self.tokens, self.hidden, self.dtype
        kids: list[tuple[str, Layer]] = [
            ("gate", Router(tokens=t, hidden=h, experts=self.experts, top_k=self.top_k, dtype=d,
                            fp32_logits=self.fp32_router, scoring=self.scoring)),
            ("experts", FusedExperts(tokens=t, hidden=h, intermediate=self.moe_intermediate, experts=self.experts,
                                     top_k=self.top_k, dtype=d)),
        ]
        if self.shared_intermediate:
            kids.append((self.shared_name, GatedMLP(tokens=t, hidden=h, intermediate=self.shared_intermediate,
                                                    dtype=d)))
        if self.shared_intermediate and self.shared_gate_name:
            kids.append((self.shared_gate_name, Linear(t, h, 1, bias=False, dtype=d)))
        return kids

    def ops(self) -> Sequence[Op]:
        n, d = self.tokens * self.hidden, self.dtype
        ops: list[Op] = []
        if self.shared_intermediate and self.shared_gate_name:
            ops += [elementwise("sigmoid", self.tokens, [self.tokens * d], d),
                    elementwise("mul", n, [n * d, self.tokens * d], d)]
        if self.shared_intermediate:
            ops.append(elementwise("add", n, [n * d, n * d], d))
        return ops
