"""Set reports: affine decode extension, geometry deduplication, distributions, sidecar lengths and bad pages."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from opmeter.cli import main
from opmeter.report.pageset import (
    AffineSteps,
    Page,
    by_geometry,
    distributions,
    geometry_run,
    page_row,
    pages_frame,
)
from opmeter.report.run import ReportOptions, run_report

TOY = "deepseek-ocr-toy"
ISSUE_COLUMNS = ["file", "width", "height", "crop_cols", "crop_rows", "image_tokens", "prompt_tokens",
                 "decode_tokens", "tensor_flops", "bytes", "predicted_ttft_s", "predicted_tpot_s", "measured_ttft_s",
                 "measured_tpot_s"]


def _steps(first: float, delta: float, n: int) -> list[dict[str, float]]:
    return [{"flops_tensor": first + i * delta, "flops_cuda": 2.0, "bytes": 10 * (first + i * delta)}
            for i in range(n)]


def test_affine_steps_extend_exactly_and_refuse_other_shapes() -> None:
    fit = AffineSteps.fit(_steps(100.0, 3.0, 3))
    assert fit is not None
    full = _steps(100.0, 3.0, 50)
    assert fit.total(50) == {m: sum(s[m] for s in full) for m in ("flops_tensor", "flops_cuda", "bytes")}
    assert fit.total(0)["bytes"] == 0
    bent = _steps(100.0, 3.0, 3)
    bent[2]["flops_tensor"] += 1.0
    assert AffineSteps.fit(bent) is None
    assert AffineSteps.fit(_steps(100.0, 3.0, 2)) is None  # two steps prove nothing


def test_pages_of_equal_geometry_share_one_group() -> None:
    geo_a = {"crop_cols": 2, "crop_rows": 3, "image_tokens": 903}
    geo_b = {"crop_cols": 1, "crop_rows": 1, "image_tokens": 273}
    pages = [Page("a", None, geometry=geo_a), Page("b", None, geometry=geo_b), Page("c", None, geometry=geo_a),
             Page("bad", None, geometry=geo_a, error="empty file")]
    groups = by_geometry(pages)
    assert list(groups.values()) == [[0, 2], [1]]


def test_distributions_skip_failed_pages_and_empty_columns() -> None:
    rows = [{"file": f"p{i}", "width": 1, "height": 1, "decode_tokens": v, "tensor_flops": 1.0, "bytes": 1.0,
             "predicted_ttft_s": v / 10, "error": None} for i, v in enumerate([10, 20, 30, 40])]
    rows.append({"file": "bad", "decode_tokens": 1000, "error": "empty file"})
    frame = pages_frame(rows, [])
    assert list(frame.columns[:10]) == ["file", "width", "height", *ISSUE_COLUMNS[7:]][:10]
    dist = distributions(frame, ["decode_tokens", "predicted_ttft_s", "measured_ttft_s"]).set_index("figure")
    assert "measured_ttft_s" not in dist.index  # nothing measured
    d = dist.loc["decode_tokens"]
    assert (d["pages"], d["mean"], d["max"], d["p50"]) == (4, 25.0, 40.0, 25.0)
    assert d["std"] == pytest.approx(pd.Series([10, 20, 30, 40]).std())
    assert d["p90"] == pytest.approx(37.0)


def _page(path: Path, size: tuple[int, int], fmt: str = "PNG") -> Path:
    Image.new("RGB", size, (230, 230, 230)).save(path, fmt)
    return path


def _figures(image: Path, tokens: int, out: Path) -> Any:
    result = run_report(ReportOptions(preset=TOY, device="meta", image=image, decode_tokens=tokens, out=out,
                                      write_trace_json=False, profiler=False, write_files=False))
    return geometry_run(result.joined, result.seconds)


def test_short_trace_extended_equals_the_full_trace(tmp_path: Path) -> None:
    """The shape-only set report's central claim: extending 3 traced decode steps to n is what tracing n gives."""
    image = _page(tmp_path / "p.png", (300, 200))
    short, full = _figures(image, 4, tmp_path / "s"), _figures(image, 12, tmp_path / "f")
    assert short.affine() and short.traced_steps == 3 and full.traced_steps == 11
    page = Page("p.png", image, 300, 200, 12, {"crop_cols": 3, "crop_rows": 2})
    extended, traced = page_row(page, short), page_row(page, full)
    for col in ("tensor_flops", "cuda_flops", "decode_tensor_flops", "decode_bytes", "vision_tensor_flops"):
        assert extended[col] == pytest.approx(traced[col], rel=1e-9), col
    # bytes: the generate loop's glue grows a few bytes per step (the generated ids); it is extended per step
    assert extended["bytes"] == pytest.approx(traced["bytes"], rel=1e-5)
    assert extended["bytes"] != traced["bytes"]
    assert extended["roofline_tpot_s"] == pytest.approx(traced["roofline_tpot_s"], rel=1e-9)
    assert extended["predicted_ttft_s"] == pytest.approx(traced["predicted_ttft_s"], rel=1e-6)
    assert extended["predicted_tpot_s"] == pytest.approx(traced["predicted_tpot_s"], rel=0.02)


