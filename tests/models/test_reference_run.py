"""The reference model runs: toy preset end to end on CPU, full size shape-only on meta."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr import (
    BuiltinTokenizer,
    DeepseekOCRForCausalLM,
    VisionWorkload,
    build_reference,
    load_workload,
)
from opmeter.models.deepseek_ocr.decoder import balanced_routing_counts
from opmeter.models.deepseek_ocr.model import SHAPE_ONLY_TOKEN_ID
from opmeter.models.deepseek_ocr.preprocess import PreparedInputs, prepare_inputs_from_geometry

PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


def _inputs(model: DeepseekOCRForCausalLM, tok: BuiltinTokenizer, vw: VisionWorkload) -> PreparedInputs:
    return prepare_inputs_from_geometry(PROMPT, tok, vw, model.config)


class _RootCalls:
    def __init__(self, model: torch.nn.Module) -> None:
        self.lengths: list[int] = []
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.lengths.append(int(kwargs["input_ids"].shape[1]))


def test_toy_forward_shapes_and_finite(toy: DeepseekOCRForCausalLM, tokenizer: BuiltinTokenizer) -> None:
    vw = VisionWorkload.from_grid(2, 3, base_size=256, image_size=128, config=toy.config)
    inp = _inputs(toy, tokenizer, vw)
    assert inp.image_tokens == vw.image_tokens == 21 + 30
    with torch.no_grad():
        out = toy(**inp.model_kwargs("cpu", torch.float32))
    assert out.logits.shape == (1, inp.seq_len, 129280)
    assert out.logits.dtype == torch.float32
    assert torch.isfinite(out.logits).all()


def test_toy_generate_fixed_budget_and_kv_cache_consistency(
    toy: DeepseekOCRForCausalLM, tokenizer: BuiltinTokenizer
) -> None:
    vw = VisionWorkload.from_grid(2, 1, base_size=256, image_size=128, config=toy.config)
    kw = _inputs(toy, tokenizer, vw).model_kwargs("cpu", torch.float32)
    calls = _RootCalls(toy)
    try:
        cached = toy.generate(**kw, max_new_tokens=6, ignore_eos=True)
    finally:
        calls.handle.remove()
    assert cached.shape[1] == kw["input_ids"].shape[1] + 6
    # one root call per step: the prefill with all tokens, then one token each
    assert calls.lengths == [kw["input_ids"].shape[1]] + [1] * 5
    uncached = toy.generate(**kw, max_new_tokens=6, ignore_eos=True, use_cache=False)
    assert torch.equal(cached, uncached)


def test_toy_sdpa_matches_eager(toy: DeepseekOCRForCausalLM, tokenizer: BuiltinTokenizer) -> None:
    sdpa = build_reference("deepseek-ocr-toy", attn_implementation="sdpa")
    sdpa.load_state_dict(toy.state_dict())
    vw = VisionWorkload.from_grid(1, 2, base_size=256, image_size=128, config=toy.config)
    kw = _inputs(toy, tokenizer, vw).model_kwargs("cpu", torch.float32)
    with torch.no_grad():
        a, b = toy(**kw).logits, sdpa(**kw).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_vision_feature_layout(toy: DeepseekOCRForCausalLM) -> None:
    """Crops first, one newline per row, global grid, separator; only experts with tokens are called."""
    m = toy.model
    n = toy.config.projector.n_embed
    crops = torch.randn(6, 3, 128, 128)
    glob = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        feats = m._image_features(crops, glob, (2, 3))
        local = m._encode_views(crops)  # [6, 4, n]: 2x2 tokens per tile
        global_ = m._encode_views(glob)  # [1, 16, n]
    assert feats.shape == (30 + 21, n)
    torch.testing.assert_close(feats[-1], m.view_seperator)
    # first local row: tile 0 row 0, tile 1 row 0, newline
    torch.testing.assert_close(feats[0:2], local[0, 0:2])
    torch.testing.assert_close(feats[2:4], local[1, 0:2])
    torch.testing.assert_close(feats[4], m.image_newline)
    torch.testing.assert_close(feats[30:34], global_[0, 0:4])
    torch.testing.assert_close(feats[34], m.image_newline)
    # no crops: zero crop tensor -> global only
    with torch.no_grad():
        only_global = m._image_features(torch.zeros(1, 3, 256, 256), glob, (1, 1))
    assert only_global.shape == (21, n)


def test_moe_calls_only_routed_experts(toy: DeepseekOCRForCausalLM) -> None:
    moe = toy.model.layers[1].mlp
    called: list[int] = []
    handles = [e.register_forward_hook(lambda mod, a, o, i=i: called.append(i)) for i, e in enumerate(moe.experts)]
    x = torch.randn(1, 1, toy.config.decoder.hidden_size)
    try:
        with torch.no_grad():
            idx, _ = moe.gate(x)
            moe(x)
    finally:
        for h in handles:
            h.remove()
    assert sorted(called) == sorted(idx.view(-1).tolist())


def test_balanced_routing_policy() -> None:
    counts = balanced_routing_counts(10, 6, 64)
    assert counts.sum() == 60 and counts.max() <= 1
    counts = balanced_routing_counts(1000, 6, 64)
    assert counts.sum() == 6000 and counts.max() - counts.min() <= 1


def test_toy_infer_end_to_end(toy: DeepseekOCRForCausalLM, tokenizer: BuiltinTokenizer, tmp_path: Path) -> None:
    wl = load_workload("dsocr-standard-v1", preset="deepseek-ocr-toy", max_new_tokens=4)
    image = wl.save_image(tmp_path)
    kwargs = wl.infer_kwargs(image)
    text = toy.infer(tokenizer, **kwargs)
    assert isinstance(text, str) and text
    again = toy.infer(tokenizer, **kwargs)
    assert again == text  # greedy, deterministic
    out = tmp_path / "out"
    kwargs.update(save_results=True, output_path=str(out), test_compress=True)
    toy.infer(tokenizer, **kwargs)
    assert (out / "result.mmd").is_file() and (out / "result_with_boxes.jpg").is_file() and (out / "images").is_dir()


def test_toy_infer_crop_mode_off_and_forced_grid(toy: DeepseekOCRForCausalLM, tokenizer: BuiltinTokenizer,
                                                  tmp_path: Path) -> None:
    image = tmp_path / "page.png"
    Image.new("RGB", (300, 200), (200, 200, 200)).save(image)
    text = toy.infer(tokenizer, "<image>\nFree OCR.", image, base_size=128, image_size=128, crop_mode=False,
                     max_new_tokens=2, eval_mode=True)
    assert isinstance(text, str)
    inp = toy.prepare(tokenizer, "<image>\nFree OCR.", image, 256, 128, True, crop_grid=(3, 1))
    assert inp.images_crop is not None and inp.images_crop.shape == (3, 3, 128, 128)
    assert inp.image_tokens == 21 + (2 * 3 + 1) * 2


def test_infer_errors(toy: DeepseekOCRForCausalLM, tokenizer: BuiltinTokenizer, tmp_path: Path) -> None:
    with pytest.raises(OpmeterError, match="not found"):
        toy.infer(tokenizer, PROMPT, tmp_path / "missing.png", max_new_tokens=1)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(OpmeterError, match="cannot read image"):
        toy.infer(tokenizer, PROMPT, bad, max_new_tokens=1)
    with pytest.raises(OpmeterError, match="prompt"):
        toy.infer(tokenizer, "", bad)
    good = tmp_path / "ok.png"
    Image.new("RGB", (64, 64)).save(good)
    with pytest.raises(OpmeterError, match="exactly one"):
        toy.infer(tokenizer, "no placeholder", good, max_new_tokens=1)


def test_full_size_prefill_and_decode_on_meta(full_meta: DeepseekOCRForCausalLM, tokenizer: BuiltinTokenizer) -> None:
    vw = VisionWorkload.from_image_size(1240, 1754)
    inp = _inputs(full_meta, tokenizer, vw)
    kw = inp.model_kwargs("meta", torch.bfloat16)
    assert kw["images"][0][0].shape == (6, 3, 640, 640)
    calls = _RootCalls(full_meta)
    try:
        seq = full_meta.generate(**kw, max_new_tokens=3)
    finally:
        calls.handle.remove()
    assert seq.device.type == "meta" and seq.shape == (1, inp.seq_len + 3)
    assert calls.lengths == [inp.seq_len, 1, 1]
    out = full_meta(**kw)
    assert out.logits.shape == (1, inp.seq_len, 129280) and out.logits.dtype == torch.float32


def test_full_size_infer_on_meta(full_meta: DeepseekOCRForCausalLM, tokenizer: BuiltinTokenizer,
                                 tmp_path: Path) -> None:
    wl = load_workload("dsocr-gundam-v1", crop_grid=(1, 2), max_new_tokens=2)
    text = full_meta.infer(tokenizer, **wl.infer_kwargs(wl.save_image(tmp_path)))
    assert text == tokenizer.decode([SHAPE_ONLY_TOKEN_ID] * 2).strip()


def test_generate_stops_at_eos_unless_ignored(toy: DeepseekOCRForCausalLM, tokenizer: BuiltinTokenizer) -> None:
    vw = VisionWorkload.from_grid(1, 1, base_size=256, image_size=128, config=toy.config)
    kw = _inputs(toy, tokenizer, vw).model_kwargs("cpu", torch.float32)
    free = toy.generate(**kw, max_new_tokens=3, ignore_eos=True)
    first = int(free[0, kw["input_ids"].shape[1]])
    stopped = toy.generate(**kw, max_new_tokens=3, eos_token_id=first)
    assert stopped.shape[1] == kw["input_ids"].shape[1] + 1
    ignored = toy.generate(**kw, max_new_tokens=3, eos_token_id=first, ignore_eos=True)
    assert torch.equal(ignored, free)


def test_toy_under_fake_tensor_mode(toy: DeepseekOCRForCausalLM, tokenizer: BuiltinTokenizer) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    vw = VisionWorkload.from_grid(2, 1, base_size=256, image_size=128, config=toy.config)
    kw = _inputs(toy, tokenizer, vw).model_kwargs("cpu", torch.float32)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        kw["input_ids"] = mode.from_tensor(kw["input_ids"])
        kw["images"] = [tuple(mode.from_tensor(t) for t in kw["images"][0])]
        out = toy.generate(**kw, max_new_tokens=2)
    assert out.shape == (1, kw["input_ids"].shape[1] + 2)
