"""DeepSeek-OCR configuration: dimensions of every component and the named presets.

The full-size preset reproduces ``deepseek-ai/DeepSeek-OCR`` (3,336,106,240 parameters). The small presets keep
every module class and code path (windowed and global SAM blocks, CLIP fed with SAM features, dense and MoE decoder
layers, crops) at sizes that run in a fraction of a second on a CPU.
"""

from __future__ import annotations

import math

import attrs

from opmeter.errors import OpmeterError


@attrs.frozen
class SamConfig:
    """SAM ViT-B image encoder (``ImageEncoderViT``)."""

    img_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 256
    qkv_bias: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    net_2_chans: int = 512
    net_3_chans: int = 1024
    layer_norm_eps: float = 1e-6


@attrs.frozen
class ClipConfig:
    """CLIP-L/14 layout tower (``VitModel``), fed with SAM features instead of its own patch embedding."""

    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    ffn_hidden_size: int = 4096
    image_size: int = 224
    patch_size: int = 14
    layernorm_eps: float = 1e-5

    @property
    def num_positions(self) -> int:
        """Position-embedding rows: one per patch of the native grid plus the class token (257 for 224/14)."""
        return (self.image_size // self.patch_size) ** 2 + 1


@attrs.frozen
class ProjectorConfig:
    """``MlpProjector`` with ``projector_type == "linear"``: concat(CLIP, SAM) features -> decoder width."""

    input_dim: int = 2048
    n_embed: int = 1280
    projector_type: str = "linear"


@attrs.frozen
class DecoderConfig:
    """DeepSeek-V2 MoE decoder (``use_mla = False``: LLaMA-style multi-head attention)."""

    vocab_size: int = 129280
    hidden_size: int = 1280
    intermediate_size: int = 6848
    moe_intermediate_size: int = 896
    num_hidden_layers: int = 12
    num_attention_heads: int = 10
    num_key_value_heads: int = 10
    n_routed_experts: int = 64
    n_shared_experts: int = 2
    num_experts_per_tok: int = 6
    first_k_dense_replace: int = 1
    moe_layer_freq: int = 1
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    topk_method: str = "greedy"
    scoring_func: str = "softmax"
    hidden_act: str = "silu"
    attention_bias: bool = False
    bos_token_id: int = 0
    eos_token_id: int = 1

    @property
    def head_dim(self) -> int:
        """Per-head width (128 at full size)."""
        return self.hidden_size // self.num_attention_heads

    def is_moe_layer(self, index: int) -> bool:
        """Whether decoder layer ``index`` uses ``DeepseekV2MoE`` (else the dense ``DeepseekV2MLP``)."""
        return (
            self.n_routed_experts > 0
            and index >= self.first_k_dense_replace
            and index % self.moe_layer_freq == 0
        )


@attrs.frozen
class DeepseekOCRConfig:
    """The whole model plus the image geometry constants its preprocessing uses."""

    name: str
    sam: SamConfig = attrs.field(factory=SamConfig)
    clip: ClipConfig = attrs.field(factory=ClipConfig)
    projector: ProjectorConfig = attrs.field(factory=ProjectorConfig)
    decoder: DecoderConfig = attrs.field(factory=DecoderConfig)
    image_token_id: int = 128815
    downsample_ratio: int = 4
    """SAM's ``net_2`` and ``net_3`` (stride 2 each) shrink the patch grid 4x per side."""
    base_size: int = 1024
    """Native global-view size of the preset (the standard workload's ``base_size`` at full size)."""
    image_size: int = 640
    """Native crop-tile size of the preset (the standard workload's ``image_size`` at full size)."""

    def queries_per_side(self, view_size: int) -> int:
        """Image tokens per side for a square view: ``ceil(view_size / patch / downsample)``."""
        return math.ceil(view_size // self.sam.patch_size / self.downsample_ratio)


FULL_SIZE = "deepseek-ocr-v1-base"

PRESETS: dict[str, DeepseekOCRConfig] = {
    FULL_SIZE: DeepseekOCRConfig(name=FULL_SIZE),
    # Smallest: every class and code path, all widths tiny. Views are 256 (global) and 128 (crops).
    "deepseek-ocr-toy": DeepseekOCRConfig(
        name="deepseek-ocr-toy",
        sam=SamConfig(
            img_size=256, embed_dim=32, depth=2, num_heads=2, out_chans=16, window_size=6,
            global_attn_indexes=(1,), net_2_chans=32, net_3_chans=64,
        ),
        clip=ClipConfig(hidden_size=64, num_layers=2, num_heads=2, ffn_hidden_size=128, image_size=56),
        projector=ProjectorConfig(input_dim=128, n_embed=64),
        decoder=DecoderConfig(
            hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, n_shared_experts=2,
            num_experts_per_tok=3, max_position_embeddings=2048,
        ),
        base_size=256,
        image_size=128,
    ),
    # The real image geometry (1024 global view, 640 crops, 14-wide windows) with narrow widths and few layers,
    # for executing the standard workload's shapes for real on a CPU.
    "deepseek-ocr-mini": DeepseekOCRConfig(
        name="deepseek-ocr-mini",
        sam=SamConfig(
            embed_dim=64, depth=2, num_heads=2, out_chans=32, global_attn_indexes=(1,),
            net_2_chans=64, net_3_chans=128,
        ),
        clip=ClipConfig(hidden_size=128, num_layers=2, num_heads=2, ffn_hidden_size=256),
        projector=ProjectorConfig(input_dim=256, n_embed=64),
        decoder=DecoderConfig(
            hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, n_routed_experts=16, n_shared_experts=2,
            num_experts_per_tok=6,
        ),
    ),
}


def get_config(preset: str) -> DeepseekOCRConfig:
    """Return the configuration of a named preset.

    Raises
    ------
    OpmeterError
        For an unknown preset name (the message lists the known ones).
    """
    try:
        return PRESETS[preset]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise OpmeterError(f"unknown DeepSeek-OCR preset {preset!r}; known presets: {known}") from None
