"""Pixel preprocessing and token layout as the vendor infer() builds them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr import BuiltinTokenizer, get_config
from opmeter.models.deepseek_ocr.preprocess import crop_tiles, image_views, load_image, normalize, prepare_inputs

PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


def _gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8))


def test_normalize_range_and_layout() -> None:
    t = normalize(Image.new("RGB", (4, 2), (255, 0, 127)))
    assert t.shape == (3, 2, 4)
    torch.testing.assert_close(t[:, 0, 0], torch.tensor([1.0, -1.0, 127 / 255 * 2 - 1]))


def test_tiles_are_row_major() -> None:
    tiles = crop_tiles(_gradient(1300, 700), (3, 2), 64)
    assert len(tiles) == 6 and all(t.size == (64, 64) for t in tiles)
    red = [np.asarray(t)[..., 0].mean() for t in tiles]
    green = [np.asarray(t)[..., 1].mean() for t in tiles]
    assert red[0] < red[1] < red[2] and red[3] < red[4] < red[5]  # columns left to right
    assert green[0] < green[3] and green[2] < green[5]  # then the next row


def test_views_and_padding() -> None:
    cfg = get_config("deepseek-ocr-v1-base")
    vw, crops, glob = image_views(_gradient(1240, 1754), 1024, 640, True, None, cfg)
    assert vw.crop_grid == (2, 3) and crops.shape == (6, 3, 640, 640) and glob.shape == (1, 3, 1024, 1024)
    # portrait page padded left/right with the mean colour (127 -> ~0 after normalisation)
    assert abs(float(glob[0, :, 512, 0].mean())) < 0.01 and abs(float(glob[0, :, 512, -1].mean())) < 0.01
    vw, crops, glob = image_views(_gradient(500, 300), 1024, 640, True, None, cfg)
    assert vw.crop_grid == (1, 1) and crops.shape == (1, 3, 1024, 1024) and not crops.any()
    vw, _, glob = image_views(_gradient(500, 300), 512, 512, False, None, cfg)
    assert glob.shape == (1, 3, 512, 512) and vw.image_tokens == 73


@pytest.mark.parametrize(("w", "h"), [(1240, 1754), (640, 640), (2000, 500)])
def test_token_layout(w: int, h: int) -> None:
    tok = BuiltinTokenizer()
    inp = prepare_inputs(PROMPT, tok, _gradient(w, h))
    assert inp.vision is not None
    ids, mask = inp.input_ids.tolist(), inp.images_seq_mask.tolist()
    assert ids[0] == 0 and not mask[0]
    n = inp.vision.image_tokens
    assert mask[1 : 1 + n] == [True] * n and not any(mask[1 + n :])
    assert set(ids[1 : 1 + n]) == {128815}
    assert ids[1 + n :] == tok.encode("\n<|grounding|>Convert the document to markdown.", add_special_tokens=False)
    assert inp.images_spatial_crop is not None
    assert inp.images_spatial_crop.tolist() == [list(inp.vision.crop_grid)]


def test_oversized_image_is_a_one_line_error(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # PIL's decompression-bomb guard is not an OSError
    with pytest.raises(OpmeterError, match="cannot read image"):
        load_image(path)
