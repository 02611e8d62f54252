"""Workload profiles, synthetic pages, preset rescaling, tokenizer."""

from __future__ import annotations

import hashlib

import pytest

from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr import WORKLOADS, BuiltinTokenizer, load_workload
from opmeter.models.deepseek_ocr.workloads import STANDARD_PROMPT


def test_standard_workload() -> None:
    wl = load_workload("dsocr-standard-v1")
    assert (wl.base_size, wl.image_size, wl.crop_mode, wl.max_new_tokens, wl.ignore_eos) == (1024, 640, True, 512, True)
    assert wl.prompt == STANDARD_PROMPT == "<image>\n<|grounding|>Convert the document to markdown."
    assert wl.width < wl.height  # A4 portrait
    vw = wl.vision()
    assert vw.crop_grid == (2, 3) and vw.image_tokens == 903
    s = wl.summary()
    assert s["text_tokens"] == 9  # BOS, "\n", <|grounding|>, Convert, the, document, to, markdown, "."
    assert s["prefill_length"] == 912 == wl.prefill_length()
    assert s["decode_steps"] == 511 and s["views"] == [[6, 640], [1, 1024]]


@pytest.mark.parametrize(
    ("wid", "tokens"),
    [("dsocr-tiny-v1", 73), ("dsocr-small-v1", 111), ("dsocr-base-v1", 273), ("dsocr-large-v1", 421),
     ("dsocr-gundam-v1", 903), ("tiny", 73), ("gundam", 903)],
)
def test_vendor_modes(wid: str, tokens: int) -> None:
    assert load_workload(wid).vision().image_tokens == tokens


def test_gundam_explicit_grid() -> None:
    wl = load_workload("dsocr-gundam-v1", crop_grid=(3, 2))
    assert wl.vision().crop_grid == (3, 2)
    assert wl.vision().image_tokens == 273 + (10 * 3 + 1) * 20
    with pytest.raises(OpmeterError, match="crop mode off"):
        load_workload("dsocr-base-v1", crop_grid=(2, 2))


def test_unknown_workload_lists_known() -> None:
    with pytest.raises(OpmeterError) as err:
        load_workload("nope")
    for wid in WORKLOADS:
        assert wid in str(err.value)


def test_synthetic_page_is_deterministic() -> None:
    wl = load_workload("standard")
    a, b = wl.image(), wl.image()
    assert a.size == (wl.width, wl.height)
    assert hashlib.sha256(a.tobytes()).digest() == hashlib.sha256(b.tobytes()).digest()
    lo, hi = a.convert("L").getextrema()
    assert lo < 100 < hi  # not blank


@pytest.mark.parametrize("wid", sorted(WORKLOADS))
def test_rescaling_to_small_presets_keeps_the_grid(wid: str) -> None:
    wl = load_workload(wid)
    toy = wl.for_config("deepseek-ocr-toy")
    assert toy.preset == "deepseek-ocr-toy"
    assert toy.vision().crop_grid == wl.vision().crop_grid
    assert toy.base_size % 64 == 0 and toy.image_size % 64 == 0
    mini = wl.for_config("deepseek-ocr-mini")
    assert (mini.base_size, mini.image_size, mini.width) == (wl.base_size, wl.image_size, wl.width)
    std_toy = load_workload("standard", preset="deepseek-ocr-toy")
    assert (std_toy.base_size, std_toy.image_size) == (256, 128)


def test_builtin_tokenizer_round_trip_and_specials() -> None:
    tok = BuiltinTokenizer()
    assert (tok.bos_token_id, tok.eos_token_id, tok.image_token_id) == (0, 1, 128815)
    for text in [STANDARD_PROMPT, "Free OCR. ", "Ünïcode\ttabs 42 <|ref|>x<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    assert tok.encode("<|grounding|>")[0] == 0
    assert tok.encode("<image>", add_special_tokens=False) == [128815]
    assert isinstance(tok.decode([5000, 100000, 1]), str)
    assert tok.decode([1], skip_special_tokens=True) == ""
