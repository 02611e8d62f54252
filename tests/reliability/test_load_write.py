"""Loading saved traces (plain, gzipped, malformed) and writing files (symlinks, devices, FIFOs)."""

from __future__ import annotations

import copy
import gzip
import os
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch
from helpers import Small, one_line

from opmeter.cli import main
from opmeter.errors import OpmeterError
from opmeter.io import atomic_write_bytes
from opmeter.report.exporters import write_trace_json
from opmeter.trace import OpTracer, Trace, load_trace


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model = Small()
    with OpTracer(model) as trace:
        model(torch.randn(2, 8))
    out = tmp_path_factory.mktemp("saved")
    write_trace_json(trace, out / "big" / "trace.json", compress=False)
    raw = trace.to_dict(tables=False)
    return {"trace": trace, "dir": out, "raw": raw}


@pytest.mark.nothing_lost
def test_load_trace_reads_the_gzip_opmeter_writes(saved: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "trace.json.gz"
    path.write_bytes(gzip.compress(orjson.dumps(saved["trace"].to_dict())))
    loaded = load_trace(path)
    assert loaded.totals() == saved["trace"].totals()


def test_show_prints_a_gzipped_trace(saved: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.json.gz"
    path.write_bytes(gzip.compress(orjson.dumps(saved["trace"].to_dict())))
    assert main(["show", str(path)]) == 0
    assert "Linear" in capsys.readouterr().out


@pytest.mark.clean_error
@pytest.mark.parametrize("content", [b"\x1f\x8b\x08garbage", b"{\"schema_version\": 1", b"[]", b"\xff\xfe\x00"])
def test_unreadable_trace_files_are_one_line(tmp_path: Path, content: bytes,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.json"
    path.write_bytes(content)
    assert main(["show", str(path)]) == 1
    assert one_line(capsys.readouterr().err)


def _mutations(raw: dict[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` damaged copies of ``raw``: a row or value replaced by the wrong type, out of range, dropped, doubled."""
    rng = random.Random(seed)
    junk = [None, -5, 10**9, "x", [], {}, 1.5, [1]]
    out = []
    for _ in range(n):
        d = copy.deepcopy(raw)
        key = rng.choice([k for k in d if k != "schema_version"])
        value = d[key]
        if isinstance(value, list) and value:
            i = rng.randrange(len(value))
            if isinstance(value[i], list) and value[i] and rng.random() < 0.6:
                value[i][rng.randrange(len(value[i]))] = rng.choice(junk)
            else:
                how = rng.randrange(3)
                if how == 0:
                    value[i] = rng.choice(junk)
                elif how == 1:
                    value.pop(i)
                else:
                    value.append(value[i])
        elif isinstance(value, dict) and value:
            value[rng.choice(list(value))] = rng.choice(junk)
        else:
            d[key] = rng.choice(junk)
        out.append(d)
    return out


@pytest.mark.clean_error
def test_damaged_traces_load_and_query_or_give_one_error(saved: dict[str, Any]) -> None:
    """400 seeded damages: each one loads and answers every query, or is refused with an OpmeterError."""
    refused = 0
    for damaged in _mutations(saved["raw"], 400, seed=11):
        try:
            t = Trace.from_dict(damaged)
        except OpmeterError as exc:
            assert "malformed" in str(exc) or "schema" in str(exc) or "not an opmeter" in str(exc)
            refused += 1
            continue
        for query in (t.by_module, t.by_operator, t.stages, t.totals, t.unclassified, t.edges, t.by_class,
                      t.by_category, t.to_dict):
            query()
    assert refused > 100  # most damages are caught by the shape check, not by luck


@pytest.mark.clean_error
@pytest.mark.parametrize(("key", "value"), [("contexts", [[0, 99]]), ("cells", [[0, 0, "aten.mm"]]),
                                            ("stages", [["x", "nope", 0, "auto", 1, 1, [0] * 6, 0.0, 1]]),
                                            ("modules", [])])
def test_index_out_of_range_is_refused(saved: dict[str, Any], key: str, value: Any) -> None:
    d = copy.deepcopy(saved["raw"])
    d[key] = value
    with pytest.raises(OpmeterError, match="malformed opmeter trace"):
        Trace.from_dict(d)


@pytest.mark.nothing_lost
def test_writes_go_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "real" / "report.md"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.md"
    link.symlink_to(target)
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and target.read_text() == "new"


def test_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "target.json")
    atomic_write_bytes(link, b"{}")
    assert link.is_symlink() and (tmp_path / "target.json").read_bytes() == b"{}"


def test_character_device_is_written_in_place() -> None:
    devnull = Path(os.devnull)
    atomic_write_bytes(devnull, b"discarded")
    assert devnull.is_char_device()  # still the device, not a regular file renamed over it


def test_fifo_is_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        atomic_write_bytes(fifo, b"through the pipe")
        assert os.read(reader, 100) == b"through the pipe"
    finally:
        os.close(reader)
    assert fifo.is_fifo()


@pytest.mark.clean_error
@pytest.mark.nothing_lost
def test_a_directory_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "trace.json").mkdir()
    (tmp_path / "trace.json" / "keep").write_text("x")
    with pytest.raises(OpmeterError, match="is a directory"):
        atomic_write_bytes(tmp_path / "trace.json", b"{}")
    assert (tmp_path / "trace.json" / "keep").read_text() == "x"
