"""A small built-in decoder-only transformer (random weights) for ``opmeter demo``, tests and benchmarks.

Llama-shaped, in the style of small reference implementations: RMSNorm, grouped-query attention through
``scaled_dot_product_attention`` with a KV cache, SwiGLU MLP, tied-free LM head, greedy ``generate()``.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import nn


@attrs.frozen
class DemoConfig:
    """Shapes of the demo transformer."""

    vocab_size: int = 512
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    hidden: int = 128
    max_seq: int = 256
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        """Per-head dimension ``dim // n_heads``."""
        return self.dim // self.n_heads


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dimension."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class KVCache:
    """Per-layer key/value tensors ``[B, Hkv, T, D]`` grown by concatenation."""

    def __init__(self, n_layers: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new keys/values of ``layer``; return the whole cached keys and values."""
        pk, pv = self.k[layer], self.v[layer]
        if pk is not None and pv is not None:
            k = torch.cat([pk, k], dim=2)
            v = torch.cat([pv, v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    @property
    def length(self) -> int:
        """Cached positions (of layer 0)."""
        return 0 if self.k[0] is None else int(self.k[0].shape[2])


class Attention(nn.Module):
    """Grouped-query attention through SDPA, causal in the prefill, over the cache in decode steps."""

    def __init__(self, cfg: DemoConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        b, t, _ = x.shape  # [B, T, dim]
        c = self.cfg
        q = self.q_proj(x).view(b, t, c.n_heads, c.head_dim).transpose(1, 2)  # [B, H, T, D]
        k = self.k_proj(x).view(b, t, c.n_kv_heads, c.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        v = self.v_proj(x).view(b, t, c.n_kv_heads, c.head_dim).transpose(1, 2)
        past = cache.length if cache is not None else 0
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        rep = c.n_heads // c.n_kv_heads
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=past == 0 and t > 1)  # [B, H, T, D]
        return self.o_proj(y.transpose(1, 2).reshape(b, t, c.dim))


class MLP(nn.Module):
    """SwiGLU MLP: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, cfg: DemoConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.hidden, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden, bias=False)
        self.down_proj = nn.Linear(cfg.hidden, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: attention and MLP, each with a residual add."""

    def __init__(self, cfg: DemoConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache)
        return x + self.mlp(self.mlp_norm(x))


class DemoTransformer(nn.Module):
    """Decoder-only transformer: ``forward(input_ids, cache) -> logits [B, T, vocab]``."""

    def __init__(self, config: DemoConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DemoConfig()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embed = nn.Embedding(cfg.max_seq, cfg.dim)
        self.layers = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.dim, cfg.eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        start = cache.length if cache is not None else 0
        pos = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        x = self.embed_tokens(input_ids) + self.pos_embed(pos)
        for layer in self.layers:
            x = layer(x, cache)
        return self.lm_head(self.norm(x))

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 8) -> torch.Tensor:
        """Greedy decoding with a KV cache: one prefill call, then one single-token call per new token."""
        cache = KVCache(self.config.n_layers)
        ids = input_ids
        logits = self(ids, cache)
        for i in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # sampling glue, outside the model's modules
            ids = torch.cat([ids, nxt], dim=1)
            if i + 1 < max_new_tokens:
                logits = self(nxt, cache)
        return ids