def _report(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["report", "--preset", TOY, "--no-progress", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_images_folder_dedups_geometries_and_lists_bad_pages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pages = tmp_path / "pages"
    pages.mkdir()
    _page(pages / "a.png", (300, 200))
    _page(pages / "b.jpg", (310, 210), "JPEG")  # same grid and tokens as a.png
    _page(pages / "c.webp", (100, 400), "WEBP")
    (pages / "empty.png").write_bytes(b"")
    (pages / "decode_tokens.json").write_text(json.dumps({"a.png": 9, "c.webp": 5}))
    from opmeter.report import run as run_module

    calls: list[Any] = []
    real = run_module.run_report
    monkeypatch.setattr(run_module, "run_report", lambda o: calls.append(o.image) or real(o))
    out = tmp_path / "report"
    code, stdout, _ = _report(["--images", str(pages), "--out", str(out)], capsys)
    assert code == 0, stdout
    assert len(calls) == 1 + 2  # the set, then one trace per distinct geometry (a.png and b.jpg share one)
    df = pd.read_csv(out / "pages.csv").set_index("file")
    assert ISSUE_COLUMNS[1:] == [c for c in df.columns if c in ISSUE_COLUMNS]
    assert "error" in df.columns
    assert df.loc["a.png", "decode_tokens"] == 9 and df.loc["c.webp", "decode_tokens"] == 5
    assert df.loc["b.jpg", "decode_tokens"] == 512  # not in the sidecar: the workload's default
    assert df.loc["a.png", "tensor_flops"] < df.loc["b.jpg", "tensor_flops"]  # same geometry, longer decode
    assert df.loc["a.png", "predicted_ttft_s"] == df.loc["b.jpg", "predicted_ttft_s"]
    assert "empty file" in df.loc["empty.png", "error"] and math.isnan(df.loc["empty.png", "tensor_flops"])
    assert df["measured_ttft_s"].isna().all()
    assert sorted(p.name for p in out.iterdir()) == [".opmeter-output.json", "components.csv", "distributions.csv",
                                                    "geometries.csv", "pages.csv", "report.md",
                                                    "ttft_vs_image_tokens.svg"]
    text = (out / "report.md").read_text()
    assert "## Skipped pages" in text and "empty.png" in text and "3 of 4 pages" in stdout


def test_no_page_succeeding_is_one_line_exit_1_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "a.png").write_bytes(b"")
    (pages / "b.png").write_bytes(b"no image")
    out = tmp_path / "report"
    code, _, err = _report(["--images", str(pages), "--out", str(out)], capsys)
    assert code == 1 and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "no page of" in err and "empty file" in err
    code, _, err = _report(["--images", str(tmp_path / "nothing-*.png"), "--out", str(out)], capsys)
    assert code == 1 and "no PNG, JPEG or WebP pages" in err
    code, _, err = _report(["--images", str(pages), "--image", str(pages / "a.png"), "--out", str(out)], capsys)
    assert code == 1 and "exclude each other" in err


def test_executed_set_times_every_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pages = tmp_path / "pages"
    pages.mkdir()
    _page(pages / "a.png", (300, 200))
    _page(pages / "b.png", (300, 200))
    out = tmp_path / "report"
    code, stdout, _ = _report(["--images", str(pages), "--device", "cpu", "--decode-tokens", "3", "--repeats", "2",
                               "--out", str(out)], capsys)
    assert code == 0, stdout
    df = pd.read_csv(out / "pages.csv")
    assert df["measured_ttft_s"].gt(0).all() and df["measured_tpot_s"].gt(0).all()
    assert (df["decode_tokens"] == 3).all() and df["traced_decode_steps"].eq(2).all()
    assert "measured_ttft_s" in set(pd.read_csv(out / "distributions.csv")["figure"])


def test_a_geometry_that_is_not_affine_is_traced_at_each_pages_length(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from opmeter.report import pageset
    from opmeter.report import run as run_module

    pages = tmp_path / "pages"
    pages.mkdir()
    _page(pages / "a.png", (300, 200))
    _page(pages / "b.png", (300, 200))
    (pages / "decode_tokens.json").write_text(json.dumps({"a.png": 6, "b.png": 3}))
    monkeypatch.setattr(pageset.GeometryRun, "affine", lambda self: False)
    calls: list[Any] = []
    real = run_module.run_report
    monkeypatch.setattr(run_module, "run_report", lambda o: calls.append(o.decode_tokens) or real(o))
    out = tmp_path / "report"
    code, stdout, _ = _report(["--images", str(pages), "--out", str(out)], capsys)
    assert code == 0, stdout
    assert calls[1:] == [4, 6, 3]  # the short trace, then each page at its own length
    df = pd.read_csv(out / "pages.csv").set_index("file")
    assert df.loc["a.png", "traced_decode_steps"] == 5 and df.loc["b.png", "traced_decode_steps"] == 2
    assert "not affine" in (out / "report.md").read_text()
