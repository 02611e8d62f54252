"""Image geometry of DeepSeek-OCR: crop-grid choice, views and image-token counts, from sizes alone.

This is the one place the vendor ``infer()`` rules live; the pixel preprocessing and the analytic model both use
it, so a token count can never differ between what runs and what is predicted.

Rules (vendor ``infer()`` / ``dynamic_preprocess``):

* crop mode on: both sides <= ``image_size`` -> grid 1 x 1 (no crops); otherwise the grid ``(cols, rows)`` with
  ``2 <= cols*rows <= 9`` whose ``cols/rows`` is closest to ``width/height``; on a tie the later (larger) candidate
  wins when the image area exceeds half the candidate's area at ``image_size``. The global view is ``base_size``.
* crop mode off: one view of ``image_size``.
* tokens: a view of ``q x q`` queries (``q = ceil(size / 16 / 4)``) gives ``q`` rows of ``q`` tokens plus one
  ``image_newline`` each; crops tile into ``(q*rows) x (q*cols)`` plus one newline per row; one ``view_seperator``
  closes the image.
"""

from __future__ import annotations

import attrs

from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr.config import FULL_SIZE, DeepseekOCRConfig, get_config

MIN_CROPS = 2
MAX_CROPS = 9


def candidate_grids(min_num: int = MIN_CROPS, max_num: int = MAX_CROPS) -> list[tuple[int, int]]:
    """Crop grids ``(cols, rows)`` in the vendor's order: sorted by crop count, ties in the vendor's set order."""
    ratios = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return sorted(ratios, key=lambda r: r[0] * r[1])


def choose_crop_grid(width: int, height: int, tile: int) -> tuple[int, int]:
    """Pick the crop grid ``(cols, rows)`` for an image as the vendor does (``find_closest_aspect_ratio``)."""
    aspect = width / height
    area = width * height
    best_diff = float("inf")
    best = (1, 1)
    for cols, rows in candidate_grids():
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


@attrs.frozen
class VisionWorkload:
    """Views and image tokens of one image.

    Attributes
    ----------
    base_size, image_size
        Global-view size and crop-tile size (crop mode on) or the single view size (crop mode off).
    crop_mode
        Whether dynamic crops are considered.
    crop_grid
        ``(cols, rows)``; ``(1, 1)`` means no crops.
    width, height
        Original image size in pixels (0 when built from a grid alone).
    """

    base_size: int
    image_size: int
    crop_mode: bool
    crop_grid: tuple[int, int]
    width: int = 0
    height: int = 0
    patch_size: int = 16
    downsample_ratio: int = 4

    @classmethod
    def from_image_size(
        cls,
        width: int,
        height: int,
        base_size: int = 1024,
        image_size: int = 640,
        crop_mode: bool = True,
        config: DeepseekOCRConfig | None = None,
    ) -> VisionWorkload:
        """Geometry of an image of ``width x height`` pixels under the vendor rules."""
        if width <= 0 or height <= 0:
            raise OpmeterError(f"image size must be positive, got {width}x{height}")
        cfg = config or get_config(FULL_SIZE)
        grid = (1, 1)
        if crop_mode and (width > image_size or height > image_size):
            grid = choose_crop_grid(width, height, image_size)
        return cls(
            base_size=base_size,
            image_size=image_size,
            crop_mode=crop_mode,
            crop_grid=grid,
            width=width,
            height=height,
            patch_size=cfg.sam.patch_size,
            downsample_ratio=cfg.downsample_ratio,
        )

    @classmethod
    def from_grid(
        cls,
        cols: int,
        rows: int,
        base_size: int = 1024,
        image_size: int = 640,
        config: DeepseekOCRConfig | None = None,
    ) -> VisionWorkload:
        """Geometry with an explicit crop grid (Gundam mode with a forced grid, sweeps)."""
        if cols < 1 or rows < 1:
            raise OpmeterError(f"crop grid must be at least 1x1, got {cols}x{rows}")
        cfg = config or get_config(FULL_SIZE)
        return cls(
            base_size=base_size,
            image_size=image_size,
            crop_mode=True,
            crop_grid=(cols, rows),
            patch_size=cfg.sam.patch_size,
            downsample_ratio=cfg.downsample_ratio,
        )

    def _queries(self, size: int) -> int:
        return -(-(size // self.patch_size) // self.downsample_ratio)

    @property
    def has_crops(self) -> bool:
        """Whether local crops exist (grid larger than 1 x 1)."""
        return self.crop_grid[0] > 1 or self.crop_grid[1] > 1

    @property
    def num_crops(self) -> int:
        """Number of local crop tiles (0 without crops)."""
        return self.crop_grid[0] * self.crop_grid[1] if self.has_crops else 0

    @property
    def global_view_size(self) -> int:
        """Side of the global view: ``base_size`` in crop mode, ``image_size`` otherwise."""
        return self.base_size if self.crop_mode else self.image_size

    @property
    def views(self) -> list[tuple[int, int]]:
        """Vision-tower batches in execution order as ``(batch, side)``: crops first (if any), then global."""
        out = [(self.num_crops, self.image_size)] if self.has_crops else []
        out.append((1, self.global_view_size))
        return out

    @property
    def global_queries(self) -> int:
        """Tokens per side of the global view."""
        return self._queries(self.global_view_size)

    @property
    def crop_queries(self) -> int:
        """Tokens per side of one crop tile."""
        return self._queries(self.image_size)

    @property
    def global_tokens(self) -> int:
        """Global-view tokens including row newlines and the view separator."""
        q = self.global_queries
        return (q + 1) * q + 1

    @property
    def crop_tokens(self) -> int:
        """Local-crop tokens including their row newlines (0 without crops)."""
        if not self.has_crops:
            return 0
        cols, rows = self.crop_grid
        q = self.crop_queries
        return (q * cols + 1) * (q * rows)

    @property
    def image_tokens(self) -> int:
        """All image-token positions this image occupies in the prompt."""
        return self.global_tokens + self.crop_tokens
