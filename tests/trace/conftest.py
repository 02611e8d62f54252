"""Fixtures for the tracer tests (CPU, small models, fast); helpers live in ``trace_helpers``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from trace_helpers import Nested, global_state


@pytest.fixture
def clean_globals() -> Any:
    """Assert the test leaves no dispatch mode, ``nn.Module.__call__`` wrapper or global hook behind."""
    before = global_state()
    yield
    assert global_state() == before


@pytest.fixture
def nested() -> Nested:
    torch.manual_seed(0)
    return Nested().eval()
