"""Which transformers configuration a ``--model hf:ARG`` names, and its presets.

``ARG`` is either a ``model_type`` registered with transformers (``llama``, ``qwen2_moe``, ``t5``...: the config
class defaults, as ``AutoConfig.for_model`` gives them) or a local ``config.json`` (or a directory holding one).
Nothing is downloaded.

Presets:

``full``
    The configuration as given.
``tiny``
    The same family shrunk for CI, generically: every size attribute a config has among :data:`TINY_SIZES` (hidden
    width, layers, heads, intermediate widths, vocabulary, experts, low-rank and head dimensions...) is set to the
    small value there, in the top-level config and in every sub-config (``text_config``, ``vision_config``,
    ``encoder``/``decoder``...). Grouped-query attention keeps a ratio (:func:`shrink`), routing keeps at most
    ``TINY_TOP_K`` experts per token, and a first block of dense layers keeps one dense layer.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from opmeter.errors import OpmeterError

log = logging.getLogger(__name__)

PRESETS: dict[str, str] = {
    "full": "the configuration as given (class defaults for a model type, or the config.json)",
    "tiny": "the same family shrunk for CI: 2 layers, width 64, 4 heads, vocabulary 512, 4 experts (see docs)",
}

TINY_SIZES: dict[str, int] = {
    # widths
    "hidden_size": 64, "d_model": 64, "n_embd": 64, "embed_dim": 64, "dim": 64, "projection_dim": 64,
    # depth
    "num_hidden_layers": 2, "num_layers": 2, "num_decoder_layers": 2, "n_layer": 2, "encoder_layers": 2,
    "decoder_layers": 2, "depth": 2,
    # heads
    "num_attention_heads": 4, "n_head": 4, "num_heads": 4, "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    # feed-forward widths
    "intermediate_size": 128, "d_ff": 128, "n_inner": 128, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64,
    # vocabulary
    "vocab_size": 512,
    # experts
    "num_local_experts": 4, "num_experts": 4, "n_routed_experts": 4,
    # multi-head latent attention and head dimensions
    "q_lora_rank": 32, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "head_dim": 16, "d_kv": 16,
}
"""Size attributes the ``tiny`` preset sets, wherever a config has them (non-null, integer-valued)."""

TINY_TOP_K = 2
TINY_GROUPS = 2
"""Experts per token and expert groups (group-limited routing) kept by the ``tiny`` preset."""


def _looks_like_path(arg: str) -> bool:
    return "/" in arg or arg.endswith(".json") or arg.startswith(".") or Path(arg).exists()


def _config_json(path: Path) -> Path:
    target = path / "config.json" if path.is_dir() else path
    if not target.is_file():
        raise OpmeterError(f"hf:{path}: no config.json there (give a model_type such as llama, or a config.json)")
    return target


def load_config(arg: str | None) -> Any:
    """The transformers config named by ``hf:ARG`` (see the module docstring).

    Raises
    ------
    OpmeterError
        No argument, an unknown model type, or an unreadable / invalid config.json (one line).
    """
    from transformers import CONFIG_MAPPING, AutoConfig

    if not arg:
        raise OpmeterError("--model hf needs a model type or a config path: hf:llama, hf:path/to/config.json")
    if not _looks_like_path(arg):
        if arg not in CONFIG_MAPPING:
            raise OpmeterError(f"hf:{arg}: not a transformers model type nor a config.json path "
                               f"(e.g. hf:llama, hf:qwen2_moe, hf:t5, hf:./config.json)")
        return AutoConfig.for_model(arg)
    target = _config_json(Path(arg))
    from opmeter.io import read_json

    raw = read_json(target, "transformers config", limit=64 << 20)
    model_type = raw.pop("model_type", None) if isinstance(raw, dict) else None
    if model_type not in CONFIG_MAPPING:
        raise OpmeterError(f"hf:{arg}: {target} has no known model_type ({model_type!r})")
    try:
        return AutoConfig.for_model(str(model_type), **raw)
    except Exception as exc:
        raise OpmeterError(f"hf:{arg}: invalid config: {type(exc).__name__}: {exc}") from None


def _sub_configs(config: Any) -> list[Any]:
    from transformers import PretrainedConfig

    return [v for v in vars(config).values() if isinstance(v, PretrainedConfig)]


def _shrink_one(config: Any) -> None:
    heads = getattr(config, "num_attention_heads", None)
    kv = getattr(config, "num_key_value_heads", None)
    for name, small in TINY_SIZES.items():
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > small:
            setattr(config, name, small)
    if isinstance(kv, int) and isinstance(heads, int):
        small_heads = config.num_attention_heads
        config.num_key_value_heads = small_heads // 2 if kv < heads else small_heads
    if getattr(config, "kv_lora_rank", None) and getattr(config, "qk_rope_head_dim", None):
        config.head_dim = config.qk_rope_head_dim  # multi-head latent attention: head_dim is the rotary part
    for name in ("num_experts_per_tok", "moe_topk"):
        if isinstance(getattr(config, name, None), int):
            setattr(config, name, min(getattr(config, name), TINY_TOP_K))
        elif hasattr(config, name) and _experts(config):  # a class default left unset (DeepSeek-V2)
            setattr(config, name, TINY_TOP_K)
    if isinstance(getattr(config, "n_group", None), int):
        config.n_group, config.topk_group = TINY_GROUPS, 1
    if isinstance(getattr(config, "first_k_dense_replace", None), int):
        config.first_k_dense_replace = min(config.first_k_dense_replace, 1)
    if isinstance(getattr(config, "mlp_only_layers", None), list):
        config.mlp_only_layers = [i for i in config.mlp_only_layers if i < 2]


def _clamp_token_ids(config: Any, vocab: Any) -> None:
    """Special token ids of a shrunk vocabulary stay inside it (the last id); token lists keep the ids inside."""
    if not isinstance(vocab, int):
        return
    for name, value in list(vars(config).items()):
        if name.endswith(("_token_id", "_token_index")) and isinstance(value, int) and value >= vocab:
            setattr(config, name, vocab - 1)
        elif name.endswith(("_token_id", "_tokens")) and isinstance(value, list):
            setattr(config, name, [v for v in value if not isinstance(v, int) or v < vocab])


def _experts(config: Any) -> int:
    return max((v for n in ("num_local_experts", "num_experts", "n_routed_experts")
                if isinstance(v := getattr(config, n, None), int)), default=0)


def check_runnable(config: Any) -> None:
    """Refuse a config whose class defaults leave the model unrunnable (a routed MoE without experts per token).

    Raises
    ------
    OpmeterError
        Naming the missing field.
    """
    if _experts(config) and getattr(config, "num_experts_per_tok", 0) is None:
        raise OpmeterError(f"{config.model_type}: the config routes to experts but num_experts_per_tok is unset "
                           "(a class default); give a config.json that sets it, or use the tiny preset")


def shrink(config: Any) -> Any:
    """A copy of ``config`` shrunk as the ``tiny`` preset says (module docstring), sub-configs included."""
    out = copy.deepcopy(config)
    todo, done = [out], []
    while todo:
        cfg = todo.pop()
        _shrink_one(cfg)
        done.append(cfg)
        todo += _sub_configs(cfg)
    for cfg in done:  # a multimodal config's image token id lives beside the text config's vocabulary
        _clamp_token_ids(cfg, getattr(cfg, "vocab_size", None) or getattr(out.get_text_config(), "vocab_size", None))
    return out


def preset_config(config: Any, preset: str) -> Any:
    """The config of one preset.

    Raises
    ------
    OpmeterError
        For an unknown preset.
    """
    if preset == "full":
        check_runnable(config)
        return config
    if preset == "tiny":
        return shrink(config)
    raise OpmeterError(f"unknown hf preset {preset!r}; known: {', '.join(PRESETS)}")
