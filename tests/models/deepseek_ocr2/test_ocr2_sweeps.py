"""``opmeter sweep --model deepseek-ocr-2``: every grid the image processor can pick, consistent with the prediction."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from ocr2_helpers import needs_ocr2

from opmeter.cli import main

pytestmark = needs_ocr2


def test_the_standard_pages_grid_equals_the_standard_prediction(tmp_path: Path) -> None:
    from opmeter.models.deepseek_ocr2.adapter import predict_run
    from opmeter.models.deepseek_ocr2.config import get_preset
    from opmeter.models.deepseek_ocr2.workloads import STANDARD, get_workload

    assert main(["sweep", "all", "--model", "deepseek-ocr-2", "--decode-steps", "8", "--out", str(tmp_path)]) == 0
    prefill = pd.read_csv(tmp_path / "prefill.csv").set_index("grid")
    assert len(prefill) == 14 and {"global only", "2x3", "6x1"} <= set(prefill.index)
    assert prefill["image_tokens"].is_monotonic_increasing
    standard = predict_run(get_preset("full"), get_workload(STANDARD).with_new_tokens(9)).stages.set_index("stage")
    assert prefill.loc["2x3", "image_tokens"] == 1121
    assert prefill.loc["2x3", "vision_tflops"] == pytest.approx(standard.loc["vision", "flops_tensor"] / 1e12)
    assert prefill.loc["2x3", "prefill_tflops"] == pytest.approx(standard.loc["prefill", "flops_tensor"] / 1e12)
    decode = pd.read_csv(tmp_path / "decode.csv").set_index("grid")
    assert decode.loc["2x3", "decode_tflops"] == pytest.approx(standard.loc["decode", "flops_tensor"] / 1e12)


def test_measured_points_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "vision", "--model", "deepseek-ocr-2", "--measured", "2", "--out", str(tmp_path / "s")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()
