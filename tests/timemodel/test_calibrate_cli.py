"""``opmeter calibrate``: the quick budget end to end (what CI runs) and bad input as one line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from opmeter.cli import main
from opmeter.timemodel.kinds import HOST_KINDS, MEMORY_KINDS, RELEASE
from opmeter.timemodel.profile import load_profile


def test_calibrate_quick_writes_a_complete_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "cpu.json"
    threads = torch.get_num_threads()
    assert main(["calibrate", "--quick", "--threads", "1", "--out", str(out)]) == 0
    assert "device profile written to" in capsys.readouterr().out
    assert torch.get_num_threads() == threads  # restored
    prof = load_profile(out)
    assert prof.device == "cpu" and prof.threads == 1 and prof.budget == "quick" and prof.source == "measured"
    assert prof.dtype == "float32" and prof.torch_version == torch.__version__ and prof.created
    assert set(prof.host_s) == set(HOST_KINDS)
    assert all(0 < v < 0.1 for v in prof.host_s.values())
    assert 0 <= prof.module_call_s < 0.01
    for kind in ("mm", "addmm", "bmm", "linear", "sdpa", "conv", "vector"):
        assert prof.compute[kind], kind
        assert all(p.flops > 0 and p.bytes > 0 and math.isfinite(p.flops_per_s) and p.flops_per_s > 0
                   for p in prof.compute[kind])
    for kind in (*MEMORY_KINDS, RELEASE):  # release of large buffers: measured on a CPU (1 MiB and more)
        assert prof.bandwidth[kind] and all(p.bytes_per_s > 0 for p in prof.bandwidth[kind])
    assert all(p.bytes >= 2**20 for p in prof.bandwidth[RELEASE])
    # the interpolated rates are usable by the model
    assert prof.flops_rate("mm", 1e7, 1e5) > 0 and prof.bytes_rate("copy", 1e6) > 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--threads", "0"], "--threads must be at least 1"),
    (["--dtype", "int8"], "unsupported dtype"),
    (["--device", "tpu"], "unsupported calibration device"),
])
def test_bad_input_is_one_line(argv: list[str], message: str, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["calibrate", "--quick", "--out", str(tmp_path / "p.json"), *argv])
    err = capsys.readouterr().err
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--device", "cuda", "--out", str(tmp_path / "p.json")]) == 1
    assert "no CUDA device" in capsys.readouterr().err


def test_out_must_not_be_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--quick", "--out", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err


def test_cuda_timing_path_with_fake_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA batch timer reads CUDA events around the batch after synchronising (logic checked without a GPU)."""
    from opmeter.timemodel import calibrate as cal

    calls: list[str] = []

    class FakeEvent:
        clock = 0.0

        def __init__(self, enable_timing: bool = False) -> None:
            assert enable_timing
            self.t = 0.0

        def record(self) -> None:
            calls.append("record")
            self.t = FakeEvent.clock

        def elapsed_time(self, other: FakeEvent) -> float:
            return (other.t - self.t) * 1e3  # milliseconds, as torch.cuda.Event

    def work() -> None:
        FakeEvent.clock += 0.002  # each call takes 2 ms of "GPU time"

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: calls.append("sync"))
    timer = cal._Timer("cuda", cal.QUICK)
    assert timer._batch(work, 10) == pytest.approx(0.002)
    assert calls[:2] == ["sync", "record"] and calls[-2:] == ["record", "sync"]
    assert timer.seconds_per_call(work) == pytest.approx(0.002)


def test_a_stalled_bandwidth_point_is_measured_again(caplog: pytest.LogCaptureFixture) -> None:
    from opmeter.timemodel import calibrate
    from opmeter.timemodel.profile import BandwidthPoint

    class Timer:
        def seconds_per_call(self, fn: object) -> float:
            return 1e-5  # the second measurement: 1 MB in 10 us

    rates = [50e9, 1e6, 60e9]  # the middle point met a burst of other work
    measured = [(lambda: None, BandwidthPoint(bytes=1e6, bytes_per_s=r, label=f"p{i}")) for i, r in enumerate(rates)]
    with caplog.at_level("WARNING"):
        points = calibrate._without_dips(Timer(), measured, host=0.0)  # type: ignore[arg-type]
    assert [p.bytes_per_s for p in points] == pytest.approx([50e9, 1e11, 60e9])
    assert "measured again" in caplog.text
    steady = [(lambda: None, BandwidthPoint(bytes=1e6, bytes_per_s=r)) for r in (50e9, 20e9, 60e9)]
    assert [p.bytes_per_s for p in calibrate._without_dips(Timer(), steady, 0.0)] == [50e9, 20e9, 60e9]
