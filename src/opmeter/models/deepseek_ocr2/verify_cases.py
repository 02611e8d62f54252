"""Verification cases of the DeepSeek-OCR-2 analytic layers against transformers' modules.

Each case calls one module of a preset's model (meta and bf16 by default: shape-only) at the shapes of a workload
and pairs it with the analytic layer the mapping table builds from the same module and input shapes; run them with
:func:`opmeter.verify.run_case`. Module inputs that are not the traced work (RoPE angles, masks, filled KV caches) are
made before the call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from opmeter.analytic.base import Layer
from opmeter.models.deepseek_ocr2.analytic import VisionModel
from opmeter.models.deepseek_ocr2.config import get_preset
from opmeter.models.deepseek_ocr2.mapping import layer_for
from opmeter.models.deepseek_ocr2.predict import RunShape
from opmeter.models.deepseek_ocr2.workloads import STANDARD, get_workload
from opmeter.verify import Case


class _Cases:
    """Collects cases for one model (meta, bf16)."""

    def __init__(self, model: torch.nn.Module, ctx: dict[str, Any]) -> None:
        self.model: Any = model
        self.ctx = ctx
        self.cases: list[Case] = []
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    def empty(self, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.empty(*shape, device=self.device, dtype=dtype or self.dtype)

    def add(self, layer: str, desc: str, module: Any, args: Sequence[Any], kwargs: dict[str, Any] | None = None,
            shapes: Sequence[Sequence[int]] | None = None, **extra: Any) -> None:
        kw = kwargs or {}
        in_shapes = shapes if shapes is not None else [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]

        def analytic() -> Layer:
            return layer_for(module, [tuple(s) for s in in_shapes], **{**self.ctx, **extra})

        self.cases.append(Case(layer, desc, module, lambda: module(*args, **kw), analytic))


def _vision_cases(c: _Cases, views: Sequence[tuple[int, int]]) -> None:
    preset, tower = c.ctx["preset"], c.model.model.vision_tower
    sam, enc = tower.sam_encoder, tower.vision_encoder
    s = preset.sam
    wl = next(i for i in range(s.num_hidden_layers) if i not in s.global_attn_indexes)
    gl = next((i for i in s.global_attn_indexes if i < s.num_hidden_layers), None)
    for b, size in views:
        g = size // s.patch_size
        c.add("DeepseekOcr2VisionModel", f"{b}x{size}px", tower, [c.empty(b, 3, size, size)])
        c.add("DeepseekOcr2SamVisionEncoder", f"{b}x{size}px", sam, [c.empty(b, 3, size, size)])
        x = c.empty(b, g, g, s.hidden_size)
        c.add("DeepseekOcr2SamVisionLayer", f"windowed {b}x{g}x{g}", sam.layers[wl], [x])
        w = s.window_size
        nwin = b * (-(-g // w)) ** 2
        c.add("DeepseekOcr2SamVisionSdpaAttention", f"windowed {nwin}x{w}x{w}", sam.layers[wl].attn,
              [c.empty(nwin, w, w, s.hidden_size)])
        if gl is not None:
            c.add("DeepseekOcr2SamVisionLayer", f"global {b}x{g}x{g}", sam.layers[gl], [x])
            c.add("DeepseekOcr2SamVisionSdpaAttention", f"global {b}x{g}x{g}", sam.layers[gl].attn, [x])
        c.add("LayerNorm", f"{b * g * g}x{s.hidden_size}", sam.layers[0].layer_norm1, [x])
        tv = VisionModel(preset=preset, batch=b, size=size, dtype=1)
        patches, queries = tv.patches, tv.queries
        seq = patches + queries
        e = preset.encoder
        embeds = c.empty(b, seq, e.hidden_size)
        c.add("DeepseekOcr2VisionEncoder", f"{b}x{patches}+{queries}", enc, [embeds],
              kwargs={"num_patches": patches}, patches=patches)
        _encoder_layer_case(c, enc, embeds, patches)
        rows = c.empty(b, queries, e.hidden_size)
        c.add("Linear", f"projector {b}x{queries}", c.model.model.multi_modal_projector, [rows])


def _encoder_layer_case(c: _Cases, enc: Any, embeds: torch.Tensor, patches: int) -> None:
    from transformers.masking_utils import create_causal_mask

    b, seq = embeds.shape[:2]
    pos = torch.arange(seq, device=c.device).unsqueeze(0)
    ids = torch.full((b, seq), -1, dtype=torch.long, device=c.device)
    ids[:, :patches] = 0
    mask = create_causal_mask(config=enc.config, inputs_embeds=embeds, attention_mask=None, cache=None,
                              block_sequence_ids=ids)
    cos_sin = enc.rotary_emb(embeds, pos)
    layer = enc.layers[0]
    c.add("DeepseekOcr2VisionEncoderLayer", f"{b}x{seq}", layer, [embeds],
          kwargs={"attention_mask": mask, "position_embeddings": cos_sin, "position_ids": pos})
    c.add("DeepseekOcr2VisionMLP", f"{b}x{seq}", layer.mlp, [embeds])
    c.add("DeepseekOcr2VisionRMSNorm", f"{b}x{seq}", layer.input_layernorm, [embeds])


def _cache(c: _Cases, layers: int, past: int) -> Any:
    from transformers.cache_utils import DynamicCache

    text = c.ctx["preset"].text
    cache = DynamicCache(config=c.model.config.text_config)
    for i in range(layers):
        kv = c.empty(1, text.num_key_value_heads, past, text.head_dim)
        cache.update(kv, kv, i)
    return cache


def _decoder_cases(c: _Cases, seq: int) -> None:
    lm, text = c.model.model.language_model, c.ctx["preset"].text
    h = text.hidden_size
    moe_idx = next((i for i, t in enumerate(text.mlp_layer_types) if t == "sparse"), None)
    for q_len, past, phase in ((seq, 0, "prefill"), (1, seq, "decode")):
        tag = f"{phase} q={q_len} past={past}"
        x = c.empty(1, q_len, h)
        pos = torch.arange(past, past + q_len, device=c.device).unsqueeze(0)
        cos_sin = lm.rotary_emb(x, pos)
        for idx in (0, moe_idx):
            if idx is None:
                continue
            cache = _cache(c, idx + (1 if past else 0), past) if past else None
            kind = "MoE" if idx == moe_idx else "dense"
            c.add("DeepseekOcr2TextDecoderLayer", f"{kind} {tag}", lm.layers[idx], [x],
                  kwargs={"position_embeddings": cos_sin, "attention_mask": None, "position_ids": pos,
                          "cache": cache, "use_cache": past > 0}, past=past)
        if moe_idx is not None:
            moe = lm.layers[moe_idx].mlp
            k = text.num_experts_per_tok
            c.add("DeepseekOcr2TextMoe", tag, moe, [x])
            c.add("DeepseekOcr2TextTopkRouter", tag, moe.gate, [x])
            idx_t = torch.zeros(q_len, k, dtype=torch.long, device=c.device)
            weights = c.empty(q_len, k, dtype=torch.float32)
            c.add("DeepseekOcr2TextExperts", tag, moe.experts, [c.empty(q_len, h), idx_t, weights])
            c.add("DeepseekOcr2TextMLP", f"shared {tag}", moe.shared_experts, [x])
        c.add("DeepseekOcr2TextMLP", f"dense {tag}", lm.layers[0].mlp, [x])
        c.add("DeepseekOcr2TextRMSNorm", tag, lm.norm, [x])
        c.add("Linear", f"lm_head {tag}", c.model.lm_head, [c.empty(1, 1, h)])
        c.add("Embedding", tag, lm.embed_tokens, [torch.zeros(1, q_len, dtype=torch.long, device=c.device)])


def _end_to_end(c: _Cases, run: RunShape, kwargs: dict[str, Any]) -> None:
    model = c.model

    def prefill() -> Any:
        return model(**kwargs, use_cache=True, logits_to_keep=1)

    seq = run.prompt_tokens
    cache = _cache(c, run.preset.text.num_hidden_layers, seq)
    ids = torch.zeros(1, 1, dtype=torch.long, device=c.device)

    def decode() -> Any:
        return model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)

    c.cases.append(Case("end-to-end", f"prefill, {seq} tokens", model, prefill, run.prefill))
    c.cases.append(Case("end-to-end", f"one decode step, KV length {seq}", model, decode,
                        lambda: run.decode_step(0)))


def deepseek_ocr2_cases(preset: str = "full", workload: str = STANDARD) -> tuple[list[Case], Callable[[], Any]]:
    """Cases of every analytic layer at ``workload``'s shapes on a meta, bf16 model of ``preset``.

    Returns the cases and the context manager factory to run them in (transformers' value checks off, fast meta
    kernels on).
    """
    from opmeter.models.deepseek_ocr2.model import build_model, model_inputs, shape_only

    p, wl = get_preset(preset), get_workload(workload)
    model = build_model(p, "meta")
    run = RunShape.of(p, wl, dtype=2, sdpa="math")
    c = _Cases(model, {"preset": p, "dt": 2, "sdpa": "math"})
    _vision_cases(c, [(v.count, v.size) for v in run.views])
    _decoder_cases(c, run.prompt_tokens)
    _end_to_end(c, run, model_inputs(model, p, wl))
    return c.cases, shape_only


def verify_rows(preset: str = "full", workload: str = STANDARD) -> Any:
    """Run every case; one row per case in :data:`opmeter.verify.COLUMNS` layout (for ``opmeter verify``)."""
    import pandas as pd

    from opmeter.verify import COLUMNS, run_case

    cases, context = deepseek_ocr2_cases(preset, workload)
    with context():
        rows = [run_case(case) for case in cases]
    return pd.DataFrame(rows, columns=COLUMNS)
