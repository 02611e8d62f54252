"""Shared fixtures: a shape-only trace of the toy preset (prefill + 3 decode steps) and its analytic prediction; an
executed (CPU) report of the toy preset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

TOY = "deepseek-ocr-toy"


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Trace of the toy preset on meta and its analytic prediction."""
    from opmeter.hardware import HARDWARE
    from opmeter.models.deepseek_ocr.analytic import DeepseekOCRAnalytic
    from opmeter.models.deepseek_ocr.config import get_config
    from opmeter.models.deepseek_ocr.model import build_reference
    from opmeter.models.deepseek_ocr.predict import predicted_frames
    from opmeter.models.deepseek_ocr.tokenizer import BuiltinTokenizer
    from opmeter.models.deepseek_ocr.workloads import load_workload
    from opmeter.trace import OpTracer

    workload = attrs.evolve(load_workload("dsocr-standard-v1").for_config(TOY), max_new_tokens=4)
    image = workload.save_image(tmp_path_factory.mktemp("image"))
    model = build_reference(TOY, "meta")
    with OpTracer(model) as trace:
        model.infer(BuiltinTokenizer(), **workload.infer_kwargs(image))
    cfg = get_config(TOY)
    pred_modules, pred_stages, head = predicted_frames(
        DeepseekOCRAnalytic(cfg), workload.vision(cfg), workload.text_tokens(), workload.decode_steps,
        HARDWARE["H100-SXM"],
    )
    return {"trace": trace, "model": model, "workload": workload, "pred_modules": pred_modules,
            "pred_stages": pred_stages, "head": head, "image": Path(image)}


@pytest.fixture(scope="session")
def cpu_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``opmeter report`` of the toy preset executed on CPU (prefill + 2 decode steps, 2 timed repeats)."""
    from opmeter.cli import main

    out = tmp_path_factory.mktemp("cpu-report")
    code = main(["report", "--preset", TOY, "--device", "cpu", "--decode-tokens", "3", "--repeats", "2", "--out",
                 str(out)])
    assert code == 0
    return out
