"""Document sets: the built-in ``dsocr-docset-v1`` pages, and users' own pages from a folder or a glob.

The built-in set is generated in code, deterministically: the same pixels and the same text for the same version,
on any machine, with nothing downloaded. Its pages cover the layouts people feed an OCR model (A4 and Letter
portrait at several resolutions, a two-column paper, tables, slides, receipts, a wide banner, photos, pages under
640 px) and, through their sizes, every crop-grid shape the vendor preprocessing produces, up to its maximum of 9
tiles. Content is laid out in page-relative units, so a page rendered at another resolution holds the same text.

Each page knows its **expected output length**: the rendered text (what a perfect OCR would return), tokenised by
the built-in tokenizer, plus EOS. Random weights never stop on their own, so this is the decode budget a set report
gives the page.

Users' pages: :func:`load_pages` reads PNG, JPEG and WebP files from a folder or a glob; a sidecar
``decode_tokens.json`` (``{"file name": tokens}``) beside them gives per-page lengths. Unreadable, empty and
oversized pages are returned with their error instead of raising, so a report can list and skip them.
"""

from __future__ import annotations

import glob as globlib
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
from PIL import Image, ImageDraw, ImageFont

from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr.geometry import VisionWorkload
from opmeter.models.deepseek_ocr.tokenizer import WORDS

DOCSET_ID = "dsocr-docset-v1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SIDECAR = "decode_tokens.json"
MAX_PAGE_PIXELS = 64_000_000
"""Default size limit of a user's page (64 Mpx: an A3 scan at 600 dpi is 70 Mpx, a phone photo 12 Mpx)."""

_WORDS = WORDS
"""Body text is drawn from the built-in tokenizer's word table (one token per word, as common English words are in
a BPE vocabulary); numbers and titles fall back to bytes, as rarer text does."""

Renderer = Callable[[ImageDraw.ImageDraw, int, int, random.Random], list[str]]
"""Draws a page's content and returns its text, line by line."""


def _font(size: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(6, round(size)))


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _text_lines(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], size: float, rng: random.Random,
                lines: int) -> list[str]:
    """Lines of words filling ``box`` (x0, y0, x1, y1) from the top, ``lines`` at most."""
    x0, y0, x1, y1 = box
    font, out, y = _font(size), [], y0
    per_line = max(2, int((x1 - x0) / (size * 3.2)))
    for _ in range(lines):
        if y + size > y1:
            break
        line = _sentence(rng, per_line)
        draw.text((x0, y), line, fill=(25, 25, 25), font=font)
        out.append(line)
        y += size * 1.6
    return out


def _document(columns: int) -> Renderer:
    def render(draw: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random) -> list[str]:
        size, m = w / 55, w / 14
        title = _sentence(rng, 5).title()
        draw.text((m, m), title, fill=(0, 0, 0), font=_font(size * 2))
        text = [f"# {title}"]
        gap = w / 30
        col_w = (w - 2 * m - gap * (columns - 1)) / columns
        for c in range(columns):
            x0 = m + c * (col_w + gap)
            text += _text_lines(draw, (x0, m + size * 4, x0 + col_w, h - m), size, rng, 10_000)
        return text
    return render


def _table(draw: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random) -> list[str]:
    size, m = min(w, h) / 55, w / 14
    rows, cols = 14, 5
    cell_w, cell_h = (w - 2 * m) / cols, (h - 2 * m - size * 4) / rows
    draw.text((m, m), "Table 1", fill=(0, 0, 0), font=_font(size * 1.6))
    text = ["Table 1"]
    top = m + size * 4
    for r in range(rows):
        cells = [rng.choice(_WORDS) if r == 0 else f"{rng.uniform(0, 999):.2f}" for _ in range(cols)]
        for c, cell in enumerate(cells):
            x, y = m + c * cell_w, top + r * cell_h
            draw.rectangle((x, y, x + cell_w, y + cell_h), outline=(0, 0, 0), width=max(1, round(size / 8)))
            draw.text((x + size / 2, y + (cell_h - size) / 2), cell, fill=(20, 20, 20), font=_font(size))
        text.append("| " + " | ".join(cells) + " |")
    return text


def _slide(draw: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random) -> list[str]:
    size, m = h / 16, w / 16
    draw.rectangle((0, 0, w, h / 6), fill=(30, 60, 120))
    title = _sentence(rng, 4).title()
    draw.text((m, h / 24), title, fill=(255, 255, 255), font=_font(size * 1.3))
    text = [f"# {title}"]
    y = h / 4
    for _ in range(5):
        bullet = _sentence(rng, 6)
        draw.text((m, y), f"- {bullet}", fill=(20, 20, 20), font=_font(size * 0.8))
        text.append(f"- {bullet}")
        y += size * 1.4
    return text


