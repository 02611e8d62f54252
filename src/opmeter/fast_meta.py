"""Faster meta-device kernels for common elementwise and reduction ops, for shape-only execution.

On the meta device most elementwise aten ops run PyTorch's Python reference decompositions (``torch._refs``), at
100-250 us per op; a full-size decode step of a 30-layer MoE decoder has ~500 of them.
:func:`fast_meta_kernels` registers, for
the duration of a ``with`` block, lean ``Meta`` kernels that compute the output shape (broadcasting), dtype (type
promotion) and a contiguous layout directly. They only take the fast path when every tensor input is contiguous
(then the reference result is contiguous too, so shapes, dtypes and strides are identical); otherwise they call the
reference decomposition. The op stream seen by a dispatch-mode tracer above is unchanged: only the meta kernels
underneath are faster. Set ``OPMETER_FAST_META=0`` to disable.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

_lock = threading.Lock()
_depth = 0
_lib: torch.library.Library | None = None
_shadowed: set[str] = set()
"""Keys of torch's own Python meta kernels that our registration shadows while it is installed."""

_INT_TO_FLOAT_UNARY = ("rsqrt", "cos", "sin", "sigmoid", "sqrt", "exp")


def _row_major(t: torch.Tensor) -> bool:
    """Contiguous, or dense-ordered with gaps (e.g. a slice of the last dim): strides strictly decrease."""
    if t.is_contiguous():
        return True
    last = None
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if size == 1:
            continue
        if stride <= 0 or (last is not None and stride >= last):
            return False
        last = stride
    return True


def _fast_ok(*args: Any) -> bool:
    """Every tensor input is row-major ordered, so the reference output layout is plain contiguous."""
    return all(_row_major(a) for a in args if isinstance(a, torch.Tensor))


