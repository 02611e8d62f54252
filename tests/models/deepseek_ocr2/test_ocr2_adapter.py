"""The deepseek-ocr-2 adapter: registry, stage specification, refusals and the transformers version check."""

from __future__ import annotations

import pytest
from ocr2_helpers import needs_ocr2

from opmeter.errors import OpmeterError
from opmeter.models import base
from opmeter.models.base import ModelAdapter, RunRequest
from opmeter.models.deepseek_ocr2 import compat
from opmeter.models.deepseek_ocr2.adapter import COMPONENTS, DeepseekOcr2Adapter

SHIPPED = base.BUILTIN_PACKAGES


@pytest.fixture(autouse=True)
def only_this_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolve through the registry with this package as the only built-in one (others may not import here)."""
    monkeypatch.setattr(base, "BUILTIN_PACKAGES", ("opmeter.models.deepseek_ocr2.adapter",))


def test_builtin_packages_name_this_adapter() -> None:
    assert "opmeter.models.deepseek_ocr2.adapter" in SHIPPED


def test_registered_under_its_name_and_aliases() -> None:
    for spec in ("deepseek-ocr-2", "deepseek-ocr2", "dsocr2"):
        adapter = base.resolve_adapter(spec)
        assert isinstance(adapter, DeepseekOcr2Adapter)
        assert isinstance(adapter, ModelAdapter)
        assert adapter.spec == spec


def test_refuses_an_argument() -> None:
    with pytest.raises(OpmeterError, match="takes no argument"):
        base.resolve_adapter("deepseek-ocr-2:x")


def test_stage_spec_marks_vision_tower_and_projector() -> None:
    spec = DeepseekOcr2Adapter().stage_spec
    assert spec.request_stage == "vision"
    assert spec.request_modules == ("model.vision_tower", "model.multi_modal_projector")
    names = {c.name for c in COMPONENTS}
    assert set(spec.request_components) <= names


def test_missing_transformers_model_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "has_deepseek_ocr2", lambda: False)
    with pytest.raises(OpmeterError) as err:
        DeepseekOcr2Adapter().prepare(RunRequest(preset="tiny", workload=None, device="meta"))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"DeepSeek-OCR-2 needs transformers >= {compat.MIN_TRANSFORMERS}")
    assert f"installed {compat.transformers_version()}" in message


@needs_ocr2
@pytest.mark.parametrize(("request_kwargs", "message"), [
    ({"preset": "huge"}, "unknown DeepSeek-OCR-2 preset"),
    ({"workload": "nope"}, "unknown DeepSeek-OCR-2 workload"),
    ({"device": "mps"}, "runs on meta"),
    ({"decode_tokens": 0}, "at least 1 token"),
])
def test_bad_requests_are_refused(request_kwargs: dict, message: str) -> None:
    kwargs = {"preset": "tiny", "workload": None, "device": "meta", **request_kwargs}
    with pytest.raises(OpmeterError, match=message):
        DeepseekOcr2Adapter().prepare(RunRequest(**kwargs))


@needs_ocr2
def test_shape_only_prepare_records_the_run() -> None:
    run = DeepseekOcr2Adapter().prepare(RunRequest(preset="full", workload=None, device="meta", decode_tokens=1))
    assert run.metadata["image_tokens"] == 1121
    assert run.metadata["prompt_tokens"] == 1130
    assert run.metadata["experts_implementation"] == "grouped_mm"
    assert next(run.model.parameters()).device.type == "meta"
