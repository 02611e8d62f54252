"""``opmeter compare``: two report directories side by side."""

from __future__ import annotations

from pathlib import Path

import pytest

from opmeter.cli import main


def test_a_report_compared_with_itself_is_one_x_everywhere(cpu_report: Path, tmp_path: Path) -> None:
    assert main(["compare", str(cpu_report), str(cpu_report), "--out", str(tmp_path)]) == 0
    text = (tmp_path / "compare.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| figure")]
    assert any(r.startswith("| vision: tensor-core FLOPs") for r in rows)
    assert any(r.startswith("| measured TTFT") for r in rows)  # the toy report executed on CPU
    assert all(r.endswith("| 1x |") or r.endswith("| — |") for r in rows), rows
    assert (tmp_path / "compare.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize("bad", ["missing", "not-a-report"])
def test_a_directory_that_is_not_a_report_is_one_line(bad: str, cpu_report: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "not-a-report").mkdir()
    assert main(["compare", str(cpu_report), str(tmp_path / bad), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "report directory" in err
    assert not (tmp_path / "out").exists()
