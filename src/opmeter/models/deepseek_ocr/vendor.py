"""Load the real ``deepseek-ai/DeepSeek-OCR`` remote code from a local checkpoint directory.

The vendor code imports ``LlamaAttention`` / ``LlamaFlashAttention2`` from transformers 4.46.x (removed later) and
calls ``.cuda()`` inside ``forward``/``infer``: tracing the real model needs transformers 4.46.x and a GPU. transformers
is imported only inside :func:`load_vendor`, never when opmeter is imported.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from opmeter.errors import OpmeterError

REQUIRED_TRANSFORMERS = "4.46"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def check_checkpoint_dir(path: str | Path, weights: bool = True) -> Path:
    """Validate a local checkpoint directory (``config.json``, remote code, weights when asked) and return it.

    Raises
    ------
    OpmeterError
        Naming what is missing and how to get it.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise OpmeterError(
            f"vendor checkpoint directory not found: {root} "
            "(download deepseek-ai/DeepSeek-OCR with its remote code into a local directory)"
        )
    if not root.is_dir():
        raise OpmeterError(f"vendor checkpoint path is not a directory: {root}")
    if not (root / "config.json").is_file():
        raise OpmeterError(f"{root} has no config.json; it does not look like a DeepSeek-OCR checkpoint directory")
    if not any(root.glob("modeling_*.py")):
        raise OpmeterError(
            f"{root} has no remote code (modeling_deepseekocr.py and friends); the vendor loader needs the "
            "checkpoint's Python files next to config.json"
        )
    if weights and not any(any(root.glob(p)) for p in WEIGHT_PATTERNS):
        raise OpmeterError(
            f"{root} has no weight files (*.safetensors / *.bin); pass weights=False (--no-weights) for a random "
            "initialisation from config.json"
        )
    return root


def _version_hint(version: str) -> str:
    return (
        f"the DeepSeek-OCR remote code needs transformers {REQUIRED_TRANSFORMERS}.x (installed: {version}); "
        f"install it in a separate environment, e.g. pip install 'transformers=={REQUIRED_TRANSFORMERS}.3'"
    )


def load_vendor(
    path: str | Path,
    weights: bool = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    attn_implementation: str = "eager",
) -> nn.Module:
    """Load the vendor DeepSeek-OCR (``trust_remote_code``) from a local directory.

    Parameters
    ----------
    path
        Directory with ``config.json``, the remote code and (if ``weights``) the weights.
    weights
        Load the checkpoint weights; ``False`` builds the model from ``config.json`` with random initialisation.
    device
        ``"cuda"`` (default when available), ``"cpu"``, or ``"meta"`` (structure only, with ``weights=False``).
    dtype
        Defaults to bf16 on CUDA and meta, fp32 on CPU.
    attn_implementation
        ``"eager"`` or ``"flash_attention_2"`` (the vendor's two attention classes).

    Returns
    -------
    nn.Module
        The vendor ``DeepseekOCRForCausalLM`` in eval mode, with ``opmeter_metadata`` set.

    Raises
    ------
    OpmeterError
        For a missing directory or files, or a transformers version that cannot import the remote code.
    """
    root = check_checkpoint_dir(path, weights)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "meta" and weights:
        raise OpmeterError("device='meta' builds the structure only; use weights=False")
    dt = dtype or (torch.float32 if dev.type == "cpu" else torch.bfloat16)
    try:
        import transformers
        from transformers import AutoConfig, AutoModel
    except ImportError as exc:
        raise OpmeterError(f"the vendor loader needs transformers {REQUIRED_TRANSFORMERS}.x: {exc}") from None
    version = transformers.__version__
    try:
        config = AutoConfig.from_pretrained(str(root), trust_remote_code=True)
        if weights:
            model = AutoModel.from_pretrained(
                str(root), trust_remote_code=True, use_safetensors=any(root.glob("*.safetensors")),
                torch_dtype=dt, _attn_implementation=attn_implementation,
            )
        else:
            ctx = torch.device("meta") if dev.type == "meta" else contextlib.nullcontext()
            with ctx:
                model = AutoModel.from_config(
                    config, trust_remote_code=True, torch_dtype=dt, attn_implementation=attn_implementation
                )
    except (ImportError, AttributeError, TypeError) as exc:
        raise OpmeterError(f"{_version_hint(version)}; the import failed with: {exc}") from None
    except (OSError, ValueError) as exc:
        hint = "" if version.startswith(REQUIRED_TRANSFORMERS + ".") else f" ({_version_hint(version)})"
        raise OpmeterError(f"cannot load the vendor model from {root}: {exc}{hint}") from None
    if dev.type != "meta":
        model = model.to(device=dev, dtype=dt)
    model.eval()
    metadata: dict[str, Any] = {
        "model": "deepseek-ocr-vendor",
        "checkpoint": str(root),
        "execution": "shape-only" if dev.type == "meta" else "real",
        "moe_routing": "learned-gate",
        "weights": "checkpoint" if weights else "random-init",
        "attn_implementation": attn_implementation,
        "dtype": str(dt).removeprefix("torch."),
        "transformers": version,
    }
    model.opmeter_metadata = metadata
    return model
