"""Image-token counts of the DeepSeek-OCR-2 workloads vs transformers' image processor and processor."""

from __future__ import annotations

from typing import Any

import pytest
from ocr2_helpers import needs_ocr2

from opmeter.models.deepseek_ocr2.config import get_preset
from opmeter.models.deepseek_ocr2.workloads import WORKLOADS, Ocr2Workload, get_workload

pytestmark = needs_ocr2


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
@pytest.mark.parametrize("preset", ["full", "tiny"])
def test_views_are_what_the_image_processor_makes(workload: str, preset: str) -> None:
    p, wl = get_preset(preset), get_workload(workload)
    views = wl.views(p)
    pix = wl.pixel_inputs(p)
    assert tuple(pix["pixel_values"].shape) == (1, 3, views.global_size, views.global_size)
    assert int(pix["num_local_patches"][0]) == views.tiles
    if views.tiles:
        assert tuple(pix["pixel_values_local"].shape) == (views.tiles, 3, views.tile_size, views.tile_size)


def _word_tokenizer() -> Any:
    """A tokenizer built offline (no hub): whitespace words, ``<image>`` an added special token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<image>": 1, "Free": 2, "OCR.": 3}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    tok.add_tokens(["<image>"], special_tokens=True)
    return tok


@pytest.mark.parametrize("width,height,crop", [(1240, 1754, True), (1754, 1240, True), (768, 768, True),
                                               (2000, 800, True), (1240, 1754, False)])
def test_full_size_image_tokens_equal_the_processors_placeholder_count(width: int, height: int, crop: bool) -> None:
    """The processor's public call on a real page: its ``<image>`` placeholders are the image tokens we predict."""
    from PIL import Image
    from transformers import DeepseekOcr2Processor

    p = get_preset("full")
    wl = Ocr2Workload("page", "", width=width, height=height, crop_mode=crop)
    views = wl.views(p)
    proc = wl.image_processor(p)
    if not crop:  # without tiles the processor's global view is the tile size
        proc.size = {"height": proc.tile_size, "width": proc.tile_size}
    processor = DeepseekOcr2Processor(image_processor=proc, tokenizer=_word_tokenizer())
    page = Image.new("RGB", (width, height), (255, 255, 255))
    out = processor(images=page, text="<image> Free OCR.", crop_to_patches=crop, return_tensors="pt")
    placeholders = int((out["input_ids"] == processor.image_token_id).sum())
    assert int(out["num_local_patches"][0]) == views.tiles
    assert placeholders == views.image_tokens(p)


def test_standard_page_numbers() -> None:
    p = get_preset("full")
    assert get_workload("dsocr2-standard").views(p).image_tokens(p) == 256 + 6 * 144 + 1
    assert get_workload("dsocr2-global").views(p).image_tokens(p) == 145
    assert get_workload("dsocr2-square").views(p).image_tokens(p) == 257
