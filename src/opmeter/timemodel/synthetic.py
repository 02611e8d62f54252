"""Synthetic eager-style blocks whose host cost calibrates the time model's ``module_host_factor``.

Generic architectures in the styles eager PyTorch model code is written in, with tiny widths so that their kernels
cost next to nothing and their time is the host's: Python lines between ops, ``nn.Module`` calls, dispatch of many
different ops one after the other. None of them is the model a profile will predict:

* :class:`TinyBlock`: a pre-norm encoder block (fused attention, SiLU MLP);
* :class:`DecoderBlock`: an LLM decoder layer (RMSNorm in Python, position ids and a mask built per call, rotary
  angles under ``no_grad`` and ``autocast(enabled=False)``, a key/value cache, matmul attention, a top-2 of 4 mixture
  of experts dispatched by a Python loop over experts, a shared expert), one token after a short past;
* :class:`WindowedBlock`: an image transformer block on ``[B, H, W, C]`` maps (window partition with padding, a
  decomposed relative-position bias built from coordinate tables and passed to fused attention as a mask, window
  merge, GELU MLP);
* :class:`ConvNeck`: 1x1 and 3x3 convolutions with a channel norm written in Python and a resize;
* :class:`GreedyLoop`: a greedy generation loop over a tiny causal LM (:class:`TinyCausalLM`): the Python work of a
  model forward and of the loop around it, where few ops run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class TinyBlock(torch.nn.Module):
    """A pre-norm transformer block in the usual eager style, for the host cost of ops inside module code."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv, self.out = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.up, self.down = torch.nn.Linear(width, 2 * width), torch.nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, 2, d // 2).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = x + self.out(a)
        return x + self.down(F.silu(self.up(self.norm2(x))))


