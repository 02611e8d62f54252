"""The transformers adapter's contract: specs, presets, workloads, measured-only families, stages, registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hf_helpers import MEASURED_ONLY, adapter_or_skip, traced_run

from opmeter.errors import OpmeterError
from opmeter.models import base
from opmeter.models.base import ModelAdapter, RunRequest
from opmeter.models.hf.adapter import HFAdapter
from opmeter.models.hf.config import preset_config, shrink

LLAMA_JSON = {"model_type": "llama", "hidden_size": 96, "num_hidden_layers": 3, "num_attention_heads": 6,
              "num_key_value_heads": 2, "intermediate_size": 160, "vocab_size": 300}


@pytest.mark.parametrize("model_type", MEASURED_ONLY)
def test_measured_only_family_traces_every_op(model_type: str) -> None:
    adapter = adapter_or_skip(model_type)
    run, trace = traced_run(adapter)
    assert not adapter.words.predicted
    assert adapter.predict(trace, run.workload, run.preset, None) is None
    assert trace.uncounted().empty
    assert trace.totals()["flops_tensor"] > 0


@pytest.mark.parametrize("model_type", ["t5", "whisper"])
def test_encoder_is_a_request_stage_not_setup(model_type: str) -> None:
    adapter = adapter_or_skip(model_type)
    assert adapter.stage_spec.request_stage == "encoder" and adapter.stage_spec.request_modules
    _, trace = traced_run(adapter)
    stages = trace.stages().set_index("stage")
    assert stages.at["encoder", "flops_tensor"] > 0
    setup = stages["flops_tensor"].get("setup", 0)
    assert setup == 0
    assert "encoder" in {c.name for c in adapter.components()}


def test_config_json_path_and_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_JSON))
    for arg in (str(tmp_path / "config.json"), str(tmp_path)):
        adapter = HFAdapter(arg, f"hf:{arg}")
        assert adapter.config.hidden_size == 96 and adapter.config.num_key_value_heads == 2
    run = adapter.prepare(RunRequest(preset="full", workload="prompt-4", device="meta", decode_tokens=2))
    assert len(run.model.model.layers) == 3 and run.model.lm_head.out_features == 300
    assert run.workload.decode_steps == 1 and run.metadata["execution"] == "shape-only"


@pytest.mark.parametrize("arg, message", [
    (None, "needs a model type"),
    ("no_such_family", "not a transformers model type"),
    ("/no/such/dir/config.json", "no config.json"),
])
def test_bad_specs_give_one_line(arg: str | None, message: str) -> None:
    with pytest.raises(OpmeterError, match=message) as info:
        HFAdapter(arg, f"hf:{arg}")
    assert "\n" not in str(info.value)


def test_bad_config_json_preset_and_workload(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(OpmeterError, match="not a JSON transformers config"):
        HFAdapter(str(bad), "hf:x")
    bad.write_text(json.dumps({"model_type": "nope"}))
    with pytest.raises(OpmeterError, match="no known model_type"):
        HFAdapter(str(bad), "hf:x")
    adapter = HFAdapter("llama", "hf:llama")
    for request, message in [(RunRequest(preset="huge", workload=None, device="meta"), "unknown hf preset"),
                             (RunRequest(preset="tiny", workload="image-1", device="meta"), "unknown hf workload"),
                             (RunRequest(preset="tiny", workload="prompt-0", device="meta"), "N >= 1")]:
        with pytest.raises(OpmeterError, match=message) as info:
            adapter.prepare(request)
        assert "\n" not in str(info.value)


def test_tiny_preset_keeps_the_family_shape() -> None:
    llama = HFAdapter("llama", "hf:llama").config
    llama.num_key_value_heads = 8  # GQA, as Llama-3
    tiny = shrink(llama)
    assert (tiny.num_hidden_layers, tiny.hidden_size, tiny.vocab_size) == (2, 64, 512)
    assert tiny.num_key_value_heads < tiny.num_attention_heads and llama.hidden_size == 4096  # a copy
    v3 = preset_config(adapter_or_skip("deepseek_v3").config, "tiny")
    assert (v3.n_routed_experts, v3.num_experts_per_tok, v3.n_group, v3.first_k_dense_replace) == (4, 2, 2, 1)
    assert v3.head_dim == v3.qk_rope_head_dim


def test_unrunnable_class_defaults_are_refused() -> None:
    adapter = adapter_or_skip("deepseek_v2")
    if adapter.config.num_experts_per_tok is not None:
        pytest.skip("this transformers sets num_experts_per_tok by default")
    with pytest.raises(OpmeterError, match="num_experts_per_tok"):
        adapter.prepare(RunRequest(preset="full", workload=None, device="meta"))


def test_registered_and_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "BUILTIN_PACKAGES", ("opmeter.models.hf.adapter",))
    adapter = base.resolve_adapter("hf:llama")
    assert isinstance(adapter, ModelAdapter) and adapter.spec == "hf:llama"
    with pytest.raises(OpmeterError, match="needs a model type"):
        base.resolve_adapter("hf")


def test_weights_dir_loads_a_local_checkpoint(tmp_path: Path) -> None:
    adapter = HFAdapter("llama", "hf:llama")
    saved = adapter.prepare(RunRequest(preset="tiny", workload="prompt-4", device="cpu")).model
    saved.save_pretrained(tmp_path)
    loaded = adapter.prepare(RunRequest(preset="tiny", workload="prompt-4", device="cpu", weights_dir=tmp_path)).model
    assert torch.equal(saved.lm_head.weight, loaded.lm_head.weight)
    with pytest.raises(OpmeterError, match="not a directory"):
        adapter.prepare(RunRequest(preset="tiny", workload=None, device="cpu", weights_dir=tmp_path / "none"))


def test_components_follow_the_module_tree() -> None:
    adapter = HFAdapter("llama", "hf:llama")
    names = {c.name: c.pattern for c in adapter.components()}
    assert names["attention"] == r"^model\.layers\.\d+\.self_attn$"
    assert names["LM head"] == r"^lm_head$" and names["final norm"] == r"^model\.norm$"


def test_moe_families_of_an_older_layout_are_measured_only() -> None:
    from opmeter.models.hf.adapter import fused_experts_layout

    adapter = HFAdapter("mixtral", "hf:mixtral")
    assert adapter.words.predicted == fused_experts_layout()
    if not fused_experts_layout():
        with pytest.raises(OpmeterError, match="one module per expert"):
            adapter.prepare(RunRequest(preset="tiny", workload="prompt-4", device="meta"))


@pytest.mark.parametrize("model_type", ["llava", "paligemma"])
def test_vision_language_image_runs_as_the_vision_stage(model_type: str) -> None:
    from opmeter.models.hf.adapter import transformers_major

    adapter = adapter_or_skip(model_type)
    assert adapter.stage_spec.request_stage == "vision"
    if transformers_major() < 5:
        pytest.skip("image prompts are built for transformers >= 5 only (4.x merges image features another way)")
    by_device = {}
    for device in ("cpu", "meta"):
        _, trace = traced_run(adapter, device)
        stages = trace.stages().set_index("stage")["flops_tensor"]
        assert stages.get("setup", 0) == 0 and stages.get("vision", 0) > 0
        by_device[device] = stages.sort_index()
    assert by_device["cpu"].to_dict() == by_device["meta"].to_dict()  # the shape-only run does the same work


def test_shape_only_run_refuses_an_unanswerable_host_read() -> None:
    from opmeter.models.hf.run import shape_only

    with shape_only(), pytest.raises(OpmeterError, match="cannot answer"):
        torch.ones(2, device="meta").sum().item()
    with shape_only(), pytest.raises(OpmeterError, match="a branch on data"):
        bool(torch.ones(2, device="meta").sum() < 3)
    with shape_only():
        assert bool(torch.ones(2, device="meta").bool().all())
    with shape_only():
        torch._check_tensor_all(torch.ones(2, device="meta").bool())  # a consistency check: taken as passing


def test_workload_comes_back_from_the_trace_metadata() -> None:
    adapter = HFAdapter("llama", "hf:llama")
    run, trace = traced_run(adapter, "meta", prompt=6, new=2)
    workload, preset = adapter.workload_from_trace(trace.metadata)
    assert (workload, preset) == (run.workload, "tiny")
    with pytest.raises(OpmeterError, match="no hf workload"):
        adapter.workload_from_trace({"model": "something else"})


def test_components_tell_classes_apart_at_one_generalised_path() -> None:
    adapter = adapter_or_skip("t5")
    by_class = {c.class_name: c.name for c in adapter.components() if c.pattern == r"^decoder\.block\.\d+\.layer\.\d+$"}
    assert by_class == {"T5LayerSelfAttention": "attention", "T5LayerCrossAttention": "attention", "T5LayerFF": "MLP"}


def test_a_saved_hf_trace_reports_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``report --trace`` on an hf trace: the trace's own model spec (hf:llama) picks the adapter, and the re-joined
    tables are those of the first report."""
    from opmeter.cli import main

    first, again = tmp_path / "a", tmp_path / "b"
    assert main(["report", "--model", "hf:llama", "--preset", "tiny", "--device", "meta", "--decode-tokens", "3",
                 "--out", str(first)]) == 0
    assert main(["report", "--trace", str(first / "trace.json"), "--out", str(again)]) == 0
    assert main(["report", "--trace", str(first / "trace.json"), "--model", "hf:llama", "--out", str(again)]) == 0
    for table in ("stages.csv", "components.csv", "operators.csv"):
        assert (again / table).read_text() == (first / table).read_text(), table
    capsys.readouterr()
    assert main(["report", "--trace", str(first / "trace.json"), "--model", "deepseek-ocr", "--out",
                 str(tmp_path / "c")]) == 1
    assert "recorded with --model 'hf:llama'" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "limit"), [
    (["--model", "hf:llama", "--device", "meta", "--decode-tokens", "5000"], "2048"),
    (["--model", "hf:gpt2", "--device", "cpu", "--decode-tokens", "1000"], "1024"),
])
def test_a_decode_length_past_the_position_table_is_refused_before_tracing(
    argv: list[str], limit: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from opmeter.cli import main
    from opmeter.report import run as run_module

    def no_trace(*args: object, **kwargs: object) -> None:
        raise AssertionError("the trace started before the limit was checked")

    monkeypatch.setattr(run_module, "trace_run", no_trace)
    assert main(["report", *argv, "--preset", "tiny", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the model has {limit} (max_position_embeddings)" in err
    assert not (tmp_path / "o").exists()
