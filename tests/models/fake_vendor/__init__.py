"""A fake DeepSeek-OCR checkpoint (remote code + config, optional weights) for testing the vendor path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

HERE = Path(__file__).parent


def make_fake_checkpoint(root: Path, preset: str = "deepseek-ocr-toy", weights: bool = False,
                         eos_after: int = 0) -> Path:
    """Write a checkpoint directory whose remote code is the stand-in in ``modeling_deepseekocr.py``.

    With ``weights`` a random-initialised ``model.safetensors`` is saved too (loaded back by ``from_pretrained``).
    """
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "modeling_deepseekocr.py", root / "modeling_deepseekocr.py")
    config = {
        "model_type": "deepseek_vl_v2",
        "architectures": ["DeepseekOCRForCausalLM"],
        "auto_map": {"AutoConfig": "modeling_deepseekocr.DeepseekOCRConfig",
                     "AutoModel": "modeling_deepseekocr.DeepseekOCRForCausalLM"},
        "opmeter_preset": preset,
        "fake_eos_after": eos_after,
    }
    (root / "config.json").write_text(json.dumps(config, indent=2))
    if weights:
        from safetensors.torch import save_file

        from opmeter.models.deepseek_ocr.vendor import load_vendor

        model = load_vendor(root, weights=False, device="cpu")
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(root / "model.safetensors"), metadata={"format": "pt"})  # as save_pretrained
    return root
