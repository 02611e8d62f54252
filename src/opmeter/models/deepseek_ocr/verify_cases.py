"""Verification cases of DeepSeek-OCR: every reference module at the standard workload's shapes, plus end-to-end
rows (vision only, the full prefill, one decode step); run by :func:`opmeter.verify.verify`.

``LlamaFlashAttention2`` needs flash-attn on CUDA; its row compares tensor-core FLOPs with the traced eager
attention (same two GEMMs) and marks CUDA-core and bytes ``n/a``. Shape-only tracing uses PyTorch's math decomposition
of ``F.scaled_dot_product_attention`` and the balanced MoE routing of the reference; the analytic side is told the
same (``sdpa="math"``, balanced experts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opmeter.analytic.base import Layer
from opmeter.errors import OpmeterError
from opmeter.verify import Case


class _RoutingRecorder:
    """Tokens per routed expert of the last call of every ``MoEGate`` (real tensors only)."""

    def __init__(self, model: Any) -> None:
        self.last: dict[int, tuple[Any, int]] = {}
        for module in model.modules():
            if type(module).__name__ == "MoEGate":
                module.register_forward_hook(self._hook)

    def _hook(self, module: Any, args: Any, output: Any) -> None:
        # keep a reference only: any op here would run inside the traced call and be counted
        self.last[id(module)] = (output[0], int(module.n_routed_experts))

    def _gate_counts(self, module: Any) -> tuple[int, ...] | None:
        import torch

        gate = getattr(module, "gate", None) or getattr(getattr(module, "mlp", None), "gate", None)
        rec = self.last.get(id(gate)) if gate is not None else None
        if rec is None:
            return None
        topk_idx, experts = rec
        counts = torch.bincount(topk_idx.reshape(-1), minlength=experts)
        return tuple(int(c) for c in counts.tolist())

    def single(self, module: Any) -> tuple[int, ...] | None:
        """Routing of the last call of a ``DeepseekV2MoE`` or of the MoE inside a decoder layer."""
        return self._gate_counts(module)

    def per_layer(self, layers: Any) -> tuple[tuple[int, ...] | None, ...]:
        """Routing of the last call of each decoder layer (``None`` for dense layers)."""
        return tuple(self._gate_counts(layer) for layer in layers)


def deepseek_ocr_cases(
    preset: str, grid: tuple[int, int] | None = None, device: str = "meta", attn_implementation: str = "eager"
) -> list[Case]:
    """Verification cases of every analytic layer of a preset, at the standard workload's shapes.

    ``grid`` is the crop grid ``(cols, rows)`` (default: ``(2, 3)``, the standard workload's A4 page).
    ``device="meta"``: shape-only, bf16, SDPA math path, balanced routing. ``device="cpu"``: real tensors (fp32,
    random weights and inputs), fused CPU SDPA, learned routing (recorded from the gates during the traced call and
    given to the analytic layers), the vendor's host-side pixel checks; for the small presets.
    ``attn_implementation``: the reference decoder attention, ``"eager"`` (vendor default) or ``"sdpa"``.
    """
    if device not in ("meta", "cpu"):
        raise OpmeterError(f"verify runs on 'meta' (shape-only) or 'cpu' (real tensors), not {device!r}")
    builder = _CaseBuilder(preset, grid or (2, 3), device, attn_implementation)
    builder.sam_cases()
    builder.clip_cases()
    builder.decoder_cases()
    builder.end_to_end_cases()
    return builder.cases


class _CaseBuilder:
    """The model, its inputs and the cases built so far (see :func:`deepseek_ocr_cases`)."""

    def __init__(self, preset: str, grid: tuple[int, int], device: str, attn_implementation: str) -> None:
        import torch

        from opmeter.models.deepseek_ocr import analytic as A
        from opmeter.models.deepseek_ocr.geometry import VisionWorkload
        from opmeter.models.deepseek_ocr.model import build_reference
        from opmeter.models.deepseek_ocr.preprocess import prepare_inputs_from_geometry
        from opmeter.models.deepseek_ocr.tokenizer import BuiltinTokenizer

        self.model: Any = build_reference(preset, device=device, attn_implementation=attn_implementation)
        self.attn_implementation = attn_implementation
        cfg = self.cfg = self.model.config
        self.dev, self.bf = torch.device(device), self.model.dtype
        self.real = device != "meta"
        self.dt = torch.empty((), dtype=self.bf).element_size()
        self.gen = torch.Generator().manual_seed(0)
        self.routing = _RoutingRecorder(self.model) if self.real else None
        self.cols, self.rows = grid
        self.vw = VisionWorkload.from_grid(*grid, base_size=cfg.base_size, image_size=cfg.image_size, config=cfg)
        self.inputs = prepare_inputs_from_geometry(A.STANDARD_PROMPT, BuiltinTokenizer(), self.vw, cfg)
        self.seq = self.inputs.seq_len
        self.ctx: dict[str, Any] = {"dt": self.dt, "sdpa": "fused" if self.real else "math",
                                    "host_checks": self.real}
        self.cases: list[Case] = []

    def empty(self, *shape: int, dtype: Any = None) -> Any:
        """An input: random on real devices, empty on meta."""
        import torch

        dtype = dtype or self.bf
        if self.real:
            return torch.randn(*shape, generator=self.gen, dtype=dtype).to(self.dev)
        return torch.empty(*shape, device=self.dev, dtype=dtype)

    def add(self, layer: str, desc: str, module: Any, args: Sequence[Any], path: str | None = None,
            kwargs: dict[str, Any] | None = None, shapes: Sequence[Sequence[int]] | None = None,
            **extra: Any) -> None:
        """A case calling ``module(*args, **kwargs)``, compared with the layer its mapping entry builds."""
        import torch

        from opmeter.models.deepseek_ocr.mapping import layer_for

        kw = kwargs or {}
        in_shapes = shapes if shapes is not None else [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
        routing, ctx = self.routing, self.ctx

        def analytic() -> Layer:
            routed = routing.single(module) if routing is not None else None
            more = {"expert_tokens": routed} if routed is not None else {}
            return layer_for(module, in_shapes, path=path, **{**ctx, **extra, **more})

        self.cases.append(Case(layer, desc, module, lambda: module(*args, **kw), analytic))

    def sam_cases(self) -> None:
        """The SAM encoder and its parts, per view."""
        cfg = self.cfg
        vw = self.vw
        empty = self.empty
        add = self.add
        ocr = self.model.model
        sam, e = ocr.sam_model, cfg.sam.embed_dim
        views = [(b, s) for b, s in vw.views]
        for b, s in views:
            add("ImageEncoderViT", f"{b}x{s}px", sam, [empty(b, 3, s, s)])
        b0, s0 = views[-1]
        g0 = s0 // cfg.sam.patch_size
        add("PatchEmbed", f"{b0}x{s0}px", sam.patch_embed, [empty(b0, 3, s0, s0)])
        wblk = next(i for i, blk in enumerate(sam.blocks) if blk.window_size > 0)
        gblk = next((i for i, blk in enumerate(sam.blocks) if blk.window_size == 0), None)
        for b, s in views:
            g = s // cfg.sam.patch_size
            add("Block", f"windowed {b}x{g}x{g}", sam.blocks[wblk], [empty(b, g, g, cfg.sam.embed_dim)])
            if gblk is not None:
                add("Block", f"global {b}x{g}x{g}", sam.blocks[gblk], [empty(b, g, g, cfg.sam.embed_dim)])
                add("Attention", f"global {b}x{g}x{g}", sam.blocks[gblk].attn, [empty(b, g, g, cfg.sam.embed_dim)])
            ws = cfg.sam.window_size
            nwin = b * (-(-g // ws)) ** 2
            add("Attention", f"windowed {nwin}x{ws}x{ws}", sam.blocks[wblk].attn, [empty(nwin, ws, ws, e)])
        add("MLPBlock", f"{b0}x{g0}x{g0}", sam.blocks[0].mlp, [empty(b0, g0, g0, cfg.sam.embed_dim)])
        add("LayerNorm2d", f"{b0}x{cfg.sam.out_chans}x{g0}x{g0}", sam.neck[1], [empty(b0, cfg.sam.out_chans, g0, g0)])
        add("Conv2d", f"net_2 {b0}x{cfg.sam.out_chans}x{g0}x{g0}", sam.net_2, [empty(b0, cfg.sam.out_chans, g0, g0)])
        add("LayerNorm", f"{b0 * g0 * g0}x{e}", sam.blocks[0].norm1, [empty(b0, g0, g0, e)])
        add("GELU", f"{b0 * g0 * g0}x{4 * cfg.sam.embed_dim}", sam.blocks[0].mlp.act,
            [empty(b0, g0, g0, int(cfg.sam.embed_dim * cfg.sam.mlp_ratio))])

    def clip_cases(self) -> None:
        """The CLIP tower, its blocks and the projector, per view."""

        from opmeter.models.deepseek_ocr import analytic as A

        cfg = self.cfg
        empty = self.empty
        add = self.add
        ocr = self.model.model
        views = list(self.vw.views)
        clip = self.model.model.vision_model
        hid = cfg.clip.hidden_size
        for b, s in views:
            sam_grid = A.sam_layer(cfg, b, s).out_grid
            feats = empty(b, cfg.sam.net_3_chans, sam_grid, sam_grid)
            pix = empty(b, 3, s, s)
            add("VitModel", f"{b}x{sam_grid}x{sam_grid}", clip, [pix, feats])
            add("CLIPVisionEmbeddings", f"{b}x{sam_grid}x{sam_grid}", clip.embeddings, [pix, feats])
            n_tok = sam_grid * sam_grid + 1
            add("NoTPTransformer", f"{b}x{n_tok}", clip.transformer, [empty(b, n_tok, hid)])
            add("NoTPTransformerBlock", f"{b}x{n_tok}", clip.transformer.layers[0], [empty(b, n_tok, hid)])
            add("NoTPAttention", f"{b}x{n_tok}", clip.transformer.layers[0].self_attn, [empty(b, n_tok, hid)])
            add("NoTPFeedForward", f"{b}x{n_tok}", clip.transformer.layers[0].mlp, [empty(b, n_tok, hid)])
            add("MlpProjector", f"{b}x{n_tok - 1}", ocr.projector, [empty(b, n_tok - 1, cfg.projector.input_dim)])

    def decoder_cases(self) -> None:
        """Decoder layers, attention (eager and flash), MoE parts, norms, LM head: prefill and one decode step."""
        import torch

        from opmeter.models.deepseek_ocr import analytic as A
        from opmeter.models.deepseek_ocr.decoder import KVCache, causal_mask_4d

        cfg = self.cfg
        empty = self.empty
        add = self.add
        dev = self.dev
        bf = self.bf
        model = self.model
        ocr = self.model.model
        seq = self.seq
        dc = cfg.decoder
        h = dc.hidden_size

        def cache_with(layer_idx: int, past: int) -> KVCache:
            cache = KVCache()
            for _ in range(layer_idx + (1 if past else 0)):
                cache.key_cache.append(empty(1, dc.num_key_value_heads, past, dc.head_dim))
                cache.value_cache.append(empty(1, dc.num_key_value_heads, past, dc.head_dim))
            return cache

        def flash_case(attn: Any, x: Any, kwargs: dict[str, Any], q_len: int, past: int, tag: str) -> Case:
            def call() -> Any:
                return attn(x, **kwargs)

            def analytic() -> Layer:
                return A.LlamaFlashAttention2(batch=1, q_len=q_len, past=past, hidden=h, heads=dc.num_attention_heads,
                                              kv_heads=dc.num_key_value_heads, head_dim=dc.head_dim)

            return Case("LlamaFlashAttention2", f"{tag} vs traced eager LlamaAttention", attn, call, analytic,
                        implementation="(flash-attn not installed: same GEMMs as eager)", tensor_only=True)

        dense_idx = 0 if not dc.is_moe_layer(0) else None
        moe_idx = next((i for i in range(dc.num_hidden_layers) if dc.is_moe_layer(i)), None)
        for q_len, past, phase in ((seq, 0, "prefill"), (1, seq, "decode")):
            tag = f"{phase} q={q_len} past={past}"
            pos = torch.arange(past, past + q_len, device=dev).unsqueeze(0)
            mask = causal_mask_4d(1, q_len, past, bf, dev)
            for idx, kind in ((dense_idx, "dense"), (moe_idx, "MoE")):
                if idx is None:
                    continue
                layer = ocr.layers[idx]
                x = empty(1, q_len, h)
                add("DeepseekV2DecoderLayer", f"{kind} {tag}", layer,
                    [x, mask, pos, cache_with(idx, past)], past=past)
            layer = ocr.layers[0]
            add("LlamaAttention", tag, layer.self_attn, [empty(1, q_len, h)],
                kwargs={"attention_mask": mask, "position_ids": pos, "past_key_value": cache_with(0, past)}, past=past)
            fa_kwargs = {"attention_mask": mask, "position_ids": pos, "past_key_value": cache_with(0, past)}
            self.cases.append(flash_case(layer.self_attn, empty(1, q_len, h), fa_kwargs, q_len, past, tag))
            add("LlamaRotaryEmbedding", tag, layer.self_attn.rotary_emb,
                [empty(1, dc.num_key_value_heads, q_len, dc.head_dim), pos])
            if moe_idx is not None:
                moe = ocr.layers[moe_idx].mlp
                add("DeepseekV2MoE", tag, moe, [empty(1, q_len, h)])
                add("MoEGate", tag, moe.gate, [empty(1, q_len, h)])
                add("DeepseekV2MLP", f"expert {tag}", moe.experts[0], [empty(q_len, h)])
                add("DeepseekV2MLP", f"shared {tag}", moe.shared_experts, [empty(1, q_len, h)])
            if dense_idx is not None:
                add("DeepseekV2MLP", f"dense {tag}", ocr.layers[dense_idx].mlp, [empty(1, q_len, h)])
            add("DeepseekV2RMSNorm", tag, ocr.norm, [empty(1, q_len, h)])
            add("LMHead", tag, model.lm_head, [empty(1, q_len, h)], path="lm_head")
            add("Linear", f"q_proj {tag}", layer.self_attn.q_proj, [empty(1, q_len, h)])
            add("SiLU", tag, ocr.layers[0].mlp.act_fn, [empty(1, q_len, dc.intermediate_size)])
            add("Embedding", tag, ocr.embed_tokens, [torch.zeros(1, q_len, dtype=torch.long, device=dev)])

    def end_to_end_cases(self) -> None:
        """Vision only, the full prefill and one decode step of the whole model."""
        from opmeter.models.deepseek_ocr.decoder import KVCache

        attn_implementation, routing, inputs = self.attn_implementation, self.routing, self.inputs
        cols, rows, cases = self.cols, self.rows, self.cases
        import torch

        from opmeter.models.deepseek_ocr import analytic as A

        cfg = self.cfg
        vw = self.vw
        empty = self.empty
        dev = self.dev
        bf = self.bf
        model = self.model
        ocr = self.model.model
        real = self.real
        dt = self.dt
        seq = self.seq
        ctx = self.ctx
        dc = self.cfg.decoder
        kw = inputs.model_kwargs(dev, bf)
        an = A.DeepseekOCRAnalytic(cfg, dtype=dt, sdpa=ctx["sdpa"], host_checks=real,
                                   attn_implementation=attn_implementation)
        patches, image_ori = kw["images"][0]
        crop = tuple(vw.crop_grid)  # (cols, rows), as forward() hands it to _image_features

        def vision_layer() -> Layer:
            from opmeter.analytic.base import Composite, Op
            from opmeter.analytic.primitives import reduction

            calls, glue = A.vision_calls(cfg, vw, dtype=dt, sdpa=ctx["sdpa"])
            pre: list[Op] = []
            if real:  # torch.sum(patches).item() in _image_features
                pre += [reduction("sum", int(patches.numel()), 1, dt), Op("_local_scalar_dense", bytes_read=dt)]
            return Composite(tuple(calls), "vision", (*pre, *glue))

        cases.append(Case("end-to-end", f"vision only, grid {cols}x{rows}, {vw.image_tokens} image tokens", ocr,
                          lambda: ocr._image_features(patches, image_ori, crop), vision_layer,
                          implementation="DeepseekOCRModel._image_features"))

        def routed() -> tuple[tuple[int, ...] | None, ...] | None:
            return routing.per_layer(ocr.layers) if routing is not None else None

        def prefill() -> Any:
            return model(**kw, past_key_values=KVCache(), use_cache=True)

        dcache = KVCache()
        for _ in range(dc.num_hidden_layers):
            dcache.key_cache.append(empty(1, dc.num_key_value_heads, seq, dc.head_dim))
            dcache.value_cache.append(empty(1, dc.num_key_value_heads, seq, dc.head_dim))
        ids = torch.zeros(1, 1, dtype=torch.long, device=dev)

        def decode() -> Any:
            return model(input_ids=ids, past_key_values=dcache, use_cache=True)

        cases.append(Case("end-to-end", f"full prefill, {seq} tokens", model, prefill,
                          lambda: an.prefill(vw, seq - vw.image_tokens, routed())))
        cases.append(Case("end-to-end", f"one decode step, KV length {seq}", model, decode,
                          lambda: an.decode_step(seq, routed())))
