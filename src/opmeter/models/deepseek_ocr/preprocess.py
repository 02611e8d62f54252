"""Pixel preprocessing and prompt/token layout of DeepSeek-OCR, as the vendor ``infer()`` does it.

The geometry (crop grid, view sizes, token counts) comes from :mod:`opmeter.models.deepseek_ocr.geometry`; this
module turns an image and a prompt into the model inputs:

* global view: ``ImageOps.pad`` to ``base_size`` (crop mode) or ``image_size`` (crop mode off; images up to 640 are
  first resized to ``image_size``), padding colour the normalisation mean (127, 127, 127);
* crops (crop mode, grid larger than 1 x 1): the image resized to ``(image_size*cols, image_size*rows)`` and cut into
  row-major ``image_size`` tiles; without crops the crops tensor is a zero ``[1, 3, base, base]`` tensor, as the vendor
  passes it;
* normalisation ``(x/255 - 0.5) / 0.5``, channels first;
* prompt "plain" format: the text split at ``<image>``, each piece encoded without BOS/EOS, image-token ids in
  between, BOS prepended; ``images_seq_mask`` marks the image positions; ``images_spatial_crop = [[cols, rows]]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import attrs
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr.config import FULL_SIZE, DeepseekOCRConfig, get_config
from opmeter.models.deepseek_ocr.geometry import VisionWorkload

IMAGE_PLACEHOLDER = "<image>"
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
PAD_COLOR = tuple(int(m * 255) for m in MEAN)


class TokenizerLike(Protocol):
    """What opmeter needs from a tokenizer: ``encode``/``decode`` (any HF tokenizer qualifies)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: Any, skip_special_tokens: bool = ...) -> str: ...


@attrs.frozen
class PreparedInputs:
    """Model inputs for one prompt with at most one image.

    Attributes
    ----------
    input_ids
        ``[S]`` token ids (BOS first, image-token id at image positions).
    images_seq_mask
        ``[S]`` bool, True at image positions.
    images_crop
        ``[N, 3, image_size, image_size]`` crop tiles, or a zero ``[1, 3, base, base]`` tensor without crops.
    images_ori
        ``[1, 3, V, V]`` global view (``V = base_size`` in crop mode, else ``image_size``).
    images_spatial_crop
        ``[1, 2]`` long tensor ``[[cols, rows]]`` (kept on the host).
    vision
        The geometry the inputs were built from (``None`` for a text-only prompt).
    """

    input_ids: torch.Tensor
    images_seq_mask: torch.Tensor
    images_crop: torch.Tensor | None
    images_ori: torch.Tensor | None
    images_spatial_crop: torch.Tensor | None
    vision: VisionWorkload | None

    @property
    def seq_len(self) -> int:
        """Prefill sequence length."""
        return int(self.input_ids.shape[0])

    @property
    def image_tokens(self) -> int:
        """Number of image positions."""
        return int(self.images_seq_mask.sum().item())

    @property
    def text_tokens(self) -> int:
        """Non-image positions (BOS included)."""
        return self.seq_len - self.image_tokens

    def model_kwargs(self, device: torch.device | str, dtype: torch.dtype) -> dict[str, Any]:
        """Batch-of-one keyword arguments for ``forward``/``generate`` on ``device`` (spatial crops stay on host)."""
        kwargs: dict[str, Any] = {
            "input_ids": self.input_ids.unsqueeze(0).to(device),
            "images_seq_mask": self.images_seq_mask.unsqueeze(0).to(device),
        }
        if self.images_ori is not None and self.images_crop is not None:
            kwargs["images"] = [(self.images_crop.to(device, dtype), self.images_ori.to(device, dtype))]
            kwargs["images_spatial_crop"] = self.images_spatial_crop
        return kwargs


def load_image(image_file: str | Path) -> Image.Image:
    """Open an image as RGB (EXIF orientation applied).

    Raises
    ------
    OpmeterError
        When the file is missing or is not a readable image.
    """
    path = Path(image_file)
    if not path.is_file():
        raise OpmeterError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im).convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise OpmeterError(f"cannot read image {path}: {exc}") from None


def normalize(image: Image.Image) -> torch.Tensor:
    """``ToTensor`` + ``Normalize(0.5, 0.5)``: ``[3, H, W]`` float32 in [-1, 1]."""
    x = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.float32)).div_(255.0)
    x = (x - torch.tensor(MEAN)) / torch.tensor(STD)
    return x.permute(2, 0, 1).contiguous()


