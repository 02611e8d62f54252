"""Image-token counts and crop-grid choices, checked against the vendor's documented numbers."""

from __future__ import annotations

import pytest

from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr import VisionWorkload, choose_crop_grid


@pytest.mark.parametrize(
    ("cols", "rows", "tokens"), [(2, 2, 693), (2, 1, 483), (2, 3, 903), (3, 3, 273 + 31 * 30)]
)
def test_crop_token_counts(cols: int, rows: int, tokens: int) -> None:
    vw = VisionWorkload.from_grid(cols, rows)
    assert vw.image_tokens == tokens == 273 + (10 * cols + 1) * 10 * rows
    assert vw.num_crops == cols * rows
    assert vw.views == [(cols * rows, 640), (1, 1024)]


@pytest.mark.parametrize(("size", "tokens"), [(512, 73), (640, 111), (1024, 273), (1280, 421)])
def test_crop_mode_off_token_counts(size: int, tokens: int) -> None:
    vw = VisionWorkload.from_image_size(3000, 2000, base_size=size, image_size=size, crop_mode=False)
    assert vw.image_tokens == tokens
    assert vw.views == [(1, size)]
    assert not vw.has_crops


def test_issue_example_portrait_page() -> None:
    vw = VisionWorkload.from_image_size(width=1280, height=1920, base_size=1024, image_size=640, crop_mode=True)
    assert vw.crop_grid == (2, 3)
    assert vw.image_tokens == 903


def test_small_image_has_no_crops() -> None:
    vw = VisionWorkload.from_image_size(640, 600)
    assert vw.crop_grid == (1, 1)
    assert vw.image_tokens == 273
    assert vw.views == [(1, 1024)]


@pytest.mark.parametrize(
    ("w", "h", "grid"),
    [
        (1000, 1000, (2, 2)),  # square, large: ties resolve to the larger square grid
        (1200, 600, (2, 1)),  # aspect 2, small: (2, 1) first, (4, 2) not large enough
        (2000, 1000, (4, 2)),  # aspect 2, area > half of (4, 2) at 640: the larger grid wins the tie
        (1000, 3000, (1, 3)),
        (2480, 3508, (2, 3)),  # A4 portrait at 300 dpi
        (5000, 700, (7, 1)),
        (9000, 900, (9, 1)),
    ],
)
def test_crop_grid_choice(w: int, h: int, grid: tuple[int, int]) -> None:
    assert choose_crop_grid(w, h, 640) == grid


def test_tie_rule_prefers_smaller_grid_for_small_area() -> None:
    # 1x1 aspect ties between (2,2) and (3,3): area 700*700 = 490000 > 0.5*640*640*4 = 819200? no -> keep (2,2);
    # a 2000x2000 image exceeds half of (3,3)'s area (1843200) -> (3,3).
    assert choose_crop_grid(700, 700, 640) == (2, 2)
    assert choose_crop_grid(2000, 2000, 640) == (3, 3)


def test_bad_sizes_are_clear_errors() -> None:
    with pytest.raises(OpmeterError, match="positive"):
        VisionWorkload.from_image_size(0, 10)
    with pytest.raises(OpmeterError, match="at least 1x1"):
        VisionWorkload.from_grid(0, 2)
