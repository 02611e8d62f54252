"""The transformers version DeepSeek-OCR-2 needs, checked once with a one-line error."""

from __future__ import annotations

import importlib
from types import ModuleType

from opmeter.errors import OpmeterError

MIN_TRANSFORMERS = "5.24"
"""The transformers release this package is tested with (the first one here that ships ``deepseek_ocr2``)."""


def transformers_version() -> str:
    """The installed transformers version, or ``"not installed"``."""
    try:
        import transformers
    except ImportError:
        return "not installed"
    return str(transformers.__version__)


def has_deepseek_ocr2() -> bool:
    """Whether the installed transformers ships DeepSeek-OCR-2's modeling code."""
    try:
        importlib.import_module("transformers.models.deepseek_ocr2.modeling_deepseek_ocr2")
    except ImportError:
        return False
    return True


def require_deepseek_ocr2() -> ModuleType:
    """``transformers.models.deepseek_ocr2``, or one clear line naming the versions.

    Raises
    ------
    OpmeterError
        When the installed transformers has no ``deepseek_ocr2`` (older than :data:`MIN_TRANSFORMERS`).
    """
    if not has_deepseek_ocr2():
        raise OpmeterError(
            f"DeepSeek-OCR-2 needs transformers >= {MIN_TRANSFORMERS} (transformers.models.deepseek_ocr2); "
            f"installed {transformers_version()}"
        )
    return importlib.import_module("transformers.models.deepseek_ocr2")
