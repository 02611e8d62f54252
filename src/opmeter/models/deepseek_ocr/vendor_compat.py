"""Run the unmodified DeepSeek-OCR remote code where it was not written to run: on CPU, and shape-only on meta.

The vendor ``infer()`` assumes a CUDA GPU and data it can read. Each context manager here lifts one assumption with
a narrow patch that is undone on exit (also on errors and Ctrl-C), and names itself in
``model.opmeter_metadata["vendor_patches"]`` so every trace says how it was made:

``generation_cap``
    ``--decode-tokens``: the vendor ``generate()`` asks for up to 8,192 new tokens and stops at EOS; the cap forces
    ``max_new_tokens = min_new_tokens = N``, a fixed budget as the reference's ``ignore_eos``.
``cpu_compat``
    ``Tensor.cuda()`` moves to the model's device instead, and floating image inputs are cast to the model's dtype
    (on a GPU, ``torch.autocast("cuda")`` reconciles the vendor's bf16 pixels with the weights; on CPU nothing
    does).
``shape_only``
    for a model on the meta device, on top of ``cpu_compat``: answers for the values the vendor code reads on the
    host (:class:`HostReadPolicy`), ``torch.autocast(device_type="meta")`` taken as the CPU's (transformers' rotary
    embedding enters it), a fixed-budget greedy loop in place of ``generate()`` (whose stopping reads every token),
    and the fast meta kernels.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from opmeter.errors import OpmeterError
from opmeter.fast_meta import fast_meta_kernels
from opmeter.models.deepseek_ocr.decoder import balanced_routing_counts

log = logging.getLogger(__name__)

SHAPE_ONLY_TOKEN = 1000
"""Token id every shape-only generation step emits (as the reference model's shape-only mode)."""

aten = torch.ops.aten
_SCALAR = id(aten._local_scalar_dense.default)
_TO_COPY = id(aten._to_copy.default)
_SUM_DIM = id(aten.sum.dim_IntList)
_CARRY_NONZERO = frozenset({id(aten.sum.default), _SUM_DIM, _TO_COPY})
_SCATTER = frozenset({id(aten.scatter_.value), id(aten.scatter.value)})
_WATCHED = frozenset({_SCALAR, *_CARRY_NONZERO, *_SCATTER})
"""The ops :class:`HostReadPolicy` looks at (by identity: comparing ``OpOverload`` objects runs Python code)."""


def metadata(model: nn.Module) -> dict[str, Any]:
    """``model.opmeter_metadata`` (created when missing): what the tracer merges into the trace's metadata."""
    meta: dict[str, Any] | None = getattr(model, "opmeter_metadata", None)
    if meta is None:
        meta = {}
        setattr(model, "opmeter_metadata", meta)  # noqa: B010 (nn.Module's __setattr__ types attributes as tensors)
    return meta


def _note(model: nn.Module, patch: str) -> None:
    patches = metadata(model).setdefault("vendor_patches", [])
    if patch not in patches:
        patches.append(patch)


def _param(model: nn.Module) -> torch.Tensor:
    try:
        return next(model.parameters())
    except StopIteration:
        raise OpmeterError("the vendor model has no parameters") from None


@contextlib.contextmanager
def _instance_attr(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Set ``obj.name`` for the block; restore the previous instance attribute (or the class's) afterwards."""
    had = name in vars(obj)
    old = vars(obj).get(name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, old)
        else:
            with contextlib.suppress(AttributeError):
                delattr(obj, name)


@contextlib.contextmanager
def generation_cap(model: nn.Module, max_new_tokens: int) -> Iterator[None]:
    """Make ``model.generate`` produce exactly ``max_new_tokens`` new tokens whatever its caller asks.

    Raises
    ------
    OpmeterError
        When ``max_new_tokens`` is below 1.
    """
    if max_new_tokens < 1:
        raise OpmeterError(f"the generation cap needs at least 1 token, got {max_new_tokens}")
    original: Callable[..., Any] = getattr(model, "generate")  # noqa: B009 (typed as a tensor by nn.Module)

    def capped(*args: Any, **kwargs: Any) -> Any:
        asked = kwargs.get("max_new_tokens")
        if asked != max_new_tokens:
            log.info("vendor generate(): max_new_tokens %s -> %d (fixed budget)", asked, max_new_tokens)
        kwargs["max_new_tokens"] = max_new_tokens
        kwargs["min_new_tokens"] = max_new_tokens  # EOS cannot stop it earlier
        return original(*args, **kwargs)

    _note(model, f"generation-cap-{max_new_tokens}")
    with _instance_attr(model, "generate", capped):
        yield


def _cast_floats(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() and obj.dtype != dtype else obj
    if isinstance(obj, list | tuple):
        return type(obj)(_cast_floats(o, dtype) for o in obj)
    return obj


@contextlib.contextmanager
def _tensor_method(name: str, fn: Callable[..., Any]) -> Iterator[None]:
    had = name in vars(torch.Tensor)
    old = vars(torch.Tensor).get(name)
    setattr(torch.Tensor, name, fn)
    try:
        yield
    finally:
        if had:
            setattr(torch.Tensor, name, old)
        else:
            delattr(torch.Tensor, name)


@contextlib.contextmanager
def cpu_compat(model: nn.Module, on_move: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> Iterator[None]:
    """``Tensor.cuda()`` goes to the model's device, and image inputs take the model's dtype (see module docs).

    Parameters
    ----------
    model
        The vendor model (its first parameter gives the device and dtype).
    on_move
        Called with ``(source, moved)`` for every tensor moved by the redirected ``.cuda()``.
    """
    param = _param(model)
    device, dtype = param.device, param.dtype
    if device.type == "cuda":  # nothing to adapt
        yield
        return

    def to_model_device(t: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        moved = t.to(device, non_blocking=bool(kwargs.get("non_blocking", False)))
        if on_move is not None:
            on_move(t, moved)
        return moved

    def cast_images(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if kwargs.get("images") is not None:
            kwargs["images"] = _cast_floats(kwargs["images"], dtype)
        return args, kwargs

    _note(model, f"cuda-to-{device.type}")
    _note(model, f"image-inputs-to-{str(dtype).removeprefix('torch.')}")
    handle = model.register_forward_pre_hook(cast_images, with_kwargs=True)
    try:
        with _tensor_method("cuda", to_model_device):
            yield
    finally:
        handle.remove()


class HostReadPolicy(TorchDispatchMode):
    """Answers, on the meta device, the two kinds of host reads the vendor code makes.

    * **Pixel sums** (``torch.sum(images[0][1]).item() != 0``, and the same for the crop tiles, decide whether an
      image and crops exist): the tensors were real on the host before ``.cuda()`` moved them to meta, so
      :meth:`remember` records whether each had a non-zero value, sums carry that along, and ``.item()`` answers 1.0
      or 0.0: the same branch as a real run takes.
    * **Tokens per expert** (``cnts.scatter_(1, topk_ids, 1); cnts.sum(dim=0).cpu()``): answered with the
      reference model's balanced-deterministic routing (token ``t`` -> experts ``(t*k + j) mod E``).

    Any other host read of a meta tensor raises :class:`~opmeter.errors.OpmeterError` naming it: nothing is guessed.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # no per-op dynamo-disable shim (see opmeter.trace.dispatch.CountingMode)

    def __init__(self) -> None:
        super().__init__()
        # keyed by identity: a tensor's == is elementwise, so ordinary weak dictionaries cannot hold tensors
        self._nonzero = WeakIdKeyDictionary()
        self._topk = WeakIdKeyDictionary()
        self._counts = WeakIdKeyDictionary()
        self.answered: dict[str, int] = {"pixel_sum": 0, "tokens_per_expert": 0}

    def remember(self, source: torch.Tensor, moved: torch.Tensor) -> None:
        """Record whether a host tensor moved to meta had any non-zero value."""
        if moved.device.type == "meta" and source.device.type != "meta" and source.is_floating_point():
            self._nonzero[moved] = bool(source.count_nonzero().item())

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        key = id(func)
        if key not in _WATCHED:  # the hot path: every other op passes straight through
            return func(*args, **(kwargs or {}))
        kwargs = kwargs or {}
        first = args[0] if args else None
        if key == _SCALAR and first is not None and first.device.type == "meta":
            return self._scalar(first)
        if key == _TO_COPY and _to_host(first, kwargs):
            return self._to_host(args[0], kwargs)
        out = func(*args, **kwargs)
        if isinstance(first, torch.Tensor) and first.device.type == "meta":
            self._propagate(key, first, args, out)
        return out

    def _propagate(self, key: int, first: torch.Tensor, args: Any, out: Any) -> None:
        if key in _CARRY_NONZERO and first in self._nonzero:
            self._nonzero[out] = self._nonzero[first]
        elif key in _SCATTER and len(args) > 2 and args[2].dim() == 2:
            self._topk[out] = int(args[2].shape[1])
        elif key == _SUM_DIM and first in self._topk and first.dim() == 2 and list(args[1]) in ([0], [-2]):
            rows, experts = (int(s) for s in first.shape)
            self._counts[out] = (rows, self._topk[first], experts)

    def _scalar(self, t: torch.Tensor) -> Any:
        if t in self._nonzero:
            self.answered["pixel_sum"] += 1
            return 1.0 if self._nonzero[t] else 0.0
        raise OpmeterError(
            f"shape-only run: the model reads a {str(t.dtype).removeprefix('torch.')} value {tuple(t.shape)} on the "
            "host that opmeter has no shape-only answer for; run it on --device cpu instead"
        )

    def _to_host(self, t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        if t in self._counts:
            self.answered["tokens_per_expert"] += 1
            counts = torch.from_numpy(balanced_routing_counts(*self._counts[t]))
            return counts.to(kwargs.get("dtype") or t.dtype)
        raise OpmeterError(
            f"shape-only run: the model copies a meta tensor {tuple(t.shape)} to the host and opmeter has no "
            "shape-only answer for it; run it on --device cpu instead"
        )


def _to_host(t: Any, kwargs: dict[str, Any]) -> bool:
    device = kwargs.get("device")
    return (
        isinstance(t, torch.Tensor) and t.device.type == "meta" and device is not None
        and torch.device(device).type != "meta"
    )


class _MetaAsCpuAutocast(torch.autocast):
    """``torch.autocast`` that takes ``device_type="meta"`` as the CPU's (meta has no autocast of its own)."""

    def __init__(self, device_type: str, *args: Any, **kwargs: Any) -> None:
        super().__init__("cpu" if device_type == "meta" else device_type, *args, **kwargs)


@contextlib.contextmanager
def _meta_autocast() -> Iterator[None]:
    original = torch.autocast
    torch.autocast = _MetaAsCpuAutocast  # type: ignore[misc]
    try:
        yield
    finally:
        torch.autocast = original  # type: ignore[misc]


def fixed_budget_generate(model: nn.Module, budget: int) -> Callable[..., torch.Tensor]:
    """A greedy loop of exactly ``budget`` model calls (one prefill, then one-token decode steps with the cache).

    Every new token is :data:`SHAPE_ONLY_TOKEN` (nothing can be read on meta). Returns host token ids (the prompt
    positions hold the same id; the vendor decodes only the new ones).
    """

    def generate(input_ids: torch.Tensor, images: Any = None, images_seq_mask: Any = None,
                 images_spatial_crop: Any = None, **ignored: Any) -> torch.Tensor:
        batch = int(input_ids.shape[0])
        sequence, past = input_ids, None
        for _ in range(budget):
            step_ids = sequence if past is None else sequence[:, -1:]
            out = model(input_ids=step_ids, past_key_values=past, use_cache=True, images=images,
                        images_seq_mask=images_seq_mask, images_spatial_crop=images_spatial_crop, return_dict=True)
            past = getattr(out, "past_key_values", None)
            token = torch.full((batch, 1), SHAPE_ONLY_TOKEN, dtype=torch.long, device=sequence.device)
            sequence = torch.cat([sequence, token], dim=-1)
        return torch.full(tuple(sequence.shape), SHAPE_ONLY_TOKEN, dtype=torch.long)

    return generate


@contextlib.contextmanager
def shape_only(model: nn.Module, budget: int) -> Iterator[HostReadPolicy]:
    """Run the vendor ``infer()`` of a meta-device model shape-only (see the module docstring).

    Enter it *outside* an :class:`~opmeter.trace.OpTracer` block, so the tracer sees every op before the policy
    answers it. Yields the :class:`HostReadPolicy`, whose ``answered`` counts are added to the metadata.
    """
    if _param(model).device.type != "meta":
        raise OpmeterError("shape_only() needs a model on the meta device")
    if budget < 1:
        raise OpmeterError(f"a shape-only generation needs at least 1 token, got {budget}")
    policy = HostReadPolicy()
    for patch in ("pixel-sum-from-host-tensors", "balanced-moe-routing", "autocast-meta-as-cpu",
                  f"fixed-budget-generate-{budget}"):
        _note(model, patch)
    metadata(model).update(execution="shape-only", moe_routing="balanced-deterministic",
                                  generated_tokens=f"fixed-id-{SHAPE_ONLY_TOKEN}",
                                  host_reads_answered=policy.answered)  # live: a tracer merges it at its exit
    with contextlib.ExitStack() as stack:
        stack.enter_context(fast_meta_kernels())
        stack.enter_context(_meta_autocast())
        stack.enter_context(cpu_compat(model, on_move=policy.remember))
        stack.enter_context(_instance_attr(model, "generate", fixed_budget_generate(model, budget)))
        stack.enter_context(policy)
        yield policy


@contextlib.contextmanager
def vendor_run(model: nn.Module, budget: int) -> Iterator[None]:
    """The context a vendor ``infer()`` runs in: shape-only on meta; else a ``budget``-token cap, plus
    :func:`cpu_compat` off CUDA."""
    if _param(model).device.type == "meta":
        with shape_only(model, budget):
            yield
        return
    with cpu_compat(model), generation_cap(model, budget):
        yield
