"""DeepSeek-OCR-2 workloads: a page, a crop mode and a generation budget, preprocessed by transformers' own
image processor.

The image processor (``DeepseekOcr2ImageProcessorPil``) decides the crop grid: with crop mode on, a page whose longer
side exceeds the tile size is resized onto the grid of 2 to 6 tiles whose aspect ratio is closest to the page's and
cut into tiles, plus one global view padded to a square; with crop mode off only the global view is made, at the tile
size. Every view becomes a fixed number of image tokens, set by the modeling code's learned queries: 256 for a view
with more than 144 SAM output patches (the 1,024-pixel global view), else 144; one view separator closes the image.

=========================  =========  ========================================  ====================
id                         crop mode  views (A4 page, 1240 x 1754)              image tokens
=========================  =========  ========================================  ====================
``dsocr2-standard``        on         global 1024 + 2 x 3 tiles of 768          256 + 6 x 144 + 1 = 1121
``dsocr2-global``          off        global 768                                144 + 1 = 145
``dsocr2-square``          on         a 768 x 768 page: global 1024, no tiles   256 + 1 = 257
=========================  =========  ========================================  ====================
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr.workloads import A4_PAGE, STANDARD_PROMPT, synthetic_page
from opmeter.models.deepseek_ocr2.config import (
    BOS_ID,
    IMAGE_TOKEN_ID,
    QUERIES_GLOBAL,
    QUERIES_LOCAL,
    Ocr2Preset,
)


def view_tokens(preset: Ocr2Preset, view_size: int) -> int:
    """Image tokens of one view: the learned queries the vision tower picks for its SAM output grid."""
    s = preset.sam
    grid = view_size // s.patch_size
    for _ in s.downsample_channels:  # each downsampling convolution: kernel 3, stride 2, padding 1
        grid = (grid - 1) // 2 + 1
    return QUERIES_LOCAL if grid * grid <= QUERIES_LOCAL else QUERIES_GLOBAL


@attrs.frozen
class ImageViews:
    """What the image processor made of one page: the global view and the local tiles."""

    global_size: int
    tile_size: int
    tiles: int
    grid: tuple[int, int] = (0, 0)
    """Crop grid ``(columns, rows)``; ``(0, 0)`` without tiles."""

    def image_tokens(self, preset: Ocr2Preset) -> int:
        """Image tokens: global view, each tile, one view separator."""
        local = self.tiles * view_tokens(preset, self.tile_size) if self.tiles else 0
        return view_tokens(preset, self.global_size) + local + 1


@attrs.frozen
class Ocr2Workload:
    """One DeepSeek-OCR-2 workload (see the module docstring); sizes are the preset's native view sizes."""

    id: str
    description: str
    width: int = A4_PAGE[0]
    height: int = A4_PAGE[1]
    crop_mode: bool = True
    prompt: str = STANDARD_PROMPT
    max_new_tokens: int = 512
    seed: int = 0

    @property
    def decode_steps(self) -> int:
        """Decode steps after the prefill (the prefill produces the first new token)."""
        return self.max_new_tokens - 1

    def with_new_tokens(self, tokens: int) -> Ocr2Workload:
        """The same workload with another generation length."""
        if tokens < 1:
            raise OpmeterError(f"a run generates at least 1 token, got {tokens}")
        return attrs.evolve(self, max_new_tokens=tokens)

    def image_processor(self, preset: Ocr2Preset) -> Any:
        """transformers' image processor (PIL backend) at the preset's view sizes."""
        from opmeter.models.deepseek_ocr2.compat import require_deepseek_ocr2

        require_deepseek_ocr2()
        from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import (
            DeepseekOcr2ImageProcessorPil,
        )

        size = preset.global_size
        return DeepseekOcr2ImageProcessorPil(size={"height": size, "width": size}, tile_size=preset.tile_size,
                                             crop_to_patches=self.crop_mode)

    def views(self, preset: Ocr2Preset) -> ImageViews:
        """The views the image processor makes of this page (no pixels are processed)."""
        from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import get_optimal_tiled_canvas

        proc = self.image_processor(preset)
        tile = preset.tile_size
        # the rule of the processor's preprocessing (its get_number_of_image_patches disagrees for pages at most one
        # tile wide; tests compare this with the processor's output on the page)
        if not (self.crop_mode and max(self.width, self.height) > tile):
            return ImageViews(preset.global_size if self.crop_mode else tile, tile, 0)
        cols, rows = get_optimal_tiled_canvas((self.height, self.width), (tile, tile), proc.min_patches,
                                              proc.max_patches)
        return ImageViews(preset.global_size, tile, cols * rows, (cols, rows))

    def pixel_inputs(self, preset: Ocr2Preset) -> dict[str, torch.Tensor]:
        """``pixel_values`` (and ``pixel_values_local``, ``num_local_patches``) of the synthetic page."""
        proc = self.image_processor(preset)
        out = proc(synthetic_page(self.width, self.height, self.seed), return_tensors="pt")
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}

    def text_ids(self) -> tuple[list[int], list[int]]:
        """Token ids before and after the ``<image>`` placeholder (BOS first), by the built-in DeepSeek tokenizer."""
        from opmeter.models.deepseek_ocr.tokenizer import BuiltinTokenizer

        tok = BuiltinTokenizer()
        before, _, after = self.prompt.partition("<image>")
        head = [BOS_ID, *(tok.encode(before, add_special_tokens=False) if before else [])]
        tail = tok.encode(after, add_special_tokens=False) if after else []
        return head, list(tail)

    def input_ids(self, preset: Ocr2Preset) -> list[int]:
        """The prompt's token ids with one image token per image feature."""
        head, tail = self.text_ids()
        return [*head, *[IMAGE_TOKEN_ID] * self.views(preset).image_tokens(preset), *tail]

    def text_tokens(self) -> int:
        """Prompt tokens that are not image tokens (BOS included)."""
        head, tail = self.text_ids()
        return len(head) + len(tail)

    def describe(self) -> dict[str, str]:
        """Header lines of a report."""
        return {
            "page": f"{self.width} x {self.height} synthetic page (seed {self.seed})",
            "crop mode": "on (global view + tiles)" if self.crop_mode else "off (one global view)",
            "prompt": self.prompt.replace("\n", "\\n"),
            "new tokens": f"{self.max_new_tokens} (fixed budget, greedy, EOS ignored)",
        }

    def summary(self) -> dict[str, Any]:
        """JSON-able facts (stored in a trace's metadata)."""
        return {"id": self.id, "width": self.width, "height": self.height, "crop_mode": self.crop_mode,
                "prompt": self.prompt, "max_new_tokens": self.max_new_tokens, "seed": self.seed}


