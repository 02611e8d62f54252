"""DeepSeek-OCR: configuration, image geometry, the reference model, preprocessing, workloads and the vendor loader.

Heavy pieces (torch modules, PIL) are imported lazily, so ``import opmeter.models.deepseek_ocr`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opmeter.models.deepseek_ocr.config import FULL_SIZE, PRESETS, DeepseekOCRConfig, get_config
from opmeter.models.deepseek_ocr.geometry import VisionWorkload, choose_crop_grid

if TYPE_CHECKING:
    from opmeter.models.deepseek_ocr.model import DeepseekOCRForCausalLM, build_reference
    from opmeter.models.deepseek_ocr.tokenizer import BuiltinTokenizer
    from opmeter.models.deepseek_ocr.vendor import load_vendor
    from opmeter.models.deepseek_ocr.workloads import WORKLOADS, Workload, load_workload

_LAZY = {
    "build_reference": "model",
    "DeepseekOCRForCausalLM": "model",
    "BuiltinTokenizer": "tokenizer",
    "load_workload": "workloads",
    "Workload": "workloads",
    "WORKLOADS": "workloads",
    "load_vendor": "vendor",
}

__all__ = [
    "FULL_SIZE",
    "PRESETS",
    "WORKLOADS",
    "BuiltinTokenizer",
    "DeepseekOCRConfig",
    "DeepseekOCRForCausalLM",
    "VisionWorkload",
    "Workload",
    "build_reference",
    "choose_crop_grid",
    "get_config",
    "load_vendor",
    "load_workload",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
