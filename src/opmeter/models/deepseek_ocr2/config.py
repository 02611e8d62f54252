"""DeepSeek-OCR-2 sizes: the released model's dimensions and the small presets, as transformers configs.

transformers' ``DeepseekOcr2Config`` defaults are not the released model (its text defaults are a generic 4096-wide,
32-layer decoder and ``mlp_layer_types`` is unset), so every preset is built here from documented facts.

Sources of the full-size numbers
--------------------------------
* **Decoder** (``text_config``): the same DeepSeek-3B-A500M MoE decoder as DeepSeek-OCR v1, whose values are read
  from v1's public ``config.json`` and remote code (``/work/shared/DEEPSEEK_OCR.md``, "Module tree" and "Other
  decoder facts"): vocabulary 129,280; width 1,280; 12 layers; 10 heads x 128, 10 KV heads (plain MHA, no MLA);
  dense FFN 6,848; 64 routed experts of width 896, 2 shared experts (one MLP of 2 x 896), top-6 greedy routing,
  ``routed_scaling_factor`` 1.0; ``first_k_dense_replace`` 1 (transformers' conversion script maps it to
  ``mlp_layer_types = ["dense"] * 1 + ["sparse"] * 11``); RMSNorm eps 1e-6; RoPE theta 10,000; 8,192 positions;
  BOS 0, EOS 1; no attention or MLP biases.
* **SAM-style encoder** (``vision_config.sam_config``): SAM ViT-B as transformers' conversion script maps it and as
  transformers' own class defaults give it: width 768, 12 layers, 12 heads, patch 16 on 1,024-pixel views, window
  14, global attention at layers 2, 5, 8, 11, neck 256 channels, downsampling convolutions to 512 then 896 channels.
* **Visual encoder** (``vision_config.encoder_config``): Qwen2-0.5B-shaped, per the conversion script: width 896,
  24 layers, 14 heads, 2 KV heads (head dim 64), FFN 4,864, RMSNorm eps 1e-6, RoPE theta 1,000,000 (Qwen2-0.5B's
  public config: 32,768 positions, SiLU). Its learned queries are fixed by the modeling code: 144 (12 x 12, for
  768-pixel tiles) and 256 (16 x 16, for 1,024-pixel global views).
* **Image token id** 128,815 (conversion script; the same id as v1); projector ``Linear(896, 1280)`` (modeling code).

The small presets keep the class structure and every code path (windowed and global SAM blocks, a dense and a
sparse decoder layer, shared experts, GQA in the visual encoder) with narrow widths; ``mini`` keeps the real image
geometry (1,024 global views, 768 tiles, 14-wide windows), ``tiny`` shrinks it too.
"""

from __future__ import annotations

from typing import Any

import attrs

from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr.config import DecoderConfig

IMAGE_TOKEN_ID = 128815
BOS_ID = 0
EOS_ID = 1
QUERIES_LOCAL = 144
"""Learned queries of a 768-pixel tile (``query_768_resolution``), used when a view has at most 144 patches."""
QUERIES_GLOBAL = 256
"""Learned queries of a 1,024-pixel global view (``query_1024_resolution``)."""


@attrs.frozen
class SamSize:
    """SAM-style encoder sizes (``DeepseekOcr2SamVisionConfig`` fields)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    output_channels: int = 256
    downsample_channels: tuple[int, int] = (512, 896)
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6


@attrs.frozen
class EncoderSize:
    """Qwen2-style visual encoder sizes (``DeepseekOcr2VisionEncoderConfig`` fields)."""

    hidden_size: int = 896
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    intermediate_size: int = 4864
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768


V1_DECODER = DecoderConfig()
"""DeepSeek-OCR v1's decoder: DeepSeek-OCR-2 keeps the same DeepSeek-3B-A500M MoE, so its full-size text sizes are
read from it (one source for both models)."""


@attrs.frozen
class TextSize:
    """DeepSeek-V2-style MoE decoder sizes (``DeepseekOcr2TextConfig`` fields); defaults: v1's decoder."""

    vocab_size: int = V1_DECODER.vocab_size
    hidden_size: int = V1_DECODER.hidden_size
    intermediate_size: int = V1_DECODER.intermediate_size
    moe_intermediate_size: int = V1_DECODER.moe_intermediate_size
    num_hidden_layers: int = V1_DECODER.num_hidden_layers
    num_attention_heads: int = V1_DECODER.num_attention_heads
    num_key_value_heads: int = V1_DECODER.num_key_value_heads
    n_routed_experts: int = V1_DECODER.n_routed_experts
    n_shared_experts: int = V1_DECODER.n_shared_experts
    num_experts_per_tok: int = V1_DECODER.num_experts_per_tok
    first_k_dense_replace: int = V1_DECODER.first_k_dense_replace
    routed_scaling_factor: float = V1_DECODER.routed_scaling_factor
    rms_norm_eps: float = V1_DECODER.rms_norm_eps
    rope_theta: float = V1_DECODER.rope_theta
    max_position_embeddings: int = V1_DECODER.max_position_embeddings

    @property
    def head_dim(self) -> int:
        """Per-head width (``hidden / heads``, as transformers derives it)."""
        return self.hidden_size // self.num_attention_heads

    @property
    def mlp_layer_types(self) -> list[str]:
        """``["dense"] * first_k_dense_replace + ["sparse"] * rest`` (the conversion script's mapping)."""
        k = self.first_k_dense_replace
        return ["dense"] * k + ["sparse"] * (self.num_hidden_layers - k)


