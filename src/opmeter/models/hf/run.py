"""Inputs and the inference call of one run: ``generate()`` on a real device, a fixed-budget loop on meta.

On cpu/cuda ``infer()`` is the family's real ``generate(min_new_tokens=M, max_new_tokens=M)``, greedy. On the meta
device ``generate()`` cannot run (its stopping criteria read every token on the host), so :func:`fixed_budget_loop`
makes the same model calls: the prefill with ``logits_to_keep=1`` (``num_logits_to_keep`` before transformers 5;
as ``generate()`` asks), then M - 1 one-token
steps with the KV cache; it passes no attention mask (an all-ones mask is what ``generate()`` gives, and the model
drops it after checking on the host that it is all ones), and every new token is :data:`PROMPT_TOKEN`. Encoder-decoder
families run their encoder once first, outside the decoder calls, as ``generate()`` does.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from opmeter.errors import OpmeterError
from opmeter.models.hf.build import transformers_major
from opmeter.models.hf.workloads import PROMPT_TOKEN, PromptWorkload

log = logging.getLogger(__name__)
_SCALAR = id(torch.ops.aten._local_scalar_dense.default)
_ALL = frozenset(id(op) for op in (torch.ops.aten._is_all_true.default, torch.ops.aten.all.default,
                                    torch.ops.aten.all.dim))


def _param(model: torch.nn.Module) -> torch.Tensor:
    return next(model.parameters())


def _token(config: Any) -> int:
    vocab = int(getattr(config.get_text_config(), "vocab_size", 0) or 0)
    return PROMPT_TOKEN % vocab if vocab else PROMPT_TOKEN


def _decoder_start(config: Any) -> int:
    for name in ("decoder_start_token_id", "pad_token_id", "bos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return 0


def model_inputs(model: torch.nn.Module, kind: str, workload: PromptWorkload) -> dict[str, torch.Tensor]:
    """The tensors of the prompt (see :mod:`opmeter.models.hf.workloads`) on the model's device."""
    config: Any = model.config
    p = _param(model)
    b, n = workload.batch, workload.prompt_tokens
    if kind == "speech":
        frames = 2 * int(config.max_source_positions)
        return {"input_features": torch.zeros(b, int(config.num_mel_bins), frames, device=p.device, dtype=p.dtype)}
    if kind == "forward" and getattr(config, "image_size", None) and not getattr(config, "vocab_size", None):
        size = int(config.image_size)
        return {"pixel_values": torch.zeros(b, int(getattr(config, "num_channels", 3)), size, size, device=p.device,
                                            dtype=p.dtype)}
    ids = torch.full((b, n), _token(config), dtype=torch.long, device=p.device)
    if kind == "vlm":
        return _image_prompt(config, ids, p)
    return {"input_ids": ids}


