"""The whole DeepSeek-OCR reference model: ``DeepseekOCRModel`` (vision + decoder) and ``DeepseekOCRForCausalLM``.

Mirrors the vendor ``modeling_deepseekocr.py``: per image the crops batch runs through SAM, CLIP and the projector,
then the global view; the features get one ``image_newline`` per row, the local grid comes first, then the global
grid, then ``view_seperator``; ``masked_scatter_`` writes them at the image-token positions; vision runs only when
the input has more than one token (prefill). ``lm_head`` is applied to every position, logits in fp32.

Execution policies (recorded in ``model.opmeter_metadata``, which the tracer merges into trace metadata):

* **real** (CPU/CUDA tensors): as the vendor. "Is there an image" / "are there crops" read pixel sums on the host;
  MoE routing is the learned gate (``tokens_per_expert`` read on the host); generation is greedy argmax.
* **shape-only** (meta device, or fake tensors): no values can be read, so "are there crops" comes from
  ``images_spatial_crop`` (grid larger than 1 x 1; it stays a host tensor), an image is assumed present when
  ``images`` is given; MoE routing is balanced-deterministic (token ``t`` -> experts ``(t*k + j) mod E``, exactly
  ``k`` routed pairs per token, only experts with tokens are called); every generated token is
  :data:`SHAPE_ONLY_TOKEN_ID` and EOS never stops generation.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from opmeter.errors import OpmeterError
from opmeter.fast_meta import fast_meta_kernels
from opmeter.models.deepseek_ocr.config import DeepseekOCRConfig, get_config
from opmeter.models.deepseek_ocr.decoder import (
    DeepseekV2Model,
    DeepseekV2RMSNorm,
    KVCache,
    LlamaRotaryEmbedding,
    MoEGate,
    is_shape_only,
)
from opmeter.models.deepseek_ocr.preprocess import PreparedInputs, TokenizerLike, load_image, prepare_inputs
from opmeter.models.deepseek_ocr.vision import (
    CLIPVisionEmbeddings,
    ImageEncoderViT,
    LayerNorm2d,
    MlpProjector,
    VitModel,
)

SHAPE_ONLY_TOKEN_ID = 1000
"""The token every generation step emits in shape-only mode (a plain word of the built-in tokenizer)."""

ImagePair = tuple[torch.Tensor, torch.Tensor]


@attrs.define
class CausalLMOutput:
    """Output of :meth:`DeepseekOCRForCausalLM.forward`: fp32 logits ``[B, S, V]`` and the KV cache."""

    logits: torch.Tensor
    past_key_values: KVCache | None = None


def _shape_only_context(probe: torch.Tensor | None) -> contextlib.AbstractContextManager[None]:
    """Fast meta kernels while running shape-only on the meta device (the op stream is unchanged)."""
    if probe is not None and probe.device.type == "meta":
        return fast_meta_kernels()
    return contextlib.nullcontext()


def _host_crop_shapes(images_spatial_crop: Any) -> list[tuple[int, int]]:
    """``[[cols, rows], ...]`` as host ints (read with dispatch modes disabled, so fake-tensor modes do not see it)."""
    from torch.utils._python_dispatch import _disable_current_modes

    if isinstance(images_spatial_crop, torch.Tensor):
        with _disable_current_modes():
            if is_shape_only(images_spatial_crop):
                raise OpmeterError(
                    "images_spatial_crop must stay a host (CPU) tensor or a list, even in shape-only mode"
                )
            rows = images_spatial_crop.tolist()
    else:
        rows = list(images_spatial_crop)
    return [(int(r[0]), int(r[1])) for r in rows]


class DeepseekOCRModel(DeepseekV2Model):
    """Decoder (``embed_tokens``, ``layers``, ``norm``) plus ``sam_model``, ``vision_model``, ``projector``,
    ``image_newline`` and ``view_seperator`` (vendor spelling)."""

    def __init__(self, config: DeepseekOCRConfig, attn_implementation: str = "eager") -> None:
        super().__init__(config.decoder, attn_implementation)
        self.ocr_config = config
        self.sam_model = ImageEncoderViT(config.sam)
        self.vision_model = VitModel(config.clip)
        n_embed = config.projector.n_embed
        self.projector = MlpProjector(config.projector)
        embed_std = 1 / math.sqrt(n_embed)
        self.image_newline = nn.Parameter(torch.randn(n_embed) * embed_std)
        self.view_seperator = nn.Parameter(torch.randn(n_embed) * embed_std)

    def _encode_views(self, x: torch.Tensor) -> torch.Tensor:
        """SAM -> CLIP (fed with SAM features) -> concat -> projector: ``[N, 3, s, s]`` -> ``[N, g*g, 1280]``."""
        features_1 = self.sam_model(x)  # [N, 1024, g, g]
        features_2 = self.vision_model(x, features_1)  # [N, g*g + 1, 1024]
        features = torch.cat((features_2[:, 1:], features_1.flatten(2).permute(0, 2, 1)), dim=-1)  # [N, g*g, 2048]
        return self.projector(features)

    def _has_image(self, image_ori: torch.Tensor) -> bool:
        """Whether the global view holds an image (the vendor reads its pixel sum on the host)."""
        return is_shape_only(image_ori) or torch.sum(image_ori).item() != 0

    def _has_crops(self, patches: torch.Tensor, crop_shape: tuple[int, int]) -> bool:
        """Whether crop tiles exist (the vendor reads their pixel sum; shape-only takes the grid)."""
        if is_shape_only(patches):
            return crop_shape[0] > 1 or crop_shape[1] > 1
        return bool(torch.sum(patches).item() != 0)

    def _image_features(
        self, patches: torch.Tensor, image_ori: torch.Tensor, crop_shape: tuple[int, int]
    ) -> torch.Tensor:
        """Token features of one image: ``[local rows with newlines], [global rows with newlines], separator``."""
        width_crop_num, height_crop_num = crop_shape
        has_crops = self._has_crops(patches, crop_shape)
        if has_crops:
            local_features = self._encode_views(patches)  # crops first, as the vendor
        global_features = self._encode_views(image_ori)
        _, hw, n_dim = global_features.shape
        h = w = int(hw**0.5)
        global_features = global_features.view(h, w, n_dim)
        global_features = torch.cat([global_features, self.image_newline[None, None, :].expand(h, 1, n_dim)], dim=1)
        global_features = global_features.view(-1, n_dim)
        if not has_crops:
            return torch.cat([global_features, self.view_seperator[None, :]], dim=0)
        _, hw2, n_dim2 = local_features.shape
        h2 = w2 = int(hw2**0.5)
        local_features = (
            local_features.view(height_crop_num, width_crop_num, h2, w2, n_dim2)
            .permute(0, 2, 1, 3, 4)
            .reshape(height_crop_num * h2, width_crop_num * w2, n_dim2)
        )
        newline = self.image_newline[None, None, :].expand(height_crop_num * h2, 1, n_dim2)
        local_features = torch.cat([local_features, newline], dim=1).view(-1, n_dim2)
        return torch.cat([local_features, global_features, self.view_seperator[None, :]], dim=0)

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor | None = None,
        images: Sequence[ImagePair] | None = None,
        images_seq_mask: torch.Tensor | None = None,
        images_spatial_crop: Any = None,
        past_key_values: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            assert input_ids is not None
            inputs_embeds = self.embed_tokens(input_ids)  # [B, S, 1280]
        run_vision = (
            images is not None
            and len(images) > 0
            and (inputs_embeds.shape[1] != 1 or self.training)
            and self._has_image(images[0][1])
        )
        if run_vision:
            assert images is not None
            if images_seq_mask is None or images_spatial_crop is None:
                raise OpmeterError("images need images_seq_mask and images_spatial_crop")
            crop_shapes = _host_crop_shapes(images_spatial_crop)
            for idx, (image, crop_shape) in enumerate(zip(images, crop_shapes, strict=False)):
                patches, image_ori = image
                with torch.no_grad():
                    features = self._image_features(patches, image_ori, crop_shape)
                inputs_embeds[idx].masked_scatter_(images_seq_mask[idx].unsqueeze(-1), features)
        return self.decode(inputs_embeds, past_key_values, position_ids)


class DeepseekOCRForCausalLM(nn.Module):
    """DeepSeek-OCR: ``model`` (:class:`DeepseekOCRModel`) and ``lm_head``, with ``generate`` and ``infer``.

    Attributes
    ----------
    config
        The preset's :class:`DeepseekOCRConfig`.
    opmeter_metadata
        Execution policy (see the module docstring), merged by the tracer into trace metadata.
    """

    def __init__(self, config: DeepseekOCRConfig, attn_implementation: str = "eager") -> None:
        super().__init__()
        self.config = config
        self.model = DeepseekOCRModel(config, attn_implementation)
        self.vocab_size = config.decoder.vocab_size
        self.lm_head = nn.Linear(config.decoder.hidden_size, config.decoder.vocab_size, bias=False)
        self.opmeter_metadata: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the parameters."""
        return self.lm_head.weight.dtype

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        images: Sequence[ImagePair] | None = None,
        images_seq_mask: torch.Tensor | None = None,
        images_spatial_crop: Any = None,
        past_key_values: KVCache | None = None,
        use_cache: bool | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """One forward pass; vision runs when ``images`` are given and more than one token is fed (prefill).

        ``attention_mask`` is accepted for signature compatibility; only unpadded batches are supported.
        """
        if use_cache and past_key_values is None:
            past_key_values = KVCache()
        probe = input_ids if input_ids is not None else inputs_embeds
        with _shape_only_context(probe):
            hidden_states = self.model(
                input_ids=input_ids,
                images=images,
                images_seq_mask=images_seq_mask,
                images_spatial_crop=images_spatial_crop,
                past_key_values=past_key_values,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
            )
            logits = self.lm_head(hidden_states).float()  # every position, fp32
        return CausalLMOutput(logits=logits, past_key_values=past_key_values if use_cache else None)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        images: Sequence[ImagePair] | None = None,
        images_seq_mask: torch.Tensor | None = None,
        images_spatial_crop: Any = None,
        max_new_tokens: int = 8192,
        ignore_eos: bool = False,
        eos_token_id: int | None = None,
        use_cache: bool = True,
        temperature: float = 0.0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Greedy decoding; returns ``[B, S + n]`` token ids (n <= ``max_new_tokens``).

        Each step calls the root module (``self(...)``), so forward hooks see one root call per step: the first
        multi-token one is the prefill, the following one-token calls the decode steps. With ``ignore_eos`` the
        budget is fixed (for benchmarks); otherwise a sequence stops at EOS and is padded with EOS. In shape-only mode
        every new token is :data:`SHAPE_ONLY_TOKEN_ID`. ``temperature`` and other sampling arguments are accepted
        and ignored (greedy only).
        """
        if max_new_tokens < 1:
            raise OpmeterError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        shape_only = is_shape_only(input_ids)
        eos = self.config.decoder.eos_token_id if eos_token_id is None else eos_token_id
        batch = input_ids.shape[0]
        cache = KVCache() if use_cache else None
        unfinished = torch.ones((batch, 1), dtype=torch.long, device=input_ids.device)
        with _shape_only_context(input_ids):
            return self._greedy_loop(
                input_ids, images, images_seq_mask, images_spatial_crop, max_new_tokens, ignore_eos, eos, cache,
                unfinished, shape_only, use_cache,
            )

    def _greedy_loop(
        self,
        input_ids: torch.Tensor,
        images: Sequence[ImagePair] | None,
        seq_mask: torch.Tensor | None,
        images_spatial_crop: Any,
        max_new_tokens: int,
        ignore_eos: bool,
        eos: int,
        cache: KVCache | None,
        unfinished: torch.Tensor,
        shape_only: bool,
        use_cache: bool,
    ) -> torch.Tensor:
        batch = input_ids.shape[0]
        sequences = input_ids
        step_input = input_ids
        for _ in range(max_new_tokens):
            out = self(
                input_ids=step_input,
                images=images,
                images_seq_mask=seq_mask,
                images_spatial_crop=images_spatial_crop,
                past_key_values=cache,
                use_cache=use_cache,
            )
            logits = out.logits[:, -1, :]
            if shape_only:
                next_tokens = torch.full((batch, 1), SHAPE_ONLY_TOKEN_ID, dtype=torch.long, device=input_ids.device)
            else:
                next_tokens = torch.argmax(logits, dim=-1, keepdim=True)
                if not ignore_eos:
                    next_tokens = next_tokens * unfinished + eos * (1 - unfinished)
            sequences = torch.cat([sequences, next_tokens], dim=-1)
            if use_cache:
                step_input = next_tokens
            else:
                step_input = sequences
                if seq_mask is not None:
                    pad = torch.zeros((batch, 1), dtype=seq_mask.dtype, device=seq_mask.device)
                    seq_mask = torch.cat([seq_mask, pad], dim=-1)
            if not shape_only and not ignore_eos:
                unfinished = unfinished * (next_tokens != eos).long()
                if int(unfinished.max().item()) == 0:
                    break
        return sequences

    def prepare(
        self,
        tokenizer: TokenizerLike,
        prompt: str,
        image_file: str | Path = "",
        base_size: int = 1024,
        image_size: int = 640,
        crop_mode: bool = True,
        crop_grid: tuple[int, int] | None = None,
    ) -> PreparedInputs:
        """Preprocess a prompt and an optional image file into model inputs (on the host)."""
        image = load_image(image_file) if image_file else None
        return prepare_inputs(prompt, tokenizer, image, base_size, image_size, crop_mode, crop_grid, self.config)

    def infer(
        self,
        tokenizer: TokenizerLike,
        prompt: str = "",
        image_file: str | Path = "",
        output_path: str | Path = "",
        base_size: int = 1024,
        image_size: int = 640,
        crop_mode: bool = True,
        test_compress: bool = False,
        save_results: bool = False,
        eval_mode: bool = False,
        max_new_tokens: int = 8192,
        ignore_eos: bool = False,
        crop_grid: tuple[int, int] | None = None,
    ) -> str:
        """OCR one image with the vendor's ``infer()`` signature; returns the generated text.

        Preprocesses as the vendor (see :mod:`~opmeter.models.deepseek_ocr.preprocess`), generates greedily (bf16
        autocast on CUDA, as the vendor), decodes without the prompt and strips EOS. ``save_results`` writes
        ``result.mmd``, ``result_with_boxes.jpg`` and an ``images/`` folder into ``output_path``; ``test_compress``
        prints the vision-token compression ratio. Extensions: ``max_new_tokens`` (vendor: 8192), ``ignore_eos``
        (fixed budget for benchmarks), ``crop_grid`` (force the crop grid, Gundam mode). ``eval_mode`` is accepted
        for compatibility (the text is always returned).

        Raises
        ------
        OpmeterError
            For an empty prompt, a missing or unreadable image, or a missing ``output_path`` with ``save_results``.
        """
        if not prompt:
            raise OpmeterError("infer() needs a prompt, e.g. '<image>\\nFree OCR.'")
        if save_results and not output_path:
            raise OpmeterError("save_results=True needs an output_path")
        inputs = self.prepare(tokenizer, prompt, image_file, base_size, image_size, crop_mode, crop_grid)
        kwargs = inputs.model_kwargs(self.device, self.dtype)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else contextlib.nullcontext()
        )
        with autocast:
            output_ids = self.generate(
                **kwargs,
                max_new_tokens=max_new_tokens,
                ignore_eos=ignore_eos,
                eos_token_id=getattr(tokenizer, "eos_token_id", None),
            )
        n_new = output_ids.shape[1] - inputs.seq_len
        if is_shape_only(output_ids):
            new_ids = [SHAPE_ONLY_TOKEN_ID] * n_new
        else:
            new_ids = output_ids[0, inputs.seq_len :].cpu().tolist()
        text = tokenizer.decode(new_ids)
        eos_str = getattr(tokenizer, "eos_token", None) or ""
        while eos_str and text.endswith(eos_str):
            text = text[: -len(eos_str)]
        text = text.strip()
        if test_compress and inputs.vision is not None:
            ratio = n_new / max(inputs.image_tokens, 1)
            print(f"image tokens: {inputs.image_tokens}  text tokens: {n_new}  compression ratio: {ratio:.2f}")
        if save_results and image_file:
            text = save_ocr_results(text, Path(image_file), Path(output_path))
        return text


_REF_RE = re.compile(r"(<\|ref\|>(.*?)<\|/ref\|><\|det\|>(.*?)<\|/det\|>)", re.DOTALL)


def save_ocr_results(text: str, image_file: Path, output_path: Path) -> str:
    """Write ``result.mmd`` and ``result_with_boxes.jpg`` as the vendor does; returns the cleaned markdown.

    Grounding references ``<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>`` (coordinates on a 0..999 grid)
    are drawn as boxes; image references become ``![](images/N.jpg)``, other references are dropped.
    """
    from PIL import ImageDraw

    output_path.mkdir(parents=True, exist_ok=True)
    (output_path / "images").mkdir(exist_ok=True)
    image = load_image(image_file)
    draw = ImageDraw.Draw(image)
    w, h = image.size
    n_img = 0
    for whole, label, det in _REF_RE.findall(text):
        boxes = re.findall(r"\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]", det)
        for x1, y1, x2, y2 in boxes:
            box = (int(x1) / 999 * w, int(y1) / 999 * h, int(x2) / 999 * w, int(y2) / 999 * h)
            draw.rectangle(box, outline=(255, 0, 0), width=2)
        if label == "image" and boxes:
            x1, y1, x2, y2 = (int(v) for v in boxes[0])
            crop = image.crop((int(x1 / 999 * w), int(y1 / 999 * h), int(x2 / 999 * w), int(y2 / 999 * h)))
            crop.save(output_path / "images" / f"{n_img}.jpg")
            text = text.replace(whole, f"![](images/{n_img}.jpg)\n")
            n_img += 1
        else:
            text = text.replace(whole, "")
    text = text.replace("\\coloneqq", ":=").replace("\\eqqcolon", "=:")
    (output_path / "result.mmd").write_text(text, encoding="utf-8")
    image.save(output_path / "result_with_boxes.jpg")
    return text


# ----------------------------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------------------------


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are far slower there), bf16 on CUDA and for shape-only (meta) runs."""
    return torch.float32 if device.type == "cpu" else torch.bfloat16


