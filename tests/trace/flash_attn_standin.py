"""CPU stand-ins for flash-attn 2.x's torch custom ops, with the same names and schemas (test process only).

flash-attn registers its CUDA kernels as ``flash_attn::_flash_attn_forward``, ``_flash_attn_varlen_forward`` and
their ``_backward`` ops. They cannot run here (no GPU, no package), so this module registers ops with identical
signatures whose CPU kernels compute the same attention with plain tensor math: the tracer sees exactly what it
would see on a GPU (one custom op call with these arguments). Layouts: ``[batch, seqlen, heads, head_dim]``, or
packed ``[total_tokens, heads, head_dim]`` with ``cu_seqlens`` offsets for the varlen ops.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor
SCHEMAS = {
    "_flash_attn_forward": (
        "flash_attn::_flash_attn_forward(Tensor q, Tensor k, Tensor v, float dropout_p, float softmax_scale, bool"
        " causal, SymInt window_size_left, SymInt window_size_right, float softcap, Tensor? alibi_slopes, bool "
        "return_softmax) -> (Tensor, Tensor, Tensor, Tensor)"
    ),
    "_flash_attn_backward": (
        "flash_attn::_flash_attn_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor "
        "softmax_lse, Tensor(a6!)? dq, Tensor(a7!)? dk, Tensor(a8!)? dv, float dropout_p, float softmax_scale, "
        "bool causal, SymInt window_size_left, SymInt window_size_right, float softcap, Tensor? alibi_slopes, "
        "bool deterministic, Tensor? rng_state=None) -> Tensor"
    ),
    "_flash_attn_varlen_forward": (
        "flash_attn::_flash_attn_varlen_forward(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor "
        "cu_seqlens_k, SymInt max_seqlen_q, SymInt max_seqlen_k, float dropout_p, float softmax_scale, bool "
        "causal, SymInt window_size_left=-1, SymInt window_size_right=-1, float softcap=0., Tensor? "
        "alibi_slopes=None, bool return_softmax=False, Tensor? block_table=None, Tensor? leftpad_k=None, Tensor? "
        "seqused_k=None) -> (Tensor, Tensor, Tensor, Tensor)"
    ),
    "_flash_attn_varlen_backward": (
        "flash_attn::_flash_attn_varlen_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor "
        "softmax_lse, Tensor(a6!)? dq, Tensor(a7!)? dk, Tensor(a8!)? dv, Tensor cu_seqlens_q, Tensor "
        "cu_seqlens_k, SymInt max_seqlen_q, SymInt max_seqlen_k, float dropout_p, float softmax_scale, bool "
        "causal, SymInt window_size_left, SymInt window_size_right, float softcap, Tensor? alibi_slopes, bool "
        "deterministic, Tensor? rng_state=None) -> Tensor"
    ),
}
"""Schemas of flash-attn 2.7's registrations (``flash_attn_interface.py``) the stand-ins must reproduce."""


def _bias(lq: int, lk: int, causal: bool, left: int, right: int, alibi: Tensor | None, heads: int) -> Tensor:
    """Additive ``[heads, lq, lk]`` bias: causal / sliding-window masks (bottom-right aligned) and ALiBi."""
    i = torch.arange(lq).unsqueeze(1) + (lk - lq)
    j = torch.arange(lk).unsqueeze(0)
    allowed = torch.ones(lq, lk, dtype=torch.bool)
    if causal:
        right = 0
    if left >= 0:
        allowed &= j >= i - left
    if right >= 0:
        allowed &= j <= i + right
    bias = torch.zeros(heads, lq, lk).masked_fill(~allowed, -math.inf)
    if alibi is not None:
        bias = bias - alibi.reshape(heads, 1, 1) * (i - j).abs()
    return bias


