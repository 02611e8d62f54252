"""The report pipeline is generic over model adapters: a second model (a toy encoder-decoder registered here) gets a
measured-only report with its encoder as a request stage; traces of another or of no adapter are refused."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pandas as pd
import pytest
import torch
from torch import nn

from opmeter.cli import main
from opmeter.errors import OpmeterError
from opmeter.models.base import (
    ModelAdapter,
    ModelWords,
    Prediction,
    PreparedRun,
    RunRequest,
    StageSpec,
    register,
    resolve_adapter,
)
from opmeter.structure import Component

HIDDEN, SOURCE = 16, 6


class ToyEncoderDecoder(nn.Module):
    """An encoder run once before the first decoder call, then a one-token-at-a-time decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU())
        self.embed = nn.Embedding(32, HIDDEN)
        self.mixer = nn.Linear(HIDDEN, HIDDEN)
        self.lm_head = nn.Linear(HIDDEN, 32, bias=False)

    def forward(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        h = self.embed(decoder_input_ids) + memory.mean(dim=1, keepdim=True)
        return self.lm_head(self.mixer(h))


@attrs.frozen
class ToyWorkload:
    id: str = "toy-source-6"
    max_new_tokens: int = 3

    @property
    def decode_steps(self) -> int:
        return self.max_new_tokens - 1

    def describe(self) -> dict[str, str]:
        return {"source": f"{SOURCE} positions"}

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "description": "toy source sequence", "max_new_tokens": self.max_new_tokens}

    def with_new_tokens(self, tokens: int) -> ToyWorkload:
        return attrs.evolve(self, max_new_tokens=tokens)


@attrs.define
class ToyAdapter:
    spec: str = "toy-encdec"
    name: str = "toy-encdec"
    words: ModelWords = attrs.field(factory=lambda: ModelWords("toy encoder-decoder", "the encoder", predicted=False))
    stage_spec: StageSpec = attrs.field(factory=lambda: StageSpec("encoder", ("encoder",), ("encoder",)))
    default_preset: str | None = "tiny"
    default_workload: str | None = "toy-source-6"

    def presets(self) -> Mapping[str, str]:
        return {"tiny": "16 wide"}

    def workloads(self) -> Mapping[str, str]:
        return {"toy-source-6": "6 source positions"}

    def components(self, model: nn.Module | None = None) -> Sequence[Component]:
        return (Component("encoder", r"^encoder$"), Component("LM head", r"^lm_head$"))

    def prepare(self, request: RunRequest) -> PreparedRun:
        model = ToyEncoderDecoder().to(request.device if request.device != "meta" else "meta")
        workload = ToyWorkload(max_new_tokens=request.decode_tokens or 3)

        def infer() -> None:
            memory = model.encoder(torch.zeros(1, SOURCE, HIDDEN, device=request.device))
            ids = torch.zeros(1, 1, dtype=torch.long, device=request.device)
            for _ in range(workload.max_new_tokens):
                model(decoder_input_ids=ids, memory=memory)

        return PreparedRun(model, infer, workload, request.preset or "tiny", {"workload_id": workload.id})

    def workload_from_trace(self, metadata: Mapping[str, Any], request: RunRequest) -> tuple[ToyWorkload, str]:
        return ToyWorkload(max_new_tokens=request.decode_tokens or 3), "tiny"

    def parameter_model(self, preset: str, metadata: Mapping[str, Any]) -> nn.Module | None:
        return ToyEncoderDecoder().to("meta")

    def predict(self, trace: Any, workload: Any, preset: str, hardware: Any) -> Prediction | None:
        return None


register("toy-encdec", lambda arg, spec: ToyAdapter(spec=spec))


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "r"
    assert main(["report", "--model", "toy-encdec", "--device", "meta", "--out", str(out)]) == 0
    return out


def test_the_adapter_satisfies_the_protocol() -> None:
    adapter = resolve_adapter("toy-encdec")
    assert isinstance(adapter, ModelAdapter)
    assert isinstance(resolve_adapter("deepseek-ocr"), ModelAdapter)


def test_encoder_work_before_the_first_decoder_call_is_the_request_stage(toy_report: Path) -> None:
    stages = pd.read_csv(toy_report / "stages.csv").set_index("stage")
    encoder_flops = 2 * SOURCE * HIDDEN * HIDDEN
    assert stages.loc["encoder", "flops_tensor"] == encoder_flops
    assert "setup" not in stages.index or stages.loc["setup", "flops_tensor"] == 0
    # the decoder starts from one token: its first call is still the prefill, then two decode steps
    assert {"prefill", "decode[0]", "decode[1]"} <= set(stages.index)
    assert stages.loc["total", "flops_tensor"] == encoder_flops + 3 * 2 * (HIDDEN * HIDDEN + HIDDEN * 32)


def test_a_family_without_an_analytic_model_gets_a_labelled_measured_only_report(toy_report: Path) -> None:
    text = (toy_report / "report.md").read_text()
    assert "toy encoder-decoder is measured only" in text
    assert "`encoder` = the encoder" in text
    components = pd.read_csv(toy_report / "components.csv").set_index("component")
    assert components.loc["encoder", "flops_tensor"] == 2 * SOURCE * HIDDEN * HIDDEN


def test_a_trace_is_reported_by_the_adapter_that_recorded_it(toy_report: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--trace", str(toy_report / "trace.json"), "--out", str(tmp_path / "again")]) == 0
    stages = pd.read_csv(tmp_path / "again" / "stages.csv").set_index("stage")
    assert stages.loc["encoder", "flops_tensor"] == 2 * SOURCE * HIDDEN * HIDDEN
    capsys.readouterr()
    code = main(["report", "--model", "deepseek-ocr", "--trace", str(toy_report / "trace.json"), "--out",
                 str(tmp_path / "wrong")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "recorded with --model 'toy-encdec'" in err
    assert not (tmp_path / "wrong").exists()


def test_a_hand_made_trace_names_no_adapter_and_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    from opmeter.trace import OpTracer

    model = nn.Linear(4, 4)
    with OpTracer(model) as trace:
        model(torch.zeros(2, 4))
    trace.save(tmp_path / "hand.json")
    assert main(["report", "--trace", str(tmp_path / "hand.json"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "names no model adapter" in err


def test_an_unknown_model_is_one_line() -> None:
    with pytest.raises(OpmeterError, match=r"unknown --model 'nosuch'; known: .*deepseek-ocr"):
        resolve_adapter("nosuch")


@pytest.mark.parametrize(("argv", "words"), [
    (["verify", "--model", "hf:llama", "--fast"], "has no verification cases"),
    (["sweep", "vision", "--model", "hf:llama"], "has no sweeps"),
    (["report", "--model", "hf:llama", "--preset", "tiny", "--device", "meta", "--verify"], "--verify"),
    (["report", "--model", "hf:llama", "--preset", "tiny", "--device", "meta", "--images", "."], "set of pages"),
])
def test_a_capability_an_adapter_lacks_is_one_line(argv: list[str], words: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from opmeter.cli import main

    assert main([*argv, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "o").exists()


def test_every_builtin_adapter_declares_its_capabilities() -> None:
    from opmeter.models.base import SupportsInventory, SupportsPages, SupportsSweep, SupportsVerify, resolve_adapter

    reference = resolve_adapter("deepseek-ocr")
    assert all(isinstance(reference, k) for k in (SupportsVerify, SupportsSweep, SupportsPages, SupportsInventory))
    hf = resolve_adapter("hf:llama")
    assert not any(isinstance(hf, k) for k in (SupportsVerify, SupportsSweep, SupportsPages))