@attrs.frozen
class Ocr2Preset:
    """One preset: sizes of the three parts and the native view sizes of its image processor."""

    name: str
    description: str
    sam: SamSize = SamSize()
    encoder: EncoderSize = EncoderSize()
    text: TextSize = TextSize()
    global_size: int = 1024
    """Global view side (the image processor's ``size``; the SAM ``image_size`` of the released model)."""
    tile_size: int = 768
    """Local tile side (the image processor's ``tile_size``)."""

    def hf_config(self) -> Any:
        """The transformers ``DeepseekOcr2Config`` of this preset (needs transformers with ``deepseek_ocr2``)."""
        from opmeter.models.deepseek_ocr2.compat import require_deepseek_ocr2

        mod = require_deepseek_ocr2()
        s, e, t = self.sam, self.encoder, self.text
        sam = {
            "hidden_size": s.hidden_size, "num_hidden_layers": s.num_hidden_layers,
            "num_attention_heads": s.num_attention_heads, "image_size": s.image_size, "patch_size": s.patch_size,
            "window_size": s.window_size, "global_attn_indexes": list(s.global_attn_indexes),
            "output_channels": s.output_channels, "downsample_channels": list(s.downsample_channels),
            "mlp_ratio": s.mlp_ratio, "layer_norm_eps": s.layer_norm_eps,
        }
        encoder = {
            "hidden_size": e.hidden_size, "num_hidden_layers": e.num_hidden_layers,
            "num_attention_heads": e.num_attention_heads, "num_key_value_heads": e.num_key_value_heads,
            "intermediate_size": e.intermediate_size, "rms_norm_eps": e.rms_norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": e.rope_theta},
            "max_position_embeddings": e.max_position_embeddings,
        }
        text = {
            "vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
            "moe_intermediate_size": t.moe_intermediate_size, "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
            "n_routed_experts": t.n_routed_experts, "n_shared_experts": t.n_shared_experts,
            "num_experts_per_tok": t.num_experts_per_tok, "routed_scaling_factor": t.routed_scaling_factor,
            "topk_method": "greedy", "mlp_layer_types": t.mlp_layer_types, "rms_norm_eps": t.rms_norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta},
            "max_position_embeddings": t.max_position_embeddings, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
        }
        return mod.DeepseekOcr2Config(
            vision_config={"sam_config": sam, "encoder_config": encoder}, text_config=text,
            image_token_id=IMAGE_TOKEN_ID,
        )


FULL = "full"

PRESETS: dict[str, Ocr2Preset] = {
    FULL: Ocr2Preset(FULL, "the released DeepSeek-OCR-2 (about 3.4 B parameters), shape-only on meta or on a GPU"),
    "mini": Ocr2Preset(
        "mini",
        "real image geometry (1024 global view, 768 tiles), narrow widths, 2 layers per part: executes on a CPU",
        sam=SamSize(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, global_attn_indexes=(1,),
                    output_channels=32, downsample_channels=(64, 128)),
        encoder=EncoderSize(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            intermediate_size=256),
        text=TextSize(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, n_routed_experts=16, num_experts_per_tok=6),
    ),
    "tiny": Ocr2Preset(
        "tiny",
        "everything small (128 global view, 96 tiles, 2 layers per part): the fastest CPU run, for tests",
        sam=SamSize(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=128, window_size=4,
                    global_attn_indexes=(1,), output_channels=16, downsample_channels=(32, 64)),
        encoder=EncoderSize(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            intermediate_size=128),
        text=TextSize(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=3,
                      max_position_embeddings=2048),
        global_size=128,
        tile_size=96,
    ),
}


def get_preset(name: str) -> Ocr2Preset:
    """The preset called ``name``.

    Raises
    ------
    OpmeterError
        For an unknown name (the message lists the known ones).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise OpmeterError(f"unknown DeepSeek-OCR-2 preset {name!r}; known: {', '.join(PRESETS)}") from None
