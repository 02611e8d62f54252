"""Build transformers' DeepSeek-OCR-2 for a preset and run one generation with a fixed budget of new tokens.

``build_model`` makes ``DeepseekOcr2ForConditionalGeneration`` from the preset's config: on ``meta`` (no storage,
bf16: shape-only at full size) or on a real device with random initialisation (seeded). ``model_inputs`` turns a
workload into the forward's keyword arguments (the image processor's pixel tensors on real devices, tensors of the
same shapes on meta). ``fixed_budget_generate`` is the greedy loop ``generate()`` runs, written out so that it also
runs on meta, where no token can be read back: one prefill, then one-token steps with the KV cache, exactly
``max_new_tokens`` forward calls, EOS ignored.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from opmeter.models.deepseek_ocr2.compat import require_deepseek_ocr2
from opmeter.models.deepseek_ocr2.config import Ocr2Preset
from opmeter.models.deepseek_ocr2.workloads import Ocr2Workload

SHAPE_ONLY_TOKEN = 100
"""Token id fed back on meta, where the argmax cannot be read."""


def build_model(preset: Ocr2Preset, device: str = "meta", dtype: torch.dtype | None = None,
                seed: int = 0) -> torch.nn.Module:
    """transformers' ``DeepseekOcr2ForConditionalGeneration`` for ``preset`` in eval mode.

    ``dtype`` defaults to bfloat16 on meta and CUDA (the released model's dtype) and float32 on a CPU.
    """
    mod = require_deepseek_ocr2()
    config = preset.hf_config()
    if dtype is None:
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
    torch.manual_seed(seed)
    with torch.device(device):
        model = mod.DeepseekOcr2ForConditionalGeneration(config)
    return model.to(dtype).eval()


def model_inputs(model: torch.nn.Module, preset: Ocr2Preset, workload: Ocr2Workload) -> dict[str, Any]:
    """Keyword arguments of the prefill call: ``input_ids`` and the pixel tensors (``pixel_values_local`` and
    ``num_local_patches`` only when the page has tiles)."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    views = workload.views(preset)
    ids = torch.tensor([workload.input_ids(preset)], dtype=torch.long, device=device)
    kwargs: dict[str, Any] = {"input_ids": ids}
    if device.type == "meta":
        g, t = views.global_size, views.tile_size
        kwargs["pixel_values"] = torch.empty(1, 3, g, g, device=device, dtype=dtype)
        if views.tiles:
            kwargs["pixel_values_local"] = torch.empty(views.tiles, 3, t, t, device=device, dtype=dtype)
    else:
        pix = workload.pixel_inputs(preset)
        kwargs["pixel_values"] = pix["pixel_values"].to(device=device, dtype=dtype)
        if "pixel_values_local" in pix:
            kwargs["pixel_values_local"] = pix["pixel_values_local"].to(device=device, dtype=dtype)
    if views.tiles:
        kwargs["num_local_patches"] = [views.tiles]
    return kwargs


@contextlib.contextmanager
def shape_only_checks() -> Iterator[None]:
    """Skip transformers' value checks (``torch_compilable_check``), which read tensors: impossible on meta."""
    key = "TRANSFORMERS_DISABLE_TORCH_CHECK"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


@contextlib.contextmanager
def shape_only() -> Iterator[None]:
    """What a shape-only (meta) run of the model needs: transformers' value checks off, fast meta kernels on."""
    from opmeter.fast_meta import fast_meta_kernels

    with shape_only_checks(), fast_meta_kernels():
        yield


def fixed_budget_generate(model: torch.nn.Module, inputs: dict[str, Any], max_new_tokens: int) -> torch.Tensor:
    """Greedy generation of exactly ``max_new_tokens`` tokens: prefill, then one-token steps with the KV cache.

    Every call keeps only the last position's logits (``logits_to_keep=1``, as ``generate()`` does). On meta the
    token fed back is :data:`SHAPE_ONLY_TOKEN`; elsewhere it is the argmax. Returns the new token ids ``[1, N]``.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    ids = inputs["input_ids"]
    meta = ids.device.type == "meta"
    out = model(**inputs, use_cache=True, logits_to_keep=1)
    new: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        if meta:
            token = torch.full((ids.shape[0], 1), SHAPE_ONLY_TOKEN, dtype=torch.long, device=ids.device)
        else:
            token = out.logits[:, -1:].argmax(dim=-1)
        new.append(token)
        if step + 1 < max_new_tokens:
            out = model(input_ids=token, cache=out.cache, use_cache=True, logits_to_keep=1)
    return torch.cat(new, dim=-1)
