"""DeepSeek-OCR's mapping table: implementation classes (reference and vendor) -> analytic layers.

One :class:`~opmeter.analytic.mapping.MappingEntry` per analytic layer. ``implementations`` lists qualified class
names as ``fnmatch`` patterns: opmeter's reference (``opmeter.models.deepseek_ocr.vision.Attention``), the vendor
remote code (loaded by transformers under ``transformers_modules.<repo>.<hash>.deepencoder``, hence
``*.deepencoder.Attention``), transformers' LLaMA classes and ``torch.nn`` primitives. ``fields`` says how to read
every constructor field of the analytic layer from a call, as a function of ``m`` (the module), ``x`` (input
shapes) and ``ctx``. Besides the generic keys (``dt``, ``sdpa``, ``past``), this model's whole-model layers read
``config`` / ``vision`` / ``seq`` / ``variant`` / ``expert_tokens`` / ``host_checks`` / ``decoder_sdpa``.

Containers (``ModuleList``, ``Sequential``) are marked :data:`CONTAINER`: they are never called and have no
analytic layer. :data:`TABLE` answers the queries; :func:`layer_for`, :func:`entry_for` and :func:`mapping_frame`
are its methods for this table.
"""

from __future__ import annotations

from typing import Any

from opmeter.analytic import primitives as P
from opmeter.analytic.mapping import CONTAINER, LAYER, Context, MappingEntry, MappingTable, Shapes, qualified_name
from opmeter.analytic.mapping import attr as _attr
from opmeter.analytic.mapping import prod as _prod
from opmeter.models.deepseek_ocr import analytic as A

__all__ = [
    "CONTAINER",
    "LAYER",
    "MAPPING",
    "TABLE",
    "MappingEntry",
    "entry_for",
    "layer_for",
    "mapping_frame",
    "qualified_name",
]

_REF = "opmeter.models.deepseek_ocr"
_LLAMA = "transformers.models.llama.modeling_llama"


def _impl(ref_module: str, cls: str, *vendor: str) -> tuple[str, ...]:
    return (f"{_REF}.{ref_module}.{cls}", *vendor)


def _tokens(m: Any, x: Shapes, ctx: Context) -> int:
    """Rows of a token-wise layer: every input dimension but the last."""
    return _prod(x[0][:-1])


def _dtype(m: Any, x: Shapes, ctx: Context) -> int:
    """Element size of the activations, from the context."""
    return int(ctx["dt"])


def _sdpa(m: Any, x: Shapes, ctx: Context) -> str:
    """SDPA path (``"math"`` or ``"fused"``), from the context."""
    return str(ctx["sdpa"])


def _attn_sdpa(attention: Any, ctx: Context) -> str | None:
    """The SDPA path of a decoder attention module (``LlamaSdpaAttention`` or the reference's ``"sdpa"``)."""
    if type(attention).__name__ == "LlamaSdpaAttention" or _attr(attention, "attn_implementation", "eager") == "sdpa":
        return str(ctx["sdpa"])
    return None


_WHOLE_MODEL = {
    "config": lambda m, x, ctx: ctx["config"],
    "seq": lambda m, x, ctx: ctx["seq"],
    "past": lambda m, x, ctx: ctx.get("past", 0),
    "vision": lambda m, x, ctx: ctx.get("vision"),
    "variant": lambda m, x, ctx: ctx.get("variant", "normal"),
    "sdpa": _sdpa,
    "dtype": _dtype,
    "expert_tokens": lambda m, x, ctx: ctx.get("expert_tokens"),
    "host_checks": lambda m, x, ctx: ctx.get("host_checks", False),
    "decoder_sdpa": lambda m, x, ctx: ctx.get("decoder_sdpa"),
}
"""Fields of the two whole-model layers: everything comes from the workload (``ctx``)."""
_LLAMA_ATTN = {
    "batch": lambda m, x, ctx: x[0][0],
    "q_len": lambda m, x, ctx: x[0][1],
    "past": lambda m, x, ctx: ctx.get("past", 0),
    "hidden": lambda m, x, ctx: m.hidden_size,
    "heads": lambda m, x, ctx: m.num_heads,
    "kv_heads": lambda m, x, ctx: m.num_key_value_heads,
    "head_dim": lambda m, x, ctx: m.head_dim,
    "dtype": _dtype,
}
"""Fields shared by the eager/SDPA and the flash-attention decoder attention layers."""

