"""Size bounds: pages, crop grids, decode tokens, memory of an executed CPU run; all refused before the work."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from helpers import TOY, one_line

from opmeter.cli import main
from opmeter.errors import OpmeterError


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` (one empty data chunk): costs nothing to write or to open."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


def _never_build(monkeypatch: pytest.MonkeyPatch) -> None:
    from opmeter.models.deepseek_ocr import model as model_module

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was built before the size check")

    monkeypatch.setattr(model_module, "build_reference", never)


@pytest.mark.clean_error
@pytest.mark.parametrize(("size", "limit", "words"), [((16000, 16000), None, "decompression-bomb"),
                                                      ((8000, 8000), None, "above the limit"),
                                                      ((3000, 3000), "1000000", "above the limit")])
def test_oversized_pages_are_refused_from_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], size: tuple[int, int],
    limit: str | None, words: str,
) -> None:
    _never_build(monkeypatch)
    page = _png_header(tmp_path / "page.png", *size)
    extra = ["--max-image-pixels", limit] if limit else []
    assert main(["report", "--preset", TOY, "--image", str(page), *extra, "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and words in err
    assert not (tmp_path / "r").exists()


@pytest.mark.clean_error
@pytest.mark.parametrize("tokens", ["5000", "99999999999999999999"])
def test_decode_tokens_past_the_position_table_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tokens: str
) -> None:
    _never_build(monkeypatch)
    assert main(["report", "--preset", TOY, "--decode-tokens", tokens, "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and "max_position_embeddings" in err


def test_decode_tokens_exactly_filling_the_table_are_accepted() -> None:
    from opmeter.report.limits import check_decode_tokens

    check_decode_tokens(2048 - 60 + 1, 60, 2048)
    with pytest.raises(OpmeterError):
        check_decode_tokens(2048 - 60 + 2, 60, 2048)


@pytest.mark.clean_error
@pytest.mark.parametrize("grid", ["30x30", "7x6", "0x3", "2by3"])
def test_verify_grids_are_bounded(grid: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--fast", "--grid", grid]) == 1
    assert one_line(capsys.readouterr().err)


@pytest.mark.clean_error
def test_an_executed_cpu_run_that_does_not_fit_in_memory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from opmeter.report import limits

    _never_build(monkeypatch)
    monkeypatch.setattr(limits, "available_memory_bytes", lambda: 200_000_000)
    assert main(["report", "--preset", "deepseek-ocr-mini", "--device", "cpu", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and "GB is available" in err and "--device meta" in err


def test_the_memory_estimate_grows_with_the_preset() -> None:
    from opmeter.models.deepseek_ocr.adapter import executed_memory_bytes
    from opmeter.models.deepseek_ocr.config import get_config
    from opmeter.models.deepseek_ocr.workloads import load_workload

    def need(preset: str) -> int:
        return executed_memory_bytes(get_config(preset), load_workload("dsocr-standard-v1").for_config(preset), 4)

    full = need("deepseek-ocr-v1-base")
    assert need(TOY) < need("deepseek-ocr-mini") < full
    assert full > 4 * 3.3e9  # at least the fp32 parameters of a 3.3 B-parameter model


@pytest.mark.clean_error
def test_a_trace_that_cannot_be_serialised_is_an_error_not_silence(tmp_path: Path) -> None:
    import torch
    from helpers import Small

    from opmeter.trace import OpTracer

    model = Small()
    with OpTracer(model, metadata={"decode_tokens": 10**20}) as trace:
        model(torch.randn(1, 8))
    with pytest.raises(OpmeterError, match="cannot write the trace"):
        trace.save(tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()


@pytest.mark.clean_error
@pytest.mark.parametrize("argv", [["--max-crops", "100000"], ["--max-crops", "1"], ["--decode-steps", "10000000"],
                                  ["--measured", "2", "--max-crops", "100"]])
def test_sweep_sizes_are_bounded(tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "vision", *argv, "--out", str(tmp_path / "s")]) == 1
    assert one_line(capsys.readouterr().err)
    assert not (tmp_path / "s").exists()
