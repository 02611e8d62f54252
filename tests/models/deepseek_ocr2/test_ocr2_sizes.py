"""Full-size DeepSeek-OCR-2 sizes: parameters per component of transformers' model (meta) vs the analytic count and
the documented figures."""

from __future__ import annotations

import pytest
from ocr2_helpers import needs_ocr2

from opmeter.models.deepseek_ocr2.analytic import PARAMETER_GROUPS, parameter_counts
from opmeter.models.deepseek_ocr2.config import PRESETS, get_preset

DOCUMENTED = {
    "sam_encoder": 94_979_328,
    "vision_encoder": 357_898_112,
    "learned_queries": 358_400,
    "projector": 1_148_160,
    "embed_tokens": 165_478_400,
    "decoder_layers": 2_603_776_000,
    "final_norm": 1_280,
    "view_separator": 1_280,
    "lm_head": 165_478_400,
}
"""docs/models/deepseek_ocr2.md: the decoder's figures equal DeepSeek-OCR v1's (same decoder); the SAM encoder is
v1's minus 589,824 (its last downsampling convolution has 896 output channels instead of 1,024)."""


def _measured(model) -> dict[str, int]:
    got = dict.fromkeys(PARAMETER_GROUPS, 0)
    for name, param in model.named_parameters():
        groups = [g for g, prefix in PARAMETER_GROUPS.items() if name.startswith(prefix)]
        assert len(groups) == 1, f"{name} belongs to {groups}"
        got[groups[0]] += param.numel()
    return got


@needs_ocr2
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_parameters_per_component_match_transformers_model(preset: str) -> None:
    from opmeter.models.deepseek_ocr2.model import build_model

    model = build_model(get_preset(preset), "meta")
    assert _measured(model) == parameter_counts(get_preset(preset))


def test_full_size_parameters_are_the_documented_ones() -> None:
    counts = parameter_counts(get_preset("full"))
    assert counts == DOCUMENTED
    assert sum(counts.values()) == 3_389_119_360


@needs_ocr2
def test_full_size_config_is_the_released_model() -> None:
    cfg = get_preset("full").hf_config()
    text, vision = cfg.text_config, cfg.vision_config
    assert text.mlp_layer_types == ["dense"] + ["sparse"] * 11
    assert (text.hidden_size, text.num_attention_heads, text.head_dim, text.n_routed_experts) == (1280, 10, 128, 64)
    assert list(vision.sam_config.global_attn_indexes) == [2, 5, 8, 11]
    assert list(vision.sam_config.downsample_channels) == [512, 896]
    enc = vision.encoder_config
    sizes = (enc.hidden_size, enc.num_hidden_layers, enc.num_attention_heads, enc.num_key_value_heads)
    assert sizes == (896, 24, 14, 2)
    assert cfg.image_token_id == 128815