def crop_tiles(image: Image.Image, grid: tuple[int, int], tile: int) -> list[Image.Image]:
    """Resize to ``(tile*cols, tile*rows)`` and cut row-major ``tile x tile`` tiles (vendor ``dynamic_preprocess``)."""
    cols, rows = grid
    resized = image.resize((tile * cols, tile * rows))
    tiles = []
    for i in range(cols * rows):
        x, y = (i % cols) * tile, (i // cols) * tile
        tiles.append(resized.crop((x, y, x + tile, y + tile)))
    return tiles


def image_views(
    image: Image.Image,
    base_size: int = 1024,
    image_size: int = 640,
    crop_mode: bool = True,
    crop_grid: tuple[int, int] | None = None,
    config: DeepseekOCRConfig | None = None,
) -> tuple[VisionWorkload, torch.Tensor, torch.Tensor]:
    """Geometry, crops tensor and global-view tensor of one image (float32).

    ``crop_grid`` forces a grid ``(cols, rows)`` in crop mode (Gundam with an explicit grid); ``(1, 1)`` means none.
    """
    cfg = config or get_config(FULL_SIZE)
    width, height = image.size
    if crop_grid is not None:
        if not crop_mode:
            raise OpmeterError("an explicit crop grid needs crop mode on")
        vw = attrs.evolve(VisionWorkload.from_grid(*crop_grid, base_size, image_size, cfg), width=width, height=height)
    else:
        vw = VisionWorkload.from_image_size(width, height, base_size, image_size, crop_mode, cfg)
    if crop_mode:
        global_view = ImageOps.pad(image, (base_size, base_size), color=PAD_COLOR)
    else:
        if image_size <= 640:
            image = image.resize((image_size, image_size))
        global_view = ImageOps.pad(image, (image_size, image_size), color=PAD_COLOR)
    images_ori = normalize(global_view).unsqueeze(0)
    if vw.has_crops:
        images_crop = torch.stack([normalize(t) for t in crop_tiles(image, vw.crop_grid, image_size)], dim=0)
    else:
        images_crop = torch.zeros((1, 3, base_size, base_size))
    return vw, images_crop, images_ori


def image_token_ids(vw: VisionWorkload, image_token_id: int) -> list[int]:
    """The image-token run of one image, in the vendor's order (global rows + separator, then crop rows)."""
    q_b, q = vw.global_queries, vw.crop_queries
    ids = ([image_token_id] * q_b + [image_token_id]) * q_b + [image_token_id]
    if vw.has_crops:
        cols, rows = vw.crop_grid
        ids += ([image_token_id] * (q * cols) + [image_token_id]) * (q * rows)
    assert len(ids) == vw.image_tokens
    return ids


def tokenize_prompt(
    prompt: str, tokenizer: TokenizerLike, vision: VisionWorkload | None, config: DeepseekOCRConfig
) -> tuple[list[int], list[bool]]:
    """Token ids and image mask of a "plain"-format prompt with at most one ``<image>`` (BOS prepended)."""
    splits = prompt.split(IMAGE_PLACEHOLDER)
    n_images = len(splits) - 1
    if vision is None and n_images:
        raise OpmeterError("the prompt has an <image> placeholder but no image was given")
    if vision is not None and n_images != 1:
        raise OpmeterError(f"the prompt must contain exactly one {IMAGE_PLACEHOLDER} placeholder, found {n_images}")
    ids: list[int] = []
    mask: list[bool] = []
    for i, text in enumerate(splits):
        if i > 0 and vision is not None:
            img = image_token_ids(vision, config.image_token_id)
            ids += img
            mask += [True] * len(img)
        piece = list(tokenizer.encode(text, add_special_tokens=False)) if text else []
        ids += piece
        mask += [False] * len(piece)
    return [config.decoder.bos_token_id, *ids], [False, *mask]


def prepare_inputs(
    prompt: str,
    tokenizer: TokenizerLike,
    image: Image.Image | None = None,
    base_size: int = 1024,
    image_size: int = 640,
    crop_mode: bool = True,
    crop_grid: tuple[int, int] | None = None,
    config: DeepseekOCRConfig | None = None,
) -> PreparedInputs:
    """Build the model inputs for a prompt and an optional image exactly as the vendor ``infer()`` does."""
    cfg = config or get_config(FULL_SIZE)
    if image is None:
        ids, mask = tokenize_prompt(prompt, tokenizer, None, cfg)
        return PreparedInputs(torch.tensor(ids, dtype=torch.long), torch.tensor(mask), None, None, None, None)
    vw, images_crop, images_ori = image_views(image, base_size, image_size, crop_mode, crop_grid, cfg)
    ids, mask = tokenize_prompt(prompt, tokenizer, vw, cfg)
    return PreparedInputs(
        input_ids=torch.tensor(ids, dtype=torch.long),
        images_seq_mask=torch.tensor(mask, dtype=torch.bool),
        images_crop=images_crop,
        images_ori=images_ori,
        images_spatial_crop=torch.tensor([list(vw.crop_grid)], dtype=torch.long),
        vision=vw,
    )


def prepare_inputs_from_geometry(
    prompt: str, tokenizer: TokenizerLike, vision: VisionWorkload, config: DeepseekOCRConfig | None = None
) -> PreparedInputs:
    """Inputs with the right shapes and token layout but without an image: pixels are seeded noise in [-1, 1].

    For shape-only runs (move them to the meta device) and for benchmarks that do not care about pixel values.
    """
    cfg = config or get_config(FULL_SIZE)
    ids, mask = tokenize_prompt(prompt, tokenizer, vision, cfg)
    gen = torch.Generator().manual_seed(0)
    crops = (
        torch.rand((vision.num_crops, 3, vision.image_size, vision.image_size), generator=gen) * 2 - 1
        if vision.has_crops
        else torch.zeros((1, 3, vision.base_size, vision.base_size))
    )
    side = vision.global_view_size
    return PreparedInputs(
        input_ids=torch.tensor(ids, dtype=torch.long),
        images_seq_mask=torch.tensor(mask, dtype=torch.bool),
        images_crop=crops,
        images_ori=torch.rand((1, 3, side, side), generator=gen) * 2 - 1,
        images_spatial_crop=torch.tensor([list(vision.crop_grid)], dtype=torch.long),
        vision=vision,
    )