STANDARD = "dsocr2-standard"

WORKLOADS: dict[str, Ocr2Workload] = {
    STANDARD: Ocr2Workload(STANDARD, "A4 page, crop mode on (global view + 2 x 3 tiles), 512 new tokens"),
    "dsocr2-global": Ocr2Workload("dsocr2-global", "A4 page, crop mode off (one 768 view), 512 new tokens",
                                  crop_mode=False),
    "dsocr2-square": Ocr2Workload("dsocr2-square", "768 x 768 page, crop mode on (no tiles fit), 512 new tokens",
                                  width=768, height=768),
}


def get_workload(name: str) -> Ocr2Workload:
    """The workload called ``name``.

    Raises
    ------
    OpmeterError
        For an unknown name (the message lists the known ones).
    """
    try:
        return WORKLOADS[name]
    except KeyError:
        raise OpmeterError(f"unknown DeepSeek-OCR-2 workload {name!r}; known: {', '.join(WORKLOADS)}") from None


def workload_from_summary(summary: dict[str, Any]) -> Ocr2Workload:
    """Rebuild a workload from :meth:`Ocr2Workload.summary` (a saved trace's metadata)."""
    from opmeter.checks import whole_number
    from opmeter.errors import OpmeterError

    base = WORKLOADS.get(str(summary.get("id")), WORKLOADS[STANDARD])
    bounds = {"width": (1, 1 << 16), "height": (1, 1 << 16), "max_new_tokens": (0, 1 << 20), "seed": (0, 1 << 63)}
    fields: dict[str, Any] = {k: whole_number(summary[k], f"the trace's workload {k}", *bounds[k])
                              for k in bounds if k in summary}
    if "crop_mode" in summary:
        if not isinstance(summary["crop_mode"], bool):
            raise OpmeterError(f"the trace's workload crop_mode is {str(summary['crop_mode'])[:40]!r}, not true/false")
        fields["crop_mode"] = summary["crop_mode"]
    if "prompt" in summary:
        if not isinstance(summary["prompt"], str) or len(summary["prompt"]) > 1 << 16:
            raise OpmeterError("the trace's workload prompt is not a string of at most 65,536 characters")
        fields["prompt"] = summary["prompt"]
    return attrs.evolve(base, **fields)
