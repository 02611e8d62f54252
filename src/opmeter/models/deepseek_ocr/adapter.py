"""DeepSeek-OCR behind the model adapter contract (:mod:`opmeter.models.base`).

``--model deepseek-ocr`` (alias ``reference``) runs the embedded reference implementation at a preset;
``--model vendor:PATH`` loads the vendor remote code from a local checkpoint directory (config.json, its Python files,
and weights unless ``--no-weights``), with the compatibility patches of :mod:`.vendor_compat`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from opmeter.errors import OpmeterError
from opmeter.models.base import ModelWords, Prediction, PreparedRun, RunRequest, StageSpec, register
from opmeter.models.deepseek_ocr.config import FULL_SIZE, PRESETS, DeepseekOCRConfig, get_config
from opmeter.models.deepseek_ocr.predict import VISION_COMPONENTS, VISION_MODULES
from opmeter.models.deepseek_ocr.workloads import ALIASES, WORKLOADS, Workload, load_workload
from opmeter.structure import Component

log = logging.getLogger(__name__)

COMPONENTS: tuple[Component, ...] = (
    Component("SAM encoder", r"^model\.sam_model$"),
    Component("CLIP tower", r"^model\.vision_model$"),
    Component("projector", r"^model\.projector$"),
    Component("token embedding", r"^model\.embed_tokens$"),
    Component("decoder attention", r"^model\.layers\.\d+\.self_attn$"),
    Component("decoder norms", r"^model\.layers\.\d+\.(input_layernorm|post_attention_layernorm)$"),
    Component("decoder residual adds", r"^model\.layers\.\d+$"),
    Component("dense MLP", r"^model\.layers\.\d+\.mlp$", "DeepseekV2MLP"),
    Component("MoE dispatch/combine", r"^model\.layers\.\d+\.mlp$"),
    Component("MoE gate", r"^model\.layers\.\d+\.mlp\.gate$"),
    Component("routed experts", r"^model\.layers\.\d+\.mlp\.experts$"),
    Component("shared experts", r"^model\.layers\.\d+\.mlp\.shared_experts$"),
    Component("final norm", r"^model\.norm$"),
    Component("LM head", r"^lm_head$"),
)
"""DeepSeek-OCR components, by vendor attribute paths (the reference model uses the same ones)."""

FAST_PRESET = "deepseek-ocr-toy"
SMALL_PRESETS = "a smaller preset (deepseek-ocr-mini, deepseek-ocr-toy)"


def executed_memory_bytes(config: DeepseekOCRConfig, workload: Workload, dtype_bytes: int) -> int:
    """Analytic estimate of an executed run's peak: parameters + the prefill's activation peak + the full KV cache."""
    from opmeter.analytic.stage_cost import StageCost
    from opmeter.models.deepseek_ocr.analytic import DeepseekOCRAnalytic, parameter_footprint

    analytic = DeepseekOCRAnalytic(config, dtype=dtype_bytes)
    vision = workload.vision(config)
    prefill = StageCost.from_layer("prefill", analytic.prefill(vision, workload.text_tokens()))
    positions = workload.text_tokens() + vision.image_tokens + workload.max_new_tokens
    return int(parameter_footprint(config, dtype_bytes).bytes + prefill.activations_gb * 1e9
               + analytic.kv_cache_bytes(positions))


def vendor_infer_kwargs(model: Any, kwargs: dict[str, Any], output_path: Path) -> dict[str, Any]:
    """The workload's ``infer()`` arguments the vendor signature takes, with an ``output_path`` (the vendor creates
    it: an empty one fails). The decode budget is enforced by the generation cap instead."""
    accepted = inspect.signature(model.infer).parameters
    kwargs = {**kwargs, "output_path": str(output_path)}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return kwargs
    dropped = sorted(k for k in kwargs if k not in accepted)
    if dropped:
        log.info("vendor infer() does not take %s; the generation cap enforces the decode budget", dropped)
    return {k: v for k, v in kwargs.items() if k in accepted}


def vendor_dir(arg: str | None) -> Path:
    """The checkpoint directory of ``--model vendor:PATH`` (it must exist and hold a config.json)."""
    path = Path(arg or "").expanduser()
    if not arg or not path.is_dir():
        raise OpmeterError(f"vendor model directory {arg or '(empty)'!r} does not exist; pass "
                           "--model vendor:PATH with a local deepseek-ai/DeepSeek-OCR checkout")
    if not (path / "config.json").is_file():
        raise OpmeterError(f"vendor model directory {path} has no config.json; is it a DeepSeek-OCR checkout?")
    return path


@attrs.define
class DeepseekOCRAdapter:
    """DeepSeek-OCR: the reference implementation, or the vendor code from ``vendor_path``."""

    spec: str = "deepseek-ocr"
    vendor_path: Path | None = None
    name: str = "deepseek-ocr"
    words: ModelWords = attrs.field(factory=lambda: ModelWords("DeepSeek-OCR", "SAM + CLIP + projector"))
    stage_spec: StageSpec = attrs.field(factory=lambda: StageSpec("vision", VISION_MODULES, VISION_COMPONENTS,
                                                                  mark=False))
    default_preset: str | None = FULL_SIZE
    default_workload: str | None = "dsocr-standard-v1"
    fast_preset: str = FAST_PRESET

    @property
    def kind(self) -> str:
        """``reference`` or ``vendor``."""
        return "vendor" if self.vendor_path is not None else "reference"

    def presets(self) -> Mapping[str, str]:
        return {name: f"{c.decoder.num_hidden_layers}-layer decoder, SAM {c.sam.depth} blocks"
                for name, c in PRESETS.items()}

    def workloads(self) -> Mapping[str, str]:
        return {wid: w.description for wid, w in WORKLOADS.items()} | {a: f"= {w}" for a, w in ALIASES.items()}

    def components(self, model: torch.nn.Module | None = None) -> Sequence[Component]:
        return COMPONENTS

    # inputs ----------------------------------------------------------------------------------------------------
    def workload(self, request: RunRequest, preset: str) -> Workload:
        """The workload of ``request`` at ``preset``'s sizes, with the page size of ``request.image``."""
        try:
            workload = load_workload(request.workload or str(self.default_workload))
        except OpmeterError:
            raise
        except Exception as exc:  # a loader that raises KeyError & co. still gives one clear line
            raise OpmeterError(f"unknown workload id {request.workload!r} ({exc})") from None
        workload = workload.for_config(preset)
        if request.decode_tokens is not None:
            workload = workload.with_new_tokens(request.decode_tokens)
        if request.image is not None:
            from PIL import Image

            with Image.open(request.image) as img:
                width, height = img.size
            workload = attrs.evolve(workload, width=width, height=height)
        return workload

    def check(self, config: DeepseekOCRConfig, workload: Workload, request: RunRequest) -> None:
        """Decode tokens within the position table; an executed CPU run within the memory available."""
        from opmeter.report.limits import check_cpu_memory, check_decode_tokens

        prefill = workload.text_tokens() + workload.vision(config).image_tokens
        check_decode_tokens(workload.max_new_tokens, prefill, config.decoder.max_position_embeddings)
        if request.device == "cpu":
            dtype_bytes = request.dtype.itemsize if request.dtype is not None else 4  # fp32 on CPU by default
            check_cpu_memory(executed_memory_bytes(config, workload, dtype_bytes), config.name, SMALL_PRESETS)

    def _model(self, request: RunRequest, preset: str) -> tuple[torch.nn.Module, Any]:
        from opmeter.models.deepseek_ocr.tokenizer import BuiltinTokenizer

        if self.vendor_path is None:
            from opmeter.models.deepseek_ocr.model import build_reference

            return build_reference(preset, device=request.device, dtype=request.dtype), BuiltinTokenizer()
        from opmeter.models.deepseek_ocr.vendor import check_preset, load_vendor
        from opmeter.models.deepseek_ocr.vendor_compat import metadata

        # on meta the vendor structure is built from config.json alone (no weights), as the loader requires
        model = load_vendor(str(self.vendor_path), weights=request.weights and request.device != "meta",
                            device=request.device, dtype=request.dtype)
        check_preset(model, preset)
        try:
            from transformers import AutoTokenizer

            tokenizer: Any = AutoTokenizer.from_pretrained(str(self.vendor_path), trust_remote_code=True)
        except Exception as exc:  # no tokenizer files in the checkout: same token ids policy as the reference
            first_line = (str(exc).splitlines() or [""])[0]
            log.warning("no tokenizer in %s (%s: %s); using the built-in tokenizer", self.vendor_path,
                        type(exc).__name__, first_line)
            metadata(model)["tokenizer"] = "builtin (checkpoint tokenizer not loadable)"
            tokenizer = BuiltinTokenizer()
        return model, tokenizer

    def prepare(self, request: RunRequest) -> PreparedRun:
        if self.vendor_path is not None and request.dtype is not None:
            raise OpmeterError("--dtype applies to the reference model, not to --model vendor:PATH (the vendor code "
                               "runs in its own dtype)")
        if request.weights_dir is not None:
            raise OpmeterError("--weights is for adapters that build from a config (hf:); the reference runs with "
                               "random weights, and --model vendor:PATH loads the checkpoint's own weights")
        preset = request.preset or str(self.default_preset)
        config = get_config(preset if self.vendor_path is None else FULL_SIZE)  # one clear line for a bad preset
        get_config(preset)
        workload = self.workload(request, preset)
        self.check(config, workload, request)
        model, tokenizer = self._model(request, preset)
        image_file = request.image if request.image is not None else workload.save_image(request.scratch)
        kwargs = workload.infer_kwargs(image_file)
        if self.vendor_path is not None:
            kwargs = vendor_infer_kwargs(model, kwargs, request.scratch / "vendor-output")

        run_infer: Any = model.infer  # the reference's and the vendor's infer(tokenizer, ...)

        def infer() -> Any:
            return run_infer(tokenizer, **kwargs)

        meta = {"workload_id": workload.id, "workload": workload.summary(tokenizer), "preset": preset,
                "image_file": str(request.image) if request.image else "synthetic",
                "decode_tokens": workload.max_new_tokens}
        return PreparedRun(model, infer, workload, preset, meta, context=self._context(model, workload))

    def _context(self, model: torch.nn.Module, workload: Workload) -> Any:
        """The vendor's fixed token budget, CPU compatibility and, on meta, the shape-only patches."""
        if self.vendor_path is None:
            return contextlib.nullcontext
        from opmeter.models.deepseek_ocr.vendor_compat import vendor_run

        return lambda: vendor_run(model, workload.max_new_tokens)

    def workload_from_trace(self, metadata: Mapping[str, Any], request: RunRequest) -> tuple[Workload, str]:
        preset = str(metadata.get("preset") or request.preset or self.default_preset)
        workload = self.workload(attrs.evolve(request, workload=metadata.get("workload_id") or request.workload),
                                 preset)
        wmeta = metadata.get("workload") or {}
        if request.image is None and wmeta.get("image_width") and wmeta.get("image_height"):
            from opmeter.checks import whole_number

            width = whole_number(wmeta["image_width"], "the trace's image_width", 1, 1 << 16)
            height = whole_number(wmeta["image_height"], "the trace's image_height", 1, 1 << 16)
            workload = attrs.evolve(workload, width=width, height=height)
        return workload, preset

    def parameter_model(self, preset: str, metadata: Mapping[str, Any]) -> torch.nn.Module | None:
        """The model on meta, for parameter bytes of a saved trace (the reference only: a vendor trace has no
        checkpoint at hand)."""
        if str(metadata.get("model_spec", "reference")).startswith("vendor:"):
            return None
        from opmeter.models.deepseek_ocr.model import build_reference

        return build_reference(preset, device="meta")

    # prediction ------------------------------------------------------------------------------------------------
    def predict(self, trace: Any, workload: Any, preset: str, hardware: Any) -> Prediction:
        from opmeter.models.deepseek_ocr.predict import predicted_frames
        from opmeter.models.deepseek_ocr.variant import choose_analytic

        config = get_config(preset)
        vision = workload.vision(config)
        text_tokens = workload.text_tokens()
        choice = choose_analytic(trace, config, text_tokens + vision.image_tokens, workload.decode_steps)
        modules, stages, head = predicted_frames(choice.analytic(config), vision, text_tokens,
                                                 workload.decode_steps, hardware, choice)
        return Prediction(modules, stages, head, label=choice.label(), details=choice.as_dict())

    # verification ----------------------------------------------------------------------------------------------
    def verify_cases(self, preset: str, device: str = "meta", grid: tuple[int, int] | None = None,
                     attn: str = "eager") -> list[Any]:
        """The per-layer verification cases (:mod:`.verify_cases`) of ``preset``."""
        from opmeter.models.deepseek_ocr.geometry import MAX_CROPS
        from opmeter.models.deepseek_ocr.verify_cases import deepseek_ocr_cases

        get_config(preset)
        if device == "cpu" and preset == FULL_SIZE:
            raise OpmeterError(f"--device cpu runs the model for real: use --fast or --preset deepseek-ocr-mini, not "
                               f"{FULL_SIZE}")
        if grid is not None and grid[0] * grid[1] > 4 * MAX_CROPS:
            raise OpmeterError(f"grid {grid[0]}x{grid[1]} has {grid[0] * grid[1]} crops; at most {4 * MAX_CROPS} "
                               f"are verified (the model's own tiling uses at most {MAX_CROPS})")
        return deepseek_ocr_cases(preset, grid, device, attn)

    def verify_context(self) -> contextlib.AbstractContextManager[Any]:
        """Nothing to switch: the reference's cases run as they are."""
        return contextlib.nullcontext()

    def sweep(self, args: Any) -> list[str]:
        """``opmeter sweep``: the crop-grid sweeps (:mod:`.sweeps`); one line per sweep written."""
        from opmeter.models.deepseek_ocr.sweeps import run_sweeps

        return run_sweeps(args)

    def page_planner(self, workload: str | None, images: str | None, preset: str | None) -> Any:
        """The pages of a set report (``--images``, or a workload naming a document set); ``None``: one page."""
        from opmeter.models.deepseek_ocr.pages import page_planner

        return page_planner(workload or str(self.default_workload), images, preset or str(self.default_preset))

    def inventory_model(self, preset: str | None) -> torch.nn.Module:
        """The model on meta for ``opmeter inventory``."""
        if self.vendor_path is not None:
            from opmeter.models.deepseek_ocr.vendor import load_vendor

            return load_vendor(str(self.vendor_path), weights=False, device="meta")
        from opmeter.models.deepseek_ocr.model import build_reference

        return build_reference(preset or FULL_SIZE, device="meta")


def _reference(arg: str | None, spec: str) -> DeepseekOCRAdapter:
    if arg:
        raise OpmeterError(f"--model {spec!r}: the reference takes no argument (use --model vendor:PATH for a "
                           "checkpoint)")
    return DeepseekOCRAdapter(spec=spec)


def _vendor(arg: str | None, spec: str) -> DeepseekOCRAdapter:
    return DeepseekOCRAdapter(spec=spec, vendor_path=vendor_dir(arg))


register("deepseek-ocr", _reference, "reference")
register("vendor", _vendor)
