"""``opmeter report`` writes its directory as one unit: all or nothing, no stray files, every bad input refused
before the long work with one line and exit 1."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import TOY, one_line, run_cli, snapshot

from opmeter.cli import main
from opmeter.report.outdir import MANIFEST_NAME

REPORT = ["report", "--preset", TOY, "--device", "meta", "--decode-tokens", "2"]


@pytest.fixture
def previous(toy_report: Path, tmp_path: Path) -> Path:
    """A copy of the finished report, with a stale file an earlier run (``--verify``) wrote and listed."""
    out = tmp_path / "latest"
    shutil.copytree(toy_report, out)
    (out / "verification.csv").write_text("layer,case\nstale,1\n")
    manifest = orjson.loads((out / MANIFEST_NAME).read_bytes())
    manifest["files"].append("verification.csv")
    (out / MANIFEST_NAME).write_bytes(orjson.dumps(manifest))
    return out


def _rerun(previous: Path, *extra: str) -> int:
    return main(["report", "--trace", str(previous / "trace.json"), "--out", str(previous), *extra])


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.mark.nothing_lost
def test_a_rerun_replaces_the_directory_as_a_unit(previous: Path) -> None:
    before = snapshot(previous)
    assert _rerun(previous) == 0
    after = snapshot(previous)
    assert "verification.csv" not in after  # stale files of earlier runs do not linger
    assert after["trace.json"] == before["trace.json"]  # the input trace inside --out is kept
    assert set(after) == set(before) - {"verification.csv"}
    assert "verification.csv" not in orjson.loads(after[MANIFEST_NAME])["files"]
    assert _siblings(previous) == []
    mask = os.umask(0)
    os.umask(mask)
    assert previous.stat().st_mode & 0o777 == 0o777 & ~mask  # as mkdir would make it, not mkdtemp's 0700


@pytest.mark.nothing_lost
@pytest.mark.parametrize("fault", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt(),
                                   RuntimeError("exporter bug")])
@pytest.mark.parametrize("at_call", [1, 4])
def test_a_fault_while_writing_leaves_the_previous_report_untouched(
    previous: Path, monkeypatch: pytest.MonkeyPatch, fault: BaseException, at_call: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from opmeter.report import exporters

    original = exporters.write_table
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == at_call:
            raise fault
        return original(*args, **kwargs)

    monkeypatch.setattr(exporters, "write_table", failing)
    before = snapshot(previous)
    if isinstance(fault, RuntimeError):
        with pytest.raises(RuntimeError):
            _rerun(previous)
    else:
        code = _rerun(previous)
        assert code == (130 if isinstance(fault, KeyboardInterrupt) else 1)
        assert one_line(capsys.readouterr().err)
    assert snapshot(previous) == before
    assert _siblings(previous) == []


@pytest.mark.nothing_lost
def test_verify_runs_before_anything_is_written(previous: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import opmeter.verify
    from opmeter.report import outdir

    order: list[str] = []
    real_staged = outdir.staged_output

    def verify(preset: str) -> Any:
        order.append("verify")
        raise KeyboardInterrupt

    def staged(*args: Any, **kwargs: Any) -> Any:
        order.append("write")
        return real_staged(*args, **kwargs)

    monkeypatch.setattr(opmeter.verify, "verify", verify)
    monkeypatch.setattr(outdir, "staged_output", staged)
    before = snapshot(previous)
    assert _rerun(previous, "--verify") == 130
    assert order == ["verify"] and snapshot(previous) == before


@pytest.mark.clean_error
@pytest.mark.parametrize("argv", [
    ["--workload", "no-such-workload"], ["--preset", "no-such-preset"], ["--device", "tpu"],
    ["--model", "vendor:/no/such/dir"], ["--image", "/no/such.png"], ["--hardware", "bogus"],
    ["--trace", "/no/such/trace.json"],
])
def test_bad_input_creates_no_output_directory(tmp_path: Path, argv: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "report"
    assert main([*REPORT, *argv, "--out", str(out)]) == 1
    assert one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.clean_error
@pytest.mark.parametrize("out", ["", "  ", "."])
def test_out_that_is_empty_or_the_current_directory_is_refused(
    tmp_path: Path, out: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*REPORT, "--out", out]) == 1
    assert one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.clean_error
@pytest.mark.nothing_lost
def test_a_directory_of_other_files_is_not_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    assert main([*REPORT, "--out", str(tmp_path)]) == 1
    assert "opmeter did not write" in capsys.readouterr().err
    assert snapshot(tmp_path) == {"thesis.tex": b"precious"}


@pytest.mark.clean_error
@pytest.mark.parametrize(("var", "value"), [("OPMETER_PEAK_TFLOPS", "abc"), ("OPMETER_BW_GBPS", "-1"),
                                            ("OPMETER_HARDWARE", "bogus"), ("OPMETER_CUDA_TFLOPS", "inf")])
def test_environment_is_checked_before_the_model_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], var: str, value: str
) -> None:
    from opmeter.models.deepseek_ocr import model as model_module

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was built before the environment was checked")

    monkeypatch.setattr(model_module, "build_reference", never)
    monkeypatch.setenv(var, value)
    assert main([*REPORT, "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and (var in err or "bogus" in err)


@pytest.mark.clean_error
@pytest.mark.parametrize("argv", [["report", "--decode-tokens", "0"], ["report", "--repeats", "0"],
                                  ["report", "--decode-tokens", "x"], ["report", "--bogus"], ["report", "--out"],
                                  ["nosuchcommand"], ["show"], ["verify", "--grid"], ["report", "--trace-json", "x"]])
def test_argument_errors_are_one_line_and_exit_1(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    assert one_line(capsys.readouterr().err)


_SIGNAL_SCRIPT = """
import os, signal, sys
from opmeter.report import exporters
from opmeter.cli import main
original = exporters.write_table
calls = [0]
def write_table(*args, **kwargs):
    calls[0] += 1
    if calls[0] == 3:
        os.kill(os.getpid(), signal.{sig})
    return original(*args, **kwargs)