def _scores(q: Tensor, k: Tensor, scale: float, softcap: float) -> tuple[Tensor, Tensor]:
    """Scaled (and soft-capped) scores ``[H, L, S]`` and the derivative of the cap (ones without one)."""
    s = q.transpose(0, 1).float() @ k.transpose(0, 1).float().transpose(1, 2) * scale
    if softcap > 0:
        t = torch.tanh(s / softcap)
        return softcap * t, 1 - t * t
    return s, torch.ones_like(s)


def _expand(x: Tensor, heads: int) -> Tensor:
    return x.repeat_interleave(heads // x.shape[1], dim=1)


def _probs(q: Tensor, k: Tensor, scale: float, causal: bool, left: int, right: int, softcap: float,
           alibi: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Attention probabilities ``[H, L, S]``, log-sum-exp ``[H, L]`` and the soft cap's derivative."""
    h = q.shape[1]
    s, dcap = _scores(q, _expand(k, h), scale, softcap)
    s = s + _bias(q.shape[0], k.shape[0], causal, left, right, alibi, h)
    lse = torch.logsumexp(s, dim=-1)
    return torch.exp(s - lse.unsqueeze(-1)), lse, dcap


def _attention(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool, left: int, right: int, softcap: float,
               alibi: Tensor | None) -> tuple[Tensor, Tensor]:
    """One sequence, ``[L, H, D]`` query and ``[S, Hk, D]`` key/value: output ``[L, H, Dv]``, log-sum-exp ``[H, L]``."""
    p, lse, _ = _probs(q, k, scale, causal, left, right, softcap, alibi)
    out = p @ _expand(v, q.shape[1]).transpose(0, 1).float()
    return out.transpose(0, 1).to(q.dtype), lse


def _grads(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool, left: int, right: int,
           softcap: float, alibi: Tensor | None) -> tuple[Tensor, ...]:
    """Gradients of :func:`_attention` for ``q, k, v`` (written out: autograd is off inside a custom op's kernel)."""
    h, hk = q.shape[1], k.shape[1]
    p, _, dcap = _probs(q, k, scale, causal, left, right, softcap, alibi)
    do = dout.transpose(0, 1).float()
    dv = p.transpose(1, 2) @ do
    dp = do @ _expand(v, h).transpose(0, 1).float().transpose(1, 2)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True)) * dcap * scale
    dq = ds @ _expand(k, h).transpose(0, 1).float()
    dk = ds.transpose(1, 2) @ q.transpose(0, 1).float()

    def per_kv_head(g: Tensor) -> Tensor:  # GQA: sum the query heads sharing a key/value head
        return g.reshape(hk, h // hk, *g.shape[1:]).sum(1).transpose(0, 1)

    return dq.transpose(0, 1).to(q.dtype), per_kv_head(dk).to(k.dtype), per_kv_head(dv).to(v.dtype)


def _empty_s(q: Tensor) -> Tensor:
    return torch.empty((0,), dtype=q.dtype, device=q.device)


def _register() -> None:
    @torch.library.custom_op("flash_attn::_flash_attn_forward", mutates_args=(), device_types="cpu")
    def _flash_attn_forward(q: Tensor, k: Tensor, v: Tensor, dropout_p: float, softmax_scale: float, causal: bool,
                            window_size_left: int, window_size_right: int, softcap: float,
                            alibi_slopes: Tensor | None, return_softmax: bool,
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        outs, lses = [], []
        for b in range(q.shape[0]):
            o, lse = _attention(q[b], k[b], v[b], softmax_scale, causal, window_size_left, window_size_right, softcap,
                                alibi_slopes)
            outs.append(o)
            lses.append(lse)
        return torch.stack(outs), torch.stack(lses), _empty_s(q), torch.zeros(2, dtype=torch.int64)

    @_flash_attn_forward.register_fake
    def _(q, k, v, dropout_p, softmax_scale, causal, window_size_left, window_size_right, softcap, alibi_slopes,
          return_softmax):  # type: ignore[no-untyped-def]
        b, lq, h, _ = q.shape
        return (q.new_empty(q.shape), q.new_empty((b, h, lq), dtype=torch.float32), _empty_s(q),
                q.new_empty((2,), dtype=torch.int64))

    @torch.library.custom_op("flash_attn::_flash_attn_varlen_forward", mutates_args=(), device_types="cpu")
    def _flash_attn_varlen_forward(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                                   max_seqlen_q: int, max_seqlen_k: int, dropout_p: float, softmax_scale: float,
                                   causal: bool, window_size_left: int = -1, window_size_right: int = -1,
                                   softcap: float = 0.0, alibi_slopes: Tensor | None = None,
                                   return_softmax: bool = False, block_table: Tensor | None = None,
                                   leftpad_k: Tensor | None = None,
                                   seqused_k: Tensor | None = None,
                                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[1], q.shape[0], dtype=torch.float32)
        bq, bk = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        for i in range(len(bq) - 1):
            o, s = _attention(q[bq[i]:bq[i + 1]], k[bk[i]:bk[i + 1]], v[bk[i]:bk[i + 1]], softmax_scale, causal,
                              window_size_left, window_size_right, softcap, alibi_slopes)
            out[bq[i]:bq[i + 1]] = o
            lse[:, bq[i]:bq[i + 1]] = s
        return out, lse, _empty_s(q), torch.zeros(2, dtype=torch.int64)

    @_flash_attn_varlen_forward.register_fake
    def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *args, **kwargs):  # type: ignore[no-untyped-def]
        return (q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32), _empty_s(q),
                q.new_empty((2,), dtype=torch.int64))

    @torch.library.custom_op("flash_attn::_flash_attn_backward", mutates_args=("dq", "dk", "dv"), device_types="cpu")
    def _flash_attn_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, softmax_lse: Tensor,
                             dq: Tensor | None, dk: Tensor | None, dv: Tensor | None,
                             dropout_p: float, softmax_scale: float, causal: bool, window_size_left: int,
                             window_size_right: int, softcap: float, alibi_slopes: Tensor | None,
                             deterministic: bool, rng_state: Tensor | None = None,
                             ) -> Tensor:
        for b in range(q.shape[0]):
            g = _grads(dout[b], q[b], k[b], v[b], softmax_scale, causal, window_size_left, window_size_right, softcap,
                       alibi_slopes)
            for buf, grad in zip((dq, dk, dv), g, strict=True):
                if buf is not None:
                    buf[b].copy_(grad)
        return torch.zeros(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32)

    @torch.library.custom_op("flash_attn::_flash_attn_varlen_backward", mutates_args=("dq", "dk", "dv"),
                             device_types="cpu")
    def _flash_attn_varlen_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, softmax_lse: Tensor,
                                    dq: Tensor | None, dk: Tensor | None, dv: Tensor | None,
                                    cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int,
                                    dropout_p: float, softmax_scale: float, causal: bool, window_size_left: int,
                                    window_size_right: int, softcap: float,
                                    alibi_slopes: Tensor | None, deterministic: bool,
                                    rng_state: Tensor | None = None,
                                    ) -> Tensor:
        bq, bk = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        for i in range(len(bq) - 1):
            sq, sk = slice(bq[i], bq[i + 1]), slice(bk[i], bk[i + 1])
            g = _grads(dout[sq], q[sq], k[sk], v[sk], softmax_scale, causal, window_size_left, window_size_right,
                       softcap, alibi_slopes)
            for buf, grad, part in zip((dq, dk, dv), g, (sq, sk, sk), strict=True):
                if buf is not None:
                    buf[part].copy_(grad)
        return torch.zeros(q.shape[1], q.shape[0], dtype=torch.float32)


def ensure_registered() -> None:
    """Register the stand-ins once per process (``torch.library`` refuses a second definition)."""
    if not hasattr(torch.ops.flash_attn, "_flash_attn_forward"):
        _register()
