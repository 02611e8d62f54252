"""FLOP and byte formulas, one registry keyed by aten overload.

Read like ``torch/utils/flop_counter.py``: each formula is a small pure function registered per op with a decorator.
Ours return two numbers, tensor-core FLOPs and CUDA-core FLOPs, from ``(args, kwargs, out)``; byte formulas return
``(bytes_read, bytes_written)``. Conventions are those of :mod:`opmeter.conventions`:

* Tensor-core FLOPs (GEMM, batched GEMM, convolution, attention matmuls) equal ``torch.utils.flop_counter`` on
  every op both count, and also cover the ops torch misses
  (``aten._scaled_dot_product_flash_attention_for_cpu``, the overrideable fused attention, ``mv``/``dot``...).
  One knowing deviation: torch feeds the ``[B, M, H, K]`` inputs of ``aten._flash_attention_forward`` /
  ``aten._efficient_attention_forward`` to its ``[B, H, M, K]`` formula; we count them in their real layout.
* Attention counts both matmuls over the full ``L x S`` score matrix: causal, sliding-window and padding masks are
  *not* discounted (as in torch). Packed (varlen) attention counts each sequence at its length from the
  ``cu_seqlens`` offsets; on fake/meta tensors, whose offsets hold no values, every sequence counts at its maximum
  length (an upper bound, as torch does). Backwards count torch's five matmuls (2.5x the forward). flash-attn's
  custom ops (``flash_attn::*``) follow the same rules.
* Grouped GEMMs count ``2 * M * N * K`` summed over the groups (:func:`grouped_mm_flops`).
* A compute op (gemm, attention, convolution) without a formula is *uncounted* (:attr:`OpInfo.uncounted`): the
  trace reports it by name instead of letting it count as zero in silence.
* CUDA-core FLOPs are per-element constants per op family (estimates, ``exact=False``).
* Bytes read are the logical sizes (``numel * itemsize``) of tensor inputs, bytes written those of the outputs.
  Views and aliases move nothing. Gathers (embedding, index_select, index, gather) read the rows they fetch, not
  the whole table; scattered writes (``index_put_``, ``index_copy_``, ``scatter_``, ``copy_``) read their
  source and write that many bytes.

Public entry point: :func:`op_cost`. The tracer uses :func:`compile_op` which resolves an overload once into an
:class:`OpInfo` with a fast cost function.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from math import prod
from typing import Any

import attrs
import torch

from opmeter import conventions as cv
from opmeter.trace import categories as cat

aten = torch.ops.aten
Tensor = torch.Tensor
log = logging.getLogger(__name__)

FlopFormula = Callable[[tuple[Any, ...], dict[str, Any], Any], tuple[int, float]]
"""``(args, kwargs, out) -> (tensor_core_flops, cuda_core_flops)``."""
ByteFormula = Callable[[tuple[Any, ...], dict[str, Any], Any], tuple[int, int]]
"""``(args, kwargs, out) -> (bytes_read, bytes_written)``."""
CostFn = Callable[[tuple[Any, ...], dict[str, Any], Any], tuple[int, float, int, int]]

_FLOPS: dict[Any, tuple[FlopFormula, bool]] = {}
_BYTES: dict[Any, ByteFormula] = {}
_COMPILED: dict[Any, OpInfo] = {}
_COMPILED_RULES = [cat.rules_version()]
"""The category rules :data:`_COMPILED` was built with."""
_COSTS: dict[Any, tuple[CostFn, bool]] = {}


def _targets(targets: Any) -> Iterable[Any]:
    """Registry keys: ``OpOverload``, ``OpOverloadPacket`` or a qualified name ``"namespace::op"`` (for custom ops
    that a library registers only when it is imported, such as flash-attn's)."""
    if isinstance(targets, (list, tuple, set)):
        for t in targets:
            yield from _targets(t)
    elif targets is not None:
        yield targets


def register_formula(targets: Any, *, exact: bool = True) -> Callable[[FlopFormula], FlopFormula]:
    """Register a FLOP formula for one or more ops.

    Parameters
    ----------
    targets
        An ``OpOverloadPacket`` (``aten.mm``: every overload), an ``OpOverload`` (``aten.mm.default``), a qualified
        name (``"mylib::fused_mm"``: every overload, also of an op registered later), or a list of them. Missing
        ops (``None``, e.g. from ``getattr(aten, name, None)``) are skipped.
    exact
        Whether the count is exact under our conventions (GEMM, attention, convolution) or an estimate.
    """

    def deco(fn: FlopFormula) -> FlopFormula:
        for t in _targets(targets):
            _FLOPS[t] = (fn, exact)
        _COMPILED.clear()
        return fn

    return deco


def register_cost(targets: Any, *, exact: bool = True) -> Callable[[CostFn], CostFn]:
    """Register one function giving everything for an op: ``(args, kwargs, out) -> (flops_tensor, flops_cuda,
    bytes_read, bytes_written)`` (takes precedence over :func:`register_formula` / :func:`register_bytes`).

    Parameters
    ----------
    targets
        ``OpOverloadPacket`` (all overloads), ``OpOverload``, or a list of them (``None`` entries are skipped).
    exact
        Whether the FLOP count is exact under our conventions.
    """

    def deco(fn: CostFn) -> CostFn:
        for t in _targets(targets):
            _COSTS[t] = (fn, exact)
        _COMPILED.clear()
        return fn

    return deco


def register_bytes(targets: Any) -> Callable[[ByteFormula], ByteFormula]:
    """Register a byte formula ``(args, kwargs, out) -> (read, written)`` for one or more ops."""

    def deco(fn: ByteFormula) -> ByteFormula:
        for t in _targets(targets):
            _BYTES[t] = fn
        _COMPILED.clear()
        return fn

    return deco


def _op(name: str) -> Any:
    return getattr(aten, name, None)


# ----------------------------------------------------------------------------------------------- tensor helpers


def _nbytes(x: Any) -> int:
    if isinstance(x, Tensor):
        return int(x.nbytes)
    if isinstance(x, (list, tuple)):
        n = 0
        for y in x:
            if isinstance(y, Tensor):
                n += y.nbytes
        return n
    return 0


def _first_tensor(x: Any) -> Tensor | None:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (list, tuple)):
        for y in x:
            if isinstance(y, Tensor):
                return y
    return None


