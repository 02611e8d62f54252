"""The declarative mapping table: implementation classes (reference and vendor) -> analytic layers.

One :class:`MappingEntry` per analytic layer. ``implementations`` lists qualified class names as ``fnmatch``
patterns: opmeter's reference (``opmeter.models.deepseek_ocr.vision.Attention``), the vendor remote code (loaded
by transformers under ``transformers_modules.<repo>.<hash>.deepencoder``, hence ``*.deepencoder.Attention``),
transformers' LLaMA classes and ``torch.nn`` primitives. ``fields`` says how to fill every constructor field of
the analytic layer, as a small expression evaluated over:

* ``m`` — the module instance (constructor parameters are read from it);
* ``x`` — the input shapes of the traced call, a list of tuples (``x[0]`` is the first tensor argument);
* ``ctx`` — what a shape cannot tell: ``past`` (cached positions before a decoder call), ``sdpa`` (``"math"`` when
  ``F.scaled_dot_product_attention`` decomposes, e.g. on meta; ``"fused"`` for a fused kernel), ``dt`` (element
  size of the activations), ``config`` / ``vision`` / ``seq`` for the whole-model classes;
* helpers ``prod`` and ``attr(obj, "a.b", default)``.

Containers (``ModuleList``, ``Sequential``) are marked :data:`CONTAINER`: they are never called and have no
analytic layer. :func:`layer_for` builds the analytic layer of a module call; :func:`entry_for` finds the entry of a
qualified class name; :func:`qualified_name` gives that name for a module.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from opmeter.analytic import primitives as P
from opmeter.analytic.base import Layer
from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr import analytic as A
from opmeter.trace.modules import qualified_name as _qualified

LAYER = "layer"
CONTAINER = "container"
"""Kind of an entry: an analytic layer, or a container that is never called and not modelled."""

_REF = "opmeter.models.deepseek_ocr"
_LLAMA = "transformers.models.llama.modeling_llama"


@attrs.frozen
class MappingEntry:
    """One row of the mapping table.

    Attributes
    ----------
    name
        Analytic layer name (the vendor class name; ``LMHead`` for ``lm_head``).
    implementations
        Qualified class-name patterns (``fnmatch``) of modules this layer models.
    analytic
        The analytic layer class (``None`` for containers).
    fields
        Analytic constructor field -> expression over ``m``, ``x``, ``ctx`` (see the module docstring).
    kind
        :data:`LAYER` or :data:`CONTAINER`.
    paths
        Module-path patterns this entry is restricted to (``("lm_head",)``); empty: any path.
    note
        What a reader should know (approximations, inlined calls).
    """

    name: str
    implementations: tuple[str, ...]
    analytic: type[Layer] | None
    fields: Mapping[str, str] = attrs.field(factory=dict)
    kind: str = LAYER
    paths: tuple[str, ...] = ()
    note: str = ""

    def matches(self, qualified: str, path: str | None = None) -> bool:
        """Whether this entry applies to a module of class ``qualified`` at ``path``."""
        if self.paths and (path is None or not any(fnmatch.fnmatchcase(path, p) for p in self.paths)):
            return False
        return any(fnmatch.fnmatchcase(qualified, pat) for pat in self.implementations)


def _impl(ref_module: str, cls: str, *vendor: str) -> tuple[str, ...]:
    return (f"{_REF}.{ref_module}.{cls}", *vendor)


_TOKENS = "prod(x[0][:-1])"
_ATTN_SDPA = (
    "ctx['sdpa'] if type({a}).__name__ == 'LlamaSdpaAttention' or attr({a}, 'attn_implementation', 'eager') == 'sdpa' "
    "else None"
)
_WHOLE_MODEL = {
    "config": "ctx['config']", "seq": "ctx['seq']", "past": "ctx.get('past', 0)", "vision": "ctx.get('vision')",
    "variant": "ctx.get('variant', 'normal')", "sdpa": "ctx['sdpa']", "dtype": "ctx['dt']",
    "expert_tokens": "ctx.get('expert_tokens')", "host_checks": "ctx.get('host_checks', False)",
    "decoder_sdpa": "ctx.get('decoder_sdpa')",
}
"""Fields of the two whole-model layers: everything comes from the workload (``ctx``)."""
_LLAMA_ATTN = {
    "batch": "x[0][0]", "q_len": "x[0][1]", "past": "ctx.get('past', 0)", "hidden": "m.hidden_size",
    "heads": "m.num_heads", "kv_heads": "m.num_key_value_heads", "head_dim": "m.head_dim", "dtype": "ctx['dt']",
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
        {"batch": "x[0][0]", "img": "x[0][2]", "patch": "m.patch_embed.proj.kernel_size[0]",
         "dim": "m.patch_embed.proj.out_channels", "depth": "len(m.blocks)", "heads": "m.blocks[0].attn.num_heads",
         "mlp_dim": "m.blocks[0].mlp.lin1.out_features",
         "window": "max([b.window_size for b in m.blocks] + [0])",
         "global_attn_indexes": "tuple(i for i, b in enumerate(m.blocks) if b.window_size == 0)",
         "native_grid": "m.pos_embed.shape[1]", "out_chans": "m.neck[0].out_channels",
         "net_2_chans": "m.net_2.out_channels", "net_3_chans": "m.net_3.out_channels",
         "in_chans": "m.patch_embed.proj.in_channels", "sdpa": "ctx['sdpa']", "dtype": "ctx['dt']"},
    ),
    MappingEntry(
        "PatchEmbed",
        _impl("vision", "PatchEmbed", "*.deepencoder.PatchEmbed"),
        A.PatchEmbed,
        {"batch": "x[0][0]", "img": "x[0][2]", "patch": "m.proj.kernel_size[0]", "in_chans": "m.proj.in_channels",
         "embed_dim": "m.proj.out_channels", "dtype": "ctx['dt']"},
    ),
    MappingEntry(
        "Block",
        _impl("vision", "Block", "*.deepencoder.Block"),
        A.Block,
        {"batch": "x[0][0]", "grid": "x[0][1]", "dim": "m.attn.qkv.in_features", "heads": "m.attn.num_heads",
         "mlp_dim": "m.mlp.lin1.out_features", "window": "m.window_size",
         "rel_table": "m.attn.rel_pos_h.shape[0] if m.attn.use_rel_pos else None", "sdpa": "ctx['sdpa']",
         "dtype": "ctx['dt']"},
    ),
    MappingEntry(
        "Attention",
        _impl("vision", "Attention", "*.deepencoder.Attention"),
        A.Attention,
        {"batch": "x[0][0]", "height": "x[0][1]", "width": "x[0][2]", "dim": "m.qkv.in_features",
         "heads": "m.num_heads", "qkv_bias": "m.qkv.bias is not None", "use_rel_pos": "m.use_rel_pos",
         "rel_table": "m.rel_pos_h.shape[0] if m.use_rel_pos else 0", "sdpa": "ctx['sdpa']", "dtype": "ctx['dt']"},
        note="windowed or global is in the input shape: windows arrive as the batch",
    ),
    MappingEntry(
        "MLPBlock",
        _impl("vision", "MLPBlock", "*.deepencoder.MLPBlock"),
        A.MLPBlock,
        {"tokens": _TOKENS, "dim": "m.lin1.in_features", "mlp_dim": "m.lin1.out_features", "dtype": "ctx['dt']"},
    ),
    MappingEntry(
        "LayerNorm2d",
        _impl("vision", "LayerNorm2d", "*.deepencoder.LayerNorm2d"),
        A.LayerNorm2d,
        {"batch": "x[0][0]", "channels": "x[0][1]", "height": "x[0][2]", "width": "x[0][3]", "dtype": "ctx['dt']"},
    ),
    # ---- CLIP ----------------------------------------------------------------------------------------------------
    MappingEntry(
        "VitModel",
        _impl("vision", "VitModel", "*.deepencoder.VitModel"),
        A.VitModel,
        {"batch": "x[1][0]", "grid": "x[1][2]", "hidden": "m.embeddings.embed_dim",
         "layers": "len(m.transformer.layers)", "heads": "m.transformer.layers[0].n_heads",
         "ffn": "m.transformer.layers[0].mlp.fc1.out_features",
         "native_grid": "m.embeddings.image_size // m.embeddings.patch_size", "sdpa": "ctx['sdpa']",
         "dtype": "ctx['dt']"},
        note="inputs: (pixels, SAM features [B, C, g, g])",
    ),
    MappingEntry(
        "CLIPVisionEmbeddings",
        _impl("vision", "CLIPVisionEmbeddings", "*.deepencoder.CLIPVisionEmbeddings"),
        A.CLIPVisionEmbeddings,
        {"batch": "x[1][0]", "grid": "x[1][2]", "hidden": "m.embed_dim",
         "native_grid": "m.image_size // m.patch_size", "patch": "m.patch_size", "dtype": "ctx['dt']"},
    ),
    MappingEntry(
        "NoTPTransformer",
        _impl("vision", "NoTPTransformer", "*.deepencoder.NoTPTransformer"),
        A.NoTPTransformer,
        {"batch": "x[0][0]", "seq": "x[0][1]", "layers": "len(m.layers)", "hidden": "m.layers[0].dim",
         "heads": "m.layers[0].n_heads", "ffn": "m.layers[0].mlp.fc1.out_features", "sdpa": "ctx['sdpa']",
         "dtype": "ctx['dt']"},
    ),
    MappingEntry(
        "NoTPTransformerBlock",
        _impl("vision", "NoTPTransformerBlock", "*.deepencoder.NoTPTransformerBlock"),
        A.NoTPTransformerBlock,
        {"batch": "x[0][0]", "seq": "x[0][1]", "hidden": "m.dim", "heads": "m.n_heads",
         "ffn": "m.mlp.fc1.out_features", "sdpa": "ctx['sdpa']", "dtype": "ctx['dt']"},
        note="calls self_attn.forward / mlp.forward directly: their ops count in the block",
    ),
    MappingEntry(
        "NoTPAttention",
        _impl("vision", "NoTPAttention", "*.deepencoder.NoTPAttention"),
        A.NoTPAttention,
        {"batch": "x[0][0]", "seq": "x[0][1]", "hidden": "m.qkv_proj.in_features", "heads": "m.num_heads",
         "sdpa": "ctx['sdpa']", "dtype": "ctx['dt']"},
        note="inside the model it is called through forward() (no module call of its own)",
    ),
    MappingEntry(
        "NoTPFeedForward",
        _impl("vision", "NoTPFeedForward", "*.deepencoder.NoTPFeedForward"),
        A.NoTPFeedForward,
        {"tokens": _TOKENS, "hidden": "m.fc1.in_features", "ffn": "m.fc1.out_features", "dtype": "ctx['dt']"},
        note="inside the model it is called through forward() (no module call of its own)",
    ),
    MappingEntry(
        "MlpProjector",
        _impl("vision", "MlpProjector", "*.deepencoder.MlpProjector", "*.modeling_deepseekocr.MlpProjector"),
        A.MlpProjector,
        {"tokens": _TOKENS, "input_dim": "m.layers.in_features", "n_embed": "m.layers.out_features",
         "dtype": "ctx['dt']"},
        note="projector_type 'linear' only",
    ),
    # ---- decoder -------------------------------------------------------------------------------------------------
    MappingEntry(
        "DeepseekV2DecoderLayer",
        _impl("decoder", "DeepseekV2DecoderLayer", "*.modeling_deepseekv2.DeepseekV2DecoderLayer"),
        A.DeepseekV2DecoderLayer,
        {"batch": "x[0][0]", "q_len": "x[0][1]", "past": "ctx.get('past', 0)",
         "moe": "type(m.mlp).__name__ == 'DeepseekV2MoE'",
         "flash": "type(m.self_attn).__name__ == 'LlamaFlashAttention2'", "hidden": "m.hidden_size",
         "heads": "m.self_attn.num_heads", "kv_heads": "m.self_attn.num_key_value_heads",
         "head_dim": "m.self_attn.head_dim", "intermediate": "attr(m, 'mlp.intermediate_size', 1)",
         "experts": "len(attr(m, 'mlp.experts', ()))", "top_k": "attr(m, 'mlp.num_experts_per_tok', 1)",
         "moe_intermediate": "attr(m, 'mlp.experts.0.intermediate_size', 1)",
         "shared": "attr(m, 'mlp.shared_experts.intermediate_size', 0)"
                   " // attr(m, 'mlp.experts.0.intermediate_size', 1)",
         "dtype": "ctx['dt']", "expert_tokens": "ctx.get('expert_tokens')",
         "attn_sdpa": _ATTN_SDPA.format(a="m.self_attn")},
    ),
    MappingEntry(
        "LlamaAttention",
        _impl("decoder", "LlamaAttention", f"{_LLAMA}.LlamaAttention", f"{_LLAMA}.LlamaSdpaAttention"),
        A.LlamaAttention,
        {**_LLAMA_ATTN, "sdpa": _ATTN_SDPA.format(a="m")},
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
        {"batch": "x[1][0]", "seq": "x[1][1]", "head_dim": "2 * m.inv_freq.shape[0]", "dtype": "ctx['dt']"},
        note="inputs: (value_states, position_ids)",
    ),
    MappingEntry(
        "DeepseekV2MoE",
        _impl("decoder", "DeepseekV2MoE", "*.modeling_deepseekv2.DeepseekV2MoE"),
        A.DeepseekV2MoE,
        {"tokens": _TOKENS, "hidden": "m.config.hidden_size", "experts": "len(m.experts)",
         "top_k": "m.num_experts_per_tok", "moe_intermediate": "m.experts[0].intermediate_size",
         "shared": "m.shared_experts.intermediate_size // m.experts[0].intermediate_size",
         "expert_tokens": "ctx.get('expert_tokens')", "dtype": "ctx['dt']"},
        note="routing: balanced policy unless ctx['expert_tokens'] gives the measured tokens per expert",
    ),
    MappingEntry(
        "MoEGate",
        _impl("decoder", "MoEGate", "*.modeling_deepseekv2.MoEGate"),
        A.MoEGate,
        {"tokens": _TOKENS, "hidden": "m.gating_dim", "experts": "m.n_routed_experts", "top_k": "m.top_k",
         "dtype": "ctx['dt']"},
    ),
    MappingEntry(
        "DeepseekV2MLP",
        _impl("decoder", "DeepseekV2MLP", "*.modeling_deepseekv2.DeepseekV2MLP"),
        A.DeepseekV2MLP,
        {"tokens": _TOKENS, "hidden": "m.hidden_size", "intermediate": "m.intermediate_size", "dtype": "ctx['dt']"},
        note="dense MLP, routed experts and shared experts",
    ),
    MappingEntry(
        "DeepseekV2RMSNorm",
        _impl("decoder", "DeepseekV2RMSNorm", "*.modeling_deepseekv2.DeepseekV2RMSNorm"),
        A.DeepseekV2RMSNorm,
        {"rows": _TOKENS, "dim": "m.weight.shape[0]", "dtype": "ctx['dt']"},
    ),
    MappingEntry(
        "LMHead",
        ("torch.nn.modules.linear.Linear",),
        A.LMHead,
        {"tokens": _TOKENS, "hidden": "m.in_features", "vocab": "m.out_features", "dtype": "ctx['dt']"},
        paths=("lm_head", "*.lm_head"),
        note="the lm_head Linear (matched by path before the generic Linear)",
    ),
    # ---- torch.nn primitives -------------------------------------------------------------------------------------
    MappingEntry(
        "Linear",
        ("torch.nn.modules.linear.Linear",),
        P.Linear,
        {"tokens": _TOKENS, "in_features": "m.in_features", "out_features": "m.out_features",
         "bias": "m.bias is not None", "dtype": "ctx['dt']"},
    ),
    MappingEntry(
        "Conv2d",
        ("torch.nn.modules.conv.Conv2d",),
        P.Conv2d,
        {"batch": "x[0][0]", "in_channels": "m.in_channels", "out_channels": "m.out_channels", "height": "x[0][2]",
         "width": "x[0][3]", "kernel": "m.kernel_size[0]", "stride": "m.stride[0]", "padding": "m.padding[0]",
         "groups": "m.groups", "bias": "m.bias is not None", "dtype": "ctx['dt']"},
        note="square kernels, strides and paddings",
    ),
    MappingEntry(
        "LayerNorm",
        ("torch.nn.modules.normalization.LayerNorm",),
        P.LayerNorm,
        {"rows": _TOKENS, "dim": "m.normalized_shape[-1]", "affine": "m.weight is not None", "dtype": "ctx['dt']"},
    ),
    MappingEntry(
        "Embedding",
        ("torch.nn.modules.sparse.Embedding",),
        P.Embedding,
        {"num_embeddings": "m.num_embeddings", "dim": "m.embedding_dim", "tokens": "prod(x[0])",
         "dtype": "ctx['dt']"},
    ),
    MappingEntry(
        "GELU",
        ("torch.nn.modules.activation.GELU",),
        P.Activation,
        {"kind": "'gelu'", "numel": "prod(x[0])", "dtype": "ctx['dt']", "class_name": "'GELU'"},
    ),
    MappingEntry(
        "SiLU",
        ("torch.nn.modules.activation.SiLU",),
        P.Activation,
        {"kind": "'silu'", "numel": "prod(x[0])", "dtype": "ctx['dt']", "class_name": "'SiLU'"},
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


def qualified_name(module_or_class: Any) -> str:
    """``module.qualname`` of a module instance or class (``torch.nn.modules.linear.Linear``)."""
    return _qualified(module_or_class if isinstance(module_or_class, type) else type(module_or_class))


def entry_for(qualified: str, path: str | None = None) -> MappingEntry | None:
    """The first entry that applies to a class (and module path), or ``None``."""
    for entry in MAPPING:
        if entry.matches(qualified, path):
            return entry
    return None


def _attr(obj: Any, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if part.isdigit() and hasattr(obj, "__getitem__"):
            try:
                obj = obj[int(part)]
                continue
            except (IndexError, KeyError, TypeError):
                return default
        if not hasattr(obj, part):
            return default
        obj = getattr(obj, part)
    return obj


def _prod(xs: Sequence[int]) -> int:
    return math.prod(int(v) for v in xs)


def layer_for(
    module: Any,
    inputs: Sequence[Sequence[int]],
    *,
    path: str | None = None,
    entry: MappingEntry | None = None,
    **ctx: Any,
) -> Layer:
    """Build the analytic layer of one call of ``module`` with input shapes ``inputs``.

    Parameters
    ----------
    module
        The module instance (reference or vendor).
    inputs
        Shapes of the call's tensor arguments in order.
    path
        Module path (selects path-restricted entries such as ``lm_head``).
    entry
        Use this entry instead of looking one up.
    **ctx
        ``dt`` (activation element size, default 2), ``sdpa`` (default ``"math"``), ``past`` and the whole-model
        context (see the module docstring).

    Raises
    ------
    OpmeterError
        When the class has no analytic layer (unknown or a container) or a field cannot be read.
    """
    qual = qualified_name(module)
    found = entry or entry_for(qual, path)
    if found is None or found.analytic is None:
        what = "a container (not modelled)" if found is not None else "not in the mapping table"
        raise OpmeterError(f"{qual} is {what}")
    context = {"dt": 2, "sdpa": "math", **ctx}
    shapes = [tuple(int(v) for v in s) for s in inputs]
    ns = {"m": module, "x": shapes, "ctx": context, "prod": _prod, "attr": _attr, "len": len, "max": max,
          "tuple": tuple, "enumerate": enumerate, "type": type, "getattr": getattr}
    kwargs: dict[str, Any] = {}
    for field, expr in found.fields.items():
        try:
            kwargs[field] = eval(expr, {"__builtins__": {}}, ns)
        except Exception as exc:
            raise OpmeterError(f"mapping {found.name}.{field} = {expr!r} failed for {qual}: {exc}") from exc
    return found.analytic(**kwargs)


def mapping_frame() -> Any:
    """The table as a DataFrame: ``name, kind, analytic, implementations, paths, fields, note``."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "name": e.name,
                "kind": e.kind,
                "analytic": e.analytic.__qualname__ if e.analytic is not None else "",
                "implementations": ", ".join(e.implementations),
                "paths": ", ".join(e.paths),
                "fields": "; ".join(f"{k}={v}" for k, v in e.fields.items()),
                "note": e.note,
            }
            for e in MAPPING
        ]
    )
