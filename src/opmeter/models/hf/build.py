"""Build a transformers model from a config: on meta (shape-only, full size, no memory), or on cpu/cuda with random
initialisation or a local checkpoint.

The family's kind decides the auto class and the inputs (:data:`KINDS`): a speech sequence-to-sequence model, a text
sequence-to-sequence model, a vision-language model, a causal language model, else a bare model run forward only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from opmeter.errors import OpmeterError

log = logging.getLogger(__name__)

KINDS: tuple[tuple[str, str], ...] = (
    ("speech", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES"),
    ("seq2seq", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),
    ("vlm", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"),
    ("causal", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ("forward", "MODEL_MAPPING_NAMES"),
)
"""Family kinds in the order they are tried, with the transformers mapping that names each one's class."""

_AUTO = {
    "speech": "AutoModelForSpeechSeq2Seq",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "vlm": "AutoModelForImageTextToText",
    "causal": "AutoModelForCausalLM",
    "forward": "AutoModel",
}
GENERATIVE = frozenset({"speech", "seq2seq", "vlm", "causal"})


def transformers_major() -> int:
    """Major version of the installed transformers (its module code, hence the op stream, depends on it)."""
    import transformers

    return int(transformers.__version__.split(".")[0])


def family_kind(config: Any) -> str:
    """The kind of the config's family (see :data:`KINDS`).

    Raises
    ------
    OpmeterError
        When transformers has no model class for it.
    """
    from transformers.models.auto import modeling_auto

    for kind, mapping in KINDS:
        if config.model_type in getattr(modeling_auto, mapping, {}):
            return kind
    raise OpmeterError(f"transformers has no model class for model_type {config.model_type!r}")


def _auto_class(kind: str) -> Any:
    import transformers

    return getattr(transformers, _AUTO[kind])


def experts_implementation(config: Any, device: str, dtype: torch.dtype | None) -> str | None:
    """The fused-experts implementation to ask for, ``None`` for the library's default.

    transformers >= 5 runs fused MoE experts as one grouped GEMM (``grouped_mm``), whose meta kernel accepts only
    bf16; a shape-only run in another dtype asks for ``batched_mm`` (the same GEMM FLOPs, one batched GEMM over the
    token-expert pairs with the experts' weights gathered per pair, so more bytes), and says so in the log.
    """
    if not hasattr(config, "_experts_implementation") or device != "meta":
        return None
    if (dtype or torch.float32) == torch.bfloat16:
        return None
    log.info("shape-only %s: fused experts as batched_mm (grouped_mm has only a bf16 meta kernel)", dtype)
    return "batched_mm"


def _implementations(config: Any, device: str, dtype: torch.dtype | None) -> dict[str, Any]:
    chosen = experts_implementation(config, device, dtype)
    return {"experts_implementation": chosen} if chosen else {}


def build_model(config: Any, device: str, dtype: torch.dtype | None = None, weights_dir: Path | None = None,
                seed: int = 0) -> torch.nn.Module:
    """The model of ``config`` on ``device``, in eval mode.

    On ``meta`` every parameter is shape-only (built under ``torch.device("meta")``, no initialisation work); on a
    real device the weights are random (seeded) or loaded from ``weights_dir``.

    Raises
    ------
    OpmeterError
        When the family has no model class, the checkpoint cannot be loaded, or the build fails (one line).
    """
    import transformers

    transformers.utils.logging.set_verbosity_error()
    kind = family_kind(config)
    auto = _auto_class(kind)
    try:
        if weights_dir is not None and device != "meta":
            if not Path(weights_dir).is_dir():
                raise OpmeterError(f"--weights {weights_dir}: not a directory")
            model = auto.from_pretrained(str(weights_dir), config=config, local_files_only=True)
        else:
            if weights_dir is not None:
                log.warning("--weights %s ignored on the meta device (shape-only: no values)", weights_dir)
            torch.manual_seed(seed)
            with torch.device(device):
                model = auto.from_config(config, **_implementations(config, device, dtype))
    except OpmeterError:
        raise
    except Exception as exc:
        raise OpmeterError(f"cannot build {config.model_type} ({_AUTO[kind]}): {type(exc).__name__}: {exc}") from None
    if device != "meta":
        model = model.to(device)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def refuse_data_dependent_meta(model: torch.nn.Module) -> None:
    """Refuse a shape-only run of an MoE written as one module per expert (transformers < 5): its dispatch picks
    the tokens of each expert by value (``nonzero``), which the meta device cannot do.

    Raises
    ------
    OpmeterError
        Naming the first such module.
    """
    config: Any = model.config
    for path, module in model.named_modules():
        if path.rsplit(".", 1)[-1] == "experts" and isinstance(module, torch.nn.ModuleList):
            raise OpmeterError(f"shape-only run of {config.model_type}: {path} is one module per expert, "
                               "dispatched by value (transformers < 5); run it on --device cpu, or with "
                               "transformers >= 5 (fused experts)")
