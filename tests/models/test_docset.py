"""The built-in document set and users' page folders: grids, determinism, sidecar lengths, bad pages."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr.docset import DOCSET_V1, builtin_pages, load_pages


def test_docset_covers_the_grids_users_hit() -> None:
    grids = {page.crop_grid() for page in DOCSET_V1}
    assert {(1, 1), (2, 1), (1, 2), (2, 2), (2, 3), (3, 3), (4, 2)} <= grids
    assert max(c * r for c, r in grids) == 9  # the preprocessing's maximum
    assert 12 <= len(DOCSET_V1) <= 20 and len({p.name for p in DOCSET_V1}) == len(DOCSET_V1)
    layouts = {p.layout for p in DOCSET_V1}
    assert {"document", "two-column", "table", "slide", "receipt", "banner", "photo"} <= layouts
    assert any(max(p.width, p.height) <= 640 and p.layout == "document" for p in DOCSET_V1)


def test_pages_are_deterministic_and_resolution_independent() -> None:
    page = DOCSET_V1[3]
    first, second = page.render()[0].tobytes(), page.render()[0].tobytes()
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()
    a4 = [p for p in DOCSET_V1 if p.name.startswith("a4-portrait")]
    assert len(a4) == 3 and len({p.expected_tokens() for p in a4}) == 1  # one page, three scans
    assert all(p.expected_tokens() > 1 for p in DOCSET_V1)


def test_builtin_pages_are_written_with_their_lengths(tmp_path: Path) -> None:
    pages = list(builtin_pages("dsocr-docset-v1", tmp_path))
    assert [p.file for p in pages] == [f"{p.name}.png" for p in DOCSET_V1]
    assert all(p.path is not None and p.path.is_file() and p.error is None for p in pages)
    assert pages[0].decode_tokens == DOCSET_V1[0].expected_tokens()
    with pytest.raises(OpmeterError, match="unknown document set"):
        list(builtin_pages("nope", tmp_path))


def _write(path: Path, size: tuple[int, int], fmt: str = "PNG") -> Path:
    Image.new("RGB", size, (200, 200, 200)).save(path, fmt)
    return path


def test_user_folder_with_sidecar_and_bad_pages(tmp_path: Path) -> None:
    _write(tmp_path / "a.png", (800, 600))
    _write(tmp_path / "b.jpg", (600, 900), "JPEG")
    _write(tmp_path / "c.webp", (300, 300), "WEBP")
    (tmp_path / "d.png").write_bytes(b"")
    (tmp_path / "e.png").write_bytes(b"not an image at all")
    _write(tmp_path / "huge.png", (4000, 4000))
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "decode_tokens.json").write_text(json.dumps({"a.png": 120, "b.jpg": 7}))
    pages = {p.file: p for p in load_pages(str(tmp_path), max_pixels=10_000_000)}
    assert sorted(pages) == ["a.png", "b.jpg", "c.webp", "d.png", "e.png", "huge.png"]
    assert (pages["a.png"].width, pages["a.png"].height, pages["a.png"].decode_tokens) == (800, 600, 120)
    assert pages["b.jpg"].decode_tokens == 7 and pages["c.webp"].decode_tokens is None
    assert pages["d.png"].error == "empty file"
    assert "not a readable image" in (pages["e.png"].error or "")
    assert "exceeds" in (pages["huge.png"].error or "")
    fixed = load_pages(str(tmp_path / "*.png"), decode_tokens=33, max_pixels=10_000_000)
    assert [p.file for p in fixed] == ["a.png", "d.png", "e.png", "huge.png"]
    assert {p.decode_tokens for p in fixed} == {33}


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(OpmeterError, match="no PNG"):
        load_pages(str(tmp_path))
    _write(tmp_path / "a.png", (10, 10))
    (tmp_path / "decode_tokens.json").write_text("[1, 2]")
    with pytest.raises(OpmeterError, match=r"decode_tokens\.json"):
        load_pages(str(tmp_path))
