"""Layer-by-layer verification: analytic predictions vs the tracer on the real (reference) modules.

For every analytic layer, the reference module is taken from a shape-only (meta, bf16) build of the preset, called
at representative shapes under :class:`~opmeter.trace.OpTracer`, and compared with the analytic layer that the
mapping table (:mod:`opmeter.models.deepseek_ocr.mapping`) builds from the same module instance and input shapes.
End-to-end rows: vision only, the full prefill and one decode step of the whole model.

Tolerances (relative, ``|analytic - measured| / measured``):

* tensor-core FLOPs: 1% (the requirement; the analytic layers are exact on the reference);
* CUDA-core FLOPs: 2% (per-element estimates; exact op-for-op on the reference);
* bytes (read + written): 5% (copies depend on memory layouts; exact on the reference in shape-only mode).

``LlamaFlashAttention2`` needs flash-attn on CUDA; its row compares tensor-core FLOPs with the traced eager
attention (same two GEMMs) and marks CUDA-core and bytes ``n/a``.

Shape-only tracing uses PyTorch's math decomposition of ``F.scaled_dot_product_attention`` and the balanced MoE
routing of the reference; the analytic side is told the same (``sdpa="math"``, balanced experts).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pandas as pd

from opmeter.analytic.base import Layer
from opmeter.errors import OpmeterError
from opmeter.io import atomic_write_text

TOL_TENSOR = 0.01
TOL_CUDA = 0.02
TOL_BYTES = 0.05

COLUMNS = [
    "layer",
    "implementation",
    "case",
    "measured_tensor_flops",
    "analytic_tensor_flops",
    "rel_tensor",
    "measured_cuda_flops",
    "analytic_cuda_flops",
    "rel_cuda",
    "measured_bytes",
    "analytic_bytes",
    "rel_bytes",
    "status",
]


@attrs.frozen
class Case:
    """One verification row: a reference module, its call and the analytic layer to compare with."""

    layer: str
    case: str
    module: Any
    call: Callable[[], Any]
    analytic: Callable[[], Layer]
    implementation: str = ""
    root: Any = None
    """Module the tracer is attached to (default ``module``)."""
    tensor_only: bool = False
    """Compare tensor-core FLOPs only (an analytic variant checked against a module with the same GEMMs)."""


def rel_diff(measured: float, analytic: float) -> float:
    """``(analytic - measured) / measured``; 0 when both are 0, ``inf`` when only the measurement is 0."""
    if measured == 0:
        return 0.0 if analytic == 0 else math.inf
    return (analytic - measured) / measured


def _row(case: Case, totals: dict[str, Any], layer: Layer) -> dict[str, Any]:
    t, c, r, w = layer.totals()
    mt, mc = int(totals["flops_tensor"]), float(totals["flops_cuda"])
    mb = int(totals["bytes_read"]) + int(totals["bytes_written"])
    rt, rc, rb = rel_diff(mt, t), rel_diff(mc, c), rel_diff(mb, r + w)
    if case.tensor_only:
        rc = rb = math.nan
        ok = abs(rt) <= TOL_TENSOR
    else:
        ok = abs(rt) <= TOL_TENSOR and abs(rc) <= TOL_CUDA and abs(rb) <= TOL_BYTES
    from opmeter.models.deepseek_ocr.mapping import qualified_name

    return {
        "layer": case.layer,
        "implementation": case.implementation or qualified_name(case.module),
        "case": case.case,
        "measured_tensor_flops": mt,
        "analytic_tensor_flops": t,
        "rel_tensor": rt,
        "measured_cuda_flops": mc,
        "analytic_cuda_flops": c,
        "rel_cuda": rc,
        "measured_bytes": mb,
        "analytic_bytes": r + w,
        "rel_bytes": rb,
        "status": ("pass" if ok else "FAIL") + (" (tensor-core only)" if case.tensor_only else ""),
    }


def run_case(case: Case) -> dict[str, Any]:
    """Trace one case and compare it with its analytic layer."""
    import torch

    from opmeter.trace import OpTracer

    with OpTracer(case.root if case.root is not None else case.module, nvtx=False) as trace, torch.no_grad():
        case.call()
    return _row(case, trace.totals(), case.analytic())


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


# ---------------------------------------------------------------------------------------------------------------
# Cases for DeepSeek-OCR
# ---------------------------------------------------------------------------------------------------------------


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
    import torch

    from opmeter.models.deepseek_ocr import analytic as A
    from opmeter.models.deepseek_ocr.decoder import KVCache, causal_mask_4d
    from opmeter.models.deepseek_ocr.geometry import VisionWorkload
    from opmeter.models.deepseek_ocr.mapping import layer_for
    from opmeter.models.deepseek_ocr.model import build_reference
    from opmeter.models.deepseek_ocr.preprocess import prepare_inputs_from_geometry
    from opmeter.models.deepseek_ocr.tokenizer import BuiltinTokenizer

    if device not in ("meta", "cpu"):
        raise OpmeterError(f"verify runs on 'meta' (shape-only) or 'cpu' (real tensors), not {device!r}")
    model = build_reference(preset, device=device, attn_implementation=attn_implementation)
    cfg = model.config
    dev, bf = torch.device(device), model.dtype
    real = device != "meta"
    dt = torch.empty((), dtype=bf).element_size()
    gen = torch.Generator().manual_seed(0)
    routing = _RoutingRecorder(model) if real else None
    cols, rows = grid or (2, 3)
    vw = VisionWorkload.from_grid(cols, rows, base_size=cfg.base_size, image_size=cfg.image_size, config=cfg)
    inputs = prepare_inputs_from_geometry(A.STANDARD_PROMPT, BuiltinTokenizer(), vw, cfg)
    seq = inputs.seq_len
    ctx: dict[str, Any] = {"dt": dt, "sdpa": "fused" if real else "math", "host_checks": real}

    def empty(*shape: int, dtype: torch.dtype = bf) -> torch.Tensor:
        if real:
            return torch.randn(*shape, generator=gen, dtype=dtype).to(dev)
        return torch.empty(*shape, device=dev, dtype=dtype)

    cases: list[Case] = []

    def add(layer: str, desc: str, module: Any, args: Sequence[Any], path: str | None = None,
            kwargs: dict[str, Any] | None = None, shapes: Sequence[Sequence[int]] | None = None,
            **extra: Any) -> None:
        kw = kwargs or {}
        in_shapes = shapes if shapes is not None else [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
        def analytic() -> Layer:
            routed = routing.single(module) if routing is not None else None
            more = {"expert_tokens": routed} if routed is not None else {}
            return layer_for(module, in_shapes, path=path, **{**ctx, **extra, **more})

        cases.append(Case(layer, desc, module, lambda: module(*args, **kw), analytic))

    ocr: Any = model.model
    sam, clip = ocr.sam_model, ocr.vision_model
    views = [(b, s) for b, s in vw.views]
    # ---- SAM
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
        add("Attention", f"windowed {nwin}x{ws}x{ws}", sam.blocks[wblk].attn, [empty(nwin, ws, ws, cfg.sam.embed_dim)])
    add("MLPBlock", f"{b0}x{g0}x{g0}", sam.blocks[0].mlp, [empty(b0, g0, g0, cfg.sam.embed_dim)])
    add("LayerNorm2d", f"{b0}x{cfg.sam.out_chans}x{g0}x{g0}", sam.neck[1], [empty(b0, cfg.sam.out_chans, g0, g0)])
    add("Conv2d", f"net_2 {b0}x{cfg.sam.out_chans}x{g0}x{g0}", sam.net_2, [empty(b0, cfg.sam.out_chans, g0, g0)])
    add("LayerNorm", f"{b0 * g0 * g0}x{cfg.sam.embed_dim}", sam.blocks[0].norm1, [empty(b0, g0, g0, cfg.sam.embed_dim)])
    add("GELU", f"{b0 * g0 * g0}x{4 * cfg.sam.embed_dim}", sam.blocks[0].mlp.act,
        [empty(b0, g0, g0, int(cfg.sam.embed_dim * cfg.sam.mlp_ratio))])
    # ---- CLIP + projector
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
    # ---- decoder
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
        cases.append(flash_case(layer.self_attn, empty(1, q_len, h), fa_kwargs, q_len, past, tag))
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
    # ---- end to end
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
    return cases


def verify(preset: str, grid: tuple[int, int] | None = None,
           progress: Callable[[str], None] | None = None, device: str = "meta",
           attn_implementation: str = "eager") -> pd.DataFrame:
    """Run every case of a preset; one row per case with :data:`COLUMNS`."""
    rows = []
    for case in deepseek_ocr_cases(preset, grid, device, attn_implementation):
        if progress is not None:
            progress(f"{case.layer} {case.case}")
        rows.append(run_case(case))
    return pd.DataFrame(rows, columns=COLUMNS)


def worst_per_layer(df: pd.DataFrame) -> pd.DataFrame:
    """The row with the largest relative difference (any metric) per layer."""
    if df.empty:
        return df
    score = df[["rel_tensor", "rel_cuda", "rel_bytes"]].abs().max(axis=1)
    idx = score.groupby(df["layer"], sort=False).idxmax()
    return df.loc[idx.to_numpy()]


def _fmt_rel(value: Any) -> str:
    x = float(value)
    if math.isnan(x):
        return "n/a"
    return "inf" if math.isinf(x) else f"{x:+.2e}" if x else "0"


def to_markdown(df: pd.DataFrame, preset: str, seconds: float, device: str = "meta") -> str:
    """Markdown report: tolerances, a pass/fail line, the worst row per layer and every row."""

    def table(d: pd.DataFrame) -> str:
        head = ("| layer | implementation | case | tensor meas. | tensor analytic | rel | CUDA meas. | CUDA analytic "
                "| rel | bytes meas. | bytes analytic | rel | status |")
        lines = [head, "|" + "---|" * 13]
        for r in d.to_dict("records"):
            lines.append(
                f"| {r['layer']} | `{r['implementation']}` | {r['case']} | {r['measured_tensor_flops']:,} | "
                f"{r['analytic_tensor_flops']:,} | {_fmt_rel(r['rel_tensor'])} | {r['measured_cuda_flops']:,.0f} | "
                f"{r['analytic_cuda_flops']:,.0f} | {_fmt_rel(r['rel_cuda'])} | {r['measured_bytes']:,} | "
                f"{r['analytic_bytes']:,} | {_fmt_rel(r['rel_bytes'])} | {r['status']} |"
            )
        return "\n".join(lines)

    fails = int(df["status"].str.startswith("FAIL").sum())
    verdict = "all rows pass" if fails == 0 else f"**{fails} row(s) FAIL**"
    return "\n".join([
        f"# Verification: analytic layers vs traced reference modules ({preset})",
        "",
        f"{len(df)} rows, {verdict}; traced "
        + ("shape-only (meta device, bf16)" if device == "meta" else f"with real tensors on {device}")
        + f" in {seconds:.1f} s.",
        f"Tolerances: tensor-core FLOPs {TOL_TENSOR:.0%}, CUDA-core FLOPs {TOL_CUDA:.0%}, bytes (read + written) "
        f"{TOL_BYTES:.0%}. `rel` = (analytic - measured) / measured.",
        "",
        "## Worst row per layer",
        "",
        table(worst_per_layer(df)),
        "",
        "## All rows",
        "",
        table(df),
        "",
    ])


def write_verification(
    df: pd.DataFrame, out: str | Path, preset: str, seconds: float, device: str = "meta"
) -> tuple[Path, Path]:
    """Write ``verification.csv`` and ``verification.md`` into ``out``."""
    out_dir = Path(out)
    csv = atomic_write_text(out_dir / "verification.csv", df.to_csv(index=False))
    md = atomic_write_text(out_dir / "verification.md", to_markdown(df, preset, seconds, device))
    return csv, md


def run_verify(preset: str, out: str | Path, grid: tuple[int, int] | None = None,
               progress: Callable[[str], None] | None = None, device: str = "meta",
               attn_implementation: str = "eager") -> tuple[pd.DataFrame, float]:
    """Verify, write the files, return the table and the elapsed seconds."""
    t0 = time.perf_counter()
    df = verify(preset, grid, progress, device, attn_implementation)
    seconds = time.perf_counter() - t0
    write_verification(df, out, preset, seconds, device)
    return df, seconds