def _receipt(draw: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random) -> list[str]:
    size, m = w / 22, w / 12
    text, y = [], m
    while y + size < h - m:
        line = f"{rng.choice(_WORDS):<12}{rng.uniform(1, 99):>8.2f}"
        draw.text((m, y), line, fill=(10, 10, 10), font=_font(size))
        text.append(line)
        y += size * 1.5
    return text


def _banner(draw: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random) -> list[str]:
    draw.rectangle((0, 0, w, h), fill=(240, 200, 60))
    line = _sentence(rng, 6).upper()
    draw.text((h / 3, h / 4), line, fill=(20, 20, 20), font=_font(h / 2.2))
    return [line]


def _photo(draw: ImageDraw.ImageDraw, w: int, h: int, rng: random.Random) -> list[str]:
    for _ in range(12):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.05, 0.3) * min(w, h)
        colour = tuple(rng.randint(40, 230) for _ in range(3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)  # type: ignore[arg-type]
    caption = _sentence(rng, 3)
    draw.text((w / 20, h * 0.88), caption, fill=(255, 255, 255), font=_font(h / 14))
    return [caption]


RENDERERS: dict[str, Renderer] = {
    "document": _document(1), "two-column": _document(2), "table": _table, "slide": _slide, "receipt": _receipt,
    "banner": _banner, "photo": _photo,
}


@attrs.frozen
class DocPage:
    """One page of a built-in set: its name, layout and pixel size (the rest is rendered on demand)."""

    name: str
    layout: str
    width: int
    height: int
    seed: int

    def render(self) -> tuple[Image.Image, list[str]]:
        """The page image and its text lines (deterministic)."""
        background = (255, 255, 255) if self.layout != "photo" else (90, 120, 90)
        img = Image.new("RGB", (self.width, self.height), background)
        lines = RENDERERS[self.layout](ImageDraw.Draw(img), self.width, self.height, random.Random(self.seed))
        return img, lines

    def expected_tokens(self) -> int:
        """Tokens a perfect transcription takes: the text with the built-in tokenizer, plus EOS."""
        return _transcription_tokens(self.render()[1])

    def crop_grid(self, base_size: int = 1024, image_size: int = 640) -> tuple[int, int]:
        """``(cols, rows)`` the vendor preprocessing gives this page (crop mode on)."""
        return VisionWorkload.from_image_size(self.width, self.height, base_size, image_size, True).crop_grid

    def save(self, directory: str | Path) -> Path:
        """Write the page as ``<name>.png`` into ``directory``."""
        return self._save(self.render()[0], directory)

    def _save(self, img: Image.Image, directory: str | Path) -> Path:
        path = Path(directory) / f"{self.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, compress_level=1)  # fast: the file only feeds the run
        return path


def _transcription_tokens(lines: list[str]) -> int:
    from opmeter.models.deepseek_ocr.tokenizer import BuiltinTokenizer

    return len(BuiltinTokenizer().encode("\n".join(lines), add_special_tokens=False)) + 1


_A4_SEED = 3
"""The three A4 pages share their content: one page scanned at three resolutions."""

DOCSET_V1: tuple[DocPage, ...] = tuple(
    DocPage(name, layout, w, h, seed) for name, layout, w, h, seed in (
        ("photo-small", "photo", 480, 360, 0),
        ("page-under-640", "document", 512, 640, 1),
        ("a4-portrait-100dpi", "document", 827, 1169, _A4_SEED),
        ("a4-portrait-150dpi", "document", 1240, 1754, _A4_SEED),
        ("a4-portrait-300dpi", "document", 2480, 3508, _A4_SEED),
        ("letter-portrait-150dpi", "document", 1275, 1650, 5),
        ("paper-two-column-letter-300dpi", "two-column", 2550, 3300, 6),
        ("table-a4-landscape", "table", 1754, 1240, 7),
        ("table-square-scan", "table", 1200, 1200, 8),
        ("poster-square", "document", 2000, 2000, 9),
        ("slide-720p", "slide", 1280, 720, 10),
        ("slide-1080p", "slide", 1920, 1080, 11),
        ("form-portrait-1x2", "document", 800, 1600, 12),
        ("receipt", "receipt", 576, 1600, 13),
        ("receipt-long", "receipt", 384, 2400, 14),
        ("photo-camera", "photo", 4032, 3024, 15),
        ("banner-wide", "banner", 5760, 640, 16),
    )
)
"""``dsocr-docset-v1``: 17 pages; names, sizes and grids are listed in docs/reference_model.md."""

DOCSETS = {DOCSET_ID: DOCSET_V1}


@attrs.frozen
class PageInput:
    """One page of a set to run: a file (or a built-in page), its decode budget, or why it is skipped."""

    file: str
    path: Path | None
    width: int = 0
    height: int = 0
    decode_tokens: int | None = None
    error: str | None = None


def _sidecar(directory: Path) -> dict[str, int]:
    """``decode_tokens.json`` of ``directory``: file name -> a whole number of new tokens >= 1, checked entry by
    entry (a negative, fractional, boolean or non-numeric value is an error naming the entry, never a default)."""
    from opmeter.io import read_json

    path = directory / SIDECAR
    if not path.is_file():
        return {}
    data = read_json(path, "decode-length sidecar", limit=16 << 20)
    if not isinstance(data, dict):
        raise OpmeterError(f"{path} is not a JSON object of file name -> decode tokens")
    lengths = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OpmeterError(f"{path}: the entry {str(name)[:80]!r} is {str(value)[:40]!r}; give a whole number of "
                               "new tokens >= 1")
        lengths[str(name)] = value
    return lengths


def _files(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(Path(p) for p in globlib.glob(str(path)) if Path(p).suffix.lower() in IMAGE_SUFFIXES)


def _labels(files: list[Path]) -> list[str]:
    """Each page's name in the tables: its file name, or its path below the pages' common folder when two pages of
    a glob over several folders share a name."""
    names = [p.name for p in files]
    if len(set(names)) == len(names):
        return names
    root = Path(os.path.commonpath([str(p.parent.absolute()) for p in files]))
    return [str(p.absolute().relative_to(root)) for p in files]


def _probe(path: Path, max_pixels: int) -> tuple[int, int, str | None]:
    """``(width, height, error)`` of an image file without decoding more than needed."""
    try:
        size = path.stat().st_size
    except OSError as exc:  # a dangling symlink, a symlink loop, a file removed meanwhile
        return 0, 0, f"cannot read the file ({exc.strerror or type(exc).__name__})"
    if size == 0:
        return 0, 0, "empty file"
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                return width, height, f"{width}x{height} exceeds the {max_pixels:,}-pixel limit"
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return 0, 0, f"not a readable image ({type(exc).__name__}: {exc})"
    if width == 0 or height == 0:
        return width, height, "image has no pixels"
    return width, height, None


def load_pages(spec: str, decode_tokens: int | None = None,
               max_pixels: int = MAX_PAGE_PIXELS) -> list[PageInput]:
    """The pages of a folder or glob, each with its size and decode budget, or its error.

    Parameters
    ----------
    spec
        A directory (its PNG/JPEG/WebP files, sorted by name) or a glob pattern (over one folder or several).
    decode_tokens
        A fixed budget for every page; ``None`` takes the ``decode_tokens.json`` beside each page (pages it does
        not list get ``None``: the caller's default).
    max_pixels
        Larger pages are returned with an error.

    Raises
    ------
    OpmeterError
        When nothing matches, or a sidecar file is malformed.
    """
    files = _files(spec)
    if not files:
        raise OpmeterError(f"no PNG, JPEG or WebP pages found at {spec}")
    sidecars: dict[Path, dict[str, int]] = {}
    pages = []
    for path, label in zip(files, _labels(files), strict=True):
        width, height, error = _probe(path, max_pixels)
        budget = decode_tokens
        if budget is None:
            if path.parent not in sidecars:
                sidecars[path.parent] = _sidecar(path.parent)
            budget = sidecars[path.parent].get(path.name)
        pages.append(PageInput(label, path, width, height, budget, error))
    return pages


def builtin_pages(docset_id: str, directory: str | Path) -> Iterator[PageInput]:
    """Render a built-in set into ``directory``; each page with its expected length as decode budget."""
    if docset_id not in DOCSETS:
        raise OpmeterError(f"unknown document set {docset_id!r}; known: {', '.join(DOCSETS)}")
    for page in DOCSETS[docset_id]:
        img, lines = page.render()  # once: the file and the expected length come from the same rendering
        path = page._save(img, directory)
        yield PageInput(path.name, path, page.width, page.height, _transcription_tokens(lines))