def _broadcast(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """Broadcast two static shapes (``torch.broadcast_shapes`` is slow: it handles symbolic sizes)."""
    if tuple(a) == tuple(b):
        return tuple(a)
    n = max(len(a), len(b))
    pa = (1,) * (n - len(a)) + tuple(a)
    pb = (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(pa, pb, strict=True):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise RuntimeError(f"shapes {tuple(a)} and {tuple(b)} are not broadcastable")
    return tuple(out)


def _empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


def _binary(ref: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def kernel(x: Any, y: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not _fast_ok(x, y) or kwargs.get("rounding_mode") is not None or kwargs.get("alpha", 1) != 1:
            return ref(x, y, *args, **kwargs)  # (alpha: the reference checks it against the dtype)
        xs = x.shape if isinstance(x, torch.Tensor) else ()
        ys = y.shape if isinstance(y, torch.Tensor) else ()
        dtype = torch.result_type(x, y)
        if dtype == torch.bool and ref is torch._refs.sub:
            return ref(x, y, *args, **kwargs)  # subtracting booleans is an error
        if ref is torch._refs.div and not (dtype.is_floating_point or dtype.is_complex):
            dtype = torch.get_default_dtype()  # true division of integers
        return _empty(_broadcast(xs, ys), dtype)

    return kernel


def _inplace_binary(ref: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def kernel(x: torch.Tensor, y: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        ys = y.shape if isinstance(y, torch.Tensor) else ()
        if not _fast_ok(x, y) or _broadcast(x.shape, ys) != tuple(x.shape):
            return ref(x, y, *args, **kwargs)
        if not torch.can_cast(torch.result_type(x, y), x.dtype):
            return ref(x, y, *args, **kwargs)
        return x

    return kernel


def _unary(ref: Callable[..., torch.Tensor], float_only: bool) -> Callable[..., torch.Tensor]:
    def kernel(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or not _fast_ok(x) or x.dtype == torch.bool or (float_only and not x.dtype.is_floating_point):
            return ref(x, *args, **kwargs)
        return _empty(x.shape, x.dtype)

    return kernel


def _pow_tensor_scalar(x: torch.Tensor, exponent: Any) -> torch.Tensor:
    if not _fast_ok(x) or not x.dtype.is_floating_point or isinstance(exponent, complex):
        return torch._refs.pow(x, exponent)
    return _empty(x.shape, x.dtype)


def _dims_in_range(x: torch.Tensor, dim: Any) -> bool:
    """Every dimension of ``dim`` (``None``, an int or a sequence) is valid for ``x`` (else the reference raises)."""
    nd = max(x.dim(), 1)
    dims = [] if dim is None else [dim] if isinstance(dim, int) else list(dim)
    return all(-nd <= d < nd for d in dims)


def _reduced_shape(x: torch.Tensor, dim: Any, keepdim: bool) -> list[int]:
    nd = x.dim()
    dims = list(range(nd)) if dim is None or (isinstance(dim, Sequence) and len(dim) == 0) else dim
    if isinstance(dims, int):
        dims = [dims]
    wrapped = {d % nd if nd else 0 for d in dims}
    if keepdim:
        return [1 if i in wrapped else s for i, s in enumerate(x.shape)]
    return [s for i, s in enumerate(x.shape) if i not in wrapped]


def _reduction(ref: Callable[..., torch.Tensor], integer_to_long: bool) -> Callable[..., torch.Tensor]:
    def kernel(
        x: torch.Tensor, dim: Any = None, keepdim: bool = False, *, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        if not _fast_ok(x) or x.dim() == 0 or x.dtype.is_complex or not _dims_in_range(x, dim):
            return ref(x, dim, keepdim, dtype=dtype)
        if dtype is None:
            if x.dtype.is_floating_point:
                dtype = x.dtype
            elif integer_to_long:
                dtype = torch.int64
            else:  # mean of an integer tensor is an error in the reference: let it raise
                return ref(x, dim, keepdim, dtype=dtype)
        return _empty(_reduced_shape(x, dim, keepdim), dtype)

    return kernel


def _cat(tensors: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
    ts = list(tensors)
    nd = ts[0].dim() if ts else 0
    if (
        not ts
        or nd == 0
        or not -nd <= dim < nd
        or any(t.dim() != nd or not _row_major(t) for t in ts)
        or any(t.shape[:dim % nd] + t.shape[dim % nd + 1 :] != ts[0].shape[:dim % nd] + ts[0].shape[dim % nd + 1 :]
               for t in ts)
    ):
        return torch._refs.cat(ts, dim)
    d = dim % nd
    shape = list(ts[0].shape)
    shape[d] = sum(t.shape[d] for t in ts)
    dtype = ts[0].dtype
    for t in ts[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return _empty(shape, dtype)


def _silu(x: torch.Tensor) -> torch.Tensor:
    """As ``torch._meta_registrations.silu`` (``empty_like``), without its Python reference overhead."""
    if x.is_contiguous():
        return _empty(x.shape, x.dtype)
    return torch.empty_like(x)


def _softmax(x: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
    """``aten._softmax`` where torch's meta kernel is its Python decomposition (~450 us a call), which the
    fallback calls."""
    if not _fast_ok(x) or not _dims_in_range(x, dim) or not x.dtype.is_floating_point:
        import torch._decomp.decompositions as decompositions

        return decompositions._softmax(x, dim, half_to_float)  # type: ignore[no-any-return]
    return _empty(x.shape, torch.float32 if half_to_float else x.dtype)


def _compare_scalar(ref: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``eq.Scalar`` and friends: a boolean tensor of the input's shape."""
    def kernel(x: torch.Tensor, other: Any) -> torch.Tensor:
        if not _fast_ok(x) or x.dtype.is_complex or isinstance(other, complex):
            return ref(x, other)
        return _empty(x.shape, torch.bool)

    return kernel


def _logical_not(x: torch.Tensor) -> torch.Tensor:
    if not _fast_ok(x):
        return torch._refs.logical_not(x)
    return _empty(x.shape, torch.bool)


def _all_dim(x: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    """``all.dim``: boolean (``uint8`` stays ``uint8``), the dimension reduced."""
    if not _fast_ok(x) or x.dim() == 0 or not _dims_in_range(x, dim) or x.dtype == torch.uint8:
        return torch._refs.all(x, dim, keepdim)
    return _empty(_reduced_shape(x, dim, keepdim), torch.bool)


def _where_self(cond: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``where.self``: the broadcast shape of the three, the promoted type of ``x`` and ``y``."""
    ok = (cond.dtype == torch.bool and x.dtype == y.dtype and not x.dtype.is_complex and x.dim() > 0 and y.dim() > 0
          and _fast_ok(cond, x, y))
    if not ok:
        return torch._refs.where(cond, x, y)
    return _empty(_broadcast(_broadcast(cond.shape, x.shape), y.shape), x.dtype)


def _cumsum(x: torch.Tensor, dim: int, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``cumsum``: the input's shape; integers (and booleans) accumulate in ``int64`` unless ``dtype`` is given."""
    if not _fast_ok(x) or not _dims_in_range(x, dim) or x.dtype.is_complex:
        return torch._refs.cumsum(x, dim, dtype=dtype)
    if dtype is None:
        dtype = x.dtype if x.dtype.is_floating_point else torch.int64
    return _empty(x.shape, dtype)


def _index_rows(x: torch.Tensor, indices: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """``index.Tensor`` with one integer index tensor on the first dimension of a row-major tensor (a row gather:
    ``x[idx]``): shape ``idx.shape + x.shape[1:]``, contiguous, as torch's meta kernel gives it."""
    idx = indices[0] if len(indices) == 1 else None
    if (idx is None or idx.dtype not in (torch.int64, torch.int32) or x.dim() == 0 or not x.is_contiguous()
            or not idx.is_contiguous()):
        return _torch_meta("meta_index_Tensor")(x, indices)
    return _empty((*idx.shape, *x.shape[1:]), x.dtype)


def _has_softmax_meta() -> bool:
    """Whether torch registers a dedicated meta kernel for ``_softmax`` (2.13 does; 2.6 decomposes it)."""
    import torch._meta_registrations as registrations

    return hasattr(registrations, "softmax")


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0] or a.dtype != b.dtype:
        return _torch_meta("meta_mm")(a, b)  # torch's own checks and messages (they differ between versions)
    return _empty((a.shape[0], b.shape[1]), a.dtype)  # as meta_mm: a fresh contiguous tensor of a's dtype


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1] or a.dtype != b.dtype:
        return _torch_meta("meta_bmm")(a, b)  # e.g. mixed dtypes: torch 2.6 accepts them, 2.13 refuses
    return _empty((a.shape[0], a.shape[1], b.shape[2]), a.dtype)


def _torch_meta(name: str) -> Callable[..., torch.Tensor]:
    """torch's own Python meta kernel ``name`` of the installed version, for the cases the fast path leaves."""
    import torch._meta_registrations as registrations

    kernel: Callable[..., torch.Tensor] = getattr(registrations, name)
    return kernel


def _kernels() -> dict[str, Callable[..., torch.Tensor]]:
    refs = torch._refs
    kernels: dict[str, Callable[..., torch.Tensor]] = {
        "add.Tensor": _binary(refs.add),
        "sub.Tensor": _binary(refs.sub),
        "mul.Tensor": _binary(refs.mul),
        "div.Tensor": _binary(refs.div),
        "floor_divide": _binary(refs.floor_divide),
        "mul.Scalar": _binary(refs.mul),
        "add.Scalar": _binary(refs.add),
        "cat": _cat,
        "mm": _mm,
        "bmm": _bmm,
        "silu": _silu,
        "mul_.Tensor": _inplace_binary(refs.mul),
        "pow.Tensor_Scalar": _pow_tensor_scalar,
        "neg": _unary(refs.neg, float_only=False),
        "mean.dim": _reduction(refs.mean, integer_to_long=False),
        "sum.dim_IntList": _reduction(refs.sum, integer_to_long=True),
        "eq.Scalar": _compare_scalar(refs.eq),
        "logical_not": _logical_not,
        "all.dim": _all_dim,
        "where.self": _where_self,
        "cumsum": _cumsum,
        "index.Tensor": _index_rows,
    }
    for name in _INT_TO_FLOAT_UNARY:
        kernels[name] = _unary(getattr(refs, name), float_only=True)
    if not _has_softmax_meta():  # older torch runs the Python decomposition of _softmax on meta
        kernels["_softmax"] = _softmax
    return kernels


def _enabled() -> bool:
    return os.environ.get("OPMETER_FAST_META", "1") not in ("0", "false", "no")


@contextlib.contextmanager
def fast_meta_kernels() -> Iterator[None]:
    """Install the fast meta kernels inside the block (re-entrant; restored on exit, also on errors)."""
    global _depth, _lib
    if not _enabled():
        yield
        return
    with _lock:
        if _depth == 0:
            _lib = _install()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _lib is not None:
                _uninstall(_lib)
                _lib = None


def _registry_keys() -> set[str]:
    """torch's record of the kernels registered from Python (``"aten/add.Tensor/Meta"``, ...)."""
    keys: set[str] = torch.library._impls  # type: ignore[attr-defined]
    return keys


def _install() -> torch.library.Library:
    """Register the fast kernels over torch's own Python meta kernels.

    torch < 2.8 refuses, in ``Library.impl``, to override a kernel that another Python library registered for the
    same key (torch's meta registrations are such kernels); newer versions allow it. The dispatcher itself keeps the
    previous kernel underneath and restores it when our library is destroyed, so the refusal is lifted by taking our
    keys out of the Python-side record for the registration, and :func:`_uninstall` puts torch's own back.
    """
    global _shadowed
    lib = torch.library.Library("aten", "IMPL")
    kernels = _kernels()
    keys = _registry_keys()
    wanted = {f"aten/{name}/Meta" for name in kernels}
    _shadowed = wanted & keys
    keys.difference_update(_shadowed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, fn in kernels.items():
                lib.impl(name, fn, "Meta")
    except BaseException:
        _uninstall(lib)
        raise
    return lib


def _uninstall(lib: torch.library.Library) -> None:
    """Destroy our library (the dispatcher restores torch's kernels) and restore torch's Python-side record."""
    global _shadowed
    lib._destroy()
    _registry_keys().update(_shadowed)
    _shadowed = set()
