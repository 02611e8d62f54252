"""opmeter writes only into directories it marked as its own and never deletes a file it did not write: user files
and inputs inside ``--out`` survive every command, unmarked directories and foreign files are refused in one line,
and a partial trace the user is told about outlives the process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
from helpers import TOY, one_line, snapshot
from PIL import Image

from opmeter.cli import main
from opmeter.report.outdir import MANIFEST_NAME, read_manifest

REPORT = ["report", "--preset", TOY, "--device", "meta", "--decode-tokens", "2"]


def _users_directory(root: Path) -> Path:
    """A directory of the user's that happens to hold a file named ``report.md``."""
    u = root / "U"
    (u / "data").mkdir(parents=True)
    (u / "report.md").write_text("notes\n")
    (u / "thesis.tex").write_text("x\n")
    (u / "data" / "a.csv").write_text("y\n")
    return u


def _page(path: Path, size: tuple[int, int] = (300, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (250, 250, 250)).save(path)
    return path


@pytest.fixture
def report_dir(toy_report: Path, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "R"
    shutil.copytree(toy_report, out)
    return out


@pytest.mark.clean_error
@pytest.mark.nothing_lost
def test_a_users_directory_holding_a_report_md_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    u = _users_directory(tmp_path)
    before = snapshot(u)
    assert main([*REPORT, "--out", str(u)]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and "opmeter did not write" in err and "--force" in err
    assert snapshot(u) == before


@pytest.mark.nothing_lost
def test_force_adopts_a_directory_and_keeps_every_file_it_did_not_write(tmp_path: Path) -> None:
    u = _users_directory(tmp_path)
    assert main([*REPORT, "--out", str(u), "--force"]) == 0
    after = snapshot(u)
    assert after["thesis.tex"] == b"x\n" and after["data/a.csv"] == b"y\n"
    assert after["report.md"] != b"notes\n"  # the one file named like a report file is replaced, as --force says
    manifest = orjson.loads(after[MANIFEST_NAME])
    assert "report.md" in manifest["files"] and "thesis.tex" not in manifest["files"]
    assert sorted(manifest["kept"]) == ["data", "thesis.tex"]
    # a second run without --force: the directory is opmeter's now, the user's files stay the user's
    assert main([*REPORT, "--out", str(u)]) == 0
    assert snapshot(u)["thesis.tex"] == b"x\n" and snapshot(u)["data/a.csv"] == b"y\n"


@pytest.mark.nothing_lost
def test_an_input_image_inside_out_survives_the_report(report_dir: Path) -> None:
    page = _page(report_dir / "page.png")
    data = page.read_bytes()
    assert main([*REPORT, "--image", str(page), "--out", str(report_dir)]) == 0
    assert page.read_bytes() == data
    assert main([*REPORT, "--image", str(page), "--out", str(report_dir)]) == 0  # and the rerun finds it
    assert "page.png" not in (read_manifest(report_dir) or ())


@pytest.mark.nothing_lost
def test_a_folder_of_pages_inside_out_survives_the_set_report(tmp_path: Path) -> None:
    out = tmp_path / "S"
    pages = out / "pages"
    _page(pages / "a.png")
    _page(pages / "b.png", (200, 300))
    before = snapshot(pages)
    assert main([*REPORT, "--images", str(pages), "--out", str(out), "--force"]) == 0
    assert snapshot(out / "pages") == before
    assert main([*REPORT, "--images", str(pages), "--out", str(out)]) == 0
    assert snapshot(out / "pages") == before


@pytest.mark.nothing_lost
def test_a_file_the_user_adds_to_a_report_survives_the_rerun(report_dir: Path) -> None:
    (report_dir / "notes.txt").write_text("mine")
    assert main(["report", "--trace", str(report_dir / "trace.json"), "--out", str(report_dir)]) == 0
    assert (report_dir / "notes.txt").read_text() == "mine"
    assert (report_dir / "trace.json").is_file()  # the input trace, opmeter's own, is carried


@pytest.mark.clean_error
@pytest.mark.nothing_lost
def test_a_foreign_file_named_like_a_report_file_is_refused_not_replaced(
    report_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = orjson.loads((report_dir / MANIFEST_NAME).read_bytes())
    manifest["files"].remove("summary.json")  # as if the user had put their own summary.json there
    (report_dir / MANIFEST_NAME).write_bytes(orjson.dumps(manifest))
    (report_dir / "summary.json").write_text("the user's")
    assert main([*REPORT, "--out", str(report_dir)]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and "summary.json" in err and "not opmeter's" in err
    assert (report_dir / "summary.json").read_text() == "the user's"


@pytest.mark.clean_error
@pytest.mark.parametrize("argv", [
    ["demo", "--new-tokens", "2"],
    ["verify", "--fast", "--device", "meta", "--quiet"],
    ["sweep", "decode", "--no-plots", "--max-crops", "2", "--decode-steps", "2"],
])
def test_every_command_with_out_refuses_a_users_directory(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "trace.json").write_text("the user's")
    (tmp_path / "stages.csv").write_text("the user's")
    before = snapshot(tmp_path)
    assert main([*argv, "--out", str(tmp_path)]) == 1
    assert one_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


@pytest.mark.clean_error
def test_demo_into_the_root_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.name for p in Path("/").iterdir())
    assert main(["demo", "--out", "/"]) == 1
    assert one_line(capsys.readouterr().err)
    assert sorted(p.name for p in Path("/").iterdir()) == before


@pytest.mark.nothing_lost
def test_demo_reruns_into_its_own_directory_and_keeps_the_users_files(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--new-tokens", "2", "--out", str(out)]) == 0
    (out / "mine.txt").write_text("mine")
    assert main(["demo", "--new-tokens", "3", "--out", str(out)]) == 0
    assert (out / "mine.txt").read_text() == "mine" and (out / "trace.json").is_file()


@pytest.mark.clean_error
@pytest.mark.nothing_lost
def test_compare_refuses_a_users_directory(toy_report: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "compare.md").write_text("the user's")
    assert main(["compare", str(toy_report), str(toy_report), "--out", str(tmp_path)]) == 1
    assert one_line(capsys.readouterr().err)
    assert (tmp_path / "compare.md").read_text() == "the user's"
    assert main(["compare", str(toy_report), str(toy_report), "--out", str(tmp_path / "c")]) == 0
    assert main(["compare", str(toy_report), str(toy_report), "--out", str(tmp_path / "c")]) == 0  # its own: replaced


@pytest.mark.nothing_lost
def test_sweeps_add_to_their_directory(tmp_path: Path) -> None:
    common = ["--no-plots", "--max-crops", "2", "--decode-steps", "2", "--out", str(tmp_path / "s")]
    assert main(["sweep", "vision", *common]) == 0
    assert main(["sweep", "decode", *common]) == 0
    names = {p.name for p in (tmp_path / "s").iterdir()}
    assert {"vision.csv", "vision.md", "decode.csv", "decode.md"} <= names
    assert {"vision.csv", "decode.csv"} <= set(read_manifest(tmp_path / "s") or ())


@pytest.mark.clean_error
@pytest.mark.nothing_lost
@pytest.mark.parametrize("argv", [
    ["calibrate", "--quick", "--out"],
    ["inventory", "--preset", TOY, "--json"],
])
def test_a_file_output_replaces_only_a_file_of_its_own_kind(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("precious")
    assert main([*argv, str(precious)]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and "not an opmeter file" in err and "--force" in err
    assert precious.read_text() == "precious"


@pytest.mark.nothing_lost
def test_inventory_rewrites_its_own_json(tmp_path: Path) -> None:
    path = tmp_path / "inv.json"
    assert main(["inventory", "--preset", TOY, "--json", str(path)]) == 0
    first = orjson.loads(path.read_bytes())
    assert main(["inventory", "--preset", TOY, "--json", str(path)]) == 0
    assert orjson.loads(path.read_bytes()) == first


_SIGNAL_IN_SET = """
import os, signal, sys
from opmeter.models.deepseek_ocr.model import DeepseekOCRForCausalLM
from opmeter.cli import main
original = DeepseekOCRForCausalLM.forward
calls = [0]
def forward(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 2:  # the first decode step of the first geometry
        os.kill(os.getpid(), signal.SIGTERM)
    return original(self, *args, **kwargs)
DeepseekOCRForCausalLM.forward = forward
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.clean_error
@pytest.mark.nothing_lost
def test_an_interrupted_set_report_keeps_the_partial_trace_it_names(tmp_path: Path) -> None:
    from opmeter.trace import load_trace

    pages = tmp_path / "pages"
    _page(pages / "a.png")
    out = tmp_path / "X"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_SIGNAL_IN_SET), *REPORT, "--images", str(pages),
                           "--out", str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 130 and one_line(proc.stderr), proc.stderr
    partial = tmp_path / "X.geometry-0.trace.partial.json"
    assert str(partial) in proc.stderr
    trace = load_trace(partial)  # after the process has exited
    assert not trace.complete and trace.totals()["ops"] > 0
    assert not out.exists()