@torch.no_grad()
def _init_weights(model: nn.Module, generator: torch.Generator | None) -> None:
    """Random initialisation in the vendor's style (normal std 0.02 for Linear/Embedding) and fresh buffers."""
    std = 0.02
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d | nn.Embedding):
            module.weight.normal_(0.0, std, generator=generator)
            bias = getattr(module, "bias", None)
            if bias is not None:
                bias.zero_()
        elif isinstance(module, nn.LayerNorm | LayerNorm2d):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, MoEGate):
            bound = 1 / math.sqrt(module.gating_dim)  # kaiming_uniform(a=sqrt(5)) bound
            module.weight.uniform_(-bound, bound, generator=generator)
        elif isinstance(module, DeepseekV2RMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, LlamaRotaryEmbedding):
            module.inv_freq = module.compute_inv_freq(module.inv_freq.device)  # fp32, as transformers keeps it
        elif isinstance(module, CLIPVisionEmbeddings):
            module.class_embedding.normal_(0.0, 1.0, generator=generator)
            n = module.num_positions
            module.position_ids = torch.arange(n, device=module.class_embedding.device).expand((1, -1))
        elif isinstance(module, ImageEncoderViT):
            module.pos_embed.zero_()
    for name, param in model.named_parameters():
        if name.endswith(("rel_pos_h", "rel_pos_w")):
            param.zero_()
        elif name.endswith(("image_newline", "view_seperator")):
            param.normal_(0.0, 1 / math.sqrt(param.shape[0]), generator=generator)


