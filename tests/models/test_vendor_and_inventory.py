"""Vendor loader error paths and the static inventory (API and CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from opmeter.cli import main
from opmeter.errors import OpmeterError
from opmeter.inventory import build_inventory
from opmeter.models.deepseek_ocr.vendor import load_vendor


def test_missing_dir_and_files(tmp_path: Path) -> None:
    with pytest.raises(OpmeterError, match="not found"):
        load_vendor(tmp_path / "nope")
    with pytest.raises(OpmeterError, match=r"no config\.json"):
        load_vendor(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(OpmeterError, match="no remote code"):
        load_vendor(tmp_path)
    (tmp_path / "modeling_deepseekocr.py").write_text("")
    with pytest.raises(OpmeterError, match="no weight files"):
        load_vendor(tmp_path)


def test_transformers_version_error_is_clear(tmp_path: Path) -> None:
    """A fake checkpoint whose remote code imports what the vendor code imports from transformers 4.46."""
    pytest.importorskip("transformers")
    import transformers

    if transformers.__version__.startswith("4.46."):
        pytest.skip("transformers 4.46 can import the vendor code")
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "deepseek_vl_v2",
        "auto_map": {"AutoConfig": "modeling_deepseekocr.DeepseekOCRConfig",
                     "AutoModel": "modeling_deepseekocr.DeepseekOCRForCausalLM"},
    }))
    (tmp_path / "modeling_deepseekocr.py").write_text(
        "from transformers.models.llama.modeling_llama import LlamaAttention, LlamaFlashAttention2\n"
        "from transformers import PretrainedConfig, PreTrainedModel\n"
        "class DeepseekOCRConfig(PretrainedConfig):\n    model_type = 'deepseek_vl_v2'\n"
        "class DeepseekOCRForCausalLM(PreTrainedModel):\n    config_class = DeepseekOCRConfig\n"
    )
    with pytest.raises(OpmeterError, match=r"transformers 4\.46"):
        load_vendor(tmp_path, weights=False, device="cpu")


def test_opmeter_never_imports_transformers_at_import_time() -> None:
    code = (
        "import sys, opmeter, opmeter.cli, opmeter.inventory\n"
        "import opmeter.models.deepseek_ocr.model, opmeter.models.deepseek_ocr.vendor\n"
        "import opmeter.models.deepseek_ocr.workloads, opmeter.commands.inventory\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_generic_inventory() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), shared, nn.Sequential(shared, nn.ReLU()))
    inv = build_inventory(model, component_depth=1)
    counts = inv.instance_counts()
    assert counts == {"Sequential": 2, "Linear": 2, "ReLU": 2}
    assert inv.total_params == 12 + 20
    lin = next(c for c in inv.classes if c.name == "Linear")
    assert lin.qualname == "torch.nn.modules.linear.Linear" and lin.params_own == 32
    seq = next(c for c in inv.classes if c.name == "Sequential")
    assert seq.child_classes == ("Linear", "ReLU", "Sequential")
    assert inv.by_class().shape[0] == 3 and "share" in inv.by_component().columns
    assert json.loads(json.dumps(inv.to_dict()))["total_instances"] == 6


def test_inventory_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "inv.json"
    assert main(["inventory", "--preset", "deepseek-ocr-toy", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "DeepseekOCRForCausalLM" in text and "model.sam_model" in text
    data = json.loads(out.read_text())
    assert data["num_classes"] == 30
    assert main(["inventory", "--vendor", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_inclusive_parameters_of_a_class_never_exceed_the_model() -> None:
    """A ``ModuleList`` of layers whose layers hold ``ModuleList``s of experts counts each expert once."""
    inner = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
    model = nn.Sequential(nn.ModuleList([nn.Sequential(inner), nn.Linear(4, 4)]))
    inv = build_inventory(model)
    lists = next(c for c in inv.classes if c.name == "ModuleList")
    assert lists.instances == 2 and lists.params_inclusive == inv.total_params == 4 * 20
    assert all(c.params_inclusive <= inv.total_params for c in inv.classes)
