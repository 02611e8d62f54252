"""The mapping table covers every class the reference instantiates, and builds layers from module instances."""

from __future__ import annotations

import pytest

from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr import analytic as A
from opmeter.models.deepseek_ocr.mapping import (
    CONTAINER,
    MAPPING,
    entry_for,
    layer_for,
    mapping_frame,
    qualified_name,
)
from opmeter.models.deepseek_ocr.model import build_reference

MISSION_LAYERS = {
    "PatchEmbed", "Attention", "MLPBlock", "Block", "LayerNorm2d", "CLIPVisionEmbeddings", "NoTPAttention",
    "NoTPFeedForward", "NoTPTransformerBlock", "NoTPTransformer", "ImageEncoderViT", "VitModel", "MlpProjector",
    "DeepseekV2MLP", "MoEGate", "DeepseekV2MoE", "DeepseekV2RMSNorm", "DeepseekV2DecoderLayer", "LMHead",
    "LlamaAttention", "LlamaFlashAttention2", "LlamaRotaryEmbedding",
}


@pytest.mark.parametrize("preset", ["deepseek-ocr-toy", "deepseek-ocr-v1-base"])
def test_every_reference_class_is_mapped(preset: str) -> None:
    model = build_reference(preset, device="meta")
    missing = sorted({qualified_name(m) for p, m in model.named_modules() if entry_for(qualified_name(m), p) is None})
    assert missing == []
    containers = {
        qualified_name(m) for p, m in model.named_modules() if entry_for(qualified_name(m), p).kind == CONTAINER  # type: ignore[union-attr]
    }
    assert containers == {"torch.nn.modules.container.ModuleList", "torch.nn.modules.container.Sequential"}


def test_every_mission_layer_has_an_entry_and_vendor_names() -> None:
    names = {e.name for e in MAPPING}
    assert names >= MISSION_LAYERS
    assert entry_for("transformers_modules.deepseek-ai.DeepSeek-OCR.abc123.deepencoder.Attention").name == "Attention"
    assert entry_for("transformers_modules.x.modeling_deepseekv2.DeepseekV2MoE").name == "DeepseekV2MoE"
    assert entry_for("transformers.models.llama.modeling_llama.LlamaAttention").name == "LlamaAttention"
    assert entry_for("torch.nn.modules.linear.Linear", "lm_head").name == "LMHead"
    assert entry_for("torch.nn.modules.linear.Linear", "model.layers.0.self_attn.q_proj").name == "Linear"
    assert len(mapping_frame()) == len(MAPPING)


def test_layer_for_reads_constructor_parameters_and_shapes() -> None:
    model = build_reference("deepseek-ocr-toy", device="meta")
    blk = model.model.sam_model.blocks[0]
    layer = layer_for(blk, [(2, 16, 16, 32)])
    assert isinstance(layer, A.Block)
    assert (layer.batch, layer.grid, layer.dim, layer.window) == (2, 16, 32, 6)
    head = layer_for(model.lm_head, [(1, 7, 64)], path="lm_head")
    assert isinstance(head, A.LMHead) and head.tokens == 7
    with pytest.raises(OpmeterError, match="container"):
        layer_for(model.model.layers, [])
