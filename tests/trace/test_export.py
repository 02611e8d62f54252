"""JSON round-trip and schema check, DOT/Mermaid, the demo and show commands."""

from __future__ import annotations

from pathlib import Path

import orjson
import pandas as pd
import pytest
import torch

from opmeter import OpTracer, Trace, load_trace
from opmeter.cli import main
from opmeter.errors import OpmeterError
from opmeter.trace import SCHEMA_VERSION
from opmeter.trace.demo import DemoConfig, DemoTransformer


@pytest.fixture(scope="module")
def demo_trace() -> Trace:
    torch.manual_seed(0)
    model = DemoTransformer(DemoConfig(n_layers=1)).eval()
    with OpTracer(model, timing=True, record_shapes=True, metadata={"workload": {"id": "t"}}) as trace:
        with trace.stage("warmup"):
            model(torch.randint(0, 100, (1, 3)))
        model.generate(torch.randint(0, 100, (1, 5)), max_new_tokens=3)
    return trace


QUERIES = ["by_module", "by_operator", "by_module_and_operator", "by_category", "by_class", "edges", "stages",
           "unclassified", "uncalled_modules", "spans", "shapes", "stage_groups", "by_module_and_category"]


def test_json_round_trip_gives_same_answers(demo_trace: Trace, tmp_path: Path) -> None:
    path = demo_trace.save(tmp_path / "run" / "trace.json")
    same = load_trace(path)
    for q in QUERIES:
        pd.testing.assert_frame_equal(getattr(same, q)(), getattr(demo_trace, q)(), check_dtype=False, obj=q)
    for stage in ("prefill", "decode", "warmup", ["decode", "decode.glue"]):
        pd.testing.assert_frame_equal(same.by_module(stage=stage), demo_trace.by_module(stage=stage))
        pd.testing.assert_frame_equal(same.by_operator(stage=stage), demo_trace.by_operator(stage=stage))
    pd.testing.assert_frame_equal(same.edges(level="class"), demo_trace.edges(level="class"))
    assert same.totals() == demo_trace.totals()
    assert same.metadata == demo_trace.metadata and same.metadata["workload"] == {"id": "t"}
    assert same.to_dot() == demo_trace.to_dot() and same.to_mermaid() == demo_trace.to_mermaid()
    raw = orjson.loads(path.read_bytes())
    assert raw["schema_version"] == SCHEMA_VERSION == "opmeter.trace/1"
    assert raw["complete"] is True and raw["error"] is None
    meta = raw["metadata"]
    assert {"model_class", "torch_version", "device", "dtype"} <= set(meta)
    tables = raw["tables"]
    assert {"modules", "edges", "ops", "stages", "unclassified", "totals"} <= set(tables)
    assert tables["modules"][0]["module"] == "<root>"
    assert not list(tmp_path.glob("run/.*.tmp"))  # atomic write leaves no temporary file


def test_metadata_json_cannot_hold_is_saved_as_text(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    with OpTracer(model, metadata={"image": tmp_path / "page.png", "dtype": torch.bfloat16}) as trace:
        model(torch.randn(1, 2))
    loaded = load_trace(trace.save(tmp_path / "trace.json"))  # used to raise orjson's TypeError
    assert loaded.metadata["image"] == str(tmp_path / "page.png") and loaded.metadata["dtype"] == "torch.bfloat16"


def test_schema_and_malformed_files_are_rejected(demo_trace: Trace, tmp_path: Path) -> None:
    d = demo_trace.to_dict(tables=False)
    d["schema_version"] = "opmeter.trace/999"
    bad = tmp_path / "future.json"
    bad.write_bytes(orjson.dumps(d))
    with pytest.raises(OpmeterError, match=r"unsupported trace schema 'opmeter.trace/999'.*re-trace"):
        load_trace(bad)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(OpmeterError, match="not a JSON trace"):
        load_trace(tmp_path / "junk.json")
    with pytest.raises(OpmeterError, match="cannot read trace"):
        load_trace(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(OpmeterError, match="expected a JSON object"):
        load_trace(tmp_path / "list.json")
    broken = demo_trace.to_dict(tables=False)
    del broken["cells"]
    with pytest.raises(OpmeterError, match="malformed"):
        Trace.from_dict(broken)
    # indices pointing outside their tables (queries would raise IndexError)
    dangling = demo_trace.to_dict(tables=False)
    dangling["contexts"][1] = [0, 999]
    with pytest.raises(OpmeterError, match=r"malformed opmeter trace \(context 1 = \(0, 999\)"):
        Trace.from_dict(dangling)
    dangling = demo_trace.to_dict(tables=False)
    dangling["cells"][0][1] = len(dangling["contexts"])
    with pytest.raises(OpmeterError, match=r"malformed opmeter trace \(cells entry"):
        Trace.from_dict(dangling)


def test_dot_and_mermaid_class_graph(demo_trace: Trace) -> None:
    dot = demo_trace.to_dot()
    assert dot.startswith("digraph opmeter {") and dot.rstrip().endswith("}")
    assert '"Block" -> "Attention" [label="4"]' in dot
    assert '"DemoTransformer" -> "Linear" [label="4"]' in dot  # lm_head
    mmd = demo_trace.to_mermaid()
    assert mmd.startswith("flowchart LR")
    assert "-->|4|" in mmd and "Attention" in mmd


def test_class_graph_keeps_classes_of_the_same_name() -> None:
    def part_class(module: str) -> type[torch.nn.Module]:
        return type("Part", (torch.nn.Linear,), {"__module__": module})

    model = torch.nn.Sequential(part_class("vision")(2, 2), part_class("text")(2, 2))
    with OpTracer(model) as trace:
        model(torch.randn(1, 2))
    assert len(trace.by_class().query("class_name == 'Part'")) == 2
    node = next(line for line in trace.to_dot().splitlines() if line.startswith('  "Part" ['))
    assert "calls=2 instances=2" in node  # not only the last of the two classes


def test_stage_marker_after_exit_is_an_error(demo_trace: Trace) -> None:
    with pytest.raises(OpmeterError, match="tracer is active"):
        demo_trace.stage("late")


def test_demo_and_show_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--new-tokens", "3"]) == 0
    for name in ("trace.json", "modules.csv", "operators.csv", "stages.csv", "callgraph.dot", "callgraph.mmd"):
        assert (out / name).stat().st_size > 0
    text = capsys.readouterr().out
    assert "prefill" in text and "aten.mm.default" in text and "lm_head" in text
    modules = pd.read_csv(out / "modules.csv")
    assert modules.iloc[0]["module"] == "<root>" and modules.iloc[0]["calls"] == 3
    assert main(["show", str(out / "trace.json"), "--stage", "decode"]) == 0
    assert "decode" in capsys.readouterr().out
    assert main(["show", str(tmp_path / "nope.json")]) == 1
    assert "cannot read trace" in capsys.readouterr().err
    assert main(["show", str(out / "trace.json"), "--top", "-1"]) == 1
    assert "--top >= 1" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--new-tokens", "0"]) == 1
