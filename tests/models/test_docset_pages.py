"""DeepSeek-OCR's pages of a set report: geometry of each page, deduplication, budgets and the position limit."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from opmeter.models.deepseek_ocr.docset import DOCSET_V1
from opmeter.models.deepseek_ocr.pages import page_planner
from opmeter.report.pageset import by_geometry


def test_docset_pages_carry_their_grid_tokens_and_expected_length(tmp_path: Path) -> None:
    planner = page_planner("dsocr-docset-v1", None, "deepseek-ocr-v1-base")
    assert planner is not None and planner.base_workload == "dsocr-standard-v1"
    pages = planner.pages(tmp_path, None, 40_000_000)
    assert [p.file for p in pages] == [f"{d.name}.png" for d in DOCSET_V1]
    a4 = next(p for p in pages if p.file == "a4-portrait-150dpi.png")
    assert dict(a4.geometry) == {"crop_cols": 2, "crop_rows": 3, "image_tokens": 903, "prompt_tokens": 912}
    assert all((p.geometry["crop_cols"], p.geometry["crop_rows"]) == d.crop_grid()
               for p, d in zip(pages, DOCSET_V1, strict=True))
    assert [p.decode_tokens for p in pages] == [d.expected_tokens() for d in DOCSET_V1]
    groups = by_geometry(pages)
    assert len(groups) == 11  # 17 pages: the three A4 scans, Letter and the two-column paper share 2 x 3
    assert max(len(g) for g in groups.values()) == 5
    fixed = planner.pages(tmp_path / "fixed", 64, 40_000_000)
    assert {p.decode_tokens for p in fixed} == {64}


def test_single_page_workloads_are_not_sets_and_images_pick_their_base() -> None:
    assert page_planner("dsocr-standard-v1", None, "deepseek-ocr-v1-base") is None
    planner = page_planner("gundam", "x/*.png", "deepseek-ocr-v1-base")
    assert planner is not None and planner.base_workload == "dsocr-gundam-v1"
    planner = page_planner("dsocr-docset-v1", "x/*.png", "deepseek-ocr-v1-base")
    assert planner is not None and planner.base_workload == "dsocr-standard-v1"


def test_a_page_beyond_the_position_table_is_an_error(tmp_path: Path) -> None:
    Image.new("RGB", (1240, 1754), "white").save(tmp_path / "a.png")
    Image.new("RGB", (600, 600), "white").save(tmp_path / "b.png")
    (tmp_path / "decode_tokens.json").write_text(json.dumps({"a.png": 100_000, "b.png": 10}))
    planner = page_planner("dsocr-standard-v1", str(tmp_path), "deepseek-ocr-v1-base")
    assert planner is not None
    a, b = planner.pages(tmp_path, None, 40_000_000)
    assert a.error is not None and "exceed the model's" in a.error and b.error is None
    assert b.geometry["image_tokens"] == 273 and b.decode_tokens == 10
