"""The ``deepseek-ocr-2`` model adapter: transformers' own DeepSeek-OCR-2 behind :class:`ModelAdapter`.

``prepare()`` builds ``DeepseekOcr2ForConditionalGeneration`` from a preset (meta for shape-only, random weights on a
real device) and returns an ``infer()`` that runs :func:`~opmeter.models.deepseek_ocr2.model.fixed_budget_generate`;
``predict()`` returns the analytic prediction keyed by the traced module paths. The vision tower and the projector
are the request stage ``vision``: the pipeline marks their calls, so the work before the first decoder call is part
of the time to first token, not ``setup``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from opmeter.errors import OpmeterError
from opmeter.models.base import ModelWords, Prediction, PreparedRun, RunRequest, StageSpec, register
from opmeter.models.deepseek_ocr2.compat import require_deepseek_ocr2
from opmeter.models.deepseek_ocr2.config import FULL, PRESETS, get_preset
from opmeter.models.deepseek_ocr2.model import shape_only
from opmeter.models.deepseek_ocr2.workloads import STANDARD, WORKLOADS, Ocr2Workload, get_workload
from opmeter.structure import Component

NAME = "deepseek-ocr-2"

COMPONENTS: tuple[Component, ...] = (
    Component("SAM encoder", r"^model\.vision_tower\.sam_encoder$"),
    Component("visual encoder", r"^model\.vision_tower$"),
    Component("projector", r"^model\.multi_modal_projector$"),
    Component("token embedding", r"^model\.language_model\.embed_tokens$"),
    Component("decoder attention", r"^model\.language_model\.(layers\.\d+\.self_attn|rotary_emb)$"),
    Component("decoder norms", r"^model\.language_model\.layers\.\d+\.(input_layernorm|post_attention_layernorm)$"),
    Component("decoder residual adds", r"^model\.language_model\.layers\.\d+$"),
    Component("dense MLP", r"^model\.language_model\.layers\.\d+\.mlp$", "DeepseekOcr2TextMLP"),
    Component("MoE dispatch/combine", r"^model\.language_model\.layers\.\d+\.mlp$"),
    Component("MoE gate", r"^model\.language_model\.layers\.\d+\.mlp\.gate$"),
    Component("routed experts", r"^model\.language_model\.layers\.\d+\.mlp\.experts$"),
    Component("shared experts", r"^model\.language_model\.layers\.\d+\.mlp\.shared_experts$"),
    Component("final norm", r"^model\.language_model\.norm$"),
    Component("LM head", r"^lm_head$"),
)
"""Disjoint components by transformers' module paths. ``visual encoder`` is the Qwen2-style encoder with the vision
tower's own work (features and learned queries concatenated); the SAM encoder below it is its own component."""

STAGE_SPEC = StageSpec(
    request_stage="vision",
    request_modules=("model.vision_tower", "model.multi_modal_projector"),
    request_components=("SAM encoder", "visual encoder", "projector"),
)
"""The vision tower (SAM-style encoder, Qwen2-style visual encoder) and the projector are the ``vision`` stage."""


