"""Multi-head latent attention that caches the compressed latent (as transformers >= 5 writes it).

The cache holds, per position, the normalised KV latent (``kv_lora_rank``) and the shared rotary key
(``qk_rope_head_dim``); every call expands the whole cached sequence again through ``kv_b_proj``, so that projection
runs over ``past + q_len`` positions, not ``q_len``. Everything else is :class:`MultiLatentAttention`.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from opmeter.analytic.base import Layer
from opmeter.analytic.blocks.attention import MultiLatentAttention
from opmeter.analytic.primitives import Linear


@attrs.frozen(repr=False, kw_only=True)
class LatentCacheAttention(MultiLatentAttention):
    """:class:`MultiLatentAttention` with a latent cache (module docstring)."""

    class_name: str = "LatentCacheAttention"

    def children(self) -> Sequence[tuple[str, Layer]]:
        kids = list(super().children())
        expand = Linear(self.batch * self.kv_len, self.kv_lora_rank,
                        self.heads * (self.qk_nope_head_dim + self.v_head_dim), bias=False, dtype=self.dtype)
        return [(name, expand if name == "kv_b_proj" else layer) for name, layer in kids]

    def own_kv_cache_bytes(self) -> int:
        return self.batch * self.kv_len * (self.kv_lora_rank + self.qk_rope_head_dim) * self.dtype
