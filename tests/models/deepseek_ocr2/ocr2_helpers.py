"""Shared helpers of the DeepSeek-OCR-2 tests: most need transformers with ``deepseek_ocr2``."""

from __future__ import annotations

import pytest

from opmeter.models.deepseek_ocr2.compat import has_deepseek_ocr2, transformers_version

needs_ocr2 = pytest.mark.skipif(
    not has_deepseek_ocr2(),
    reason=f"transformers {transformers_version()} has no deepseek_ocr2 (DeepSeek-OCR-2 needs a recent release)",
)