class RMSNorm(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.weight * x.to(dtype)


class Expert(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.gate, self.up = torch.nn.Linear(width, width, bias=False), torch.nn.Linear(width, width, bias=False)
        self.down = torch.nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def _rotate(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rotary(torch.nn.Module):
    """Rotary angles from inverse frequencies and position ids, with gradients and autocast switched off around them
    (decorator and context manager: Python work that launches no op)."""

    inv_freq: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000.0 ** (torch.arange(0, dim, 2).float() / dim)), persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freq = self.inv_freq[None, :, None].float().expand(positions.shape[0], -1, 1)
        with torch.autocast(device_type=x.device.type if x.device.type in ("cpu", "cuda") else "cpu", enabled=False):
            angles = (freq @ positions[:, None, :].float()).transpose(1, 2)
            emb = torch.cat((angles, angles), dim=-1)
            cos, sin = emb.cos(), emb.sin()
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


class PastKV:
    """A fixed past of ``length`` positions; ``update`` returns past + new keys and values (``torch.cat``) without
    keeping them, so that repeated calls cost the same."""

    def __init__(self, like: torch.Tensor, heads: int, length: int, head_dim: int) -> None:
        self.keys = torch.zeros(like.shape[0], heads, length, head_dim, device=like.device, dtype=like.dtype)
        self.values = torch.zeros_like(self.keys)

    def get_seq_length(self) -> int:
        return int(self.keys.shape[-2])

    def update(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([self.keys, key], dim=-2), torch.cat([self.values, value], dim=-2)


class DecoderBlock(torch.nn.Module):
    """A decoder layer in the style of common eager LLM code, one token after a past of 8: RMSNorm in Python, position
    ids and an additive mask built per call, rotary embedding (:class:`Rotary`), a key/value cache, matmul attention
    with fp32 softmax and dropout, a top-2 of 4 mixture of experts dispatched by a Python loop over experts, a shared
    expert."""

    def __init__(self, width: int, heads: int = 2, experts: int = 4) -> None:
        super().__init__()
        self.heads, self.norm1, self.norm2 = heads, RMSNorm(width), RMSNorm(width)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(width, width, bias=False) for _ in range(4))
        self.rotary = Rotary(width // heads)
        self.gate = torch.nn.Linear(width, experts, bias=False)
        self.experts = torch.nn.ModuleList(Expert(width) for _ in range(experts))
        self.shared = Expert(width)

    def _attend(self, h: torch.Tensor, past: PastKV) -> torch.Tensor:
        b, t, d = h.shape
        start = past.get_seq_length()
        positions = torch.arange(start, start + t, device=h.device).unsqueeze(0)
        mask = torch.zeros((b, 1, t, start + t), dtype=h.dtype, device=h.device)
        q, k, v = (p(h).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        cos, sin = (c.unsqueeze(1) for c in self.rotary(v, positions))
        q, k = q * cos + _rotate(q) * sin, k * cos + _rotate(k) * sin
        k, v = past.update(k, v)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(q.shape[-1]) + mask
        probs = F.dropout(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), p=0.0, training=False)
        return self.o(torch.matmul(probs, v).transpose(1, 2).contiguous().reshape(b, t, d))

    def _experts(self, h: torch.Tensor) -> torch.Tensor:
        weights, chosen = torch.topk(self.gate(h).softmax(-1), 2, dim=-1)
        y = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            rows = (chosen == e).any(-1).nonzero().squeeze(-1)
            if rows.numel():
                y.index_add_(0, rows, expert(h[rows]) * (weights * (chosen == e))[rows].sum(-1, keepdim=True))
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        x = x + self._attend(self.norm1(x), PastKV(x, self.heads, 8, d // self.heads))
        h = self.norm2(x).view(-1, d)
        return x + (self._experts(h) + self.shared(h)).view(b, t, d)


class WindowedBlock(torch.nn.Module):
    """Windowed self-attention over an image map with a decomposed relative-position bias, then a GELU MLP."""

    def __init__(self, width: int, window: int, heads: int = 2) -> None:
        super().__init__()
        self.window, self.heads = window, heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv, self.proj = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.fc1, self.fc2 = torch.nn.Linear(width, 2 * width), torch.nn.Linear(2 * width, width)
        self.act = torch.nn.GELU()
        self.rel = torch.nn.Parameter(torch.randn(2 * window - 1, width // heads))

    def _bias(self, q: torch.Tensor, side: int) -> torch.Tensor:
        coords = torch.arange(side, device=q.device)
        table = self.rel[(coords[:, None] - coords[None, :] + side - 1).long()]  # [side, side, head_dim]
        grid = q.reshape(q.shape[0], side, side, -1)
        rows = torch.einsum("bhwc,hkc->bhwk", grid, table)
        cols = torch.einsum("bhwc,wkc->bhwk", grid, table)
        return (rows[:, :, :, :, None] + cols[:, :, :, None, :]).reshape(q.shape[0], side * side, side * side)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.heads, h * w, -1).unbind(0)
        bias = self._bias(q, h).view(b, self.heads, h * w, h * w)
        shape = (b, self.heads, h * w, -1)
        out = F.scaled_dot_product_attention(q.view(shape), k.view(shape), v.view(shape), attn_mask=bias)
        return self.proj(out.view(b, self.heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        s = self.window
        pad = (s - h % s) % s
        y = F.pad(self.norm1(x), (0, 0, 0, pad, 0, pad))
        n = (h + pad) // s
        windows = y.view(b, n, s, n, s, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, s, s, c)
        y = self._attend(windows).view(b, n, n, s, s, c).permute(0, 1, 3, 2, 4, 5).contiguous()
        x = x + y.view(b, n * s, n * s, c)[:, :h, :w, :].contiguous()
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ConvNeck(torch.nn.Module):
    """Channels-last map to a smaller channels-first map: 1x1 conv, channel norm, 3x3 conv, resize."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.reduce = torch.nn.Conv2d(width, width // 2, 1, bias=False)
        self.conv = torch.nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.weight, self.bias = torch.nn.Parameter(torch.ones(width // 2)), torch.nn.Parameter(torch.zeros(width // 2))

    def _channel_norm(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + 1e-6)
        return self.weight[:, None, None] * x + self.bias[:, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._channel_norm(self.reduce(x.permute(0, 3, 1, 2)))
        y = self._channel_norm(self.conv(y))
        return F.interpolate(y, scale_factor=0.5, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)


class TinyCausalLM(torch.nn.Module):
    """Token embedding, :class:`DecoderBlock` layers, a final norm and an output layer, with a forward in the style of
    model code called by a generation loop: it checks its input, tracks the past length and returns a record."""

    def __init__(self, width: int, vocab: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.layers = torch.nn.ModuleList(DecoderBlock(width) for _ in range(layers))
        self.norm, self.head = RMSNorm(width), torch.nn.Linear(width, vocab, bias=False)

    def forward(self, ids: torch.Tensor, past_length: int) -> dict[str, torch.Tensor | int]:
        if ids.dim() != 2:
            raise ValueError("expected token ids of shape [batch, length]")
        hidden = self.embed(ids)
        for layer in self.layers:
            hidden = layer(hidden)
        return {"logits": self.head(self.norm(hidden)).float(), "past_length": past_length + int(ids.shape[1])}


class GreedyLoop(torch.nn.Module):
    """A greedy generation loop over :class:`TinyCausalLM`: argmax of the last logits, finished sequences padded with
    the end token, the new token appended, a host read of whether all sequences finished (the end token is outside
    the vocabulary, so every step runs)."""

    def __init__(self, width: int, steps: int = 4, vocab: int = 64) -> None:
        super().__init__()
        self.lm, self.steps, self.eos = TinyCausalLM(width, vocab), steps, vocab

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        sequences, step_input, past = ids, ids, 0
        unfinished = torch.ones(ids.shape[0], 1, dtype=torch.long, device=ids.device)
        for _ in range(self.steps):
            out = self.lm(step_input, past)
            past = int(out["past_length"])
            logits = out["logits"]
            assert isinstance(logits, torch.Tensor)
            token = torch.argmax(logits[:, -1, :], dim=-1, keepdim=True)
            token = token * unfinished + self.eos * (1 - unfinished)
            sequences, step_input = torch.cat([sequences, token], dim=-1), token
            unfinished = unfinished * (token != self.eos).long()
            if int(unfinished.max().item()) == 0:
                break
        return sequences


def stacks(dev: str, dt: torch.dtype, width: int = 16) -> list[tuple[torch.nn.Module, torch.Tensor]]:
    """(module, input) pairs: a token stack (two encoder blocks, two decoder layers, one token), an image stack (two
    windowed blocks on a 6 x 6 map with 4 x 4 windows, a neck) and a greedy loop of 4 steps over a two-layer causal
    LM, in ``dt`` on ``dev``."""
    tokens = torch.nn.Sequential(TinyBlock(width), TinyBlock(width), DecoderBlock(width), DecoderBlock(width))
    image = torch.nn.Sequential(WindowedBlock(width, 4), WindowedBlock(width, 4), ConvNeck(width))
    loop = GreedyLoop(width)
    return [(tokens.to(device=dev, dtype=dt).eval(), torch.randn(1, 1, width, device=dev, dtype=dt)),
            (image.to(device=dev, dtype=dt).eval(), torch.randn(1, 6, 6, width, device=dev, dtype=dt)),
            (loop.to(device=dev, dtype=dt).eval(), torch.zeros(1, 1, dtype=torch.long, device=dev))]


__all__ = ["ConvNeck", "DecoderBlock", "GreedyLoop", "PastKV", "RMSNorm", "Rotary", "TinyBlock", "TinyCausalLM",
           "WindowedBlock", "stacks"]
