"""``opmeter verify`` on CI-sized shapes: every layer and end-to-end row within tolerance, files written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from opmeter import verify as V
from opmeter.cli import main


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("verify")
    return main(["verify", "--fast", "--quiet", "--out", str(out)]), out


def test_verify_fast_passes_and_writes_tables(toy_run: tuple[int, Path]) -> None:
    code, out = toy_run
    assert code == 0
    df = pd.read_csv(out / "verification.csv")
    assert set(df.columns) >= set(V.COLUMNS)
    assert df["status"].str.startswith("pass").all()
    assert (df["rel_tensor"].abs() <= V.TOL_TENSOR).all()
    layers = set(df["layer"])
    assert {"ImageEncoderViT", "Attention", "VitModel", "DeepseekV2MoE", "LlamaAttention", "LMHead",
            "LlamaFlashAttention2", "end-to-end"} <= layers
    e2e = df[df["layer"] == "end-to-end"]["case"].tolist()
    assert any(c.startswith("vision only") for c in e2e)
    assert any(c.startswith("full prefill") for c in e2e)
    assert any(c.startswith("one decode step") for c in e2e)
    md = (out / "verification.md").read_text()
    assert "Worst row per layer" in md and "all rows pass" in md


def test_verify_exits_non_zero_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from opmeter.models.deepseek_ocr import verify_cases as dsocr_cases

    real = dsocr_cases.deepseek_ocr_cases

    def few(*args: object) -> list[V.Case]:
        return [c for c in real(*args) if c.layer == "MLPBlock"]  # type: ignore[arg-type]

    monkeypatch.setattr(dsocr_cases, "deepseek_ocr_cases", few)
    monkeypatch.setattr(V, "TOL_BYTES", -1.0)  # nothing can pass
    assert main(["verify", "--fast", "--quiet", "--out", str(tmp_path)]) == 1
    assert pd.read_csv(tmp_path / "verification.csv")["status"].str.startswith("FAIL").all()


def test_rel_diff() -> None:
    assert V.rel_diff(0, 0) == 0
    assert V.rel_diff(100, 101) == pytest.approx(0.01)
    assert V.rel_diff(0, 1) == float("inf")


def test_verify_real_tensors_on_cpu(tmp_path: Path) -> None:
    """fp32, fused CPU SDPA, learned routing recorded from the gates, host-side pixel checks: still exact."""
    assert main(["verify", "--fast", "--device", "cpu", "--quiet", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "verification.csv")
    assert df["status"].str.startswith("pass").all()
    assert df[["rel_tensor", "rel_cuda", "rel_bytes"]].abs().max().max() < 1e-9
    assert "real tensors on cpu" in (tmp_path / "verification.md").read_text()


def test_cpu_refuses_full_size(tmp_path: Path) -> None:
    assert main(["verify", "--device", "cpu", "--out", str(tmp_path)]) == 1


def test_verify_sdpa_decoder_attention(tmp_path: Path) -> None:
    assert main(["verify", "--fast", "--attn", "sdpa", "--quiet", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "verification.csv")
    assert df[["rel_tensor", "rel_cuda", "rel_bytes"]].abs().max().max() < 1e-9