MAPPING: tuple[MappingEntry, ...] = (
    # ---- whole model ---------------------------------------------------------------------------------------------
    MappingEntry(
        "DeepseekOCRForCausalLM",
        _impl("model", "DeepseekOCRForCausalLM", "*.modeling_deepseekocr.DeepseekOCRForCausalLM"),
        A.DeepseekOCRForCausalLM,
        _WHOLE_MODEL,
        note="needs the workload: config, seq (new tokens), past, vision (VisionWorkload or None)",
    ),
    MappingEntry(
        "DeepseekOCRModel",
        _impl("model", "DeepseekOCRModel", "*.modeling_deepseekocr.DeepseekOCRModel"),
        A.DeepseekOCRModel,
        _WHOLE_MODEL,
        note="needs the workload, as DeepseekOCRForCausalLM",
    ),
    # ---- SAM -----------------------------------------------------------------------------------------------------
    MappingEntry(
        "ImageEncoderViT",
        _impl("vision", "ImageEncoderViT", "*.deepencoder.ImageEncoderViT"),
        A.ImageEncoderViT,
        {
            "batch": lambda m, x, ctx: x[0][0],
            "img": lambda m, x, ctx: x[0][2],
            "patch": lambda m, x, ctx: m.patch_embed.proj.kernel_size[0],
            "dim": lambda m, x, ctx: m.patch_embed.proj.out_channels,
            "depth": lambda m, x, ctx: len(m.blocks),
            "heads": lambda m, x, ctx: m.blocks[0].attn.num_heads,
            "mlp_dim": lambda m, x, ctx: m.blocks[0].mlp.lin1.out_features,
            "window": lambda m, x, ctx: max([b.window_size for b in m.blocks] + [0]),
            "global_attn_indexes": lambda m, x, ctx: tuple(i for i, b in enumerate(m.blocks) if b.window_size == 0),
            "native_grid": lambda m, x, ctx: m.pos_embed.shape[1],
            "out_chans": lambda m, x, ctx: m.neck[0].out_channels,
            "net_2_chans": lambda m, x, ctx: m.net_2.out_channels,
            "net_3_chans": lambda m, x, ctx: m.net_3.out_channels,
            "in_chans": lambda m, x, ctx: m.patch_embed.proj.in_channels,
            "sdpa": _sdpa,
            "dtype": _dtype,
        },
    ),
    MappingEntry(
        "PatchEmbed",
        _impl("vision", "PatchEmbed", "*.deepencoder.PatchEmbed"),
        A.PatchEmbed,
        {
            "batch": lambda m, x, ctx: x[0][0],
            "img": lambda m, x, ctx: x[0][2],
            "patch": lambda m, x, ctx: m.proj.kernel_size[0],
            "in_chans": lambda m, x, ctx: m.proj.in_channels,
            "embed_dim": lambda m, x, ctx: m.proj.out_channels,
            "dtype": _dtype,
        },
    ),
    MappingEntry(
        "Block",
        _impl("vision", "Block", "*.deepencoder.Block"),
        A.Block,
        {
            "batch": lambda m, x, ctx: x[0][0],
            "grid": lambda m, x, ctx: x[0][1],
            "dim": lambda m, x, ctx: m.attn.qkv.in_features,
            "heads": lambda m, x, ctx: m.attn.num_heads,
            "mlp_dim": lambda m, x, ctx: m.mlp.lin1.out_features,
            "window": lambda m, x, ctx: m.window_size,
            "rel_table": lambda m, x, ctx: m.attn.rel_pos_h.shape[0] if m.attn.use_rel_pos else None,
            "sdpa": _sdpa,
            "dtype": _dtype,
        },
    ),
    MappingEntry(
        "Attention",
        _impl("vision", "Attention", "*.deepencoder.Attention"),
        A.Attention,
        {
            "batch": lambda m, x, ctx: x[0][0],
            "height": lambda m, x, ctx: x[0][1],
            "width": lambda m, x, ctx: x[0][2],
            "dim": lambda m, x, ctx: m.qkv.in_features,
            "heads": lambda m, x, ctx: m.num_heads,
            "qkv_bias": lambda m, x, ctx: m.qkv.bias is not None,
            "use_rel_pos": lambda m, x, ctx: m.use_rel_pos,
            "rel_table": lambda m, x, ctx: m.rel_pos_h.shape[0] if m.use_rel_pos else 0,
            "sdpa": _sdpa,
            "dtype": _dtype,
        },
        note="windowed or global is in the input shape: windows arrive as the batch",
    ),
    MappingEntry(
        "MLPBlock",
        _impl("vision", "MLPBlock", "*.deepencoder.MLPBlock"),
        A.MLPBlock,
        {
            "tokens": _tokens,
            "dim": lambda m, x, ctx: m.lin1.in_features,
            "mlp_dim": lambda m, x, ctx: m.lin1.out_features,
            "dtype": _dtype,
        },
    ),
    MappingEntry(
        "LayerNorm2d",
        _impl("vision", "LayerNorm2d", "*.deepencoder.LayerNorm2d"),
        A.LayerNorm2d,
        {
            "batch": lambda m, x, ctx: x[0][0],
            "channels": lambda m, x, ctx: x[0][1],
            "height": lambda m, x, ctx: x[0][2],
            "width": lambda m, x, ctx: x[0][3],
            "dtype": _dtype,
        },
    ),
    # ---- CLIP ----------------------------------------------------------------------------------------------------
    MappingEntry(
        "VitModel",
        _impl("vision", "VitModel", "*.deepencoder.VitModel"),
        A.VitModel,
        {
            "batch": lambda m, x, ctx: x[1][0],
            "grid": lambda m, x, ctx: x[1][2],
            "hidden": lambda m, x, ctx: m.embeddings.embed_dim,
            "layers": lambda m, x, ctx: len(m.transformer.layers),
            "heads": lambda m, x, ctx: m.transformer.layers[0].n_heads,
            "ffn": lambda m, x, ctx: m.transformer.layers[0].mlp.fc1.out_features,
            "native_grid": lambda m, x, ctx: m.embeddings.image_size // m.embeddings.patch_size,
            "sdpa": _sdpa,
            "dtype": _dtype,
        },
        note="inputs: (pixels, SAM features [B, C, g, g])",
    ),
    MappingEntry(
        "CLIPVisionEmbeddings",
        _impl("vision", "CLIPVisionEmbeddings", "*.deepencoder.CLIPVisionEmbeddings"),
        A.CLIPVisionEmbeddings,
        {
            "batch": lambda m, x, ctx: x[1][0],
            "grid": lambda m, x, ctx: x[1][2],
            "hidden": lambda m, x, ctx: m.embed_dim,
            "native_grid": lambda m, x, ctx: m.image_size // m.patch_size,
            "patch": lambda m, x, ctx: m.patch_size,
            "dtype": _dtype,
        },
    ),
    MappingEntry(
        "NoTPTransformer",
        _impl("vision", "NoTPTransformer", "*.deepencoder.NoTPTransformer"),
        A.NoTPTransformer,
        {
            "batch": lambda m, x, ctx: x[0][0],
            "seq": lambda m, x, ctx: x[0][1],
            "layers": lambda m, x, ctx: len(m.layers),
            "hidden": lambda m, x, ctx: m.layers[0].dim,
            "heads": lambda m, x, ctx: m.layers[0].n_heads,
            "ffn": lambda m, x, ctx: m.layers[0].mlp.fc1.out_features,
            "sdpa": _sdpa,
            "dtype": _dtype,
        },
    ),
    MappingEntry(
        "NoTPTransformerBlock",
        _impl("vision", "NoTPTransformerBlock", "*.deepencoder.NoTPTransformerBlock"),
        A.NoTPTransformerBlock,
        {
            "batch": lambda m, x, ctx: x[0][0],
            "seq": lambda m, x, ctx: x[0][1],
            "hidden": lambda m, x, ctx: m.dim,
            "heads": lambda m, x, ctx: m.n_heads,
            "ffn": lambda m, x, ctx: m.mlp.fc1.out_features,
            "sdpa": _sdpa,
            "dtype": _dtype,
        },
        note="calls self_attn.forward / mlp.forward directly: their ops count in the block",
    ),
    MappingEntry(
        "NoTPAttention",
        _impl("vision", "NoTPAttention", "*.deepencoder.NoTPAttention"),
        A.NoTPAttention,
        {
            "batch": lambda m, x, ctx: x[0][0],
            "seq": lambda m, x, ctx: x[0][1],
            "hidden": lambda m, x, ctx: m.qkv_proj.in_features,
            "heads": lambda m, x, ctx: m.num_heads,
            "sdpa": _sdpa,
            "dtype": _dtype,
        },
        note="inside the model it is called through forward() (no module call of its own)",
    ),
    MappingEntry(
        "NoTPFeedForward",
        _impl("vision", "NoTPFeedForward", "*.deepencoder.NoTPFeedForward"),
        A.NoTPFeedForward,
        {
            "tokens": _tokens,
            "hidden": lambda m, x, ctx: m.fc1.in_features,
            "ffn": lambda m, x, ctx: m.fc1.out_features,
            "dtype": _dtype,
        },
        note="inside the model it is called through forward() (no module call of its own)",
    ),
    MappingEntry(
        "MlpProjector",
        _impl("vision", "MlpProjector", "*.deepencoder.MlpProjector", "*.modeling_deepseekocr.MlpProjector"),
        A.MlpProjector,
        {
            "tokens": _tokens,
            "input_dim": lambda m, x, ctx: m.layers.in_features,
            "n_embed": lambda m, x, ctx: m.layers.out_features,
            "dtype": _dtype,
        },
        note="projector_type 'linear' only",
    ),
    # ---- decoder -------------------------------------------------------------------------------------------------
    MappingEntry(
        "DeepseekV2DecoderLayer",
        _impl("decoder", "DeepseekV2DecoderLayer", "*.modeling_deepseekv2.DeepseekV2DecoderLayer"),
        A.DeepseekV2DecoderLayer,
        {
            "batch": lambda m, x, ctx: x[0][0],
            "q_len": lambda m, x, ctx: x[0][1],
            "past": lambda m, x, ctx: ctx.get("past", 0),
            "moe": lambda m, x, ctx: type(m.mlp).__name__ == "DeepseekV2MoE",
            "flash": lambda m, x, ctx: type(m.self_attn).__name__ == "LlamaFlashAttention2",
            "hidden": lambda m, x, ctx: m.hidden_size,
            "heads": lambda m, x, ctx: m.self_attn.num_heads,
            "kv_heads": lambda m, x, ctx: m.self_attn.num_key_value_heads,
            "head_dim": lambda m, x, ctx: m.self_attn.head_dim,
            "intermediate": lambda m, x, ctx: _attr(m, "mlp.intermediate_size", 1),
            "experts": lambda m, x, ctx: len(_attr(m, "mlp.experts", ())),
            "top_k": lambda m, x, ctx: _attr(m, "mlp.num_experts_per_tok", 1),
            "moe_intermediate": lambda m, x, ctx: _attr(m, "mlp.experts.0.intermediate_size", 1),
            "shared": lambda m, x, ctx: (
                _attr(m, "mlp.shared_experts.intermediate_size", 0) // _attr(m, "mlp.experts.0.intermediate_size", 1)
            ),
            "dtype": _dtype,
            "expert_tokens": lambda m, x, ctx: ctx.get("expert_tokens"),
            "attn_sdpa": lambda m, x, ctx: _attn_sdpa(m.self_attn, ctx),
        },
    ),
    MappingEntry(
        "LlamaAttention",
        _impl("decoder", "LlamaAttention", f"{_LLAMA}.LlamaAttention", f"{_LLAMA}.LlamaSdpaAttention"),
        A.LlamaAttention,
        {**_LLAMA_ATTN, "sdpa": lambda m, x, ctx: _attn_sdpa(m, ctx)},
        note="eager, or the SDPA path (LlamaSdpaAttention, or attn_implementation 'sdpa' in the reference)",
    ),
    MappingEntry(
        "LlamaFlashAttention2",
        _impl("decoder", "LlamaFlashAttention2", f"{_LLAMA}.LlamaFlashAttention2"),
        A.LlamaFlashAttention2,
        _LLAMA_ATTN,
    ),
    MappingEntry(
        "LlamaRotaryEmbedding",
        _impl("decoder", "LlamaRotaryEmbedding", f"{_LLAMA}.LlamaRotaryEmbedding"),
        A.LlamaRotaryEmbedding,
        {
            "batch": lambda m, x, ctx: x[1][0],
            "seq": lambda m, x, ctx: x[1][1],
            "head_dim": lambda m, x, ctx: 2 * m.inv_freq.shape[0],
            "dtype": _dtype,
        },
        note="inputs: (value_states, position_ids)",
    ),
    MappingEntry(
        "DeepseekV2MoE",
        _impl("decoder", "DeepseekV2MoE", "*.modeling_deepseekv2.DeepseekV2MoE"),
        A.DeepseekV2MoE,
        {
            "tokens": _tokens,
            "hidden": lambda m, x, ctx: m.config.hidden_size,
            "experts": lambda m, x, ctx: len(m.experts),
            "top_k": lambda m, x, ctx: m.num_experts_per_tok,
            "moe_intermediate": lambda m, x, ctx: m.experts[0].intermediate_size,
            "shared": lambda m, x, ctx: m.shared_experts.intermediate_size // m.experts[0].intermediate_size,
            "expert_tokens": lambda m, x, ctx: ctx.get("expert_tokens"),
            "dtype": _dtype,
        },
        note="routing: balanced policy unless ctx['expert_tokens'] gives the measured tokens per expert",
    ),
    MappingEntry(
        "MoEGate",
        _impl("decoder", "MoEGate", "*.modeling_deepseekv2.MoEGate"),
        A.MoEGate,
        {
            "tokens": _tokens,
            "hidden": lambda m, x, ctx: m.gating_dim,
            "experts": lambda m, x, ctx: m.n_routed_experts,
            "top_k": lambda m, x, ctx: m.top_k,
            "dtype": _dtype,
        },
    ),
    MappingEntry(
        "DeepseekV2MLP",
        _impl("decoder", "DeepseekV2MLP", "*.modeling_deepseekv2.DeepseekV2MLP"),
        A.DeepseekV2MLP,
        {
            "tokens": _tokens,
            "hidden": lambda m, x, ctx: m.hidden_size,
            "intermediate": lambda m, x, ctx: m.intermediate_size,
            "dtype": _dtype,
        },
        note="dense MLP, routed experts and shared experts",
    ),
    MappingEntry(
        "DeepseekV2RMSNorm",
        _impl("decoder", "DeepseekV2RMSNorm", "*.modeling_deepseekv2.DeepseekV2RMSNorm"),
        A.DeepseekV2RMSNorm,
        {"rows": _tokens, "dim": lambda m, x, ctx: m.weight.shape[0], "dtype": _dtype},
    ),
    MappingEntry(
        "LMHead",
        ("torch.nn.modules.linear.Linear",),
        A.LMHead,
        {
            "tokens": _tokens,
            "hidden": lambda m, x, ctx: m.in_features,
            "vocab": lambda m, x, ctx: m.out_features,
            "dtype": _dtype,
        },
        paths=("lm_head", "*.lm_head"),
        note="the lm_head Linear (matched by path before the generic Linear)",
    ),
    # ---- torch.nn primitives -------------------------------------------------------------------------------------
    MappingEntry(
        "Linear",
        ("torch.nn.modules.linear.Linear",),
        P.Linear,
        {
            "tokens": _tokens,
            "in_features": lambda m, x, ctx: m.in_features,
            "out_features": lambda m, x, ctx: m.out_features,
            "bias": lambda m, x, ctx: m.bias is not None,
            "dtype": _dtype,
        },
    ),
    MappingEntry(
        "Conv2d",
        ("torch.nn.modules.conv.Conv2d",),
        P.Conv2d,
        {
            "batch": lambda m, x, ctx: x[0][0],
            "in_channels": lambda m, x, ctx: m.in_channels,
            "out_channels": lambda m, x, ctx: m.out_channels,
            "height": lambda m, x, ctx: x[0][2],
            "width": lambda m, x, ctx: x[0][3],
            "kernel": lambda m, x, ctx: m.kernel_size[0],
            "stride": lambda m, x, ctx: m.stride[0],
            "padding": lambda m, x, ctx: m.padding[0],
            "groups": lambda m, x, ctx: m.groups,
            "bias": lambda m, x, ctx: m.bias is not None,
            "dtype": _dtype,
        },
        note="square kernels, strides and paddings",
    ),
    MappingEntry(
        "LayerNorm",
        ("torch.nn.modules.normalization.LayerNorm",),
        P.LayerNorm,
        {
            "rows": _tokens,
            "dim": lambda m, x, ctx: m.normalized_shape[-1],
            "affine": lambda m, x, ctx: m.weight is not None,
            "dtype": _dtype,
        },
    ),
    MappingEntry(
        "Embedding",
        ("torch.nn.modules.sparse.Embedding",),
        P.Embedding,
        {
            "num_embeddings": lambda m, x, ctx: m.num_embeddings,
            "dim": lambda m, x, ctx: m.embedding_dim,
            "tokens": lambda m, x, ctx: _prod(x[0]),
            "dtype": _dtype,
        },
    ),
    MappingEntry(
        "GELU",
        ("torch.nn.modules.activation.GELU",),
        P.Activation,
        {
            "kind": lambda m, x, ctx: "gelu",
            "numel": lambda m, x, ctx: _prod(x[0]),
            "dtype": _dtype,
            "class_name": lambda m, x, ctx: "GELU",
        },
    ),
    MappingEntry(
        "SiLU",
        ("torch.nn.modules.activation.SiLU",),
        P.Activation,
        {
            "kind": lambda m, x, ctx: "silu",
            "numel": lambda m, x, ctx: _prod(x[0]),
            "dtype": _dtype,
            "class_name": lambda m, x, ctx: "SiLU",
        },
    ),
    # ---- containers ----------------------------------------------------------------------------------------------
    MappingEntry(
        "ModuleList",
        ("torch.nn.modules.container.ModuleList",),
        None,
        kind=CONTAINER,
        note="never called; its children are",
    ),
    MappingEntry(
        "Sequential",
        ("torch.nn.modules.container.Sequential",),
        None,
        kind=CONTAINER,
        note="called, but its forward only calls the children: a Composite of them in the analytic tree (SAM neck)",
    ),
    MappingEntry(
        "ModuleDict",
        ("torch.nn.modules.container.ModuleDict",),
        None,
        kind=CONTAINER,
        note="never called",
    ),
)
"""The table, most specific entries first (path-restricted ``LMHead`` before the generic ``Linear``)."""


TABLE = MappingTable(MAPPING)
entry_for = TABLE.entry_for
layer_for = TABLE.layer_for
mapping_frame = TABLE.frame
