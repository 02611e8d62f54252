"""A stand-in for the DeepSeek-OCR remote code, for tests: opmeter's reference modules behind the interfaces and
host behaviours the real remote code has (not its code).

Loaded through ``AutoModel.from_config(..., trust_remote_code=True)`` from a directory that holds this file and a
``config.json`` with an ``auto_map``. What it reproduces, because opmeter must cope with each:

* ``infer(tokenizer, prompt, image_file, output_path, base_size, image_size, crop_mode, test_compress,
  save_results, eval_mode)`` with no extra keyword arguments; it creates ``output_path`` (an empty one fails);
* pixels cast to bf16 and moved with ``.cuda()``, generation under ``torch.autocast("cuda", bfloat16)``;
* ``generate(..., max_new_tokens=8192)`` that stops at EOS (a host read every step) and honours ``min_new_tokens``;
  ``fake_eos_after`` in the config makes it emit EOS after that many tokens, as a trained model would stop;
* the forward pass reads pixel sums on the host (``torch.sum(...).item()``) to find the image and the crops;
* the MoE reads ``tokens_per_expert.cpu().numpy()`` on the host;
* the rotary embedding enters ``torch.autocast(device_type=x.device.type, enabled=False)``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from opmeter.models.deepseek_ocr import decoder as ref_decoder
from opmeter.models.deepseek_ocr import model as ref_model
from opmeter.models.deepseek_ocr.config import get_config
from opmeter.models.deepseek_ocr.preprocess import load_image, prepare_inputs


class DeepseekOCRConfig(PretrainedConfig):
    model_type = "deepseek_vl_v2"

    def __init__(self, opmeter_preset: str = "deepseek-ocr-toy", fake_eos_after: int = 0, **kwargs: Any) -> None:
        self.opmeter_preset = opmeter_preset
        self.fake_eos_after = fake_eos_after
        super().__init__(**kwargs)


class LlamaRotaryEmbedding(ref_decoder.LlamaRotaryEmbedding):
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=x.device.type, enabled=False):  # fails on meta, as transformers 4.46's
            return super().forward(x, position_ids)


class DeepseekV2MoE(ref_decoder.DeepseekV2MoE):
    def _host_counts(self, tokens_per_expert: torch.Tensor, topk_ids: torch.Tensor) -> np.ndarray:
        return tokens_per_expert.cpu().numpy()  # always a host read


class DeepseekOCRModel(ref_model.DeepseekOCRModel):
    def _has_image(self, image_ori: torch.Tensor) -> bool:
        return bool(torch.sum(image_ori).item() != 0)

    def _has_crops(self, patches: torch.Tensor, crop_shape: tuple[int, int]) -> bool:
        return bool(torch.sum(patches).item() != 0)


_VENDOR_CLASSES = {
    ref_decoder.LlamaRotaryEmbedding: LlamaRotaryEmbedding,
    ref_decoder.DeepseekV2MoE: DeepseekV2MoE,
    ref_model.DeepseekOCRModel: DeepseekOCRModel,
}


class DeepseekOCRForCausalLM(PreTrainedModel):
    config_class = DeepseekOCRConfig
    base_model_prefix = "model"
    _supports_sdpa = True
    _supports_flash_attn_2 = True

    def __init__(self, config: DeepseekOCRConfig) -> None:
        super().__init__(config)
        attn = getattr(config, "_attn_implementation", None) or "eager"
        reference = ref_model.DeepseekOCRForCausalLM(get_config(config.opmeter_preset), attn)
        self.ocr_config = reference.config
        self.model = reference.model
        self.lm_head = reference.lm_head
        for module in self.modules():
            if type(module) in _VENDOR_CLASSES:
                module.__class__ = _VENDOR_CLASSES[type(module)]
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        pass  # the reference modules initialise themselves

    def forward(self, input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None,
                past_key_values: Any = None, inputs_embeds: Any = None, labels: Any = None, use_cache: Any = None,
                output_attentions: Any = None, output_hidden_states: Any = None, images: Any = None,
                images_seq_mask: Any = None, images_spatial_crop: Any = None,
                return_dict: Any = None) -> CausalLMOutputWithPast:
        out = ref_model.DeepseekOCRForCausalLM.forward(
            self, input_ids=input_ids, images=images, images_seq_mask=images_seq_mask,  # type: ignore[arg-type]
            images_spatial_crop=images_spatial_crop, past_key_values=past_key_values, use_cache=use_cache,
            position_ids=position_ids, inputs_embeds=inputs_embeds,
        )
        return CausalLMOutputWithPast(logits=out.logits, past_key_values=out.past_key_values)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, images: Any = None, images_seq_mask: Any = None,
                 images_spatial_crop: Any = None, max_new_tokens: int = 20, min_new_tokens: int = 0,
                 eos_token_id: int | None = None, **kwargs: Any) -> torch.Tensor:
        sequence, past = input_ids, None
        for step in range(max_new_tokens):
            out = self(input_ids=sequence if past is None else sequence[:, -1:], past_key_values=past,
                       use_cache=True, images=images, images_seq_mask=images_seq_mask,
                       images_spatial_crop=images_spatial_crop, return_dict=True)
            past = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            eos_now = self.config.fake_eos_after and step + 1 >= self.config.fake_eos_after
            if eos_token_id is not None and eos_now and step + 1 > min_new_tokens:
                token = torch.full_like(token, eos_token_id)
            sequence = torch.cat([sequence, token], dim=-1)
            if eos_token_id is not None and bool((token == eos_token_id).all().item()) and step + 1 >= min_new_tokens:
                break
        return sequence

    def infer(self, tokenizer: Any, prompt: str = "", image_file: str = "", output_path: str = "",
              base_size: int = 1024, image_size: int = 640, crop_mode: bool = True, test_compress: bool = False,
              save_results: bool = False, eval_mode: bool = False) -> str:
        os.makedirs(output_path, exist_ok=True)
        os.makedirs(f"{output_path}/images", exist_ok=True)
        image = load_image(image_file)
        inputs = prepare_inputs(prompt, tokenizer, image, base_size, image_size, crop_mode, None, self.ocr_config)
        assert inputs.images_crop is not None and inputs.images_ori is not None
        crops = inputs.images_crop.to(torch.bfloat16)
        ori = inputs.images_ori.to(torch.bfloat16)
        with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
            output_ids = self.generate(
                inputs.input_ids.unsqueeze(0).cuda(), images=[(crops.cuda(), ori.cuda())],
                images_seq_mask=inputs.images_seq_mask.unsqueeze(0).cuda(),
                images_spatial_crop=inputs.images_spatial_crop, temperature=0.0,
                eos_token_id=tokenizer.eos_token_id, max_new_tokens=8192, no_repeat_ngram_size=20, use_cache=True,
            )
        return str(tokenizer.decode(output_ids[0, inputs.input_ids.shape[0]:].tolist()))
