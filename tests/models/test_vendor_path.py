"""The vendor path end to end with a fake checkpoint: loading, CPU compatibility, the decode cap, shape-only runs,
and ``opmeter report --model vendor:`` on cpu and meta."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from opmeter.cli import main
from opmeter.errors import OpmeterError
from opmeter.models.deepseek_ocr import BuiltinTokenizer, build_reference, load_workload
from opmeter.models.deepseek_ocr.vendor import load_vendor
from opmeter.models.deepseek_ocr.vendor_compat import HostReadPolicy, shape_only, vendor_run
from opmeter.trace import OpTracer, load_trace

pytest.importorskip("transformers")
from fake_vendor import make_fake_checkpoint

PRESET = "deepseek-ocr-toy"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_checkpoint(tmp_path_factory.mktemp("vendor") / "ckpt", PRESET, eos_after=2)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    workload = load_workload("dsocr-standard-v1").for_config(PRESET)
    return workload, workload.save_image(tmp_path_factory.mktemp("page"))


def _infer(model: Any, page: tuple[Any, Path], out: Path | None) -> str:
    workload, image = page
    kwargs: dict[str, Any] = {"prompt": workload.prompt, "image_file": str(image), "base_size": workload.base_size,
                              "image_size": workload.image_size, "crop_mode": workload.crop_mode, "eval_mode": True}
    if out is not None:
        kwargs["output_path"] = str(out)
    return str(model.infer(BuiltinTokenizer(), **kwargs))


def _forward_calls(trace: Any) -> int:
    groups = trace.stages()["group"]
    return int(groups.isin(["prefill", "decode"]).sum())


def test_unmodified_remote_code_fails_on_cpu_as_users_see_it(checkpoint: Path, page: tuple[Any, Path]) -> None:
    model = load_vendor(checkpoint, weights=False, device="cpu")
    with pytest.raises(FileNotFoundError):  # infer() creates output_path: an empty one fails
        _infer(model, page, None)


def test_cpu_compat_and_cap_are_exact_and_reversible(checkpoint: Path, page: tuple[Any, Path],
                                                     tmp_path: Path) -> None:
    model = load_vendor(checkpoint, weights=False, device="cpu")
    cuda_before = torch.Tensor.cuda
    with vendor_run(model, 6), OpTracer(model) as trace:  # EOS comes after 2 tokens; the cap asks for 6
        _infer(model, page, tmp_path)
    assert _forward_calls(trace) == 6
    assert torch.Tensor.cuda is cuda_before and "generate" not in vars(model)
    assert not model._forward_pre_hooks
    with vendor_run(model, 1), OpTracer(model) as short:
        _infer(model, page, tmp_path)
    assert _forward_calls(short) == 1
    assert {"cuda-to-cpu", "image-inputs-to-float32"} <= set(model.opmeter_metadata["vendor_patches"])


def test_vendor_stops_at_eos_without_the_cap(checkpoint: Path, page: tuple[Any, Path], tmp_path: Path) -> None:
    from opmeter.models.deepseek_ocr.vendor_compat import cpu_compat

    model = load_vendor(checkpoint, weights=False, device="cpu")
    with cpu_compat(model), OpTracer(model) as trace:
        _infer(model, page, tmp_path)
    assert _forward_calls(trace) == 2  # the data-dependent stop the cap exists for


def test_shape_only_vendor_matches_reference(checkpoint: Path, page: tuple[Any, Path], tmp_path: Path) -> None:
    vendor = load_vendor(checkpoint, weights=False, device="meta")
    with shape_only(vendor, 4) as policy, OpTracer(vendor) as traced:
        _infer(vendor, page, tmp_path)
    assert policy.answered["pixel_sum"] == 2 and policy.answered["tokens_per_expert"] > 0
    assert torch.autocast.__name__ == "autocast"  # restored
    reference = build_reference(PRESET, device="meta")
    workload, image = page
    with OpTracer(reference) as ref:
        reference.infer(BuiltinTokenizer(), **workload.infer_kwargs(image) | {"max_new_tokens": 4})
    got, want = traced.by_module().set_index("module"), ref.by_module().set_index("module")
    shared = sorted(set(got.index) & set(want.index) - {"<root>", "<outside>"})
    assert len(shared) > 100
    cols = ["calls", "flops_tensor"]
    pd.testing.assert_frame_equal(got.loc[shared, cols], want.loc[shared, cols])
    # CUDA-core work too, but for the two pixel sums the vendor forward really computes (the reference skips them)
    below = [p for p in shared if p != "model"]
    pd.testing.assert_series_equal(got.loc[below, "flops_cuda"], want.loc[below, "flops_cuda"])
    assert got.loc["model", "flops_cuda"] > want.loc["model", "flops_cuda"]
    assert traced.totals()["flops_tensor"] == ref.totals()["flops_tensor"]
    meta = traced.metadata
    assert meta["execution"] == "shape-only" and "fixed-budget-generate-4" in meta["vendor_patches"]


def test_unknown_host_read_is_refused_by_name() -> None:
    with HostReadPolicy(), pytest.raises(OpmeterError, match="no shape-only answer"):
        torch.empty(3, device="meta").sum().item()
    with HostReadPolicy(), pytest.raises(OpmeterError, match="copies a meta tensor"):
        torch.empty(3, device="meta").cpu()


def test_weights_checks(tmp_path: Path) -> None:
    root = make_fake_checkpoint(tmp_path / "ck", PRESET)
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001.safetensors"}}))
    with pytest.raises(OpmeterError, match="shard"):
        load_vendor(root, weights=True, device="cpu")
    (root / "model.safetensors.index.json").unlink()
    with pytest.raises(OpmeterError, match="--no-weights"):
        load_vendor(root, weights=True, device="cpu")


def test_real_weights_load(tmp_path: Path) -> None:
    root = make_fake_checkpoint(tmp_path / "ck", PRESET, weights=True)
    model = load_vendor(root, weights=True, device="cpu")
    saved = load_vendor(root, weights=False, device="cpu")  # a fresh random init differs
    name, tensor = next(iter(model.state_dict().items()))
    assert model.opmeter_metadata["weights"] == "checkpoint"
    assert not torch.equal(tensor, saved.state_dict()[name]) or tensor.numel() == 0


def test_remote_code_errors_are_one_line(tmp_path: Path) -> None:
    root = make_fake_checkpoint(tmp_path / "ck", PRESET)
    (root / "modeling_deepseekocr.py").write_text("raise RuntimeError('broken remote code')\n")
    with pytest.raises(OpmeterError, match="broken remote code"):
        load_vendor(root, weights=False, device="cpu")


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_report_vendor_cli(checkpoint: Path, tmp_path: Path, device: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / device
    args = ["report", "--model", f"vendor:{checkpoint}", "--device", device, "--preset", PRESET,
            "--decode-tokens", "3", "--out", str(out), "--no-profiler", "--repeats", "1"]
    if device == "cpu":
        args.append("--no-weights")
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "+0.00 %" in text  # measured vs analytic tensor-core FLOPs
    stages = load_trace(out / "trace.json").stages()
    assert (stages["group"] == "decode").sum() == 2  # 3 tokens: the prefill and 2 decode steps
    assert "vendor compatibility patches" in (out / "report.md").read_text()


def test_report_vendor_refuses_wrong_preset(checkpoint: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["report", "--model", f"vendor:{checkpoint}", "--device", "meta", "--preset", "deepseek-ocr-mini",
                 "--out", str(tmp_path / "r")])
    assert code == 1
    assert "parameters but preset" in capsys.readouterr().err


def test_the_checkpoints_python_is_announced_before_it_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt = make_fake_checkpoint(tmp_path / "ckpt", PRESET)
    marker = tmp_path / "ran"
    # a planted module that leaves a marker when imported: the line naming it must come before that
    code = (ckpt / "modeling_deepseekocr.py").read_text()
    future = "from __future__ import annotations\n"
    plant = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
    (ckpt / "modeling_deepseekocr.py").write_text(code.replace(future, future + plant, 1))
    seen: list[bool] = []

    class Probe:
        level = 0

        def handle(self, record: Any) -> None:
            if "trust_remote_code" in record.getMessage():
                seen.append(marker.exists())

    import logging

    logging.getLogger("opmeter.models.deepseek_ocr.vendor").addHandler(Probe())  # type: ignore[arg-type]
    try:
        with caplog.at_level("WARNING"):
            load_vendor(ckpt, weights=False, device="meta")
    finally:
        logging.getLogger("opmeter.models.deepseek_ocr.vendor").handlers.clear()
    assert seen == [False] and marker.exists()
    assert "modeling_deepseekocr.py" in caplog.text and str(ckpt) in caplog.text
