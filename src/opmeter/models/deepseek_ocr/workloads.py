"""Workload profiles with stable ids: the standard DeepSeek-OCR workload and the vendor resolution modes.

Every profile uses the same deterministic synthetic A4-portrait page (generated with PIL, never shipped) and differs
in ``base_size`` / ``image_size`` / crop mode, as the vendor modes do:

=====================  ====  =====  =========  ===============================  ============
id                     base  image  crop mode  vision tokens (A4 page, 1240 x 1754)
=====================  ====  =====  =========  ===============================  ============
``dsocr-standard-v1``  1024  640    on         903 (grid 2 x 3), 512 new tokens, ignore EOS
``dsocr-tiny-v1``      512   512    off        73
``dsocr-small-v1``     640   640    off        111
``dsocr-base-v1``      1024  1024   off        273
``dsocr-large-v1``     1280  1280   off        421
``dsocr-gundam-v1``    1024  640    on         903 by default; ``crop_grid=(cols, rows)`` forces a grid
=====================  ====  =====  =========  ===============================  ============

Small presets: :meth:`Workload.for_config` rescales a full-size workload to a preset's native sizes (see there).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import attrs
from PIL import Image, ImageDraw

from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr.config import FULL_SIZE, DeepseekOCRConfig, get_config
from opmeter.models.deepseek_ocr.geometry import VisionWorkload
from opmeter.models.deepseek_ocr.preprocess import TokenizerLike, tokenize_prompt

STANDARD_PROMPT = "<image>\n<|grounding|>Convert the document to markdown."
A4_PAGE = (1240, 1754)
"""A4 portrait at 150 dpi (aspect 0.707, crop grid 2 x 3)."""

_FULL = get_config(FULL_SIZE)


def _round_size(size: float, quantum: int) -> int:
    return max(quantum, round(size / quantum) * quantum)


@attrs.frozen
class Workload:
    """One workload profile.

    Attributes
    ----------
    id
        Stable id (``dsocr-standard-v1``, ...).
    width, height
        Size of the synthetic page in pixels.
    base_size, image_size, crop_mode
        Vendor ``infer()`` arguments.
    crop_grid
        Forced ``(cols, rows)`` crop grid, or ``None`` for the vendor's aspect-ratio choice.
    prompt
        Prompt with one ``<image>`` placeholder.
    max_new_tokens, ignore_eos
        Generation budget; with ``ignore_eos`` exactly ``max_new_tokens`` tokens are generated (greedy).
    seed
        Seed of the synthetic page.
    preset
        Preset whose native sizes the sizes are expressed in.
    """

    id: str
    description: str
    width: int = A4_PAGE[0]
    height: int = A4_PAGE[1]
    base_size: int = 1024
    image_size: int = 640
    crop_mode: bool = True
    crop_grid: tuple[int, int] | None = None
    prompt: str = STANDARD_PROMPT
    max_new_tokens: int = 512
    ignore_eos: bool = True
    greedy: bool = True
    seed: int = 0
    preset: str = FULL_SIZE

    def vision(self, config: DeepseekOCRConfig | None = None) -> VisionWorkload:
        """Image geometry (views, crop grid, token counts) of this workload."""
        cfg = config or get_config(self.preset)
        if self.crop_grid is not None:
            vw = VisionWorkload.from_grid(*self.crop_grid, self.base_size, self.image_size, cfg)
            return attrs.evolve(vw, width=self.width, height=self.height)
        return VisionWorkload.from_image_size(
            self.width, self.height, self.base_size, self.image_size, self.crop_mode, cfg
        )

    @property
    def new_tokens(self) -> int:
        """Generated tokens (with ``ignore_eos``): one from the prefill plus one per decode step."""
        return self.max_new_tokens

    @property
    def decode_steps(self) -> int:
        """One-token forward passes after the prefill (``max_new_tokens - 1``)."""
        return self.max_new_tokens - 1

    def token_ids(self, tokenizer: TokenizerLike | None = None) -> tuple[list[int], list[bool]]:
        """Prefill token ids and image mask (BOS + text + image tokens), without pixels."""
        from opmeter.models.deepseek_ocr.tokenizer import BuiltinTokenizer

        cfg = get_config(self.preset)
        return tokenize_prompt(self.prompt, tokenizer or BuiltinTokenizer(), self.vision(cfg), cfg)

    def text_tokens(self, tokenizer: TokenizerLike | None = None) -> int:
        """Non-image prompt positions, BOS included (with the built-in tokenizer unless one is given)."""
        _, mask = self.token_ids(tokenizer)
        return mask.count(False)

    def prefill_length(self, tokenizer: TokenizerLike | None = None) -> int:
        """Total prefill sequence length: text tokens + image tokens."""
        return len(self.token_ids(tokenizer)[0])

    def summary(self, tokenizer: TokenizerLike | None = None) -> dict[str, Any]:
        """Everything a report needs about the workload, as plain values."""
        vw = self.vision()
        return {
            "id": self.id,
            "description": self.description,
            "preset": self.preset,
            "image_width": self.width,
            "image_height": self.height,
            "base_size": self.base_size,
            "image_size": self.image_size,
            "crop_mode": self.crop_mode,
            "crop_grid": list(vw.crop_grid),
            "num_crops": vw.num_crops,
            "views": [list(v) for v in vw.views],
            "image_tokens": vw.image_tokens,
            "text_tokens": self.text_tokens(tokenizer),
            "prefill_length": self.prefill_length(tokenizer),
            "max_new_tokens": self.max_new_tokens,
            "decode_steps": self.decode_steps,
            "ignore_eos": self.ignore_eos,
            "greedy": self.greedy,
            "prompt": self.prompt,
        }

    def describe(self) -> dict[str, str]:
        """Report header lines: the page and its crop grid, the prompt and the generation length."""
        s = self.summary()
        return {
            "image": f"{s['image_width']} x {s['image_height']} px, crop grid {s['crop_grid'][0]} x "
                     f"{s['crop_grid'][1]}, {s['image_tokens']} image tokens",
            "prompt": f"{s['prefill_length']} positions ({s['text_tokens']} text + {s['image_tokens']} image); "
                      f"{s['max_new_tokens']} new tokens (1 prefill + {s['decode_steps']} decode steps)",
        }

    def with_new_tokens(self, tokens: int) -> Workload:
        """The same workload generating ``tokens`` new tokens."""
        return attrs.evolve(self, max_new_tokens=tokens)

    def image(self) -> Image.Image:
        """The deterministic synthetic page (same pixels for the same id, size and seed)."""
        return synthetic_page(self.width, self.height, self.seed)

    def save_image(self, directory: str | Path) -> Path:
        """Write the synthetic page as PNG into ``directory`` and return its path."""
        path = Path(directory) / f"{self.id}-{self.width}x{self.height}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.image().save(path)
        return path

    def infer_kwargs(self, image_file: str | Path) -> dict[str, Any]:
        """Keyword arguments for ``model.infer(tokenizer, **kwargs)`` running this workload."""
        return {
            "prompt": self.prompt,
            "image_file": str(image_file),
            "base_size": self.base_size,
            "image_size": self.image_size,
            "crop_mode": self.crop_mode,
            "max_new_tokens": self.max_new_tokens,
            "ignore_eos": self.ignore_eos,
            "crop_grid": self.crop_grid,
            "eval_mode": True,
        }

    def for_config(self, config: DeepseekOCRConfig | str) -> Workload:
        """The same workload rescaled to a preset's native sizes, so it runs on the small presets.

        Sizes in the base role (``base_size`` in crop mode) scale by ``config.base_size / 1024``; sizes in the tile
        role (``image_size``, and the single view when crop mode is off) and the page itself scale by
        ``config.image_size / 640``. Sizes are rounded to a multiple of ``patch * downsample`` (64). Scaling page
        and tile together keeps the crop grid (the aspect and the tie rule are scale-invariant). At full size this is
        the identity.
        """
        cfg = get_config(config) if isinstance(config, str) else config
        if cfg.base_size == _FULL.base_size and cfg.image_size == _FULL.image_size:
            return attrs.evolve(self, preset=cfg.name)
        fb = cfg.base_size / _FULL.base_size
        fi = cfg.image_size / _FULL.image_size
        q = cfg.sam.patch_size * cfg.downsample_ratio
        return attrs.evolve(
            self,
            width=max(1, round(self.width * fi)),
            height=max(1, round(self.height * fi)),
            base_size=_round_size(self.base_size * (fb if self.crop_mode else fi), q),
            image_size=_round_size(self.image_size * fi, q),
            preset=cfg.name,
        )


def synthetic_page(width: int, height: int, seed: int = 0) -> Image.Image:
    """A document-like page: title, paragraphs of text lines, a table and a figure box; deterministic."""
    rng = random.Random(seed)
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    m = max(4, width // 16)
    unit = max(2, height // 110)
    y = m
    draw.rectangle((m, y, width - m - width // 5, y + 3 * unit), fill=(20, 20, 20))  # title
    y += 6 * unit
    words = ["the", "document", "model", "page", "text", "table", "figure", "results", "data", "method", "analysis"]
    while y < height - m:
        block = rng.random()
        if block < 0.15 and y + 14 * unit < height - m:  # table
            rows, cols = rng.randint(3, 6), rng.randint(3, 5)
            h = rows * 2 * unit
            for r in range(rows + 1):
                draw.line((m, y + r * 2 * unit, width - m, y + r * 2 * unit), fill=(0, 0, 0), width=1)
            for c in range(cols + 1):
                x = m + c * (width - 2 * m) // cols
                draw.line((x, y, x, y + h), fill=(0, 0, 0), width=1)
            y += h + 2 * unit
        elif block < 0.25 and y + 20 * unit < height - m:  # figure
            h = rng.randint(10, 20) * unit
            draw.rectangle((m + width // 8, y, width - m - width // 8, y + h), outline=(60, 60, 60), width=2)
            draw.ellipse((width // 3, y + h // 4, width // 2, y + 3 * h // 4), fill=(120, 160, 200))
            y += h + 2 * unit
        else:  # paragraph of text lines
            for _ in range(rng.randint(2, 6)):
                if y >= height - m:
                    break
                x = m
                line_end = width - m - (rng.randint(0, width // 3) if rng.random() < 0.3 else 0)
                while x < line_end:
                    word = rng.choice(words)
                    draw.text((x, y), word, fill=(30, 30, 30))
                    x += (len(word) + 1) * max(4, unit // 2 + 4)
                y += int(1.6 * unit) + 6
            y += unit
    return img


def _profiles() -> dict[str, Workload]:
    std = Workload(
        id="dsocr-standard-v1",
        description="Synthetic A4-portrait page, base 1024 / image 640, crop mode on, grounding-markdown prompt, "
        "greedy, 512 new tokens (EOS ignored)",
    )
    return {
        std.id: std,
        "dsocr-tiny-v1": attrs.evolve(
            std, id="dsocr-tiny-v1", description="Vendor Tiny mode: 512 x 512, no crops",
            base_size=512, image_size=512, crop_mode=False,
        ),
        "dsocr-small-v1": attrs.evolve(
            std, id="dsocr-small-v1", description="Vendor Small mode: 640 x 640, no crops",
            base_size=640, image_size=640, crop_mode=False,
        ),
        "dsocr-base-v1": attrs.evolve(
            std, id="dsocr-base-v1", description="Vendor Base mode: 1024 x 1024, no crops",
            base_size=1024, image_size=1024, crop_mode=False,
        ),
        "dsocr-large-v1": attrs.evolve(
            std, id="dsocr-large-v1", description="Vendor Large mode: 1280 x 1280, no crops",
            base_size=1280, image_size=1280, crop_mode=False,
        ),
        "dsocr-gundam-v1": attrs.evolve(
            std, id="dsocr-gundam-v1", description="Vendor Gundam mode: 1024 global view + 640 crops",
        ),
    }


WORKLOADS: dict[str, Workload] = _profiles()
ALIASES = {"standard": "dsocr-standard-v1", "tiny": "dsocr-tiny-v1", "small": "dsocr-small-v1",
           "base": "dsocr-base-v1", "large": "dsocr-large-v1", "gundam": "dsocr-gundam-v1"}


def load_workload(
    workload_id: str,
    crop_grid: tuple[int, int] | None = None,
    max_new_tokens: int | None = None,
    preset: str | DeepseekOCRConfig | None = None,
) -> Workload:
    """Load a workload profile by id (or short alias: ``standard``, ``tiny``, ..., ``gundam``).

    Parameters
    ----------
    crop_grid
        Force a crop grid ``(cols, rows)`` (crop-mode workloads only, e.g. Gundam).
    max_new_tokens
        Override the generation budget.
    preset
        Rescale to this preset's native sizes (:meth:`Workload.for_config`).

    Raises
    ------
    OpmeterError
        For an unknown id (the message lists the known ones) or a crop grid on a crop-mode-off workload.
    """
    key = ALIASES.get(workload_id, workload_id)
    if key not in WORKLOADS:
        known = ", ".join(sorted(WORKLOADS))
        raise OpmeterError(f"unknown workload {workload_id!r}; known workloads: {known}")
    wl = WORKLOADS[key]
    if crop_grid is not None:
        if not wl.crop_mode:
            raise OpmeterError(f"workload {key} has crop mode off; a crop grid needs a crop-mode workload (gundam)")
        cols, rows = crop_grid
        if cols < 1 or rows < 1:
            raise OpmeterError(f"crop grid must be at least 1x1, got {cols}x{rows}")
        wl = attrs.evolve(wl, crop_grid=(int(cols), int(rows)))
    if max_new_tokens is not None:
        if max_new_tokens < 1:
            raise OpmeterError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        wl = attrs.evolve(wl, max_new_tokens=max_new_tokens)
    if preset is not None:
        wl = wl.for_config(preset)
    return wl
