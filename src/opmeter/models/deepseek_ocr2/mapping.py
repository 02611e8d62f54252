"""The DeepSeek-OCR-2 mapping table: transformers' module classes -> analytic layers.

Fields read the call's input shapes (``x``), the module instance (``m``) and the context (``ctx``): ``preset`` (the
:class:`~opmeter.models.deepseek_ocr2.config.Ocr2Preset`), ``dt`` (activation element size), ``sdpa`` (``"math"``
or ``"fused"``), ``past`` (cached positions), ``views`` (the prefill's view batches, whole-model entries only).
"""

from __future__ import annotations

from typing import Any

from opmeter.analytic.base import Layer
from opmeter.analytic.blocks import GatedMLP, TopKGate
from opmeter.analytic.blocks.vit import RelPosAttention, ViTBlock
from opmeter.analytic.mapping import CONTAINER, Context, MappingEntry, MappingTable, Shapes, prod
from opmeter.analytic.primitives import Activation, Embedding, LayerNorm, Linear, RMSNorm
from opmeter.models.deepseek_ocr2 import analytic as A

_HF = "transformers.models.deepseek_ocr2.modeling_deepseek_ocr2"


def _impl(cls: str) -> tuple[str, ...]:
    return (f"{_HF}.{cls}",)


def _dt(m: Any, x: Shapes, ctx: Context) -> int:
    return int(ctx["dt"])


def _sdpa(m: Any, x: Shapes, ctx: Context) -> str:
    return str(ctx["sdpa"])


def _preset(m: Any, x: Shapes, ctx: Context) -> Any:
    return ctx["preset"]


def _rows(m: Any, x: Shapes, ctx: Context) -> int:
    return prod(x[0][:-1])


def _sam_layer_fields() -> dict[str, Any]:
    def table(m: Any, x: Shapes, ctx: Context) -> int:
        return int(m.attn.rel_pos_h.shape[0])

    return {
        "batch": lambda m, x, ctx: x[0][0], "grid": lambda m, x, ctx: x[0][1],
        "dim": lambda m, x, ctx: x[0][3], "heads": lambda m, x, ctx: m.attn.num_attention_heads,
        "mlp_dim": lambda m, x, ctx: m.mlp.lin1.out_features, "window": lambda m, x, ctx: m.window_size,
        "rel_table": table, "dtype": _dt, "sdpa": _sdpa,
        "class_name": lambda m, x, ctx: type(m).__name__,
        "attention_class_name": lambda m, x, ctx: type(m.attn).__name__,
        "mlp_class_name": lambda m, x, ctx: type(m.mlp).__name__,
        "act_class_name": lambda m, x, ctx: type(m.mlp.act).__name__,
    }


def _text_layer_index(m: Any, x: Shapes, ctx: Context) -> int:
    return int(m.self_attn.layer_idx)


