"""The per-module prediction table equals the tracer's ``by_module()`` on every module of the toy model."""

from __future__ import annotations

import torch

from opmeter.analytic import layer_frame
from opmeter.models.deepseek_ocr import analytic as A
from opmeter.models.deepseek_ocr.decoder import KVCache
from opmeter.models.deepseek_ocr.geometry import VisionWorkload
from opmeter.models.deepseek_ocr.model import build_reference
from opmeter.models.deepseek_ocr.preprocess import prepare_inputs_from_geometry
from opmeter.models.deepseek_ocr.tokenizer import BuiltinTokenizer
from opmeter.trace import OpTracer

COLS = ["calls", "flops_tensor", "flops_cuda", "bytes_read", "bytes_written"]


def test_prefill_and_decode_match_every_module() -> None:
    model = build_reference("deepseek-ocr-toy", device="meta")
    cfg = model.config
    vw = VisionWorkload.from_grid(3, 2, base_size=cfg.base_size, image_size=cfg.image_size, config=cfg)
    inputs = prepare_inputs_from_geometry(A.STANDARD_PROMPT, BuiltinTokenizer(), vw, cfg)
    kw = inputs.model_kwargs("meta", torch.bfloat16)
    ids = torch.zeros(1, 1, dtype=torch.long, device="meta")
    cache = KVCache()
    with OpTracer(model, nvtx=False) as trace, torch.no_grad():
        model(**kw, past_key_values=cache, use_cache=True)
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    an = A.DeepseekOCRAnalytic(cfg)
    seq = inputs.seq_len
    prefill = an.prefill(vw, seq - vw.image_tokens)
    predicted = layer_frame(prefill, calls=[("", prefill), ("", an.decode_step(seq))]).set_index("module")
    measured = trace.by_module().set_index("module")
    measured = measured[measured["calls"] > 0]
    assert set(predicted.index) == set(measured.index)
    diff = (predicted[COLS] - measured.loc[predicted.index, COLS]).abs()
    assert diff.to_numpy().max() == 0
    names = measured.loc[predicted.index, "class_name"]
    assert (predicted["class_name"] == names).all(), predicted[predicted["class_name"] != names]["class_name"]