class DeepseekOcr2Adapter:
    """DeepSeek-OCR-2 as transformers implements it (``transformers.models.deepseek_ocr2``).

    Parameters
    ----------
    arg
        ``--model deepseek-ocr-2:ARG``; no argument is accepted.
    spec
        The ``--model`` value, recorded in traces.
    """

    name = NAME
    words = ModelWords(name="DeepSeek-OCR-2", request_parts="SAM encoder + visual encoder + projector")
    stage_spec = STAGE_SPEC
    default_preset: str | None = FULL
    default_workload: str | None = STANDARD

    def __init__(self, arg: str | None = None, spec: str = NAME) -> None:
        if arg:
            raise OpmeterError(f"--model {spec!r}: {NAME} takes no argument (choose a size with --preset)")
        self.spec = spec

    def presets(self) -> Mapping[str, str]:
        """Preset id -> description."""
        return {k: p.description for k, p in PRESETS.items()}

    def workloads(self) -> Mapping[str, str]:
        """Workload id -> description."""
        return {k: w.description for k, w in WORKLOADS.items()}

    def components(self, model: torch.nn.Module | None = None) -> Sequence[Component]:
        """The disjoint components (the same for every preset)."""
        return COMPONENTS

    def prepare(self, request: RunRequest) -> PreparedRun:
        """Build the model for ``request`` and an ``infer()`` of one fixed-budget generation.

        Raises
        ------
        OpmeterError
            transformers without ``deepseek_ocr2``, an unknown preset or workload, a checkpoint directory, an
            image file (the workloads use their synthetic page), or a device other than meta, cpu, cuda.
        """
        from opmeter.models.deepseek_ocr2.model import build_model, model_inputs

        require_deepseek_ocr2()
        preset = get_preset(request.preset or FULL)
        workload = get_workload(request.workload or STANDARD)
        if request.decode_tokens is not None:
            workload = workload.with_new_tokens(request.decode_tokens)
        if request.weights_dir is not None:
            raise OpmeterError(f"{NAME} builds from its presets with random weights; --weights is not supported")
        if request.image is not None:
            raise OpmeterError(f"{NAME} runs its workloads' synthetic pages; --image is not supported")
        device = request.device
        if device not in ("meta", "cpu", "cuda") and not device.startswith("cuda:"):
            raise OpmeterError(f"{NAME} runs on meta (shape-only), cpu or cuda, not {device!r}")
        model = build_model(preset, device, request.dtype)
        inputs = model_inputs(model, preset, workload)

        def infer() -> torch.Tensor:
            from opmeter.models.deepseek_ocr2.model import fixed_budget_generate

            with torch.inference_mode():
                return fixed_budget_generate(model, inputs, workload.max_new_tokens)

        views = workload.views(preset)
        dtype = next(model.parameters()).dtype
        meta = {"model": NAME, "preset": preset.name, "workload": workload.summary(), "device": device,
                "dtype": str(dtype).removeprefix("torch."),
                "image_tokens": views.image_tokens(preset), "crop_grid": list(views.grid),
                "prompt_tokens": int(inputs["input_ids"].shape[1]),
                "experts_implementation": str(_experts_implementation(model))}
        return PreparedRun(model=model, infer=infer, workload=workload, preset=preset.name, metadata=meta,
                           context=_run_context(device))

    def workload_from_trace(self, metadata: Mapping[str, Any], request: RunRequest | None = None
                            ) -> tuple[Ocr2Workload, str]:
        """The workload and preset a saved trace ran (``request.decode_tokens`` overrides its length)."""
        from opmeter.models.deepseek_ocr2.workloads import workload_from_summary

        summary = metadata.get("workload")
        workload = workload_from_summary(summary) if isinstance(summary, dict) else get_workload(STANDARD)
        if request is not None and request.decode_tokens is not None:
            workload = workload.with_new_tokens(request.decode_tokens)
        return workload, str(metadata.get("preset", FULL))

    def parameter_model(self, preset: str, metadata: Mapping[str, Any]) -> torch.nn.Module | None:
        """The model on meta, for the parameter bytes of a saved trace."""
        from opmeter.models.deepseek_ocr2.model import build_model

        require_deepseek_ocr2()
        return build_model(get_preset(preset), "meta")

    fast_preset = FULL
    """``opmeter verify --fast``: the full size is verified on meta in about 20 s."""

    def verify_cases(self, preset: str, device: str = "meta", grid: tuple[int, int] | None = None,
                     attn: str = "eager") -> list[Any]:
        """The per-layer verification cases (:mod:`.verify_cases`), shape-only on meta; run them inside
        :meth:`verify_context`."""
        from opmeter.models.deepseek_ocr2.verify_cases import deepseek_ocr2_cases

        require_deepseek_ocr2()
        if device != "meta" or grid is not None or attn != "eager":
            raise OpmeterError(f"{NAME} is verified shape-only on meta at its standard page (no --device cpu, "
                               "--grid or --attn)")
        return deepseek_ocr2_cases(preset)[0]

    def sweep(self, args: Any) -> list[str]:
        """``opmeter sweep --model deepseek-ocr-2``: the crop-grid sweeps (:mod:`.sweeps`)."""
        from opmeter.models.deepseek_ocr2.sweeps import run_sweeps

        return run_sweeps(args)

    def verify_context(self) -> contextlib.AbstractContextManager[Any]:
        """transformers' value checks off and the fast meta kernels on, around the verification cases."""
        return shape_only()

    def predict(self, trace: Any, workload: Any, preset: str, hardware: Any) -> Prediction:
        """The analytic prediction of the traced run (see :func:`predict_run`)."""
        dtype, sdpa = _run_variant(trace)
        return predict_run(get_preset(preset), workload, hardware, dtype=dtype, sdpa=sdpa)


