"""Runtime profiling on CPU: stage boundaries from forward hooks, repeats, MFU, the profiler table."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from opmeter.runtime import RuntimeProfile, RunTiming, Stat, operator_table, profile_runtime


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vision = nn.Linear(16, 16)
        self.body = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor, image: bool = False) -> torch.Tensor:
        if image:
            x = self.vision(x)
        return self.body(x)


def _generate(model: _Toy, steps: int = 4) -> None:
    x = model(torch.randn(8, 16), image=True)
    for _ in range(steps):
        x = model(x[-1:])


def test_stage_clock_splits_prefill_and_decode_steps() -> None:
    model = _Toy()
    prof = profile_runtime(lambda: _generate(model, 4), model, [("vision", model.vision)], repeats=2, warmup=0)
    assert len(prof.runs) == 2
    for run in prof.runs:
        assert len(run.decode_step_s) == 4
        assert 0 < run.vision_s <= run.prefill_s <= run.total_s
        assert run.prefill_s + run.decode_s <= run.total_s + 1e-9
        assert run.forward_s <= run.total_s
        assert run.generated_tokens == 5
    summary = prof.summary().set_index("metric")
    assert summary.loc["tpot_s", "n"] == 2
    assert summary.loc["tokens_per_s", "mean"] > 0
    assert math.isnan(summary.loc["mfu_prefill", "mean"])  # no peak given: unknown, not invented
    assert "unknown peak" in summary.loc["mfu_prefill", "label"]
    assert list(prof.steps()["stage"]) == [f"decode[{i}]" for i in range(4)]
    data = prof.to_dict()
    assert data["repeats"] == 2 and data["metrics"]["mfu_decode"]["mean"] is None


def test_an_encoder_run_before_the_first_forward_is_inside_the_time_to_first_token() -> None:
    model = _Toy()

    def encoder_first() -> None:
        memory = model.vision(torch.randn(256, 16))  # the request module, called before any root call
        for _ in range(50):
            memory = model.vision(memory)
        x = model(memory[:1])
        for _ in range(2):
            x = model(x)

    prof = profile_runtime(encoder_first, model, [("vision", model.vision)], repeats=2, warmup=1)
    for run in prof.runs:
        assert 0 < run.vision_s <= run.prefill_s <= run.total_s
        assert run.ttft_s == run.prefill_s and len(run.decode_step_s) == 2


def test_hooks_are_removed_even_when_the_run_raises() -> None:
    model = _Toy()

    def boom() -> None:
        model(torch.randn(2, 16))
        raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        profile_runtime(boom, model, repeats=1, warmup=0)
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_mfu_uses_stage_flops_and_peak() -> None:
    run = RunTiming(total_s=3.0, vision_s=0.5, prefill_s=1.0, decode_step_s=(0.5, 0.5))
    prof = RuntimeProfile(runs=(run,), device="cuda", peak_flops=1e12, stage_flops={"prefill": 5e11, "decode": 1e11})
    assert prof.mfu("prefill") == pytest.approx(0.5)
    assert prof.mfu("decode") == pytest.approx(0.1)
    assert run.tpot_s == 0.5 and run.ttft_s == 1.0


def test_stat_mean_and_sample_std() -> None:
    st = Stat.of([1.0, 2.0, 3.0])
    assert (st.mean, st.std, st.n) == (2.0, 1.0, 3)
    assert Stat.of([4.0]).std == 0.0


def test_operator_table_self_times_do_not_double_count() -> None:
    model = _Toy()
    df = operator_table(lambda: _generate(model, 2), categorize=lambda name: "gemm" if "addmm" in name else "other")
    assert {"op", "category", "calls", "self_time_s", "total_time_s", "self_share"} <= set(df.columns)
    assert df["self_share"].sum() == pytest.approx(1.0)
    linear = df[df["op"] == "aten::linear"].iloc[0]
    assert linear["total_time_s"] >= linear["self_time_s"]  # linear contains addmm: total includes the child
    assert (df[df["op"] == "aten::addmm"]["category"] == "gemm").all()


def test_nvtx_ranges_prefill_decode_and_steps_are_balanced(monkeypatch: pytest.MonkeyPatch) -> None:
    import opmeter.runtime as rt

    events: list[str] = []

    class FakeNvtx:
        @staticmethod
        def push_range(name: str, domain: str = "") -> None:
            events.append(f"+{name}")

        @staticmethod
        def pop_range(domain: str = "") -> None:
            events.append("-")

    monkeypatch.setattr(rt.NVTX, "_push", FakeNvtx.push_range)
    monkeypatch.setattr(rt.NVTX, "_pop", FakeNvtx.pop_range)
    model = _Toy()
    profile_runtime(lambda: _generate(model, 2), model, [("vision", model.vision)], repeats=1, warmup=0)
    pushed = [e[1:] for e in events if e.startswith("+")]
    assert pushed == ["prefill", "vision", "decode", "decode_step[0]", "decode_step[1]"]
    assert events.count("-") == len(pushed)