exporters.write_table = write_table
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.nothing_lost
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_signal_during_the_write_phase_leaves_the_previous_report(previous: Path, sig: str) -> None:
    """A real signal in a subprocess, in the middle of the files: the old report stays whole."""
    before = snapshot(previous)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SIGNAL_SCRIPT.format(sig=sig)), "report", "--trace",
         str(previous / "trace.json"), "--out", str(previous)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode in (130, -signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL), proc.stderr
    assert snapshot(previous) == before
    if sig != "SIGKILL":
        assert _siblings(previous) == []
    # whatever a killed run left beside the report is cleaned by the next run
    assert _rerun(previous) == 0
    assert _siblings(previous) == []
    assert "verification.csv" not in snapshot(previous)


@pytest.mark.nothing_lost
def test_disk_full_on_a_small_tmpfs_keeps_the_previous_report(toy_report: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    size = sum(p.stat().st_size for p in toy_report.iterdir())
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 1.5)}", "tmpfs", str(mnt)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = mnt / "latest"
        shutil.copytree(toy_report, out)
        before = snapshot(out)
        proc = run_cli("report", "--trace", str(out / "trace.json"), "--out", str(out))
        assert proc.returncode == 1 and one_line(proc.stderr), proc.stderr
        assert "No space left" in proc.stderr
        assert snapshot(out) == before
        assert sorted(os.listdir(mnt)) == ["latest"]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


_SIGNAL_IN_TRACE = """
import os, signal, sys
from opmeter.models.deepseek_ocr.model import DeepseekOCRForCausalLM
from opmeter.cli import main
original = DeepseekOCRForCausalLM.forward
calls = [0]
def forward(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 2:  # the first decode step
        os.kill(os.getpid(), signal.{sig})
    return original(self, *args, **kwargs)
DeepseekOCRForCausalLM.forward = forward
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.clean_error
@pytest.mark.nothing_lost
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_during_the_trace_saves_the_partial_trace_where_it_says(previous: Path, sig: str) -> None:
    before = snapshot(previous)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SIGNAL_IN_TRACE.format(sig=sig)), *REPORT, "--decode-tokens", "3",
         "--out", str(previous)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 130 and one_line(proc.stderr), proc.stderr
    partial = previous.parent / "latest.trace.partial.json"
    assert str(partial) in proc.stderr
    from opmeter.trace import load_trace

    trace = load_trace(partial)
    assert not trace.complete and trace.totals()["ops"] > 0
    assert snapshot(previous) == before
    # a report from the partial trace is refused: it would undercount
    assert run_cli("report", "--trace", str(partial), "--out", str(previous)).returncode == 1
    # a later successful run supersedes it
    assert _rerun(previous) == 0 and not partial.exists()


@pytest.mark.clean_error
def test_a_partial_trace_that_cannot_be_saved_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from opmeter.models.deepseek_ocr.model import DeepseekOCRForCausalLM
    from opmeter.trace import Trace

    def broken_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("model bug")

    def broken_save(self: Any, path: Any) -> Any:
        raise OverflowError("int too big to convert")

    monkeypatch.setattr(DeepseekOCRForCausalLM, "forward", broken_forward)
    monkeypatch.setattr(Trace, "save", broken_save)
    assert main([*REPORT, "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and "model bug" in err and "could not be saved" in err and "OverflowError" in err


@pytest.mark.clean_error
@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"not an image at all"])
def test_a_corrupt_image_is_one_line_and_creates_nothing(tmp_path: Path, content: bytes,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "page.png"
    page.write_bytes(content)
    assert main([*REPORT, "--image", str(page), "--out", str(tmp_path / "r")]) == 1
    assert one_line(capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == ["page.png"]


@pytest.mark.nothing_lost
def test_an_out_that_is_a_symlink_keeps_pointing_at_the_new_report(previous: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(previous)
    assert main(["report", "--trace", str(previous / "trace.json"), "--out", str(link)]) == 0
    assert link.is_symlink() and (link / "report.md").is_file()
    assert not (link / "verification.csv").exists()


@pytest.mark.nothing_lost
def test_an_optional_output_that_fails_is_named_in_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from opmeter.report import plots

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("no categories to draw")

    monkeypatch.setattr(plots, "categories", broken)
    out = tmp_path / "r"
    assert main([*REPORT, "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## Files not written" in text and "categories plot: ValueError: no categories to draw" in text
    assert not (out / "categories.svg").exists() and (out / "flops_by_component.svg").is_file()
    assert "categories plot not written" in caplog.text