def predict_run(preset: Any, workload: Ocr2Workload, hardware: Any = None, dtype: int = 2,
                sdpa: str = "math") -> Prediction:
    """Per-module and per-stage prediction of ``workload`` on ``preset`` (element size ``dtype``; ``sdpa``
    ``"math"`` on meta, ``"fused"`` where a fused kernel runs)."""
    from opmeter.models.deepseek_ocr2.predict import RunShape, module_frame, stage_frame

    run = RunShape.of(preset, workload, dtype, sdpa)
    stages = stage_frame(run, hardware)
    by: dict[Any, dict[Any, Any]] = {r["stage"]: r for r in stages.to_dict("records")}
    from opmeter.models.deepseek_ocr2.analytic import parameter_counts

    parameters = float(sum(parameter_counts(preset).values()))
    headline = {
        "predicted_ttft_s": float(by["vision"]["predicted_time_s"]) + float(by["prefill"]["predicted_time_s"]),
        "predicted_tpot_s": (float(by["decode"]["predicted_time_s"]) / workload.decode_steps
                             if workload.decode_steps and "decode" in by else 0.0),
        "parameters": parameters, "parameter_bytes": parameters * dtype,
        "image_tokens": float(workload.views(preset).image_tokens(preset)),
        "prompt_tokens": float(run.prompt_tokens), "prefill_length": float(run.prompt_tokens),
        "vision_flops_tensor": float(by["vision"]["flops_tensor"]),
        "prefill_flops_tensor": float(by["prefill"]["flops_tensor"]),
        "total_flops_tensor": float(by["total"]["flops_tensor"]),
        "kv_cache_bytes": float(by["total"]["kv_cache_bytes"]),
        "weight_bytes": float(by["total"]["weight_bytes"]),
    }
    return Prediction(modules=module_frame(run), stages=stages, headline=headline,
                      label=f"{NAME} {preset.name}, SDPA {sdpa}, {dtype}-byte activations",
                      details={"sdpa": sdpa, "dtype_bytes": dtype, "experts": "grouped_mm"})


def _experts_implementation(model: torch.nn.Module) -> str:
    """The experts implementation transformers chose for the decoder (``grouped_mm`` by default)."""
    config: Any = model.config
    return str(config.text_config._experts_implementation)


def _run_variant(trace: Any) -> tuple[int, str]:
    """Element size and SDPA path of a traced run: meta traces run SDPA's math decomposition, real devices a fused
    kernel; the dtype is the trace's recorded one (bf16 when unknown)."""
    meta = dict(getattr(trace, "metadata", {}) or {})
    device = str(meta.get("device", "meta"))
    dtype = str(meta.get("dtype", "bfloat16")).removeprefix("torch.")
    size = {"float32": 4, "float16": 2, "bfloat16": 2}.get(dtype, 2)
    return size, "math" if device == "meta" else "fused"


def _run_context(device: str) -> Any:
    def context() -> contextlib.AbstractContextManager[Any]:
        return shape_only() if device == "meta" else contextlib.nullcontext()

    return context


def _factory(arg: str | None, spec: str) -> DeepseekOcr2Adapter:
    return DeepseekOcr2Adapter(arg, spec)


register(NAME, _factory, "deepseek-ocr2", "dsocr2")
