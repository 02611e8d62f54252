"""Files a user is handed are read with bounds, checked before they drive any work, and refused in one line: size
caps (plain and decompressed), non-regular files, numbers that would drive allocations, damaged page sets, and the
odd inputs of other commands."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from helpers import TOY, one_line, snapshot
from PIL import Image

from opmeter.cli import main
from opmeter.errors import OpmeterError

REPORT = ["report", "--preset", TOY, "--device", "meta"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shape-only toy report with 4 new tokens; its trace.json is the artifact the cases damage."""
    out = tmp_path_factory.mktemp("saved") / "R"
    assert main([*REPORT, "--decode-tokens", "4", "--out", str(out)]) == 0
    return out


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert one_line(err), err
    for word in words:
        assert word in err, err
    return err


@pytest.mark.clean_error
@pytest.mark.parametrize("argv", [
    ["report", "--preset", TOY, "--device", "meta", "--profile", "/dev/zero"],
    ["show", "/dev/zero"],
    ["compare", "/dev", "/dev"],
])
def test_a_device_file_is_refused_at_once(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.perf_counter()
    _refused([*argv, "--out", str(tmp_path / "o")] if argv[0] != "show" else argv, capsys)
    assert time.perf_counter() - started < 30
    assert not (tmp_path / "o").exists()


@pytest.mark.clean_error
def test_a_gzip_bomb_stops_at_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    bomb = tmp_path / "trace.json.gz"
    bomb.write_bytes(gzip.compress(b" " * (40 << 20), compresslevel=1))
    monkeypatch.setenv("OPMETER_MAX_READ_MB", "16")
    _refused(["show", str(bomb)], capsys, "decompresses to more than the 16 MiB", "OPMETER_MAX_READ_MB")


@pytest.mark.clean_error
def test_a_plain_file_over_the_cap_is_refused(saved: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPMETER_MAX_READ_MB", "0.01")
    _refused(["show", str(saved / "trace.json")], capsys, "is larger than")


def _with_metadata(saved: Path, tmp_path: Path, **fields: object) -> Path:
    data = orjson.loads((saved / "trace.json").read_bytes())
    data["metadata"].update(fields)
    path = tmp_path / "t.json"
    path.write_bytes(orjson.dumps(data))
    return path


@pytest.mark.clean_error
@pytest.mark.parametrize(("fields", "words"), [
    ({"decode_tokens": 1_000_000_000, "workload": None}, "decode_tokens is '1000000000'"),
    ({"decode_tokens": "abc"}, "decode_tokens is 'abc'"),
    ({"workload": {"image_width": "abc", "image_height": 10}}, "image_width is 'abc'"),
    ({"workload": {"image_width": 10**9, "image_height": 10}}, "image_width is '1000000000'"),
])
def test_numbers_in_a_trace_are_checked_before_any_work(saved: Path, tmp_path: Path, fields: dict[str, object],
                                                        words: str, capsys: pytest.CaptureFixture[str]) -> None:
    trace = _with_metadata(saved, tmp_path, **fields)
    data = orjson.loads(trace.read_bytes())
    data["tables"] = {}
    data["stages"] = []  # without its stage rows, the metadata is all a report has
    trace.write_bytes(orjson.dumps(data))
    _refused(["report", "--trace", str(trace), "--out", str(tmp_path / "o")], capsys, words)
    assert not (tmp_path / "o").exists()


@pytest.mark.clean_error
def test_decode_tokens_that_differ_from_the_trace_are_refused(saved: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    _refused(["report", "--trace", str(saved / "trace.json"), "--decode-tokens", "1989", "--out",
              str(tmp_path / "o")], capsys, "the trace generated 4 tokens")
    assert main(["report", "--trace", str(saved / "trace.json"), "--decode-tokens", "4", "--out",
                 str(tmp_path / "o")]) == 0
    assert "1989" not in (tmp_path / "o" / "report.md").read_text()


def _pages(d: Path, sidecar: object | None = None, raw: str | None = None) -> Path:
    d.mkdir(parents=True)
    Image.new("RGB", (300, 200), "white").save(d / "page.png")
    if raw is not None:
        (d / "decode_tokens.json").write_text(raw)
    elif sidecar is not None:
        (d / "decode_tokens.json").write_text(json.dumps(sidecar))
    return d


@pytest.mark.clean_error
@pytest.mark.parametrize(("raw", "words"), [
    ('{"page.png": Infinity}', "not a JSON"),
    ("[" * 100_000 + "]" * 100_000, "decode_tokens.json"),  # the parser's depth limit or opmeter's, by version
    ('{"page.png": -5}', "whole number"),
    ('{"page.png": 7.9}', "whole number"),
    ('{"page.png": true}', "whole number"),
    ('["page.png"]', "not a JSON object"),
], ids=["infinity", "nested-100k", "negative", "fraction", "boolean", "a-list"])
def test_a_bad_sidecar_is_one_line_naming_it(tmp_path: Path, raw: str, words: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    pages = _pages(tmp_path / "p", raw=raw)
    _refused([*REPORT, "--images", str(pages), "--out", str(tmp_path / "o")], capsys, words)
    assert not (tmp_path / "o").exists()


@pytest.mark.nothing_lost
def test_broken_links_are_skipped_pages_not_aborts(tmp_path: Path) -> None:
    pages = _pages(tmp_path / "p")
    (pages / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (pages / "loop.png").symlink_to(pages / "loop.png")
    assert main([*REPORT, "--images", str(pages), "--out", str(tmp_path / "o"), "--decode-tokens", "2"]) == 0
    text = (tmp_path / "o" / "pages.csv").read_text()
    assert "dangling.png" in text and "loop.png" in text and "cannot read the file" in text


def test_a_glob_over_folders_gives_each_page_its_own_sidecar_and_name(tmp_path: Path) -> None:
    _pages(tmp_path / "d" / "a", {"page.png": 3})
    _pages(tmp_path / "d" / "b", {"page.png": 5})
    out = tmp_path / "o"
    assert main([*REPORT, "--images", str(tmp_path / "d" / "*" / "page.png"), "--out", str(out)]) == 0
    import pandas as pd

    rows = pd.read_csv(out / "pages.csv").set_index("file")
    assert rows.loc["a/page.png", "decode_tokens"] == 3 and rows.loc["b/page.png", "decode_tokens"] == 5


@pytest.mark.clean_error
def test_other_odd_inputs_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(["demo", "--seed", "99999999999999999999", "--out", str(tmp_path / "d")], capsys, "--seed")
    _refused([*REPORT, "--out", os.fsdecode(bytes(tmp_path) + b"/bad\xffname")], capsys, "not valid UTF-8")
    _refused([*REPORT, "--device", "cpu", "--weights", "/nonexistent", "--out", str(tmp_path / "w")], capsys,
             "--weights")
    assert not any(tmp_path.iterdir())


@pytest.mark.clean_error
def test_a_profile_of_bad_numbers_is_refused_before_the_trace(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    good = orjson.loads((Path(__file__).parents[2] / "reports" / "dsocr-mini-cpu" / "device_profile.json")
                        .read_bytes())
    for mutate, word in ((lambda p: p["compute"]["linear"][0].update(flops_per_s="fast"), "flops_per_s"),
                         (lambda p: p["compute"]["linear"][0].update(flops_per_s=0), "flops_per_s"),
                         (lambda p: p.update(module_host_factor=-5), "module_host_factor"),
                         (lambda p: p["bandwidth"]["write"][0].update(bytes_per_s=-1.0), "bytes_per_s")):
        profile = json.loads(json.dumps(good))
        mutate(profile)
        path = tmp_path / "p.json"
        path.write_bytes(orjson.dumps(profile))
        _refused([*REPORT, "--profile", str(path), "--out", str(tmp_path / "o")], capsys, word)
    assert not (tmp_path / "o").exists()


@pytest.mark.clean_error
def test_a_trace_with_a_module_twice_or_negative_flops_is_refused(saved: Path) -> None:
    from opmeter.trace import load_trace

    data = orjson.loads((saved / "trace.json").read_bytes())
    twice = json.loads(json.dumps(data))
    twice["modules"].append(twice["modules"][2])
    negative = json.loads(json.dumps(data))
    negative["cells"][0][4] = -1e18
    for bad, words in ((twice, "has two rows"), (negative, "is not count")):
        path = saved.parent / "bad.json"
        path.write_bytes(orjson.dumps(bad))
        with pytest.raises(OpmeterError, match=words):
            load_trace(path)
        path.unlink()


@pytest.mark.clean_error
def test_ctrl_c_while_the_commands_import_is_one_line() -> None:
    code = (
        "import signal, sys, opmeter.cli as c\n"
        "real = c._command_modules\n"
        "def slow():\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "    return real()\n"
        "c._command_modules = slow\n"
        "sys.exit(c.main(['--help']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 130 and proc.stderr == "opmeter: interrupted\n"


def test_a_libraries_multi_line_message_becomes_one_line() -> None:
    from opmeter.cli import one_line as join_lines

    assert join_lines("first\n  second\n\nthird") == "first; second; third"
    assert len(join_lines("x" * 5000)) == 2000


@pytest.mark.nothing_lost
def test_report_from_a_copied_report_keeps_its_inputs(saved: Path, tmp_path: Path) -> None:
    copy = tmp_path / "R"
    shutil.copytree(saved, copy)
    before = snapshot(copy)["trace.json"]
    assert main(["report", "--trace", str(copy / "trace.json"), "--out", str(copy)]) == 0
    assert snapshot(copy)["trace.json"] == before
