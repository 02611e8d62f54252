"""Load the real ``deepseek-ai/DeepSeek-OCR`` remote code from a local checkpoint directory.

The vendor code imports ``LlamaAttention`` / ``LlamaFlashAttention2`` from transformers 4.46.x (removed later) and
calls ``.cuda()`` inside ``forward``/``infer``: tracing the real model needs transformers 4.46.x and a GPU. transformers
is imported only inside :func:`load_vendor`, never when opmeter is imported.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from opmeter.errors import OpmeterError

log = logging.getLogger(__name__)

REQUIRED_TRANSFORMERS = "4.46"
WEIGHT_FILES = ("*.safetensors", "*.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def missing_weights(root: Path) -> str | None:
    """Why ``root`` has no loadable weights (``None`` when it has them).

    A weight file (``*.safetensors``, ``*.bin``) is enough; a shard index counts only when every shard it names is
    present (a checkpoint downloaded without its shards is a common half-state).
    """
    for index_name in SHARD_INDEXES:
        index = root / index_name
        if not index.is_file():
            continue
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return f"{index_name} is not a readable shard index ({exc.__class__.__name__})"
        absent = sorted(s for s in shards if not (root / s).is_file())
        if absent:
            return f"{index_name} names {len(absent)} shard(s) that are not there (first: {absent[0]})"
        return None
    if any(any(root.glob(p)) for p in WEIGHT_FILES):
        return None
    return "no weight files (*.safetensors / *.bin)"


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
    why = missing_weights(root) if weights else None
    if why is not None:
        raise OpmeterError(f"{root} has {why}; pass --no-weights (weights=False) for a random initialisation "
                           "from config.json")
    return root


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _version_hint(version: str) -> str:
    return (
        f"the DeepSeek-OCR remote code needs transformers {REQUIRED_TRANSFORMERS}.x (installed: {version}); "
        f"install it in a separate environment, e.g. pip install 'transformers=={REQUIRED_TRANSFORMERS}.3'"
    )


def announce_remote_code(root: Path) -> list[str]:
    """Say, before it runs, that the checkpoint's own Python code is about to run (``trust_remote_code``), and
    name its files; returns their names."""
    files = sorted(p.name for p in root.glob("*.py"))
    log.warning("running the Python code of the checkpoint %s (trust_remote_code): %s", root,
                ", ".join(files) if files else "no .py files found")
    return files


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
    announce_remote_code(root)
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
    dtype_arg = "dtype" if _version_tuple(version) >= (4, 56) else "torch_dtype"  # renamed in transformers 4.56
    try:
        config = AutoConfig.from_pretrained(str(root), trust_remote_code=True)
        if weights:
            options: dict[str, Any] = {dtype_arg: dt}  # the keyword's name depends on the version
            model = AutoModel.from_pretrained(
                str(root), trust_remote_code=True, use_safetensors=any(root.glob("*.safetensors")),
                _attn_implementation=attn_implementation, **options,
            )
        else:
            ctx = torch.device("meta") if dev.type == "meta" else contextlib.nullcontext()
            with ctx:
                model = AutoModel.from_config(
                    config, trust_remote_code=True, attn_implementation=attn_implementation, **{dtype_arg: dt}
                )
    except (ImportError, AttributeError, TypeError) as exc:
        if version.startswith(REQUIRED_TRANSFORMERS + "."):  # the right transformers: the checkpoint is at fault
            raise OpmeterError(f"cannot load the vendor model from {root}: {type(exc).__name__}: {exc}") from None
        raise OpmeterError(f"{_version_hint(version)}; the import failed with: {exc}") from None
    except (OSError, ValueError) as exc:
        hint = "" if version.startswith(REQUIRED_TRANSFORMERS + ".") else f" ({_version_hint(version)})"
        raise OpmeterError(f"cannot load the vendor model from {root}: {exc}{hint}") from None
    except Exception as exc:  # remote code may raise anything while importing or building: one line, not a traceback
        log.debug("vendor model load failed", exc_info=True)
        raise OpmeterError(f"the remote code in {root} failed while building the model: "
                           f"{type(exc).__name__}: {exc}") from None
    if dev.type != "meta":
        model = model.to(device=dev, dtype=dt)
    model.eval()
    metadata: dict[str, Any] = {
        "model": "deepseek-ocr-vendor",
        "checkpoint": str(root),
        "execution": "shape-only" if dev.type == "meta" else "real",
        "moe_routing": "learned-gate",
        "weights": "checkpoint" if weights else ("none" if dev.type == "meta" else "random-init"),
        "attn_implementation": attn_implementation,
        "dtype": str(dt).removeprefix("torch."),
        "transformers": version,
    }
    model.opmeter_metadata = metadata
    return model


def check_preset(model: nn.Module, preset: str) -> None:
    """Refuse a ``preset`` whose reference model does not have the vendor model's parameter count.

    The analytic prediction and the workload sizes follow the preset, so a mismatch would compare the trace with
    another model.

    Raises
    ------
    OpmeterError
        Naming both counts.
    """
    from opmeter.models.deepseek_ocr.config import get_config
    from opmeter.models.deepseek_ocr.model import build_reference

    expected = sum(p.numel() for p in build_reference(get_config(preset), device="meta").parameters())
    got = sum(p.numel() for p in model.parameters())
    if got != expected:
        raise OpmeterError(f"the vendor model has {got:,} parameters but preset {preset!r} has {expected:,}; pass "
                           "the --preset its config.json describes")