def _out_numel(out: Any) -> int:
    t = _first_tensor(out)
    return int(t.numel()) if t is not None else 0


def _in_numel(args: tuple[Any, ...]) -> int:
    for a in args:
        t = _first_tensor(a)
        if t is not None:
            return int(t.numel())
    return 0


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], pos: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` at position ``pos`` of the schema: the dispatcher passes trailing defaults nowhere and
    keyword-only arguments as ``kwargs``."""
    if len(args) > pos:
        return args[pos]
    return kwargs.get(name, default)


def is_shape_only(t: Tensor) -> bool:
    """Whether ``t`` holds no values (fake, functional or meta tensor)."""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    return isinstance(t, (FakeTensor, FunctionalTensor)) or t.device.type == "meta"


_ESTIMATES_LOGGED: set[str] = set()


def _log_estimate(what: str) -> None:
    if what not in _ESTIMATES_LOGGED:
        _ESTIMATES_LOGGED.add(what)
        log.info("opmeter formulas: %s", what)


def read_bytes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Logical bytes of every tensor argument (lists of tensors included)."""
    n = 0
    for a in args:
        if isinstance(a, Tensor):
            n += a.nbytes
        elif isinstance(a, (list, tuple)):
            for y in a:
                if isinstance(y, Tensor):
                    n += y.nbytes
    if kwargs:
        for a in kwargs.values():
            if isinstance(a, Tensor):
                n += a.nbytes
            elif isinstance(a, (list, tuple)):
                for y in a:
                    if isinstance(y, Tensor):
                        n += y.nbytes
    return n


def written_bytes(out: Any) -> int:
    """Logical bytes of every tensor output."""
    if isinstance(out, Tensor):
        return out.nbytes
    if isinstance(out, (list, tuple)):
        n = 0
        for y in out:
            if isinstance(y, Tensor):
                n += y.nbytes
        return n
    return 0


def _generic_bytes(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    return read_bytes(args, kwargs), written_bytes(out)


# ----------------------------------------------------------------------------------------------- GEMM


def mm_flops(a_shape: Any, b_shape: Any) -> int:
    """``2*M*N*K`` for ``[M, K] @ [K, N]``."""
    m, k = a_shape
    n = b_shape[-1]
    return 2 * m * n * k


def bmm_flops(a_shape: Any, b_shape: Any) -> int:
    """``2*B*M*N*K`` for ``[B, M, K] @ [B, K, N]``."""
    b, m, k = a_shape
    n = b_shape[-1]
    return 2 * b * m * n * k


@register_formula([aten.mm, _op("_int_mm")])
def _mm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    return mm_flops(args[0].shape, args[1].shape), 0.0


@register_formula([aten.addmm, _op("_addmm_activation")])
def _addmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    return mm_flops(args[1].shape, args[2].shape), 0.0


@register_formula(aten.bmm)
def _bmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    return bmm_flops(args[0].shape, args[1].shape), 0.0


@register_formula(aten.baddbmm)
def _baddbmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    return bmm_flops(args[1].shape, args[2].shape), 0.0


def _mm_cost(a: tuple[Any, ...], k: dict[str, Any], o: Any) -> tuple[int, float, int, int]:
    x, w = a[0], a[1]
    m, kk = x.shape
    return 2 * m * w.shape[-1] * kk, 0.0, x.nbytes + w.nbytes, o.nbytes


def _addmm_cost(a: tuple[Any, ...], k: dict[str, Any], o: Any) -> tuple[int, float, int, int]:
    b, x, w = a[0], a[1], a[2]
    m, kk = x.shape
    return 2 * m * w.shape[-1] * kk, 0.0, b.nbytes + x.nbytes + w.nbytes, o.nbytes


def _bmm_cost(a: tuple[Any, ...], k: dict[str, Any], o: Any) -> tuple[int, float, int, int]:
    x, w = a[0], a[1]
    bb, m, kk = x.shape
    return 2 * bb * m * w.shape[-1] * kk, 0.0, x.nbytes + w.nbytes, o.nbytes


# Hot-path versions (FLOPs and bytes in one call) of the most frequent formulas; same numbers as above.
_FUSED: dict[Any, CostFn] = {aten.mm.default: _mm_cost, aten.addmm.default: _addmm_cost, aten.bmm.default: _bmm_cost}


@register_formula(_op("_scaled_mm"))
def _scaled_mm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    return mm_flops(args[0].shape, args[1].shape), 0.0


@register_formula([aten.mv, aten.addmv])
def _mv(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    mat = args[0] if args[0].dim() == 2 else args[1]
    return 2 * int(mat.numel()), 0.0


@register_formula([aten.dot, aten.vdot])
def _dot(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    return 2 * int(args[0].numel()), 0.0


@register_formula([aten.addbmm])
def _addbmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    """``self + sum_b batch1[b] @ batch2[b]``: a batched GEMM whose products are summed (the sum not counted)."""
    return bmm_flops(args[1].shape, args[2].shape), 0.0


@register_formula([aten.addr, _op("outer"), _op("ger")])
def _outer(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    """Outer product (``addr``: plus ``self``), a GEMM with ``K = 1``: ``2 * N * M``."""
    a, b = (args[1], args[2]) if len(args) > 2 else (args[0], args[1])
    return 2 * int(a.numel()) * int(b.numel()), 0.0


@register_formula(aten.linear)
def _linear(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    """``linear.out`` (``linear`` itself decomposes into ``addmm`` / ``mm``): ``2 * rows * N * K``."""
    x, w = args[0], args[1]
    k = x.shape[-1]
    return 2 * (int(x.numel()) // max(k, 1)) * int(w.shape[0]) * k, 0.0


@register_formula([_op("_scaled_mm_v2")])
def _scaled_mm_v2(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    return mm_flops(args[0].shape, args[1].shape), 0.0


@register_formula([_op("_weight_int8pack_mm"), _op("_weight_int4pack_mm"), _op("_weight_int4pack_mm_for_cpu"),
                   _op("_weight_int4pack_mm_with_scales_and_zeros"), _op("_dyn_quant_matmul_4bit")])
def _packed_weight_mm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    """Activations ``[M, K]`` times a packed (int8 / int4) weight of ``N`` output features: ``2 * M * N * K``, with
    ``N`` read from the output since the packed weight's shape does not show it."""
    x = args[0]
    k = x.shape[-1]
    n = _first_tensor(out).shape[-1]  # type: ignore[union-attr]
    return 2 * (int(x.numel()) // max(k, 1)) * int(n) * k, 0.0


def _offsets_end(offs: Any, full: int) -> int:
    """Rows (or columns) a grouped GEMM covers: the last cumulative offset, or all of them when the offsets hold no
    values (fake/meta tensors: an upper bound)."""
    if not isinstance(offs, Tensor) or offs.numel() == 0:
        return full
    if is_shape_only(offs):
        _log_estimate("grouped GEMM offsets on fake/meta tensors: every row counted")
        return full
    return min(int(offs[-1]), full)


def grouped_mm_flops(a: Tensor, b: Tensor, offs: Any) -> int:
    """FLOPs of ``aten._grouped_mm``-style grouped GEMMs, ``2 * M * N * K`` summed over the groups.

    * ``a [G, M, K] @ b [G, K, N]``: a batched GEMM;
    * ``a [rows, K]`` (rows sorted by group) ``@ b [G, K, N]``: ``2 * rows * N * K``, rows up to the last offset;
    * ``a [G, M, K] @ b [K, cols]``: ``2 * M * K * cols``, columns up to the last offset;
    * ``a [M, Ktot] @ b [Ktot, N]`` -> ``[G, M, N]``: ``2 * M * N * Ktot``, the contraction split by the offsets.
    """
    if a.dim() == 3 and b.dim() == 3:
        g, m, k = a.shape
        return 2 * g * m * k * b.shape[-1]
    if a.dim() == 2 and b.dim() == 3:
        rows, k = a.shape
        return 2 * _offsets_end(offs, rows) * k * b.shape[-1]
    if a.dim() == 3:
        _, m, k = a.shape
        return 2 * m * k * _offsets_end(offs, b.shape[-1])
    m, k = a.shape
    return 2 * m * _offsets_end(offs, k) * b.shape[-1]


@register_formula(_op("_grouped_mm"))
def _grouped_mm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    """``(self, mat2, offs=None, bias=None, out_dtype=None)``."""
    return grouped_mm_flops(args[0], args[1], _arg(args, kwargs, 2, "offs")), 0.0


@register_formula(_op("_scaled_grouped_mm"))
def _scaled_grouped_mm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    """``(self, mat2, scale_a, scale_b, offs=None, ...)``: the scaling is not counted, as for ``_scaled_mm``."""
    return grouped_mm_flops(args[0], args[1], _arg(args, kwargs, 4, "offs")), 0.0


@register_formula(_op("_scaled_grouped_mm_v2"))
def _scaled_grouped_mm_v2(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    """``(self, mat2, scale_a, recipe_a, swizzle_a, scale_b, recipe_b, swizzle_b, offs=None, ...)``."""
    return grouped_mm_flops(args[0], args[1], _arg(args, kwargs, 8, "offs")), 0.0


@register_formula("transformers::grouped_mm_fallback")
def _hf_grouped_mm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    """transformers' loop-of-``mm`` stand-in for ``_grouped_mm`` (a custom op: its ``mm`` calls are not seen),
    ``(input [rows, K], weight [G, K, N], offs)``."""
    return grouped_mm_flops(args[0], args[1], args[2]), 0.0


@register_formula("transformers::grouped_mm_fallback_backward")
def _hf_grouped_mm_backward(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    """``(input, weight, offs, grad_output)``: two grouped GEMMs (input and weight gradients)."""
    return 2 * grouped_mm_flops(args[0], args[1], args[2]), 0.0


# ----------------------------------------------------------------------------------------------- convolution


def conv_flops(x_shape: Any, w_shape: Any, out_shape: Any, transposed: bool = False) -> int:
    """Convolution FLOPs exactly as ``torch.utils.flop_counter.conv_flop_count``.

    ``2 * batch * prod(spatial) * C_out * C_in_per_group * prod(kernel)``, the spatial extent being the output's
    (the input's for a transposed convolution).
    """
    batch = x_shape[0]
    spatial = (x_shape if transposed else out_shape)[2:]
    c_out, c_in, *kernel = w_shape
    return int(prod(spatial) * prod(kernel) * batch * c_out * c_in * 2)


@register_formula(
    [aten.convolution, aten._convolution, _op("cudnn_convolution"), _op("_slow_conv2d_forward"),
     _op("convolution_overrideable")]
)
def _conv(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    transposed = bool(args[6]) if len(args) > 6 else bool(kwargs.get("transposed", False))
    return conv_flops(args[0].shape, args[1].shape, _first_tensor(out).shape, transposed), 0.0  # type: ignore[union-attr]


@register_formula([_op("mkldnn_convolution"), _op("_conv_depthwise2d"), _op("slow_conv3d_forward"),
                   _op("slow_conv_dilated2d"), _op("slow_conv_dilated3d"), _op("miopen_convolution"),
                   _op("_nnpack_spatial_convolution")])
def _conv_plain(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    return conv_flops(args[0].shape, args[1].shape, _first_tensor(out).shape, False), 0.0  # type: ignore[union-attr]


@register_formula([_op("cudnn_convolution_transpose"), _op("slow_conv_transpose2d"), _op("slow_conv_transpose3d")])
def _conv_transposed(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    return conv_flops(args[0].shape, args[1].shape, _first_tensor(out).shape, True), 0.0  # type: ignore[union-attr]


@register_formula(aten.convolution_backward)
def _conv_backward(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    grad_out, x, w = args[0].shape, args[1].shape, args[2].shape
    transposed, output_mask = bool(args[7]), args[10]

    def t(shape: Any) -> list[int]:
        return [shape[1], shape[0], *list(shape[2:])]

    flops = 0
    if output_mask[0]:
        flops += conv_flops(grad_out, w, out[0].shape, not transposed)
    if output_mask[1]:
        if transposed:
            flops += conv_flops(t(grad_out), t(x), t(out[1].shape), False)
        else:
            flops += conv_flops(t(x), t(grad_out), t(out[1].shape), False)
    return flops, 0.0


# ----------------------------------------------------------------------------------------------- attention


def sdpa_flops(q_shape: Any, k_shape: Any, v_shape: Any) -> int:
    """Both attention matmuls for ``[B, H, L, D]`` query, ``[B, Hkv, S, D]`` key, ``[B, Hkv, S, Dv]`` value.

    ``2*B*H*L*S*D + 2*B*H*L*S*Dv`` (GQA: key/value heads broadcast to the query heads); causal masking is not
    discounted. Equal to ``torch.utils.flop_counter.sdpa_flop_count``.
    """
    b, h, lq, d = q_shape
    s = k_shape[-2]
    dv = v_shape[-1]
    return 2 * b * h * lq * s * d + 2 * b * h * lq * s * dv


def sdpa_backward_flops(grad_shape: Any, q_shape: Any, k_shape: Any, v_shape: Any) -> int:
    """Five matmuls of the attention backward, as ``torch.utils.flop_counter.sdpa_backward_flop_count``."""
    b, h, lq, d = q_shape
    s = k_shape[-2]
    dv = v_shape[-1]
    bh = b * h
    return 2 * bh * (lq * d * s + lq * dv * s + s * lq * dv + lq * s * d + d * lq * s)


def _scores(q_shape: Any, k_shape: Any) -> int:
    return int(q_shape[0] * q_shape[1] * q_shape[2] * k_shape[-2])


def _attn_cuda(q_shape: Any, k_shape: Any, masked: bool) -> float:
    per = cv.ATTENTION_SOFTMAX_FLOPS + (cv.ATTENTION_MASK_FLOPS if masked else 0.0)
    return _scores(q_shape, k_shape) * per


def _sdpa_from(args: tuple[Any, ...], mask: Any) -> tuple[int, float]:
    q, k, v = args[0].shape, args[1].shape, args[2].shape
    return sdpa_flops(q, k, v), _attn_cuda(q, k, isinstance(mask, Tensor))


@register_formula(_op("_scaled_dot_product_flash_attention_for_cpu"))
def _sdpa_cpu(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    return _sdpa_from(args, kwargs.get("attn_mask"))


@register_formula([aten._scaled_dot_product_flash_attention])
def _sdpa_flash(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    return _sdpa_from(args, None)


@register_formula([aten._scaled_dot_product_efficient_attention, _op("_scaled_dot_product_cudnn_attention"),
                   _op("_scaled_dot_product_fused_attention_overrideable")])
def _sdpa_bias(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    bias = args[3] if len(args) > 3 else kwargs.get("attn_bias")
    return _sdpa_from(args, bias)


@register_formula(_op("_scaled_dot_product_attention_math_for_mps"))
def _sdpa_mps(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
    return _sdpa_from(args, mask)


def _lengths(offsets: Tensor, max_len: Any) -> list[int]:
    """Sequence lengths from cumulative offsets ``[0, l0, l0 + l1, ...]``.

    Real tensors are read (one device-to-host copy on a GPU). On fake or meta tensors the values do not exist, so
    every sequence is taken at ``max_len``: an upper bound, as ``torch.utils.flop_counter`` does.
    """
    if is_shape_only(offsets):
        _log_estimate("sequence lengths of fake/meta offsets are unknown: each counted at its maximum length")
        return [int(max_len)] * (offsets.size(0) - 1)
    return [int(x) for x in offsets.diff().tolist()]


def _bmhk_pairs(q: Tensor, k: Tensor, cu_q: Any, cu_k: Any, max_q: Any, max_k: Any) -> list[tuple[int, int, int]]:
    """``(batch, query length, key length)`` blocks of attention on ``[B, M, H, K]`` inputs, or, with cumulative
    offsets, on packed ``[total, H, K]`` inputs (one block per sequence)."""
    if isinstance(cu_q, Tensor):
        lq = _lengths(cu_q, max_q)
        lk = _lengths(cu_k if isinstance(cu_k, Tensor) else cu_q, max_k)
        return [(1, a, b) for a, b in zip(lq, lk, strict=False)]
    return [(int(q.shape[0]), int(q.shape[1]), int(k.shape[1]))]


def _bmhk_flops(q: Tensor, k: Tensor, v: Tensor, cu_q: Any, cu_k: Any, max_q: Any, max_k: Any) -> tuple[int, float]:
    """Attention on ``[B, M, H, K]`` inputs (flash / efficient kernels), optionally packed via offsets."""
    return _pairs_flops(q, k, v, _bmhk_pairs(q, k, cu_q, cu_k, max_q, max_k))


def _pairs_flops(q: Tensor, k: Tensor, v: Tensor, pairs: list[tuple[int, int, int]]) -> tuple[int, float]:
    """Attention FLOPs over the ``(batch, query length, key length)`` blocks of :func:`_bmhk_pairs`."""
    h, d, hk, dv = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    ft, fc = 0, 0.0
    for b, lq, lk in pairs:
        qs, ks = (b, h, lq, d), (b, hk, lk, d)
        ft += sdpa_flops(qs, ks, (b, hk, lk, dv))
        fc += _attn_cuda(qs, ks, False)
    return ft, fc


def _bmhk_backward_flops(q: Tensor, k: Tensor, v: Tensor, cu_q: Any, cu_k: Any, max_q: Any,
                         max_k: Any) -> tuple[int, float]:
    """Attention backward on ``[B, M, H, K]`` (or packed) inputs: torch's five matmuls, softmax twice."""
    h, d, hk, dv = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    ft, fc = 0, 0.0
    for b, lq, lk in _bmhk_pairs(q, k, cu_q, cu_k, max_q, max_k):
        qs, ks = (b, h, lq, d), (b, hk, lk, d)
        ft += sdpa_backward_flops((b, h, lq, dv), qs, ks, (b, hk, lk, dv))
        fc += 2.0 * _scores(qs, ks) * cv.ATTENTION_SOFTMAX_FLOPS
    return ft, fc


@register_formula(_op("_flash_attention_forward"))
def _flash_fwd(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    return _bmhk_flops(args[0], args[1], args[2], args[3], args[4], args[5], args[6])


@register_formula(_op("_efficient_attention_forward"))
def _efficient_fwd(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    ft, fc = _bmhk_flops(args[0], args[1], args[2], args[4], args[5], args[6], args[7])
    if isinstance(args[3], Tensor):
        q = args[0]
        fc += q.shape[0] * q.shape[2] * q.shape[1] * args[1].shape[1] * cv.ATTENTION_MASK_FLOPS
    return ft, fc


@register_formula(_op("_cudnn_attention_forward"))
def _cudnn_fwd(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    return _sdpa_from(args, args[3])


@register_formula([aten._scaled_dot_product_efficient_attention_backward,
                   aten._scaled_dot_product_flash_attention_backward,
                   _op("_scaled_dot_product_cudnn_attention_backward"),
                   _op("_scaled_dot_product_flash_attention_for_cpu_backward"),
                   _op("_scaled_dot_product_fused_attention_overrideable_backward")])
def _sdpa_bwd(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    g, q, k, v = args[0].shape, args[1].shape, args[2].shape, args[3].shape
    return sdpa_backward_flops(g, q, k, v), 2.0 * _scores(q, k) * cv.ATTENTION_SOFTMAX_FLOPS


@register_formula(_op("_flash_attention_backward"))
def _flash_bwd(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    """``(grad_out, query, key, value, out, logsumexp, cum_seq_q, cum_seq_k, max_q, max_k, ...)``, ``[B, M, H, K]``
    (torch reads them as ``[B, H, M, K]``: the same deviation as for the forward)."""
    return _bmhk_backward_flops(args[1], args[2], args[3], args[6], args[7], args[8], args[9])


@register_formula(_op("_efficient_attention_backward"))
def _efficient_bwd(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    """``(grad_out, query, key, value, bias, out, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, ...)``."""
    return _bmhk_backward_flops(args[1], args[2], args[3], args[6], args[7], args[8], args[9])


@register_formula(_op("_cudnn_attention_backward"))
def _cudnn_bwd(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    """``(grad_out, query, key, value, out, logsumexp, philox_seed, philox_offset, attn_bias, cum_seq_q, cum_seq_k,
    max_q, max_k, ...)``: ``[B, H, L, D]`` like the SDPA cuDNN backward, or packed ``[total, H, D]`` with offsets."""
    q, k, v = args[1], args[2], args[3]
    if q.dim() == 3 and isinstance(args[9], Tensor):
        return _bmhk_backward_flops(q, k, v, args[9], args[10], args[11], args[12])
    return _sdpa_bwd(args, kwargs, out)


# flash-attn 2.x registers its CUDA kernels as torch custom ops (``torch.library.custom_op``) under ``flash_attn::``
# (``flashattn::`` in later releases). Inputs are ``[batch, seqlen, heads, head_dim]``, or packed
# ``[total_tokens, heads, head_dim]`` with ``cu_seqlens`` offsets for the varlen ops. Conventions as for SDPA: both
# matmuls, masks of any kind (causal, sliding window) not discounted, real lengths of packed sequences.
_FLASH_ATTN_NAMESPACES = ("flash_attn", "flashattn")


def _flash_attn_extra_cuda(q: Tensor, alibi: Any, softcap: Any, pairs: list[tuple[int, int, int]]) -> float:
    """CUDA-core FLOPs of an ALiBi bias (one add per score) and a soft cap (a tanh and two multiplies)."""
    per = (cv.ATTENTION_MASK_FLOPS if isinstance(alibi, Tensor) else 0.0)
    per += (cv.TANH_FLOPS + 2.0) if softcap else 0.0
    return per * sum(b * q.shape[-2] * lq * lk for b, lq, lk in pairs)


@register_formula([f"{ns}::_flash_attn_forward" for ns in _FLASH_ATTN_NAMESPACES])
def _flash_attn_fwd(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    """``(q, k, v, dropout_p, softmax_scale, causal, window_size_left, window_size_right, softcap, alibi_slopes,
    return_softmax)``."""
    q, k, v = args[0], args[1], args[2]
    pairs = _bmhk_pairs(q, k, None, None, None, None)
    ft, fc = _pairs_flops(q, k, v, pairs)
    return ft, fc + _flash_attn_extra_cuda(q, _arg(args, kwargs, 9, "alibi_slopes"),
                                           _arg(args, kwargs, 8, "softcap", 0.0), pairs)


@register_formula([f"{ns}::_flash_attn_varlen_forward" for ns in _FLASH_ATTN_NAMESPACES])
def _flash_attn_varlen_fwd(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    """``(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
    window_size_left=-1, window_size_right=-1, softcap=0.0, alibi_slopes=None, return_softmax=False, block_table=None,
    leftpad_k=None, seqused_k=None)``; key lengths come from ``cu_seqlens_k`` also with a paged KV cache."""
    q, k, v = args[0], args[1], args[2]
    cu_q, cu_k, max_q, max_k = args[3], args[4], args[5], args[6]
    pairs = _bmhk_pairs(q, k, cu_q, cu_k, max_q, max_k)  # reads the offsets once
    ft, fc = _pairs_flops(q, k, v, pairs)
    return ft, fc + _flash_attn_extra_cuda(q, _arg(args, kwargs, 13, "alibi_slopes"),
                                           _arg(args, kwargs, 12, "softcap", 0.0), pairs)


@register_formula([f"{ns}::_flash_attn_backward" for ns in _FLASH_ATTN_NAMESPACES])
def _flash_attn_bwd(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    """``(dout, q, k, v, out, softmax_lse, dq, dk, dv, dropout_p, softmax_scale, causal, ...)``."""
    return _bmhk_backward_flops(args[1], args[2], args[3], None, None, None, None)


@register_formula([f"{ns}::_flash_attn_varlen_backward" for ns in _FLASH_ATTN_NAMESPACES])
def _flash_attn_varlen_bwd(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float]:
    """``(dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
    ...)``."""
    return _bmhk_backward_flops(args[1], args[2], args[3], args[9], args[10], args[11], args[12])


@register_bytes([f"{ns}::{name}" for ns in _FLASH_ATTN_NAMESPACES
                 for name in ("_flash_attn_backward", "_flash_attn_varlen_backward")])
def _flash_attn_bwd_bytes(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    """The gradient buffers ``dq, dk, dv`` (arguments 6-8, written in place) are written, not read."""
    grads = _nbytes(args[6]) + _nbytes(args[7]) + _nbytes(args[8])
    return read_bytes(args, kwargs) - grads, written_bytes(out) + grads


# ----------------------------------------------------------------------------------------------- CUDA-core families

_PER_OUT: dict[str, float] = {
    "relu": cv.RELU_FLOPS, "relu6": cv.RELU_FLOPS, "threshold": cv.RELU_FLOPS, "hardtanh": cv.RELU_FLOPS,
    "leaky_relu": 2.0, "prelu": 2.0, "_prelu_kernel": 2.0,
    "gelu": cv.GELU_FLOPS, "quick_gelu": cv.GELU_FLOPS, "silu": cv.SILU_FLOPS, "mish": cv.GELU_FLOPS,
    "sigmoid": cv.SIGMOID_FLOPS, "log_sigmoid_forward": cv.SIGMOID_FLOPS + 1, "tanh": cv.TANH_FLOPS,
    "elu": cv.SIGMOID_FLOPS, "selu": cv.SIGMOID_FLOPS, "celu": cv.SIGMOID_FLOPS, "softplus": cv.SIGMOID_FLOPS,
    "hardswish": 4.0, "hardsigmoid": 3.0, "glu": cv.SIGMOID_FLOPS + 1,
}
"""Activations: CUDA-core FLOPs per output element."""

_PER_IN: dict[str, float] = {
    "softmax": cv.SOFTMAX_FLOPS, "_softmax": cv.SOFTMAX_FLOPS, "log_softmax": cv.SOFTMAX_FLOPS,
    "_log_softmax": cv.SOFTMAX_FLOPS, "_safe_softmax": cv.SOFTMAX_FLOPS, "logsumexp": cv.SOFTMAX_FLOPS - 1,
}
"""Softmax family: CUDA-core FLOPs per input element."""

_ZERO_FLOP_ELEMENTWISE = frozenset({"real", "imag", "conj_physical", "triu", "tril"})


def _family(packet_name: str, category: str) -> tuple[str | None, float, bool]:
    """Default CUDA-core family of an op without a registered formula: ``(basis, per_element, exact)``.

    ``basis`` is ``"out"`` (per output element), ``"in"`` (per element of the first tensor input) or ``None``
    (no FLOPs).
    """
    base = packet_name.rstrip("_") or packet_name
    if category in (cat.DATA_MOVEMENT, cat.EMBEDDING):
        return None, 0.0, True
    if base in _PER_OUT:
        return "out", _PER_OUT[base], False
    if base in _PER_IN:
        return "in", _PER_IN[base], False
    if category == cat.ACTIVATION:
        return "out", cv.ELEMENTWISE_FLOPS, False
    if category == cat.ELEMENTWISE:
        if base in _ZERO_FLOP_ELEMENTWISE:
            return None, 0.0, True
        return "out", cv.ELEMENTWISE_FLOPS, False
    if category == cat.NORMALIZATION:
        return "in", cv.LAYER_NORM_FLOPS, False
    if category == cat.REDUCTION:
        return "in", cv.REDUCTION_FLOPS, False
    return None, 0.0, False


def _basis_flops(basis: str, c: float) -> FlopFormula:
    if basis == "out":
        return lambda a, k, o: (0, _out_numel(o) * c)
    return lambda a, k, o: (0, _in_numel(a) * c)


def _fused_cost(basis: str | None, c: float) -> CostFn:
    """One function computing FLOPs and bytes in a single pass over the arguments (the hot path)."""

    def cost(a: tuple[Any, ...], k: dict[str, Any], o: Any) -> tuple[int, float, int, int]:
        n = 0
        first = None
        for x in a:
            if isinstance(x, Tensor):
                n += x.nbytes
                if first is None:
                    first = x
            elif isinstance(x, (list, tuple)):
                for y in x:
                    if isinstance(y, Tensor):
                        n += y.nbytes
                        if first is None:
                            first = y
        if k:
            n += read_bytes((), k)
        t: Tensor | None
        if isinstance(o, Tensor):
            w = o.nbytes
            t = o
        else:
            w = written_bytes(o)
            t = _first_tensor(o)
        if basis is None:
            return 0, 0.0, n, w
        if basis == "out":
            return 0, (t.numel() * c if t is not None else 0.0), n, w
        return 0, (first.numel() * c if first is not None else 0.0), n, w

    return cost


# ----------------------------------------------------------------------------------------------- bytes


def _gather_bytes(index_pos: int) -> ByteFormula:
    def fn(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
        w = written_bytes(out)
        return w + _nbytes(args[index_pos]), w

    return fn


register_bytes(aten.embedding)(_gather_bytes(1))
register_bytes([aten.index_select, aten.gather])(_gather_bytes(2))
register_bytes([aten.index, _op("_unsafe_index")])(_gather_bytes(1))


@register_bytes([aten.copy_, _op("_copy_from")])
def _copy_bytes(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    src = _nbytes(args[1])
    return src, _nbytes(args[0])


@register_bytes([aten.index_put_, _op("_index_put_impl_")])
def _index_put_bytes(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    values = _nbytes(args[2])
    return values + _nbytes(args[1]), values


@register_bytes([aten.index_copy_, aten.index_add_])
def _index_copy_bytes(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    src = _nbytes(args[3])
    return src + _nbytes(args[2]), src


@register_bytes([aten.scatter_, aten.scatter_add_, aten.scatter_reduce_])
def _scatter_bytes(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    src = args[3] if len(args) > 3 else (kwargs or {}).get("src")
    n = _nbytes(src) if isinstance(src, Tensor) else int(args[2].numel()) * args[0].itemsize
    return n + _nbytes(args[2]), n


# ----------------------------------------------------------------------------------------------- compile / public


@attrs.frozen
class OpCost:
    """What one op execution costs under our conventions."""

    flops_tensor: int
    flops_cuda: float
    bytes_read: int
    bytes_written: int
    exact: bool


@attrs.frozen
class OpInfo:
    """Everything the tracer caches per overload on first sight."""

    name: str
    """``aten.mm.default``."""
    category: str
    exact: bool
    is_view: bool
    """Returns an alias of an input: no bytes, no FLOPs."""
    decompose: bool
    """Has a CompositeImplicitAutograd kernel (seen under ``inference_mode``): decomposed, not counted itself."""
    cost: CostFn
    uncounted: bool = False
    """A compute op (gemm, attention, convolution) with no FLOP formula: its FLOPs are unknown, not zero, and the
    trace reports it as *uncounted* (``Trace.uncounted()``)."""


_VIEW_EXTRA = frozenset({"_unsafe_view", "lift_fresh", "alias", "detach", "_reshape_alias", "view", "_conj",
                         "_neg_view", "resolve_conj", "resolve_neg",
                         # metadata queries (seen under fake tensors): no data moves
                         "device", "layout", "size", "sym_size", "stride", "sym_stride", "numel", "sym_numel", "dim",
                         "storage_offset", "sym_storage_offset", "is_contiguous", "sym_is_contiguous",
                         "is_strides_like_format", "is_non_overlapping_and_dense"})
_ZERO4: tuple[int, float, int, int] = (0, 0.0, 0, 0)


def _zero_cost(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, float, int, int]:
    return _ZERO4


def _schema_is_view(func: Any) -> bool:
    schema = getattr(func, "_schema", None)
    if schema is None:
        return False
    rets = schema.returns
    if not rets:
        return False
    for r in rets:
        ai = r.alias_info
        if ai is None or ai.is_write:
            return False
    return True


def _out_arg_names(func: Any) -> frozenset[str]:
    schema = getattr(func, "_schema", None)
    if schema is None:
        return frozenset()
    return frozenset(a.name for a in schema.arguments if getattr(a, "is_out", False))


def _has_composite_implicit(func: Any) -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd"))
    except Exception:
        return False


def _lookup(registry: dict[Any, Any], func: Any) -> Any:
    hit = registry.get(func)
    if hit is None:
        hit = registry.get(getattr(func, "_overloadpacket", None))
    if hit is None:
        schema = getattr(func, "_schema", None)
        if schema is not None:
            hit = registry.get(schema.name)
    return hit


def compile_op(func: Any) -> OpInfo:
    """Resolve an overload into its cached :class:`OpInfo` (category, view-ness, fast cost function)."""
    if _COMPILED_RULES[0] != cat.rules_version():  # a category rule was added since: categories may differ
        _COMPILED.clear()
        _COMPILED_RULES[0] = cat.rules_version()
    info = _COMPILED.get(func)
    if info is not None:
        return info
    packet = getattr(func, "_overloadpacket", func)
    packet_name = getattr(packet, "__name__", str(func))
    category = cat.category_of(func)
    is_view = _schema_is_view(func) or packet_name in _VIEW_EXTRA
    decompose = _has_composite_implicit(func) and getattr(func, "namespace", "aten") == "aten"
    registered = _lookup(_FLOPS, func)
    bytes_fn = _lookup(_BYTES, func)
    out_names = _out_arg_names(func)
    if bytes_fn is None and out_names:

        def bytes_fn(a: tuple[Any, ...], k: dict[str, Any], o: Any) -> tuple[int, int]:
            return read_bytes(a, {n: v for n, v in k.items() if n not in out_names}), written_bytes(o)

    cost: CostFn
    basis: str | None = None
    per = 0.0
    if registered is not None:
        flops_fn, exact = registered
    else:
        basis, per, exact = _family(packet_name, category)
        flops_fn = _basis_flops(basis, per) if basis is not None else None
    if category == cat.UNCLASSIFIED:
        exact = False
    custom = _lookup(_COSTS, func)
    if custom is not None:
        cost, exact = custom
    elif is_view:
        cost = _zero_cost
    elif func in _FUSED and _FLOPS.get(packet, (None,))[0] in (_mm, _addmm, _bmm) and bytes_fn is None:
        cost = _FUSED[func]
    elif registered is None and bytes_fn is None:
        cost = _fused_cost(basis, per)
    else:
        ff, bf = flops_fn, bytes_fn

        def cost(a: tuple[Any, ...], k: dict[str, Any], o: Any) -> tuple[int, float, int, int]:
            ft, fc = ff(a, k, o) if ff is not None else (0, 0.0)
            if bf is None:
                return ft, fc, read_bytes(a, k), written_bytes(o)
            br, bw = bf(a, k, o)
            return ft, fc, br, bw

    # composite ops are counted through their parts (attention ones as one row of those: see dispatch)
    uncounted = category in cat.COMPUTE and registered is None and custom is None and not is_view and not decompose
    if uncounted:
        exact = False
    info = OpInfo(name=str(func), category=category, exact=exact, is_view=is_view, decompose=decompose, cost=cost,
                  uncounted=uncounted)
    _COMPILED[func] = info
    return info


def resolve_op(name: str) -> Any:
    """The ``OpOverload`` a traced op name (``aten.mm.default``, ``flash_attn._flash_attn_forward.default``) refers
    to in this process, or ``None`` (unknown namespace or op, or not an overload name)."""
    parts = name.split(".")
    if len(parts) != 3:
        return None
    ns, packet, overload = parts
    try:
        return getattr(getattr(getattr(torch.ops, ns), packet), overload)
    except (AttributeError, RuntimeError):
        return None


def is_uncounted(name: str) -> bool:
    """Whether the traced op ``name`` is a compute op without a FLOP formula (see :attr:`OpInfo.uncounted`).

    Ops this process cannot resolve are judged by their qualified name: a compute op with no formula registered
    under that name is uncounted.
    """
    func = resolve_op(name)
    if func is None:
        ns, _, rest = name.partition(".")
        qualified = f"{ns}::{rest.split('.')[0]}"
        known = qualified in _FLOPS or qualified in _COSTS
        return not known and cat.category_of_name(qualified) in cat.COMPUTE
    return compile_op(func).uncounted


def op_cost(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None, out: Any) -> OpCost:
    """Cost of one execution of ``func(*args, **kwargs) -> out`` under opmeter's conventions.

    Parameters
    ----------
    func
        An ``OpOverload`` such as ``torch.ops.aten.mm.default``.
    args, kwargs, out
        The op's inputs and its output (real, fake or meta tensors).

    Returns
    -------
    OpCost
        Tensor-core and CUDA-core FLOPs, bytes read and written, and whether the FLOP count is exact.
    """
    info = compile_op(func)
    ft, fc, br, bw = info.cost(tuple(args), dict(kwargs or {}), out)
    return OpCost(flops_tensor=int(ft), flops_cuda=float(fc), bytes_read=int(br), bytes_written=int(bw),
                  exact=info.exact)
