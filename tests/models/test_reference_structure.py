"""The reference module tree equals the vendor layout (DEEPSEEK_OCR.md): classes, paths, counts, parameters."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch
from torch import nn

from opmeter.inventory import build_inventory
from opmeter.models.deepseek_ocr import PRESETS, DeepseekOCRForCausalLM, build_reference

VENDOR_INSTANCES = {
    "DeepseekOCRForCausalLM": 1, "DeepseekOCRModel": 1, "Embedding": 2, "ModuleList": 14,
    "DeepseekV2DecoderLayer": 12, "LlamaAttention": 12, "Linear": 2342, "LlamaRotaryEmbedding": 12,
    "DeepseekV2MLP": 716, "SiLU": 716, "DeepseekV2RMSNorm": 25, "DeepseekV2MoE": 11, "MoEGate": 11,
    "ImageEncoderViT": 1, "PatchEmbed": 1, "Conv2d": 6, "Block": 12, "LayerNorm": 73, "Attention": 12,
    "MLPBlock": 12, "GELU": 12, "Sequential": 1, "LayerNorm2d": 2, "VitModel": 1, "CLIPVisionEmbeddings": 1,
    "NoTPTransformer": 1, "NoTPTransformerBlock": 24, "NoTPAttention": 24, "NoTPFeedForward": 24, "MlpProjector": 1,
}

VENDOR_COMPONENT_PARAMS = {
    "model.sam_model": 95_569_152,
    "model.vision_model": 303_177_728,
    "model.projector": 2_622_720,
    "model.embed_tokens": 165_478_400,
    "lm_head": 165_478_400,
    "model.layers": 2_603_776_000,
    "model.norm": 1280,
    "model.image_newline": 1280,
    "model.view_seperator": 1280,
}

# Module paths with indices replaced by N -> class, as in the vendor code.
VENDOR_LAYOUT = {
    "": "DeepseekOCRForCausalLM",
    "model": "DeepseekOCRModel",
    "model.embed_tokens": "Embedding",
    "model.layers": "ModuleList",
    "model.layers.N": "DeepseekV2DecoderLayer",
    "model.layers.N.self_attn": "LlamaAttention",
    "model.layers.N.self_attn.q_proj": "Linear",
    "model.layers.N.self_attn.k_proj": "Linear",
    "model.layers.N.self_attn.v_proj": "Linear",
    "model.layers.N.self_attn.o_proj": "Linear",
    "model.layers.N.self_attn.rotary_emb": "LlamaRotaryEmbedding",
    "model.layers.N.mlp": "DeepseekV2MLP|DeepseekV2MoE",
    "model.layers.N.mlp.gate_proj": "Linear",
    "model.layers.N.mlp.up_proj": "Linear",
    "model.layers.N.mlp.down_proj": "Linear",
    "model.layers.N.mlp.act_fn": "SiLU",
    "model.layers.N.mlp.gate": "MoEGate",
    "model.layers.N.mlp.experts": "ModuleList",
    "model.layers.N.mlp.experts.N": "DeepseekV2MLP",
    "model.layers.N.mlp.experts.N.gate_proj": "Linear",
    "model.layers.N.mlp.experts.N.up_proj": "Linear",
    "model.layers.N.mlp.experts.N.down_proj": "Linear",
    "model.layers.N.mlp.experts.N.act_fn": "SiLU",
    "model.layers.N.mlp.shared_experts": "DeepseekV2MLP",
    "model.layers.N.mlp.shared_experts.gate_proj": "Linear",
    "model.layers.N.mlp.shared_experts.up_proj": "Linear",
    "model.layers.N.mlp.shared_experts.down_proj": "Linear",
    "model.layers.N.mlp.shared_experts.act_fn": "SiLU",
    "model.layers.N.input_layernorm": "DeepseekV2RMSNorm",
    "model.layers.N.post_attention_layernorm": "DeepseekV2RMSNorm",
    "model.norm": "DeepseekV2RMSNorm",
    "model.sam_model": "ImageEncoderViT",
    "model.sam_model.patch_embed": "PatchEmbed",
    "model.sam_model.patch_embed.proj": "Conv2d",
    "model.sam_model.blocks": "ModuleList",
    "model.sam_model.blocks.N": "Block",
    "model.sam_model.blocks.N.norm1": "LayerNorm",
    "model.sam_model.blocks.N.attn": "Attention",
    "model.sam_model.blocks.N.attn.qkv": "Linear",
    "model.sam_model.blocks.N.attn.proj": "Linear",
    "model.sam_model.blocks.N.norm2": "LayerNorm",
    "model.sam_model.blocks.N.mlp": "MLPBlock",
    "model.sam_model.blocks.N.mlp.lin1": "Linear",
    "model.sam_model.blocks.N.mlp.lin2": "Linear",
    "model.sam_model.blocks.N.mlp.act": "GELU",
    "model.sam_model.neck": "Sequential",
    "model.sam_model.neck.N": "Conv2d|LayerNorm2d",
    "model.sam_model.net_2": "Conv2d",
    "model.sam_model.net_3": "Conv2d",
    "model.vision_model": "VitModel",
    "model.vision_model.embeddings": "CLIPVisionEmbeddings",
    "model.vision_model.embeddings.patch_embedding": "Conv2d",
    "model.vision_model.embeddings.position_embedding": "Embedding",
    "model.vision_model.pre_layrnorm": "LayerNorm",
    "model.vision_model.transformer": "NoTPTransformer",
    "model.vision_model.transformer.layers": "ModuleList",
    "model.vision_model.transformer.layers.N": "NoTPTransformerBlock",
    "model.vision_model.transformer.layers.N.layer_norm1": "LayerNorm",
    "model.vision_model.transformer.layers.N.layer_norm2": "LayerNorm",
    "model.vision_model.transformer.layers.N.self_attn": "NoTPAttention",
    "model.vision_model.transformer.layers.N.self_attn.qkv_proj": "Linear",
    "model.vision_model.transformer.layers.N.self_attn.out_proj": "Linear",
    "model.vision_model.transformer.layers.N.mlp": "NoTPFeedForward",
    "model.vision_model.transformer.layers.N.mlp.fc1": "Linear",
    "model.vision_model.transformer.layers.N.mlp.fc2": "Linear",
    "model.projector": "MlpProjector",
    "model.projector.layers": "Linear",
    "lm_head": "Linear",
}

VENDOR_PARAM_SHAPES = {
    "model.embed_tokens.weight": (129280, 1280),
    "model.image_newline": (1280,),
    "model.view_seperator": (1280,),
    "model.layers.0.mlp.gate_proj.weight": (6848, 1280),
    "model.layers.1.mlp.gate.weight": (64, 1280),
    "model.layers.1.mlp.experts.63.down_proj.weight": (1280, 896),
    "model.layers.1.mlp.shared_experts.up_proj.weight": (1792, 1280),
    "model.layers.11.self_attn.o_proj.weight": (1280, 1280),
    "model.sam_model.pos_embed": (1, 64, 64, 768),
    "model.sam_model.blocks.0.attn.rel_pos_h": (27, 64),
    "model.sam_model.blocks.2.attn.rel_pos_w": (127, 64),
    "model.sam_model.blocks.0.attn.qkv.bias": (2304,),
    "model.sam_model.neck.0.weight": (256, 768, 1, 1),
    "model.sam_model.neck.1.weight": (256,),
    "model.sam_model.neck.2.weight": (256, 256, 3, 3),
    "model.sam_model.net_2.weight": (512, 256, 3, 3),
    "model.sam_model.net_3.weight": (1024, 512, 3, 3),
    "model.vision_model.embeddings.class_embedding": (1024,),
    "model.vision_model.embeddings.patch_embedding.weight": (1024, 3, 14, 14),
    "model.vision_model.embeddings.position_embedding.weight": (257, 1024),
    "model.vision_model.transformer.layers.23.self_attn.qkv_proj.weight": (3072, 1024),
    "model.vision_model.transformer.layers.0.mlp.fc1.bias": (4096,),
    "model.projector.layers.weight": (1280, 2048),
    "lm_head.weight": (129280, 1280),
}


def _layout(model: nn.Module) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path, module in model.named_modules():
        key = re.sub(r"(^|\.)\d+(?=\.|$)", r"\1N", path)
        out.setdefault(key, set()).add(type(module).__name__)
    return out


def test_instance_counts_and_classes(full_meta: DeepseekOCRForCausalLM) -> None:
    counts = Counter(type(m).__name__ for m in full_meta.modules())
    assert dict(counts) == VENDOR_INSTANCES
    assert len(counts) == 30
    assert sum(counts.values()) == 4083


def test_parameter_counts(full_meta: DeepseekOCRForCausalLM) -> None:
    assert sum(p.numel() for p in full_meta.parameters()) == 3_336_106_240
    inv = build_inventory(full_meta)
    assert dict(inv.components) == VENDOR_COMPONENT_PARAMS
    assert inv.total_params == 3_336_106_240
    assert inv.total_instances == 4083
    layers = full_meta.model.layers
    attn = sum(p.numel() for layer in layers for p in layer.self_attn.parameters())
    dense = sum(p.numel() for p in layers[0].mlp.parameters())
    routed = sum(p.numel() for layer in layers[1:] for p in layer.mlp.experts.parameters())
    shared = sum(p.numel() for layer in layers[1:] for p in layer.mlp.shared_experts.parameters())
    gates = sum(p.numel() for layer in layers[1:] for p in layer.mlp.gate.parameters())
    assert (attn, dense, routed, shared, gates) == (78_643_200, 26_296_320, 2_422_210_560, 75_694_080, 901_120)


def test_module_paths_match_vendor_layout(full_meta: DeepseekOCRForCausalLM) -> None:
    layout = _layout(full_meta)
    expected = {k: set(v.split("|")) for k, v in VENDOR_LAYOUT.items()}
    assert layout == expected


def test_parameter_shapes(full_meta: DeepseekOCRForCausalLM) -> None:
    params = dict(full_meta.named_parameters())
    for name, shape in VENDOR_PARAM_SHAPES.items():
        assert tuple(params[name].shape) == shape, name
    assert all(p.device.type == "meta" for p in full_meta.parameters())
    assert full_meta.model.layers[0].mlp.act_fn.__class__ is nn.SiLU


def test_sam_window_and_global_blocks(full_meta: DeepseekOCRForCausalLM) -> None:
    windows = [blk.window_size for blk in full_meta.model.sam_model.blocks]
    assert windows == [14, 14, 0, 14, 14, 0, 14, 14, 0, 14, 14, 0]
    moe = [type(layer.mlp).__name__ for layer in full_meta.model.layers]
    assert moe == ["DeepseekV2MLP"] + ["DeepseekV2MoE"] * 11


@pytest.mark.parametrize("preset", sorted(set(PRESETS) - {"deepseek-ocr-v1-base"}))
def test_small_presets_keep_every_class_and_path(preset: str, full_meta: DeepseekOCRForCausalLM) -> None:
    small = build_reference(preset, device="meta")
    assert set(_layout(small)) == set(_layout(full_meta))
    assert {type(m).__name__ for m in small.modules()} == set(VENDOR_INSTANCES)
    windows = {blk.window_size > 0 for blk in small.model.sam_model.blocks}
    assert windows == {True, False}


def test_dtypes_by_device() -> None:
    meta = build_reference("deepseek-ocr-toy", device="meta")
    cpu = build_reference("deepseek-ocr-toy", device="cpu")
    assert meta.dtype == torch.bfloat16 and cpu.dtype == torch.float32
    rot = cpu.model.layers[0].self_attn.rotary_emb
    assert rot.inv_freq.dtype == torch.float32 and torch.isfinite(rot.inv_freq).all()
    assert cpu.opmeter_metadata["execution"] == "real" and meta.opmeter_metadata["execution"] == "shape-only"
    assert meta.opmeter_metadata["moe_routing"] == "balanced-deterministic"
    for p in cpu.parameters():
        assert torch.isfinite(p).all()