MAPPING: tuple[MappingEntry, ...] = (
    MappingEntry("DeepseekOcr2ForConditionalGeneration", _impl("DeepseekOcr2ForConditionalGeneration"),
                 A.Ocr2ForConditionalGeneration,
                 {"preset": _preset, "q_len": lambda m, x, ctx: x[0][1], "dtype": _dt,
                  "past": lambda m, x, ctx: ctx.get("past", 0), "views": lambda m, x, ctx: ctx.get("views", ()),
                  "sdpa": _sdpa},
                 note="x[0] is input_ids; the view batches come from the workload (ctx['views'])"),
    MappingEntry("DeepseekOcr2VisionModel", _impl("DeepseekOcr2VisionModel"), A.VisionModel,
                 {"preset": _preset, "batch": lambda m, x, ctx: x[0][0], "size": lambda m, x, ctx: x[0][2],
                  "dtype": _dt, "sdpa": _sdpa}),
    MappingEntry("DeepseekOcr2SamVisionEncoder", _impl("DeepseekOcr2SamVisionEncoder"), A.SamEncoder,
                 {"preset": _preset, "batch": lambda m, x, ctx: x[0][0], "size": lambda m, x, ctx: x[0][2],
                  "dtype": _dt, "sdpa": _sdpa}),
    MappingEntry("DeepseekOcr2SamVisionLayer", _impl("DeepseekOcr2SamVisionLayer"), ViTBlock, _sam_layer_fields()),
    MappingEntry("DeepseekOcr2SamVisionSdpaAttention", _impl("DeepseekOcr2SamVisionSdpaAttention"), RelPosAttention,
                 {"batch": lambda m, x, ctx: x[0][0], "height": lambda m, x, ctx: x[0][1],
                  "width": lambda m, x, ctx: x[0][2], "dim": lambda m, x, ctx: x[0][3],
                  "heads": lambda m, x, ctx: m.num_attention_heads,
                  "rel_table": lambda m, x, ctx: int(m.rel_pos_h.shape[0]), "dtype": _dt, "sdpa": _sdpa,
                  "class_name": lambda m, x, ctx: type(m).__name__},
                 note="the SDPA variant (transformers' default); the eager class is not modelled"),
    MappingEntry("DeepseekOcr2VisionEncoder", _impl("DeepseekOcr2VisionEncoder"), A.VisionEncoder,
                 {"preset": _preset, "batch": lambda m, x, ctx: x[0][0],
                  "patches": lambda m, x, ctx: ctx["patches"], "queries": lambda m, x, ctx: x[0][1] - ctx["patches"],
                  "dtype": _dt, "sdpa": _sdpa},
                 note="the number of image patches is a call argument (ctx['patches'])"),
    MappingEntry("DeepseekOcr2VisionEncoderLayer", _impl("DeepseekOcr2VisionEncoderLayer"), A.VisionEncoderLayer,
                 {"preset": _preset, "batch": lambda m, x, ctx: x[0][0], "seq": lambda m, x, ctx: x[0][1],
                  "dtype": _dt, "sdpa": _sdpa}),
    MappingEntry("DeepseekOcr2TextModel", _impl("DeepseekOcr2TextModel"), A.TextModel,
                 {"preset": _preset, "batch": lambda m, x, ctx: x[0][0], "q_len": lambda m, x, ctx: x[0][1],
                  "dtype": _dt, "past": lambda m, x, ctx: ctx.get("past", 0), "sdpa": _sdpa},
                 note="x[0] is inputs_embeds"),
    MappingEntry("DeepseekOcr2TextDecoderLayer", _impl("DeepseekOcr2TextDecoderLayer"), A.TextDecoderLayer,
                 {"preset": _preset, "index": _text_layer_index, "batch": lambda m, x, ctx: x[0][0],
                  "q_len": lambda m, x, ctx: x[0][1], "dtype": _dt, "past": lambda m, x, ctx: ctx.get("past", 0),
                  "sdpa": _sdpa}),
    MappingEntry("DeepseekOcr2TextMoe", _impl("DeepseekOcr2TextMoe"), A.TextMoe,
                 {"preset": _preset, "tokens": _rows, "dtype": _dt}),
    MappingEntry("DeepseekOcr2TextTopkRouter", _impl("DeepseekOcr2TextTopkRouter"), TopKGate,
                 {"tokens": _rows, "hidden": lambda m, x, ctx: m.hidden_dim, "experts": lambda m, x, ctx: m.num_experts,
                  "top_k": lambda m, x, ctx: m.top_k, "dtype": _dt, "class_name": lambda m, x, ctx: type(m).__name__}),
    MappingEntry("DeepseekOcr2TextExperts", _impl("DeepseekOcr2TextExperts"), A.GroupedExperts,
                 {"tokens": _rows, "hidden": lambda m, x, ctx: m.hidden_dim, "experts": lambda m, x, ctx: m.num_experts,
                  "top_k": lambda m, x, ctx: x[1][-1], "intermediate": lambda m, x, ctx: m.intermediate_dim,
                  "dtype": _dt},
                 note="transformers' default grouped_mm experts; x[1] is top_k_index"),
    MappingEntry("DeepseekOcr2TextMLP", _impl("DeepseekOcr2TextMLP") + _impl("DeepseekOcr2VisionMLP"), GatedMLP,
                 {"tokens": _rows, "hidden": lambda m, x, ctx: m.hidden_size,
                  "intermediate": lambda m, x, ctx: m.intermediate_size, "dtype": _dt,
                  "class_name": lambda m, x, ctx: type(m).__name__,
                  "act_class_name": lambda m, x, ctx: type(m.act_fn).__name__}),
    MappingEntry("RMSNorm", _impl("DeepseekOcr2TextRMSNorm") + _impl("DeepseekOcr2VisionRMSNorm"), RMSNorm,
                 {"rows": _rows, "dim": lambda m, x, ctx: x[0][-1], "dtype": _dt,
                  "class_name": lambda m, x, ctx: type(m).__name__}),
    MappingEntry("Linear", ("torch.nn.modules.linear.Linear",), Linear,
                 {"tokens": _rows, "in_features": lambda m, x, ctx: m.in_features,
                  "out_features": lambda m, x, ctx: m.out_features, "bias": lambda m, x, ctx: m.bias is not None,
                  "dtype": _dt}),
    MappingEntry("LayerNorm", ("torch.nn.modules.normalization.LayerNorm",), LayerNorm,
                 {"rows": _rows, "dim": lambda m, x, ctx: x[0][-1], "dtype": _dt}),
    MappingEntry("Embedding", ("torch.nn.modules.sparse.Embedding",), Embedding,
                 {"num_embeddings": lambda m, x, ctx: m.num_embeddings, "dim": lambda m, x, ctx: m.embedding_dim,
                  "tokens": lambda m, x, ctx: prod(x[0]), "dtype": _dt}),
    MappingEntry("SiLUActivation", ("transformers.activations.SiLUActivation",), Activation,
                 {"kind": lambda m, x, ctx: "silu", "numel": lambda m, x, ctx: prod(x[0]), "dtype": _dt,
                  "class_name": lambda m, x, ctx: type(m).__name__}),
    MappingEntry("GELUActivation", ("transformers.activations.GELUActivation",), Activation,
                 {"kind": lambda m, x, ctx: "gelu", "numel": lambda m, x, ctx: prod(x[0]), "dtype": _dt,
                  "class_name": lambda m, x, ctx: type(m).__name__}),
    MappingEntry("ModuleList", ("torch.nn.modules.container.ModuleList",), None, kind=CONTAINER),
)

TABLE = MappingTable(MAPPING)


def layer_for(module: Any, inputs: Shapes, **ctx: Any) -> Layer:
    """The analytic layer of one call of a DeepSeek-OCR-2 module (see :meth:`MappingTable.layer_for`)."""
    return TABLE.layer_for(module, inputs, **ctx)
