"""DeepSeek-OCR's side of a report over a set of pages: which pages, their crop grids, token counts and geometry.

A page's work is decided by its geometry: the crop grid, the image tokens it gives and the prompt length. Pages of
equal geometry run the same ops on the same shapes (the page is resized to its views by PIL, outside the traced ops,
whatever its resolution), so the generic set report (:mod:`opmeter.report.pageset_run`)
traces each distinct geometry once. Each page runs as the single-page workload ``dsocr-standard-v1`` (base 1024,
tiles 640, crop mode on, the grounding-markdown prompt) on its own image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import attrs

from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr.config import FULL_SIZE, PRESETS, DeepseekOCRConfig, get_config
from opmeter.models.deepseek_ocr.docset import DOCSETS, PageInput, builtin_pages, load_pages
from opmeter.models.deepseek_ocr.workloads import ALIASES, WORKLOADS, Workload, load_workload
from opmeter.report.pageset import Page

log = logging.getLogger(__name__)

PAGE_WORKLOAD = "dsocr-standard-v1"
"""The single-page workload every page of a set runs as (on the page's own image)."""


@attrs.frozen
class DocumentPages:
    """The pages of a built-in set or of a user's folder, as :class:`opmeter.report.pageset.Page` rows.

    Attributes
    ----------
    set_id
        The built-in set (``dsocr-docset-v1``) or ``images:SPEC``.
    images
        ``--images DIR|GLOB``, or ``None`` for a built-in set.
    preset
        Preset whose geometry (global view, tile size, position table) the pages are measured against.
    base_workload
        Workload id each page runs as (``--workload`` when it names a single-page workload).
    """

    set_id: str
    images: str | None
    preset: str
    base_workload: str = PAGE_WORKLOAD
    x_column: str = "image_tokens"
    """The geometry column TTFT is plotted against."""

    @property
    def description(self) -> str:
        """One line for the report header."""
        if self.images is None:
            return (f"built-in document set {self.set_id}: {len(DOCSETS[self.set_id])} generated pages, run as "
                    f"{self.base_workload}")
        return f"the pages of {self.images}, run as {self.base_workload}"

    def pages(self, directory: Path, decode_tokens: int | None, max_pixels: int) -> list[Page]:
        """Render or load the pages into ``directory``; each with its geometry and decode budget, or its error.

        ``decode_tokens`` fixes every page's budget; otherwise a built-in page takes its expected length, a user's
        page its ``decode_tokens.json`` entry, else the workload's default.
        """
        if self.images is None:
            inputs = list(builtin_pages(self.set_id, directory))
        else:
            inputs = load_pages(self.images, decode_tokens, max_pixels or 2**62)
        workload = load_workload(self.base_workload).for_config(self.preset)
        config = get_config(self.preset if self.preset in PRESETS else FULL_SIZE)
        text_tokens = workload.text_tokens()
        default = decode_tokens if decode_tokens is not None else workload.max_new_tokens
        return [self._page(p, workload, config, text_tokens, decode_tokens or p.decode_tokens or default)
                for p in inputs]

    @staticmethod
    def _page(page: PageInput, workload: Workload, config: DeepseekOCRConfig, text_tokens: int, tokens: int) -> Page:
        base = Page(page.file, page.path, page.width, page.height, tokens, error=page.error)
        if page.error is not None:
            return base
        vision = attrs.evolve(workload, width=page.width, height=page.height).vision(config)
        prompt = text_tokens + vision.image_tokens
        geometry = {"crop_cols": vision.crop_grid[0], "crop_rows": vision.crop_grid[1],
                    "image_tokens": vision.image_tokens, "prompt_tokens": prompt}
        limit = config.decoder.max_position_embeddings
        error = None
        if prompt + tokens > limit:
            error = (f"{prompt} prompt positions + {tokens} decode tokens exceed the model's {limit} positions; "
                     "lower --decode-tokens or the page's decode_tokens.json entry")
        return attrs.evolve(base, geometry=geometry, error=error)


def page_planner(workload: str, images: str | None, preset: str) -> DocumentPages | None:
    """The pages a report runs over, or ``None`` for a single-page report.

    ``--images`` selects a user's pages (``--workload`` then names the single-page workload they run as, unless it
    is a set); a ``--workload`` naming a built-in set selects its pages.

    Raises
    ------
    OpmeterError
        For ``--images`` with an empty spec.
    """
    if images is not None:
        if not str(images).strip():
            raise OpmeterError("--images needs a directory or a glob pattern")
        base = ALIASES.get(workload, workload) if ALIASES.get(workload, workload) in WORKLOADS else PAGE_WORKLOAD
        return DocumentPages(f"images:{images}", str(images), preset, base)
    if workload in DOCSETS:
        return DocumentPages(workload, None, preset)
    return None
