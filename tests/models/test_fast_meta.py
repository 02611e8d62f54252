"""Fast meta kernels give the same shapes, dtypes and strides as PyTorch's, and the same traced op stream."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import pytest
import torch

from opmeter.fast_meta import fast_meta_kernels
from opmeter.models.deepseek_ocr import BuiltinTokenizer, VisionWorkload, build_reference
from opmeter.models.deepseek_ocr.preprocess import prepare_inputs_from_geometry

M = {"device": "meta"}


def _cases() -> dict[str, Callable[[], torch.Tensor]]:
    a = torch.empty(1, 1, 1280, **M, dtype=torch.bfloat16)
    f = torch.empty(1, 1, 1280, **M)
    lng = torch.empty(5, 64, **M, dtype=torch.long)
    q = torch.empty(1, 10, 7, 128, **M)
    qs = q[..., 64:]
    qt = torch.empty(1, 7, 10, 128, **M).transpose(1, 2)
    ex = torch.empty(1280, **M).expand(3, 1280)
    return {
        "add": lambda: a + a, "mul_scalar": lambda: 1.702 * a, "add_eps": lambda: f + 1e-6, "pow": lambda: f.pow(2),
        "mean": lambda: f.mean(-1, keepdim=True), "rsqrt": lambda: torch.rsqrt(f), "neg": lambda: -a,
        "sum_long": lambda: lng.sum(dim=0), "sum_all": lambda: f.sum(), "mean_all": lambda: f.mean(),
        "true_div_int": lambda: lng / 2, "floor_div": lambda: lng // 6, "floor_div_float": lambda: f // 2.0,
        "mixed_dtype": lambda: f * a, "cpu_0d": lambda: a * torch.tensor(2.0), "cos": lambda: f.cos(),
        "inplace": lambda: f.clone().mul_(f), "slice_neg": lambda: -qs, "slice_mul": lambda: qs * qs,
        "transposed": lambda: qt * q, "transposed_slice": lambda: -qt[..., :64],
        "cat_slices": lambda: torch.cat([-qs, qs], -1), "cat_transposed": lambda: torch.cat([qt, qt], -1),
        "cat_dtypes": lambda: torch.cat([a, f], 0), "cat_seq": lambda: torch.cat([q, q], -2),
        "cat_legacy_empty": lambda: torch.cat([torch.empty(0, **M), f.view(-1)]), "expanded": lambda: ex + ex,
        "mul_Scalar_int_float": lambda: torch.ops.aten.mul.Scalar(lng, 1.5),
        "bool_add": lambda: torch.empty(3, **M, dtype=torch.bool) + torch.empty(3, **M, dtype=torch.bool),
        "mean_int_error": lambda: lng.mean(dim=0),
        "mm": lambda: f.view(1, 1280) @ torch.empty(1280, 7, **M), "mm_t": lambda: q[0, 0] @ q[0, 0].t(),
        "bmm": lambda: torch.bmm(q[0], q[0].transpose(1, 2)), "linear": lambda: torch.nn.functional.linear(
            a, torch.empty(64, 1280, **M, dtype=torch.bfloat16)),
        "matmul_4d": lambda: torch.matmul(qt, q.transpose(2, 3)), "mm_bad": lambda: f.view(1, 1280) @ f.view(1, 1280),
        "mm_dtype": lambda: a.view(1, 1280) @ torch.empty(1280, 2, **M),
        "bmm_dtype": lambda: torch.bmm(q[0], q[0].transpose(1, 2).to(torch.bfloat16)),
        "silu": lambda: torch.nn.functional.silu(a),
        "silu_slice": lambda: torch.nn.functional.silu(qs),
        "cat_bad_dim": lambda: torch.cat([q, q], 4), "mean_bad_dim": lambda: f.mean(3, keepdim=True),
        "sum_bad_dims": lambda: f.sum(dim=(0, 5)),
        "neg_bool": lambda: -torch.empty(3, **M, dtype=torch.bool),
        "sub_bool": lambda: torch.empty(3, **M, dtype=torch.bool) - torch.empty(3, **M, dtype=torch.bool),
        "add_alpha_float_on_long": lambda: torch.add(lng, lng, alpha=1.5),
        "add_alpha": lambda: torch.add(f, f, alpha=2),
        "softmax": lambda: torch.ops.aten._softmax(q, -1, False),
        "softmax_transposed": lambda: torch.ops.aten._softmax(qt, -1, False),
        "softmax_half_to_float": lambda: torch.ops.aten._softmax(q.half(), -1, True),
        "softmax_bad_dim": lambda: torch.ops.aten._softmax(q, 7, False),
        "softmax_fp32_of_bf16": lambda: torch.softmax(a, -1, dtype=torch.float32),
        "eq_scalar": lambda: q.eq(float("-inf")), "eq_scalar_long": lambda: lng == 3,
        "eq_scalar_transposed": lambda: qt == 0,
        "logical_not": lambda: torch.logical_not(q), "logical_not_long": lambda: torch.logical_not(lng),
        "all_dim": lambda: torch.all(q.eq(0), -1, keepdim=True), "all_dim_float": lambda: torch.all(q, 1),
        "all_dim_uint8": lambda: torch.all(lng.to(torch.uint8), 0), "all_bad_dim": lambda: torch.all(q, 9),
        "where": lambda: torch.where(q.eq(0), torch.zeros_like(q), q),
        "where_broadcast": lambda: torch.where(torch.empty(1, 1, 7, 1, **M, dtype=torch.bool), q, q),
        "where_dtypes": lambda: torch.where(q.eq(0), q, q.half()),
        "where_scalar": lambda: torch.where(q.eq(0), q, 0.0),
        "where_transposed": lambda: torch.where(qt.eq(0), qt, qt),
        "cumsum_int": lambda: torch.cumsum(lng, 0), "cumsum_float": lambda: torch.cumsum(f, -1),
        "cumsum_int32": lambda: torch.cumsum(lng.float(), 0, dtype=torch.int32),
        "cumsum_bool": lambda: torch.cumsum(torch.empty(4, **M, dtype=torch.bool), 0),
        "cumsum_bad_dim": lambda: torch.cumsum(f, 5), "cumsum_transposed": lambda: torch.cumsum(qt, -1),
        "index_rows": lambda: q[0, 0][lng[0, :5]], "index_rows_2d": lambda: q[0, 0][lng[:2, :3]],
        "index_rows_int32": lambda: q[0, 0][lng[0, :5].int()], "index_bool": lambda: q[0, 0][q[0, 0, :, 0] > 0],
        "index_second_dim": lambda: q[0, 0][:, lng[0, :5]], "index_transposed": lambda: qt[0, 0][lng[0, :2]],
        "index_two": lambda: q[0, 0][lng[0, :3], lng[1, :3]],
    }


def _info(fn: Callable[[], torch.Tensor]) -> object:
    try:
        out = fn()
    except Exception as exc:  # the same error type is part of the contract
        return type(exc).__name__
    return tuple(out.shape), out.dtype, out.stride()


def test_same_shapes_dtypes_strides() -> None:
    cases = _cases()
    ref = {k: _info(v) for k, v in cases.items()}
    with fast_meta_kernels():
        got = {k: _info(v) for k, v in cases.items()}
    assert got == ref
    assert _info(cases["add"]) == ref["add"]  # restored after the block


def test_same_traced_op_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    tracer = pytest.importorskip("opmeter.trace")
    model = build_reference("deepseek-ocr-toy", device="meta")
    vw = VisionWorkload.from_grid(2, 1, base_size=256, image_size=128, config=model.config)
    inp = prepare_inputs_from_geometry("<image>\nFree OCR.", BuiltinTokenizer(), vw, model.config)
    kw = inp.model_kwargs("meta", torch.bfloat16)

    def run() -> pd.DataFrame:
        with tracer.OpTracer(model) as trace:
            model.generate(**kw, max_new_tokens=3)
        return trace.by_module_and_operator().drop(columns=["time_s"], errors="ignore")

    fast = run()
    monkeypatch.setenv("OPMETER_FAST_META", "0")
    slow = run()
    pd.testing.assert_frame_equal(fast, slow)
