"""Shared fixtures for the DeepSeek-OCR model tests: models are built once per session."""

from __future__ import annotations

import pytest

from opmeter.models.deepseek_ocr import BuiltinTokenizer, DeepseekOCRForCausalLM, build_reference


@pytest.fixture(scope="session")
def full_meta() -> DeepseekOCRForCausalLM:
    """The full-size reference on the meta device (no weights)."""
    return build_reference("deepseek-ocr-v1-base", device="meta")


@pytest.fixture(scope="session")
def toy() -> DeepseekOCRForCausalLM:
    """The toy preset on CPU, fp32, random weights (seed 0)."""
    return build_reference("deepseek-ocr-toy", device="cpu")


@pytest.fixture(scope="session")
def tokenizer() -> BuiltinTokenizer:
    return BuiltinTokenizer()