def build_reference(
    preset: str | DeepseekOCRConfig = "deepseek-ocr-toy",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str = "eager",
    seed: int = 0,
) -> DeepseekOCRForCausalLM:
    """Build the reference DeepSeek-OCR with random weights, in eval mode.

    Parameters
    ----------
    preset
        Preset name (``"deepseek-ocr-v1-base"`` full size, ``"deepseek-ocr-toy"``, ``"deepseek-ocr-mini"``) or a
        config.
    device
        ``"cpu"``, ``"cuda"`` or ``"meta"``. On meta nothing is allocated and forward/generate/infer run shape-only
        (see the module docstring for the policies).
    dtype
        Defaults to fp32 on CPU and bf16 on CUDA and meta.
    attn_implementation
        ``"eager"`` (vendor default), ``"sdpa"`` or ``"flash_attention_2"`` (CUDA with flash-attn).
    seed
        Seed of the random initialisation.
    """
    cfg = get_config(preset) if isinstance(preset, str) else preset
    dev = torch.device(device)
    dt = dtype or default_dtype(dev)
    with torch.device("meta"):
        model = DeepseekOCRForCausalLM(cfg, attn_implementation)
    model = model.to(dtype=dt)
    if dev.type != "meta":
        model = model.to_empty(device=dev)
        gen = torch.Generator(device=dev).manual_seed(seed)
        _init_weights(model, gen)
    else:
        for module in model.modules():
            if isinstance(module, LlamaRotaryEmbedding):
                module.inv_freq = module.inv_freq.float()
    shape_only = dev.type == "meta"
    model.opmeter_metadata = {
        "model": "deepseek-ocr-reference",
        "preset": cfg.name,
        "execution": "shape-only" if shape_only else "real",
        "moe_routing": "balanced-deterministic" if shape_only else "learned-gate",
        "crop_detection": "images_spatial_crop" if shape_only else "pixel-sum",
        "generated_tokens": f"fixed-id-{SHAPE_ONLY_TOKEN_ID}" if shape_only else "greedy-argmax",
        "attn_implementation": attn_implementation,
        "dtype": str(dt).removeprefix("torch."),
        "weights": "none" if shape_only else f"random-seed-{seed}",
    }
    return model.eval()
