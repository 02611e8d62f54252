"""The report's time-model parts: the predicted vs measured section, summary.json, profiles named (own, foreign,
defaults), --profile / --dtype validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from opmeter.cli import main

TOY = ["--preset", "deepseek-ocr-toy"]
SUMMARY_KEYS = {"schema_version", "model", "workload", "device", "dtype", "profile", "predicted", "measured",
                "relative_error"}


def _summary(out: Path) -> dict[str, Any]:
    data = orjson.loads((out / "summary.json").read_bytes())
    assert set(data) >= SUMMARY_KEYS
    assert data["schema_version"] == "opmeter.summary/1"
    assert set(data["relative_error"]) == {"ttft", "tpot", "total"}
    return data


def _other_cpu_profile(path: Path) -> Path:
    """A minimal measured profile of a CPU that is not this one."""
    from opmeter.timemodel.profile import BandwidthPoint, ComputePoint, DeviceProfile

    return DeviceProfile(
        device="cpu", device_name="Some other CPU", dtype="float32", threads=1, torch_version="2.x",
        created="2026-01-01T00:00:00+00:00", source="measured", budget="quick", host_s={"other": 1e-6},
        module_call_s=1e-6, launch_latency_s=0.0, compute={"vector": (ComputePoint(1e6, 1e4, 1e9, "flat"),)},
        bandwidth={"read": (BandwidthPoint(1e6, 1e9, "flat"),)},
    ).save(path)


def test_executed_report_compares_predicted_and_measured(cpu_report: Path) -> None:
    data = _summary(cpu_report)
    assert data["device"] == "cpu" and data["dtype"] == "float32" and data["model"].endswith("deepseek-ocr-toy")
    assert data["profile"]["origin"].startswith("calibrated on the spot") and data["profile"]["foreign"] is None
    for block in (data["predicted"], data["measured"]):
        assert {"ttft_s", "tpot_s", "total_s", "stages"} <= set(block)
        assert block["ttft_s"] > 0 and block["tpot_s"] > 0 and block["total_s"] > block["ttft_s"]
    assert set(data["predicted"]["scenarios"]) == {"eager", "graph", "bound"}
    pred, meas = data["predicted"], data["measured"]
    assert data["relative_error"]["total"] == pytest.approx((pred["total_s"] - meas["total_s"]) / meas["total_s"])
    assert isinstance(data["sc002"]["within"], bool)
    text = (cpu_report / "report.md").read_text()
    assert "## Predicted vs measured time" in text and "SC-002" in text
    for column in ("predicted (eager)", "graph-captured", "bound (roofline)", "host/launch"):
        assert column in text
    for stage in ("| ttft |", "| tpot |", "| total |"):
        assert stage in text
    assert "| LM head |" in text  # per-component rows


def test_shape_only_report_predicts_with_labelled_defaults(tmp_path: Path) -> None:
    assert main(["report", *TOY, "--device", "meta", "--decode-tokens", "2", "--dtype", "float32", "--out",
                 str(tmp_path)]) == 0
    data = _summary(tmp_path)
    assert data["measured"] is None and data["relative_error"] == {"ttft": None, "tpot": None, "total": None}
    assert data["dtype"] == "float32"
    assert data["profile"]["source"] == "defaults" and "DEFAULTS" in data["profile"]["origin"]
    assert data["predicted"]["total_s"] > 0
    text = (tmp_path / "report.md").read_text()
    assert "DEFAULTS for H100-SXM" in text and "predicted vs measured not checked" in text


def test_foreign_profile_is_named_and_not_compared(tmp_path: Path) -> None:
    profile = _other_cpu_profile(tmp_path / "other.json")
    out = tmp_path / "r"
    assert main(["report", *TOY, "--device", "cpu", "--decode-tokens", "2", "--repeats", "1", "--no-profiler",
                 "--profile", str(profile), "--out", str(out)]) == 0
    data = _summary(out)
    assert data["measured"] is not None and data["relative_error"] == {"ttft": None, "tpot": None, "total": None}
    assert "Some other CPU" in data["profile"]["foreign"]
    text = (out / "report.md").read_text()
    assert "Profile of another device" in text and "Some other CPU" in text


@pytest.mark.parametrize(("argv", "message"), [
    (["--profile", "missing.json"], "cannot read device profile"),
    (["--dtype", "int4"], "unsupported dtype"),
    (["--dtype", "float32", "--model", "vendor:{checkpoint}"], "--dtype applies to the reference model"),
])
def test_bad_time_options_fail_before_work(argv: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    argv = [a.format(checkpoint=tmp_path / "ckpt") for a in argv]
    code = main(["report", *TOY, "--device", "meta", "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "report.md").exists()


def test_a_profile_inside_out_survives_the_report(tmp_path: Path) -> None:
    """The documented regeneration keeps the machine's profile beside the report it predicted (the directory is
    replaced as one unit, so the profile must be carried over)."""
    out = tmp_path / "r"
    assert main(["report", *TOY, "--device", "meta", "--decode-tokens", "2", "--out", str(out)]) == 0
    profile = _other_cpu_profile(out / "device_profile.json")
    before = profile.read_bytes()
    assert main(["report", *TOY, "--device", "meta", "--decode-tokens", "2", "--profile", str(profile), "--out",
                 str(out)]) == 0
    assert (out / "device_profile.json").read_bytes() == before
    assert "device_profile.json" in _summary(out)["profile"]["origin"]
