"""Property tests of the analytic model: monotonicity, decode vs prefill, KV growth, flash vs normal."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from opmeter.models.deepseek_ocr import analytic as A
from opmeter.models.deepseek_ocr.config import get_config
from opmeter.models.deepseek_ocr.geometry import VisionWorkload

FULL = get_config("deepseek-ocr-v1-base")
NORMAL = A.DeepseekOCRAnalytic(FULL, "normal")
FLASH = A.DeepseekOCRAnalytic(FULL, "flash")
FAST = settings(max_examples=25, deadline=None)


def _metrics(layer: A.Layer) -> tuple[float, ...]:
    return (layer.tensor_core_flops(), layer.cuda_core_flops(), layer.io_bytes())


@FAST
@given(st.integers(2, 4000), st.integers(1, 500))
def test_prefill_monotonic_in_sequence_length(seq: int, extra: int) -> None:
    a, b = NORMAL.prefill(None, seq), NORMAL.prefill(None, seq + extra)
    assert all(x < y for x, y in zip(_metrics(a), _metrics(b), strict=True))
    assert a.activation_bytes() <= b.activation_bytes()


@FAST
@given(st.integers(1, 5), st.integers(1, 5), st.sampled_from(["normal", "flash"]))
def test_vision_monotonic_in_crops(rows: int, cols: int, variant: str) -> None:
    model = A.DeepseekOCRAnalytic(FULL, variant)
    small, big = VisionWorkload.from_grid(cols, rows), VisionWorkload.from_grid(cols + 1, rows)
    assert big.image_tokens > small.image_tokens
    assert all(x < y for x, y in zip(_metrics(model.vision(small)), _metrics(model.vision(big)), strict=True))


@FAST
@given(st.integers(1, 6), st.sampled_from([640, 1024]))
def test_layers_monotonic_in_batch(batch: int, side: int) -> None:
    for make in (lambda b: A.sam_layer(FULL, b, side), lambda b: A.clip_layer(FULL, b, side // 64),
                 lambda b: A.decoder_layer(FULL, 1, b, 50)):
        a, b = make(batch), make(batch + 1)
        assert all(x < y for x, y in zip(_metrics(a), _metrics(b), strict=True))


@FAST
@given(st.integers(2, 3000))
def test_decode_step_cheaper_than_prefill(seq: int) -> None:
    pre, dec = NORMAL.prefill(None, seq), NORMAL.decode_step(seq)
    assert dec.tensor_core_flops() <= pre.tensor_core_flops()
    assert dec.cuda_core_flops() <= pre.cuda_core_flops()
    assert dec.activation_bytes() <= pre.activation_bytes()


@FAST
@given(st.integers(1, 4000), st.sampled_from(["normal", "flash"]))
def test_kv_grows_one_token_per_step(past: int, variant: str) -> None:
    model = A.DeepseekOCRAnalytic(FULL, variant)
    d = FULL.decoder
    per_token = 2 * d.num_hidden_layers * d.num_key_value_heads * d.head_dim * 2
    a, b = model.decode_step(past), model.decode_step(past + 1)
    assert b.kv_cache_bytes() - a.kv_cache_bytes() == per_token
    assert a.kv_cache_bytes() == model.kv_cache_bytes(past + 1)


@FAST
@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 40), st.integers(1, 2000))
def test_flash_not_worse_than_normal(rows: int, cols: int, text: int, past: int) -> None:
    vw = VisionWorkload.from_grid(cols, rows)
    pairs = [
        (NORMAL.prefill(vw, text + 1), FLASH.prefill(vw, text + 1)),
        (NORMAL.decode_step(past), FLASH.decode_step(past)),
        (NORMAL.vision(vw), FLASH.vision(vw)),
    ]
    for normal, flash in pairs:
        assert flash.tensor_core_flops() == normal.tensor_core_flops()
        assert flash.io_bytes() <= normal.io_bytes()
        assert flash.activation_bytes() <= normal.activation_bytes()
        assert flash.kv_cache_bytes() == normal.kv_cache_bytes()
