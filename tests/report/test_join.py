"""The join on a toy-preset trace: every mapped module joined, unclassified shares, totals consistent, JSON schema."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

from opmeter.errors import OpmeterError
from opmeter.join import GLUE, OUTSIDE, ROOT, SCHEMA_VERSION, Joined, join, load_joined, rel_diff
from opmeter.models.deepseek_ocr.adapter import DeepseekOCRAdapter
from opmeter.report.run import param_bytes_by_module

DSOCR = DeepseekOCRAdapter()


@pytest.fixture(scope="module")
def joined(toy_run: dict[str, Any]) -> Joined:
    return join(
        toy_run["trace"], toy_run["pred_modules"], toy_run["pred_stages"], components=DSOCR.components(),
        stage_spec=DSOCR.stage_spec, param_bytes=param_bytes_by_module(toy_run["model"]), hardware={"name": "H100-SXM"},
    )


def test_every_called_module_with_an_analytic_layer_is_joined_and_agrees(joined: Joined) -> None:
    mods = joined.by_module()
    called = mods[(mods["calls"] > 0) & ~mods["module"].isin([ROOT, OUTSIDE])]
    missing = called[~called["predicted"]]
    # containers the analytic model folds into their parent (SAM's neck Sequential) are the only exceptions
    assert set(missing["class_name"]) <= {"Sequential"}, missing[["module", "class_name"]]
    jm = joined.joined_modules()
    assert len(jm) > 100
    assert ((jm["calls"] > 0) | (jm["invoked"] == "forward")).all()  # nothing predicted that never ran
    for col in ("rel_flops_tensor", "rel_flops_cuda", "rel_bytes"):  # the mission's goal: within 0.1 %
        assert jm[col].notna().all()
        assert jm[col].abs().max() < 1e-3, jm.loc[jm[col].abs().idxmax(), ["module", col]]


def test_components_plus_glue_equal_the_trace_totals(joined: Joined, toy_run: dict[str, Any]) -> None:
    totals = toy_run["trace"].totals()
    comp = joined.by_component()
    assert comp["component"].iloc[-1] == GLUE
    assert comp["flops_tensor"].sum() == pytest.approx(totals["flops_tensor"], rel=1e-12)
    assert comp["flops_cuda"].sum() == pytest.approx(totals["flops_cuda"], rel=1e-12)
    assert comp["bytes"].sum() == pytest.approx(totals["bytes_read"] + totals["bytes_written"], rel=1e-12)
    assert comp["flops_share"].sum() == pytest.approx(1.0)
    assert joined.checks()["ok"].all()
    names = set(comp["component"])
    assert {"SAM encoder", "CLIP tower", "projector", "routed experts", "LM head"} <= names
    # per stage group as well
    pre, dec = joined.by_component("prefill"), joined.by_component("decode")
    prefill_total = toy_run["trace"].totals(stage="prefill")["flops_tensor"]
    assert pre["flops_tensor"].sum() == pytest.approx(prefill_total)
    assert dec.set_index("component").loc["SAM encoder", "flops_tensor"] == 0


def test_component_by_category_partitions_the_category_totals(joined: Joined) -> None:
    cc = joined.by_component_and_category()
    cats = joined.by_category().set_index("category")
    summed = cc.groupby("category")["flops_tensor"].sum()
    for category, value in summed.items():
        assert value == pytest.approx(float(cats.loc[category, "flops_tensor"]), abs=1e-6)
    assert (cc["flops_tensor"] >= -1e-6).all()


def test_unclassified_bucket_has_shares_of_flops_and_bytes(joined: Joined) -> None:
    summary = joined.unclassified_summary()
    assert 0 < summary["glue_bytes_share"] < 1  # preprocessing and generate glue exist
    assert 0 <= summary["unclassified_flops_share"] < 0.01
    assert summary["attributed_flops_share"] == pytest.approx(1 - summary["unclassified_flops_share"])
    assert math.isnan(summary["unclassified_time_share"])  # nothing timed: unknown, not 0
    table = joined.unclassified()
    assert set(table["kind"]) <= {"glue", "no_category"}
    assert OUTSIDE in set(table["name"]) or ROOT in set(table["name"])


def test_stages_vision_prefill_decode_and_total(joined: Joined, toy_run: dict[str, Any]) -> None:
    st = joined.by_stage().set_index("stage")
    assert [s for s in st.index if s.startswith("decode[")] == ["decode[0]", "decode[1]", "decode[2]"]
    for stage in ("vision", "prefill", "decode"):
        assert st.loc[stage, "rel_flops_tensor"] == pytest.approx(0.0, abs=1e-9)
        assert st.loc[stage, "predicted_time_s"] > 0
    steps = st[st.index.str.startswith("decode[")]
    assert steps["flops_tensor"].sum() == pytest.approx(st.loc["decode", "flops_tensor"])
    assert st.loc["total", "flops_tensor"] == pytest.approx(toy_run["trace"].totals()["flops_tensor"])
    assert math.isnan(st.loc["total", "measured_time_s"])


def test_by_class_and_hierarchy(joined: Joined) -> None:
    cls = joined.by_class().set_index("class_name")
    assert cls.loc["DeepseekV2MoE", "instances"] == 1  # toy: layer 0 dense, layer 1 MoE
    assert cls.loc["Linear", "rel_flops_tensor"] == pytest.approx(0.0, abs=1e-9)
    mc = joined.by_module_and_category()
    root = mc[mc["module"] == ROOT]
    assert root["flops_tensor"].sum() == pytest.approx(joined.by_module().set_index("module").loc[ROOT,
                                                                                                  "flops_tensor"])
    tree = joined.hierarchy(max_depth=4)
    assert tree.set_index("module").loc["model.sam_model.patch_embed", "top_category"] == "convolution"
    assert "model.sam_model.blocks.*" in set(tree["module"])
    assert tree.set_index("module").loc["model.sam_model.blocks.*", "instances"] == 2


def test_rel_diff_conventions() -> None:
    assert rel_diff(110, 100) == pytest.approx(0.1)
    assert rel_diff(0, 0) == 0.0
    assert math.isnan(rel_diff(1, 0))
    assert math.isnan(rel_diff(None, 1))


def test_joined_json_schema_and_round_trip(joined: Joined, tmp_path: Path) -> None:
    path = joined.save(tmp_path / "joined.json")
    data = orjson.loads(path.read_bytes())
    assert data["schema"] == "opmeter.joined" and data["schema_version"] == SCHEMA_VERSION
    for key in ("metadata", "hardware", "totals", "unclassified_summary", "components", "stages", "modules",
                "categories", "operators", "unclassified_ops", "component_category", "edges", "checks", "runtime"):
        assert key in data, key
    module_keys = {"module", "class_name", "parent", "depth", "calls", "flops_tensor", "flops_cuda", "bytes",
                   "self_flops_tensor", "component", "predicted", "pred_flops_tensor", "rel_flops_tensor",
                   "weight_bytes", "pred_weight_bytes"}
    assert module_keys <= set(data["modules"][0])
    assert {"stage", "flops_tensor", "pred_flops_tensor", "predicted_time_s", "measured_time_s"} <= set(
        data["stages"][0])
    assert b"NaN" not in path.read_bytes()  # NaN is written as null (valid JSON)
    back = load_joined(path)
    pd.testing.assert_frame_equal(
        back.by_component()[["component", "flops_tensor"]], joined.by_component()[["component", "flops_tensor"]],
        check_dtype=False,
    )
    assert back.totals() == pytest.approx(joined.totals(), nan_ok=True)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "is not a JSON joined file"),
        (orjson.dumps({"schema": "opmeter.trace/1"}), "not an opmeter joined.json"),
        (orjson.dumps({"schema": "opmeter.joined", "schema_version": 99}), "schema_version 99 is not supported"),
    ],
)
def test_load_joined_rejects_other_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(OpmeterError, match=message):
        load_joined(path)
    with pytest.raises(OpmeterError, match="no such file"):
        load_joined(tmp_path / "missing.json")


CLIP0 = "model.vision_model.transformer.layers.0"


def test_modules_called_only_through_forward_get_their_childrens_metrics(joined: Joined) -> None:
    """The vendor CLIP block calls ``self.self_attn.forward`` / ``self.mlp.forward``: never on the module stack."""
    mods = joined.by_module().set_index("module")
    for sub, kids, layer in (("self_attn", ("qkv_proj", "out_proj"), "NoTPAttention"),
                             ("mlp", ("fc1", "fc2"), "NoTPFeedForward")):
        row = mods.loc[f"{CLIP0}.{sub}"]
        assert row["invoked"] == "forward" and row["calls"] == 0
        assert row["forward_calls"] == mods.loc[f"{CLIP0}.{sub}.{kids[0]}", "calls"] == 2  # global view + crops
        for m in ("flops_tensor", "flops_cuda", "bytes", "prefill_flops_tensor"):
            assert row[m] == pytest.approx(sum(mods.loc[f"{CLIP0}.{sub}.{k}", m] for k in kids))
        assert row["flops_tensor"] > 0
        assert row["self_flops_tensor"] == row["self_bytes"] == 0  # own ops stay in the block's self metrics
        assert row["predicted"] and row["pred_layer"] == layer
        for m in ("rel_flops_tensor", "rel_flops_cuda", "rel_bytes"):
            assert row[m] == pytest.approx(0.0, abs=1e-9)
        assert row["pred_layer_flops_tensor"] >= row["pred_flops_tensor"]  # the whole layer, SDPA included
    assert mods.loc[f"{CLIP0}.self_attn", "pred_layer_flops_tensor"] > mods.loc[f"{CLIP0}.self_attn",
                                                                                  "pred_flops_tensor"]
    assert set(joined.forward_invoked()["class_name"]) == {"NoTPAttention", "NoTPFeedForward"}
    assert mods.loc["model.layers", "invoked"] == "container"
    assert mods.loc["model.vision_model.embeddings.patch_embedding", "invoked"] == "never"
    assert joined.checks()["ok"].all()
    # pre-order: the parent sits right before its first child
    order = list(mods.index)
    assert order.index(f"{CLIP0}.self_attn") + 1 == order.index(f"{CLIP0}.self_attn.qkv_proj")
    cats = joined.by_module_and_category()
    gemm = cats[(cats["module"] == f"{CLIP0}.self_attn") & (cats["category"] == "gemm")]
    assert float(gemm["flops_tensor"].sum()) == pytest.approx(mods.loc[f"{CLIP0}.self_attn", "flops_tensor"])


def test_hierarchy_and_report_show_forward_invoked_modules_with_their_children(joined: Joined) -> None:
    from opmeter.report.markdown import render

    tree = joined.hierarchy(max_depth=7).set_index("module")
    pattern = "model.vision_model.transformer.layers.*"
    for path in (f"{pattern}.self_attn", f"{pattern}.self_attn.qkv_proj", f"{pattern}.self_attn.out_proj",
                 f"{pattern}.mlp", f"{pattern}.mlp.fc1", f"{pattern}.mlp.fc2"):
        assert path in tree.index, path
    assert tree.loc[f"{pattern}.self_attn", "invoked"] == "forward"
    assert tree.loc[f"{pattern}.self_attn", "top_category"] == "gemm"
    text = render(joined, {})
    hierarchy = text.split("## Module hierarchy")[1].split("## Module classes")[0]
    assert f"{pattern}.self_attn.qkv_proj |" in hierarchy and f"{pattern}.mlp.fc2 |" in hierarchy
    assert "4 via `.forward()`" in hierarchy
    never = next(line for line in hierarchy.splitlines() if line.startswith("Defined but never called"))
    assert "NoTPAttention" not in never and "NoTPFeedForward" not in never and "patch_embedding" in never
    assert "Called only through `.forward()`" in hierarchy


def test_forward_invoked_prediction_falls_back_to_the_predicted_children(toy_run: dict[str, Any]) -> None:
    pm = toy_run["pred_modules"]
    if "direct_forward" in pm:
        pm = pm[~pm["direct_forward"]]
    joined = join(toy_run["trace"], pm, toy_run["pred_stages"], components=DSOCR.components(),
                  stage_spec=DSOCR.stage_spec)
    row = joined.by_module().set_index("module").loc[f"{CLIP0}.self_attn"]
    assert row["pred_layer"] == "NoTPAttention (children)"
    assert row["rel_flops_tensor"] == pytest.approx(0.0, abs=1e-9)
    assert row["pred_self_flops_tensor"] == 0
