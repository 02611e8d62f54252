"""Embedding-side blocks: rotary angles computed once per forward, and the output (LM) head.

Token embeddings and norms are the primitives :class:`~opmeter.analytic.primitives.Embedding`,
:class:`~opmeter.analytic.primitives.RMSNorm` and :class:`~opmeter.analytic.primitives.LayerNorm` (re-exported by
:mod:`opmeter.analytic.blocks`). Every field is keyword-only with no model default.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from opmeter.analytic.base import Layer, Op
from opmeter.analytic.blocks.attention import RotaryEmbedding
from opmeter.analytic.primitives import Linear


@attrs.frozen(repr=False, kw_only=True)
class RotaryAngles(RotaryEmbedding):
    """Rotary cos / sin tables as transformers computes them (:class:`RotaryEmbedding`): the outer product is a
    broadcast multiply, or a ``bmm`` with ``matmul`` (transformers < 5)."""

    matmul: bool = False
    class_name: str = "RotaryAngles"


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
