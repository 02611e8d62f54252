"""``opmeter report`` end to end on the toy preset, and every bad input as one clear line with a non-zero exit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
import torch

from opmeter.cli import main
from opmeter.join import load_joined
from opmeter.report.outdir import write_manifest

TOY = ["--preset", "deepseek-ocr-toy"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["report", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_executed_report_writes_every_file(cpu_report: Path) -> None:
    names = {p.name for p in cpu_report.iterdir()}
    expected = {"report.md", "trace.json", "joined.json", "modules.csv", "operators.csv", "stages.csv",
                "components.csv", "categories.csv", "classes.csv", "callgraph.dot", "callgraph.mmd",
                "flops_by_component.svg", "categories.svg", "time_by_stage.svg", "chrome_trace.json"}
    assert expected <= names
    assert not [n for n in names if n.endswith(".tmp")]
    text = (cpu_report / "report.md").read_text()
    for section in ("## Headline numbers", "## Components", "## Stages", "## Memory", "## Runtime",
                    "## Module hierarchy", "## Module classes", "## Call graph", "## Operator categories",
                    "## Unclassified", "## Verification"):
        assert section in text, section
    assert "Shape-only run" not in text
    assert "TTFT measured" in text and "unknown peak" in text  # CPU: MFU honestly unknown
    joined = orjson.loads((cpu_report / "joined.json").read_bytes())
    assert joined["runtime"]["repeats"] == 2
    assert len(joined["runtime"]["runs"][0]["decode_step_s"]) == 2
    stages = {s["stage"]: s for s in joined["stages"]}
    assert stages["prefill"]["measured_time_s"] > 0 and stages["decode"]["measured_time_s"] > 0
    assert stages["total"]["measured_over_predicted"] is None  # CPU measured vs H100 predicted: not compared
    modules = pd.read_csv(cpu_report / "modules.csv")
    assert modules["self_time_s"].notna().any()  # module timing merged from the timing trace
    assert joined["unclassified_summary"]["unclassified_time_share"] is not None
    # module self times + the time outside every module call add up to the measured wall time of the timing run
    component_time = sum(c["time_s"] for c in joined["components"])
    assert component_time == pytest.approx(joined["totals"]["time_s"], rel=1e-6)
    chrome = orjson.loads((cpu_report / "chrome_trace.json").read_bytes())
    assert chrome


def test_shape_only_report_says_so_at_the_top(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run([*TOY, "--device", "meta", "--decode-tokens", "2", "--out", str(tmp_path)], capsys)
    assert code == 0
    assert "report written to" in out
    text = (tmp_path / "report.md").read_text()
    assert "**Shape-only run**" in text.split("## Headline numbers")[0]
    assert not (tmp_path / "chrome_trace.json").exists()
    # a second report from the saved trace gives the same numbers; --compress gzips the machine-readable files
    again = tmp_path / "again"
    code, _, _ = _run(["--trace", str(tmp_path / "trace.json"), "--compress", "--out", str(again)], capsys)
    assert code == 0
    a = orjson.loads((tmp_path / "joined.json").read_bytes())["totals"]
    assert load_joined(again / "joined.json.gz").totals()["flops_tensor"] == a["flops_tensor"]
    modules = next(p for p in (again / "modules.csv.gz", again / "modules.csv") if p.exists())
    assert pd.read_csv(modules)["flops_tensor"].max() == a["flops_tensor"]
    assert (again / "categories.csv").is_file()  # small tables stay plain text
    assert not (again / "trace.json").exists() and not (again / "trace.json.gz").exists()


def test_compressed_trace_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = _run([*TOY, "--device", "meta", "--decode-tokens", "2", "--compress", "--out", str(tmp_path)],
                      capsys)
    assert code == 0
    assert (tmp_path / "trace.json.gz").is_file() and not (tmp_path / "trace.json").exists()
    code, _, err = _run(["--trace", str(tmp_path / "trace.json.gz"), "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert "Shape-only run" in (tmp_path / "b" / "report.md").read_text()


def _corrupt_image(tmp: Path) -> str:
    p = tmp / "broken.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return str(p)


def _blocked_out(tmp: Path) -> str:
    blocker = tmp / "a-file"
    blocker.write_text("x")
    return str(blocker / "sub")


def _other_schema_trace(tmp: Path) -> str:
    p = tmp / "other.json"
    p.write_bytes(orjson.dumps({"schema_version": "someone-else/7", "modules": []}))
    return str(p)


def _not_json_trace(tmp: Path) -> str:
    p = tmp / "trace.json"
    p.write_text("{ definitely not json")
    return str(p)


def _vendor_without_config(tmp: Path) -> str:
    d = tmp / "vendor"
    d.mkdir()
    return f"vendor:{d}"


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda t: ["--image", str(t / "missing.png")], "image file .* not found"),
        (lambda t: ["--image", _corrupt_image(t)], "not a readable image"),
        (lambda t: ["--workload", "dsocr-nonsense-v9"], "dsocr-nonsense-v9"),
        (lambda t: ["--model", f"vendor:{t / 'nowhere'}"], "does not exist"),
        (lambda t: ["--model", _vendor_without_config(t)], "no config.json"),
        (lambda t: ["--model", "mystery"], "unknown --model"),
        (lambda t: ["--device", "tpu"], "unsupported device 'tpu'"),
        (lambda t: ["--preset", "deepseek-ocr-huge"], "unknown DeepSeek-OCR preset"),
        (lambda t: ["--trace", _other_schema_trace(t)], "schema"),
        (lambda t: ["--trace", _not_json_trace(t)], "trace"),
        (lambda t: ["--trace", str(t / "absent.json")], "not found"),
        (lambda t: ["--hardware", "abacus"], "unknown hardware"),
    ],
)
def test_bad_input_is_one_clear_line_and_nothing_is_corrupted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_args: Any, message: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("previous report")
    write_manifest(out, ["report.md"], "report")
    args = make_args(tmp_path)
    if "--trace" not in args:
        args = [*TOY, "--device", "meta", "--decode-tokens", "2", *args]
    code, _, err = _run([*args, "--out", str(out)], capsys)
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("opmeter report: error:")
    assert re.search(message, lines[0]), lines[0]
    assert (out / "report.md").read_text() == "previous report"
    assert sorted(p.name for p in out.iterdir()) == [".opmeter-output.json", "report.md"]


def test_unwritable_output_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run([*TOY, "--device", "meta", "--out", _blocked_out(tmp_path)], capsys)
    assert code == 1
    assert "output directory" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run([*TOY, "--device", "cuda", "--out", str(tmp_path)], capsys)
    assert code == 1
    assert "no CUDA device" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("exc", "code"), [(RuntimeError("boom inside forward"), 1), (KeyboardInterrupt(), 130)])
def test_failing_inference_keeps_the_partial_trace_and_the_old_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, exc: BaseException,
    code: int,
) -> None:
    from opmeter.models.deepseek_ocr.model import DeepseekOCRForCausalLM

    original = DeepseekOCRForCausalLM.forward
    calls = {"n": 0}

    def flaky(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the first decode step
            raise exc
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DeepseekOCRForCausalLM, "forward", flaky)
    (tmp_path / "report.md").write_text("previous report")
    write_manifest(tmp_path, ["report.md"], "report")
    got, _, err = _run([*TOY, "--device", "meta", "--decode-tokens", "3", "--out", str(tmp_path)], capsys)
    assert got == code
    assert len(err.strip().splitlines()) == 1
    assert (tmp_path / "report.md").read_text() == "previous report"
    partial_path = tmp_path.parent / f"{tmp_path.name}.trace.partial.json"  # beside the report, never inside
    assert str(partial_path) in err and not (tmp_path / "trace.partial.json").exists()
    partial = orjson.loads(partial_path.read_bytes())
    assert partial["complete"] is False


def test_cpu_peaks_from_the_environment_give_mfu_and_the_time_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPMETER_PEAK_TFLOPS", "1")
    monkeypatch.setenv("OPMETER_BW_GBPS", "50")
    monkeypatch.delenv("OPMETER_HARDWARE", raising=False)
    code, _, err = _run([*TOY, "--device", "cpu", "--decode-tokens", "2", "--repeats", "1", "--no-profiler",
                         "--out", str(tmp_path)], capsys)
    assert code == 0, err
    joined = load_joined(tmp_path / "joined.json")
    assert joined.hardware is not None and joined.hardware["name"] == "cpu"
    assert joined.runtime is not None and joined.runtime["metrics"]["mfu_prefill"]["mean"] > 0
    total = joined.by_stage().set_index("stage").loc["total"]
    assert total["measured_over_predicted"] > 0


def test_chrome_trace_is_gzipped_with_compress(tmp_path: Path) -> None:
    import gzip

    from opmeter.report.exporters import COMPRESS_MIN_BYTES, write_chrome_trace

    class Timed:
        def spans(self) -> list[int]:
            return [1]

        def to_chrome_trace(self, path: Path) -> Path:
            Path(path).write_bytes(b"[" + b" " * COMPRESS_MIN_BYTES + b"]")
            return Path(path)

    plain = write_chrome_trace(Timed(), tmp_path / "chrome_trace.json")
    assert plain is not None and plain.name == "chrome_trace.json"
    packed = write_chrome_trace(Timed(), tmp_path / "chrome_trace.json", compress=True)
    assert packed is not None and packed.name == "chrome_trace.json.gz"
    assert not (tmp_path / "chrome_trace.json").exists()  # one format remains
    assert gzip.decompress(packed.read_bytes()).startswith(b"[")


def test_time_outside_model_calls_is_separated_from_the_models_own_time(cpu_report: Path) -> None:
    summary = orjson.loads((cpu_report / "joined.json").read_bytes())["unclassified_summary"]
    outside = summary["outside_time_share"]
    assert 0.0 < outside < 1.0  # infer() preprocesses the page inside the traced block, outside every module
    in_model = summary["attributed_time_share_in_model"]
    assert in_model == pytest.approx(summary["attributed_time_share"] / (1.0 - outside))
    assert in_model > summary["attributed_time_share"]
    assert "time inside model calls attributed to named components" in (cpu_report / "report.md").read_text()