def _image_prompt(config: Any, text: torch.Tensor, p: torch.Tensor) -> dict[str, torch.Tensor]:
    """One square image of the vision tower's size before the text, as single-grid VLMs (LLaVA, PaliGemma) take it:
    ``image_seq_length`` (else one per patch) image tokens, and zero ``pixel_values``. Other layouts (tiled or
    dynamic-resolution images), and transformers < 5, get the text prompt only, logged."""
    vision = getattr(config, "vision_config", None)
    size, patch = getattr(vision, "image_size", None), getattr(vision, "patch_size", None)
    image_token = getattr(config, "image_token_id", None)
    old = transformers_major() < 5  # 4.x merges image features by another, legacy path
    if old or not (isinstance(size, int) and isinstance(patch, int) and isinstance(image_token, int)) or any(
            hasattr(config, k) for k in ("image_grid_pinpoints", "mm_tokens_per_image")):
        log.warning("%s: no single-grid image input known; the prompt is text only (the vision tower will not run)",
                    config.model_type)
        return {"input_ids": text}
    tokens = int(getattr(config, "image_seq_length", None) or (size // patch) ** 2)
    b = int(text.shape[0])
    image = torch.full((b, tokens), image_token, dtype=torch.long, device=text.device)
    pixels = torch.zeros(b, int(getattr(vision, "num_channels", 3)), size, size, device=p.device, dtype=p.dtype)
    return {"input_ids": torch.cat([image, text], dim=1), "pixel_values": pixels}


def _accepts(model: torch.nn.Module, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def fixed_budget_loop(model: torch.nn.Module, kind: str, inputs: dict[str, torch.Tensor], budget: int) -> torch.Tensor:
    """``budget`` model calls with the KV cache, each emitting :data:`PROMPT_TOKEN` (module docstring)."""
    device = _param(model).device
    keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if _accepts(model, k)), None)
    extra: dict[str, Any] = {keep: 1} if keep else {}
    if kind in ("seq2seq", "speech"):
        get_encoder: Any = getattr(model, "get_encoder")  # noqa: B009 (typed as a tensor by nn.Module)
        encoder_outputs = get_encoder()(**inputs, return_dict=True)
        sequence = torch.full((int(next(iter(inputs.values())).shape[0]), 1), _decoder_start(model.config),
                              dtype=torch.long, device=device)
        key, fixed = "decoder_input_ids", {"encoder_outputs": encoder_outputs}
    else:
        sequence, key = inputs["input_ids"], "input_ids"
        fixed = {k: v for k, v in inputs.items() if k != "input_ids"}  # image inputs: prefill only
    past, cache_name = None, "cache" if _accepts(model, "cache") else "past_key_values"
    token = torch.full((int(sequence.shape[0]), 1), _token(model.config), dtype=torch.long, device=device)
    for _ in range(budget):
        step = sequence if past is None else sequence[:, -1:]
        out = model(**{key: step, cache_name: past}, **fixed, use_cache=True, return_dict=True, **extra)
        past = getattr(out, "past_key_values", None)
        if past is None:
            past = getattr(out, "cache", None)
        sequence = torch.cat([sequence, token], dim=-1)
        if key == "input_ids":
            fixed = {}
    return sequence


def generate(model: torch.nn.Module, kind: str, inputs: dict[str, torch.Tensor], budget: int) -> Any:
    """The family's ``generate()`` with exactly ``budget`` new tokens, greedy.

    Whisper-like speech models override ``generate()`` with language detection and timestamp logic that may add
    model calls; the generic :class:`transformers.GenerationMixin` loop is called instead.
    """
    from transformers import GenerationMixin

    config: Any = model.config
    pad = getattr(config, "pad_token_id", None)
    eos = getattr(config, "eos_token_id", None)
    kwargs: dict[str, Any] = {"max_new_tokens": budget, "min_new_tokens": budget, "do_sample": False,
                              "pad_token_id": pad if isinstance(pad, int) else (eos if isinstance(eos, int) else 0)}
    if "input_ids" in inputs:
        kwargs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if kind in ("seq2seq", "speech"):
        kwargs["decoder_start_token_id"] = _decoder_start(config)
    if kind == "speech":
        return GenerationMixin.generate(model, **inputs, **kwargs)  # type: ignore[arg-type]
    return model.generate(**inputs, **kwargs)  # type: ignore[operator]


def make_infer(model: torch.nn.Module, kind: str, workload: PromptWorkload) -> Callable[[], Any]:
    """``infer()`` of one run: forward only for a bare model, else a generation of ``workload.new_tokens``."""
    inputs = model_inputs(model, kind, workload)
    meta = _param(model).device.type == "meta"

    def infer() -> Any:
        with torch.inference_mode():
            if kind == "forward":
                return model(**inputs)
            if meta:
                return fixed_budget_loop(model, kind, inputs, workload.new_tokens)
            return generate(model, kind, inputs, workload.new_tokens)

    return infer


class _AutocastMetaAsCpu(torch.autocast):
    """``torch.autocast`` that takes ``device_type="meta"`` as the CPU's (older releases have no meta autocast and
    transformers' rotary embedding enters one with the input's device type)."""

    def __init__(self, device_type: str, *args: Any, **kwargs: Any) -> None:
        super().__init__("cpu" if device_type == "meta" else device_type, *args, **kwargs)


class ChecksPass(TorchDispatchMode):
    """On the meta device, answers the host reads of "all" checks with True: ``.item()`` of an ``aten.all`` or
    ``aten._is_all_true`` result (``torch._check_tensor_all`` of "image tokens match image features", "the sequence
    is not packed", "the mask is all ones"). On the synthetic inputs (one unpadded sequence, every image token in
    place) every such check holds on a real device too. Any other host read of a meta tensor (a branch on data)
    raises a one-line :class:`OpmeterError`."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __init__(self) -> None:
        super().__init__()
        self.answered = 0
        self._checks = WeakIdKeyDictionary()  # by identity: a tensor's == is elementwise

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        key = id(func)
        if (key != _SCALAR and key not in _ALL) or not args or args[0].device.type != "meta":
            return func(*args, **(kwargs or {}))
        if key in _ALL:
            out = func(*args, **(kwargs or {}))
            self._checks[out] = True
            return out
        if args[0] in self._checks:
            self.answered += 1
            return True
        raise OpmeterError(f"shape-only run: the model reads a {str(args[0].dtype).removeprefix('torch.')} value "
                           "on the host (a branch on data), which the meta device cannot answer; run it on "
                           "--device cpu instead")


@contextlib.contextmanager
def shape_only() -> Iterator[None]:
    """The context of a meta-device run: the fast meta kernels, meta autocast taken as the CPU's, and consistency
    checks taken as passing (:class:`ChecksPass`)."""
    from opmeter.fast_meta import fast_meta_kernels

    original = torch.autocast
    torch.autocast = _AutocastMetaAsCpu  # type: ignore[misc]
    checks = ChecksPass()
    try:
        with fast_meta_kernels(), checks:
            yield
    finally:
        torch.autocast = original  # type: ignore[misc]
        if checks.answered:
            log.info("shape-only run: %d boolean checks on the host taken as passing", checks.answered)
