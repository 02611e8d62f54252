"""Embedding-side blocks: rotary angles computed once per forward, and the output (LM) head.

Token embeddings and norms are the primitives :class:`~opmeter.analytic.primitives.Embedding`,
:class:`~opmeter.analytic.primitives.RMSNorm` and :class:`~opmeter.analytic.primitives.LayerNorm` (re-exported by
:mod:`opmeter.analytic.blocks`). Every field is keyword-only with no model default.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from opmeter.analytic.base import Layer, Op
from opmeter.analytic.primitives import FP32, INT64, Linear, cast, copy, elementwise, gemm


@attrs.frozen(repr=False, kw_only=True)
class RotaryAngles(Layer):
    """Rotary cos / sin tables for ``seq`` positions, computed once per forward: positions to fp32, the outer
    product ``inv_freq x positions`` (elementwise by broadcasting, or with ``matmul`` a ``bmm``
    ``[B, D/2, 1] @ [B, 1, S]`` of ``2 * B * D/2 * S`` tensor-core FLOPs, as transformers < 5 writes it), ``cat``,
    ``cos``, ``sin``, the attention scaling of each, and the casts to the model dtype."""

    batch: int
    seq: int
    head_dim: int
    dtype: int
    matmul: bool = False
    class_name: str = "RotaryAngles"

    def ops(self) -> Sequence[Op]:
        b, s, hd, d = self.batch, self.seq, self.head_dim, self.dtype
        half, n = hd // 2, b * s * hd
        return [
            *cast(b * s, INT64, FP32),
            (gemm("bmm", half, s, 1, batch=b, a=FP32, b=FP32, out=FP32) if self.matmul
             else elementwise("mul", b * half * s, [half * FP32, b * s * FP32], FP32)),
            copy("cat", n, FP32, FP32),
            elementwise("cos", n, [n * FP32], FP32),
            elementwise("sin", n, [n * FP32], FP32),
            elementwise("mul", n, [n * FP32], FP32),
            elementwise("mul", n, [n * FP32], FP32),
            *cast(n, FP32, d),
            *cast(n, FP32, d),
        ]

    def own_weight_bytes(self) -> int:
        return self.head_dim // 2 * FP32


@attrs.frozen(repr=False, kw_only=True)
class LMHead(Layer):
    """The output projection to the vocabulary over the ``kept`` last positions of each sequence (generation keeps
    one: ``logits_to_keep=1``), a bias-free ``Linear``; ``tied``: its weight is the token embedding's (counted
    there)."""

    batch: int
    kept: int
    hidden: int
    vocab: int
    dtype: int
    tied: bool = False
    class_name: str = "LMHead"

    def ops(self) -> Sequence[Op]:
        return Linear(self.batch * self.kept, self.hidden, self.vocab, bias=False, dtype=self.dtype).ops()

    def own_weight_bytes(self) -> int:
        return 0 if self.tied else self.hidden * self.vocab * self.dtype
