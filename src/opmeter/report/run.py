"""The report pipeline behind ``opmeter report``: validate, trace, predict, (time), join, write.

Everything is computed before anything is written, and every file is written atomically, so a failure at any point
leaves an existing report directory as it was (a finished run replaces files one by one).

Runs, in order:

1. the counts trace (``OpTracer(count_ops=True)``) of ``model.infer()`` on the workload (meta = shape-only);
2. the analytic prediction of the same workload (per module, per stage) and the roofline times at ``--hardware``,
   with the analytic variant read from the trace (:func:`opmeter.report.variant.choose_analytic`: dtype, fused or
   math SDPA, host-side checks, balanced or measured MoE routing), so executed runs are predicted as they ran;
3. when executing (``--device cpu|cuda``): ``--repeats`` timed runs after one warm-up (:mod:`opmeter.runtime`), one
   module-timing trace (``count_ops=False, timing=True``: per-module time, Chrome trace) and, unless disabled, one
   ``torch.profiler`` run for the operator table;
4. the join, then the files.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pandas as pd
import torch

from opmeter.errors import OpmeterError
from opmeter.report.limits import DEFAULT_MAX_IMAGE_PIXELS

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "meta")
DEFAULT_HARDWARE = "H100-SXM"
"""Hardware entry for predicted times when no GPU is detected and ``--hardware`` is not given."""


@attrs.frozen
class ReportOptions:
    """Options of one report (the CLI flags)."""

    workload: str = "dsocr-standard-v1"
    model: str = "reference"
    preset: str = "deepseek-ocr-v1-base"
    device: str = "auto"
    decode_tokens: int | None = None
    repeats: int = 3
    hardware: str | None = None
    out: str | Path = "reports/latest"
    image: str | Path | None = None
    trace_path: str | Path | None = None
    write_trace_json: bool = True
    compress: bool = False
    """Write trace.json, joined.json and the CSV tables gzipped (``*.gz``): for committed example reports."""
    profiler: bool = True
    weights: bool = True
    """``--model vendor:``: load the checkpoint's weights (``False``: random initialisation from config.json)."""
    nvtx_modules: bool = False
    """NVTX ranges per module call (not only per stage) in the module-timing run, for Nsight Systems."""
    verify: bool = False
    """Also run the per-layer verification (:mod:`opmeter.verify`) of the preset and add it to the report."""
    progress: bool = False
    command: str = "opmeter report"
    profile: str | Path | None = None
    """Device profile (``opmeter calibrate``) for the predicted times; ``None``: calibrate on the spot when executing,
    documented defaults of the hardware entry when shape-only (:mod:`opmeter.timemodel.assess`)."""
    dtype: str | None = None
    """dtype of the reference model (``float32``, ``bfloat16``...); ``None``: bf16 on meta and CUDA, fp32 on CPU."""
    threads: int | None = None
    """``torch.set_num_threads`` for the run (restored afterwards); ``None``: torch's setting."""
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    """Refuse larger ``--image`` pages (header read only); 0 = no limit."""
    images: str | None = None
    """``--images DIR|GLOB``: a report over these pages (:mod:`opmeter.report.pageset_run`)."""
    write_files: bool = True
    """``False``: compute and return the figures, write nothing (one page of a set report)."""


@attrs.frozen
class ReportResult:
    """What a report produced."""

    out_dir: Path
    files: tuple[str, ...]
    headline: tuple[str, ...]
    seconds: dict[str, float]
    joined: Any


# -- validation --------------------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``meta``; reject unknown or unavailable devices."""
    name = str(device).strip().lower()
    if name not in DEVICES:
        raise OpmeterError(f"unsupported device {device!r}; choose one of {', '.join(DEVICES)}")
    cuda = torch.cuda.is_available()
    if name == "auto":
        return "cuda" if cuda else "meta"
    if name == "cuda" and not cuda:
        raise OpmeterError("--device cuda requested but no CUDA device is available (torch.cuda.is_available() is "
                           "False); use --device meta (shape-only) or cpu")
    return name


def check_out_dir(out: str | Path) -> Path:
    """Prove ``out`` can receive the report, creating nothing (see :func:`opmeter.report.outdir.check_report_dir`)."""
    from opmeter.report.outdir import check_report_dir

    return check_report_dir(out)


def check_image(image: str | Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Path:
    """The image must exist, be at most ``max_pixels`` pixels (header only, 0 = no limit) and decode."""
    from PIL import Image, UnidentifiedImageError

    from opmeter.report.limits import check_image_size

    path = Path(image)
    if not path.is_file():
        raise OpmeterError(f"image file {path} not found")
    try:
        check_image_size(path, max_pixels)
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise OpmeterError(f"image file {path} is not a readable image ({exc.__class__.__name__}: {exc})") from None
    return path


def parse_model_spec(spec: str) -> tuple[str, Path | None]:
    """``reference`` or ``vendor:PATH`` (the directory must exist and hold the remote code)."""
    if spec == "reference":
        return "reference", None
    if spec.startswith("vendor:"):
        path = Path(spec.removeprefix("vendor:")).expanduser()
        if not str(path) or not path.is_dir():
            raise OpmeterError(f"vendor model directory {str(path) or '(empty)'!r} does not exist; pass "
                               "--model vendor:PATH with a local deepseek-ai/DeepSeek-OCR checkout")
        if not (path / "config.json").is_file():
            raise OpmeterError(f"vendor model directory {path} has no config.json; is it a DeepSeek-OCR checkout?")
        return "vendor", path
    raise OpmeterError(f"unknown --model {spec!r}; use 'reference' or 'vendor:PATH'")


# -- progress ----------------------------------------------------------------------------------------------------


class _Progress:
    """rich progress bars (or nothing): one task per long phase, advanced per forward of the root module."""

    def __init__(self, enabled: bool) -> None:
        self._progress: Any = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                transient=False,
            )

    def __enter__(self) -> _Progress:
        if self._progress is not None:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    @contextlib.contextmanager
    def forwards(self, description: str, model: torch.nn.Module, total: int) -> Iterator[None]:
        """A task advanced by every call of ``model.forward``."""
        if self._progress is None:
            yield
            return
        task = self._progress.add_task(description, total=total)
        handle = model.register_forward_hook(lambda *_: self._progress.advance(task))
        try:
            yield
        finally:
            handle.remove()
            self._progress.update(task, completed=total)

    def step(self, description: str, total: int) -> Callable[[int], None]:
        """A task advanced explicitly (the returned callable sets the completed count)."""
        if self._progress is None:
            return lambda _n: None
        task = self._progress.add_task(description, total=total)
        return lambda n: self._progress.update(task, completed=n)


# -- the pipeline ------------------------------------------------------------------------------------------------


def _param_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Own parameter + buffer bytes per module path (tracer naming: the root is ``<root>``)."""
    from opmeter.join import ROOT

    out: dict[str, int] = {}
    seen: set[int] = set()
    for name, mod in model.named_modules():
        total = 0
        for t in [*mod.parameters(recurse=False), *mod.buffers(recurse=False)]:
            if id(t) in seen:
                continue
            seen.add(id(t))
            total += t.numel() * t.element_size()
        out[name or ROOT] = total
    return out


def run_report(opts: ReportOptions) -> ReportResult:
    """Produce the report described by ``opts``; see the module docstring."""
    if opts.threads is not None and opts.threads < 1:
        raise OpmeterError(f"--threads must be at least 1, got {opts.threads}")
    from opmeter.models.deepseek_ocr.pages import page_planner

    planner = page_planner(opts.workload, opts.images, opts.preset)
    if planner is not None:  # a set of pages: one report over all of them
        from opmeter.report.pageset_run import run_page_set

        return run_page_set(opts, planner)
    before = torch.get_num_threads()
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    try:
        return _Pipeline(opts).run()
    finally:
        torch.set_num_threads(before)


def timed(seconds: dict[str, float], key: str) -> contextlib.AbstractContextManager[None]:
    """Context manager adding the wall time of a block to ``seconds[key]``."""

    @contextlib.contextmanager
    def block() -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start

    return block()


def frame_or_empty(obj: Any) -> pd.DataFrame:
    """A DataFrame from ``obj`` (``None`` -> empty)."""
    if obj is None:
        return pd.DataFrame()
    return obj if isinstance(obj, pd.DataFrame) else pd.DataFrame(obj)


# -- the pipeline ------------------------------------------------------------------------------------------------

VISION_MODULES = ("model.sam_model", "model.vision_model", "model.projector")
"""Timed as the ``vision`` part of prefill (paths as in the vendor code and the reference model)."""


DIRECT_FORWARD: dict[str, tuple[tuple[str, str], ...]] = {
    "NoTPTransformerBlock": (("self_attn", "attention"), ("mlp", "feed_forward")),
}
"""Analytic layers whose module calls sub-modules through ``.forward()`` (the vendor CLIP block calls
``self.self_attn.forward`` / ``self.mlp.forward``): sub-module attribute and the analytic method returning its layer."""


def direct_forward_frame(root: Any) -> pd.DataFrame:
    """Predicted rows of the sub-modules whose ``forward`` is invoked directly (see :data:`DIRECT_FORWARD`).

    The tracer never sees such a call, so their own ops are booked to the caller and only their children appear as
    module calls. Each row therefore predicts what the join can measure for them — the sum of their children
    (``flops_tensor``... ``self_*`` = 0) — and carries the whole analytic layer, own ops included, as
    ``layer_flops_tensor``, ``layer_flops_cuda``, ``layer_bytes``.
    """
    from opmeter.analytic.base import FRAME_COLUMNS

    rows: dict[str, dict[str, Any]] = {}
    for path, node in root.walk(""):
        for attr, method in DIRECT_FORWARD.get(node.class_name, ()):
            sub = getattr(node, method)()
            key = f"{path}.{attr}" if path else attr
            row = rows.setdefault(key, {c: 0 for c in FRAME_COLUMNS} | {
                "module": key, "class_name": sub.class_name, "flops_cuda": 0.0, "layer_flops_tensor": 0,
                "layer_flops_cuda": 0.0, "layer_bytes": 0, "direct_forward": True})
            kids = [layer for _, layer in sub.children()]
            row["calls"] += 1
            row["flops_tensor"] += sum(k.tensor_core_flops() for k in kids)
            row["flops_cuda"] += sum(k.cuda_core_flops() for k in kids)
            row["bytes_read"] += sum(k.bytes_read() for k in kids)
            row["bytes_written"] += sum(k.bytes_written() for k in kids)
            row["layer_flops_tensor"] += sub.tensor_core_flops()
            row["layer_flops_cuda"] += sub.cuda_core_flops()
            row["layer_bytes"] += sub.bytes_read() + sub.bytes_written()
            row["weight_bytes"] = sub.weight_bytes()
            row["activation_bytes"] = max(row["activation_bytes"], sub.activation_bytes())
    return pd.DataFrame(list(rows.values()))


def predicted_frames(
    analytic: Any, vision: Any, text_tokens: int, decode_steps: int, hardware: Any, choice: Any = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """Per-module and per-stage predictions of prefill + ``decode_steps`` decode steps, with roofline times.

    With balanced routing, decode costs are affine in the KV length, so the per-module decode frame is built from two
    evaluated steps (``steps * first + steps*(steps-1)/2 * (second - first)``) instead of walking every step's layer
    tree; the per-step stage rows use the same interpolation. Exact for the additive quantities. With measured
    routing (``choice``, an :class:`~opmeter.report.variant.AnalyticChoice` with expert counts), the prefill uses the
    measured tokens per expert and every decode step is evaluated with its share of the measured expert calls.

    Returns
    -------
    modules, stages, headline
        ``layer_frame`` layout per module (plus :func:`direct_forward_frame` rows); one row per stage (``vision``,
        ``prefill`` = first forward minus vision, ``decode[i]``, ``decode``, ``total``) with ``predicted_time_s``;
        predicted TTFT / TPOT.
    """
    from opmeter.analytic.base import layer_frame
    from opmeter.analytic.stage_cost import StageCost
    from opmeter.hardware import roofline
    from opmeter.models.deepseek_ocr.analytic import parameter_footprint

    prefill_experts = getattr(choice, "prefill_experts", None)
    step_experts = choice.decode_step_experts(decode_steps) if choice is not None else None
    root = analytic.prefill(vision, text_tokens, prefill_experts)
    seq = root.seq
    prefill = layer_frame(root)
    additive = ["calls", "flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "self_flops_tensor",
                "self_flops_cuda", "self_bytes_read", "self_bytes_written"]
    frames = [prefill]
    steps: list[Any] = []
    if decode_steps > 0 and step_experts is not None:  # measured routing: every step as it was routed
        steps = [analytic.decode_step(seq + i, step_experts[i]) for i in range(decode_steps)]
        frames.append(layer_frame(steps[0], calls=[("", s) for s in steps]))
    elif decode_steps > 0:
        first = layer_frame(analytic.decode_step(seq)).set_index("module")
        second = layer_frame(analytic.decode_step(seq + 1)).set_index("module") if decode_steps > 1 else first
        tri = decode_steps * (decode_steps - 1) / 2
        dec = first.copy()
        for col in additive:
            dec[col] = decode_steps * first[col] + tri * (second[col] - first[col])
        dec["kv_cache_bytes"] = first["kv_cache_bytes"] + (decode_steps - 1) * (
            second["kv_cache_bytes"] - first["kv_cache_bytes"]
        )
        dec["activation_bytes"] = pd.concat([first["activation_bytes"], second["activation_bytes"]], axis=1).max(axis=1)
        frames.append(dec.reset_index())
    direct = direct_forward_frame(root)
    both = pd.concat([*frames, direct], ignore_index=True)
    layer_cols = ["layer_flops_tensor", "layer_flops_cuda", "layer_bytes"]
    agg = {c: "sum" for c in additive} | {"class_name": "first", "weight_bytes": "max", "activation_bytes": "max",
                                          "kv_cache_bytes": "last"}
    if len(direct):
        agg |= {c: "sum" for c in layer_cols} | {"direct_forward": "any"}
        both["direct_forward"] = both["direct_forward"].astype("boolean").fillna(False).astype(bool)
    modules = both.groupby("module", sort=False).agg(agg).reset_index()
    if len(direct):
        modules.loc[~modules["direct_forward"], layer_cols] = float("nan")

    def row(stage: str, tensor: float, cuda: float, nbytes: float, act: float, kv: float) -> dict[str, Any]:
        rt = roofline(tensor, cuda, nbytes, hardware) if hardware is not None else None
        return {
            "stage": stage, "flops_tensor": tensor, "flops_cuda": cuda, "bytes": nbytes,
            "activation_bytes": act, "kv_cache_bytes": kv,
            "predicted_time_s": rt.time_s if rt is not None else float("nan"),
            "predicted_bound": rt.bound if rt is not None and rt.time_s == rt.time_s else None,
        }

    def from_cost(stage: str, cost: Any) -> dict[str, Any]:
        return row(stage, cost.flops_tensor, cost.flops_cuda, cost.io_bytes, cost.activation_bytes, cost.kv_bytes)

    rows = []
    # vision = the vision modules' calls only (as measured: the model's own glue around them is prefill)
    vis_rows = prefill[prefill["module"].isin(VISION_MODULES)]
    vt, vc = float(vis_rows["flops_tensor"].sum()), float(vis_rows["flops_cuda"].sum())
    vb = float((vis_rows["bytes_read"] + vis_rows["bytes_written"]).sum())
    if len(vis_rows):
        act = (StageCost.from_layer("vision", analytic.vision(vision), kv_bytes=0).activation_bytes
               if vision is not None else float(vis_rows["activation_bytes"].max()))
        rows.append(row("vision", vt, vc, vb, act, 0.0))
    pf = StageCost.from_layer("prefill", root)
    rows.append(row("prefill", pf.flops_tensor - vt, pf.flops_cuda - vc, pf.io_bytes - vb, pf.activation_bytes,
                    pf.kv_bytes))
    total_cost = pf
    if decode_steps > 0:
        if steps:
            costs = [StageCost.from_layer("decode_step", s) for s in steps]
            for i, c in enumerate(costs):
                rows.append(from_cost(f"decode[{i}]", c))
            decode_cost = StageCost.total("decode", costs)
        else:
            a = StageCost.from_layer("decode_step", analytic.decode_step(seq))
            b = StageCost.from_layer("decode_step", analytic.decode_step(seq + 1)) if decode_steps > 1 else a
            for i in range(decode_steps):
                def lin(f: str, i: int = i) -> float:
                    return float(getattr(a, f) + i * (getattr(b, f) - getattr(a, f)))

                rows.append(row(f"decode[{i}]", lin("flops_tensor"), lin("flops_cuda"), lin("io_bytes"),
                                lin("activation_bytes"), lin("kv_bytes")))
            decode_cost = analytic.decode_cost(seq, decode_steps)
        dec_rows = pd.DataFrame(rows[-decode_steps:])
        d = from_cost("decode", decode_cost)
        d["predicted_time_s"] = float(dec_rows["predicted_time_s"].sum())  # sum of per-step rooflines
        rows.append(d)
        total_cost = StageCost.total("total", [pf, decode_cost])
    stages = pd.DataFrame(rows)
    parts = stages[stages["stage"].isin(["vision", "prefill", "decode"])]
    total = from_cost("total", total_cost)
    total["predicted_time_s"] = float(parts["predicted_time_s"].sum())
    stages = pd.concat([stages, pd.DataFrame([total])], ignore_index=True)
    ttft = float(parts[parts["stage"].isin(["vision", "prefill"])]["predicted_time_s"].sum())
    tpot = float(parts[parts["stage"] == "decode"]["predicted_time_s"].sum()) / decode_steps if decode_steps else 0.0
    params = parameter_footprint(analytic.config, analytic.dtype)
    headline = {"predicted_ttft_s": ttft, "predicted_tpot_s": tpot,
                "parameters": float(params.parameters), "parameter_bytes": float(params.bytes),
                "prefill_length": float(seq), "image_tokens": float(vision.image_tokens if vision is not None else 0)}
    return modules, stages, headline


class _Pipeline:
    """One report run (see :func:`run_report`)."""

    def __init__(self, opts: ReportOptions) -> None:
        self.opts = opts
        self.seconds: dict[str, float] = {}

    # inputs ------------------------------------------------------------------------------------------------------
    def _workload(self, preset: str, image: Path | None) -> Any:
        from opmeter.models.deepseek_ocr.workloads import load_workload

        try:
            workload = load_workload(self.opts.workload)
        except OpmeterError:
            raise
        except Exception as exc:  # a loader that raises KeyError & co. still gives one clear line
            raise OpmeterError(f"unknown workload id {self.opts.workload!r} ({exc})") from None
        workload = workload.for_config(preset)
        if self.opts.decode_tokens is not None:
            workload = attrs.evolve(workload, max_new_tokens=self.opts.decode_tokens)
        if image is not None:
            from PIL import Image

            with Image.open(image) as img:
                width, height = img.size
            workload = attrs.evolve(workload, width=width, height=height)
        return workload

    def _dtype(self) -> Any:
        """``--dtype`` as a torch dtype (``None``: the model's default for the device)."""
        if self.opts.dtype is None:
            return None
        from opmeter.timemodel.calibrate import parse_dtype

        return parse_dtype(self.opts.dtype)

    def _check_sizes(self, config: Any, workload: Any, device: str) -> None:
        """Decode tokens within the position table; an executed CPU run within the memory available."""
        from opmeter.report.limits import check_cpu_memory, check_decode_tokens

        prefill = workload.text_tokens() + workload.vision(config).image_tokens
        check_decode_tokens(workload.max_new_tokens, prefill, config.decoder.max_position_embeddings)
        if device == "cpu":
            dtype = self._dtype()  # the reference runs fp32 on CPU unless --dtype says otherwise
            check_cpu_memory(config, workload, dtype_bytes=dtype.itemsize if dtype is not None else 4)

    def _model(self, kind: str, vendor_path: Path | None, device: str) -> tuple[Any, Any, str]:
        from opmeter.models.deepseek_ocr.tokenizer import BuiltinTokenizer

        if kind == "reference":
            from opmeter.models.deepseek_ocr.config import get_config
            from opmeter.models.deepseek_ocr.model import build_reference

            get_config(self.opts.preset)  # one clear line for an unknown preset
            dtype = self._dtype()
            return build_reference(self.opts.preset, device=device, dtype=dtype), BuiltinTokenizer(), self.opts.preset
        from opmeter.models.deepseek_ocr.vendor import check_preset, load_vendor
        from opmeter.models.deepseek_ocr.vendor_compat import metadata

        # on meta the vendor structure is built from config.json alone (no weights), as the loader requires
        model = load_vendor(str(vendor_path), weights=self.opts.weights and device != "meta", device=device,
                            dtype=self._dtype())
        check_preset(model, self.opts.preset)
        try:
            from transformers import AutoTokenizer

            tokenizer: Any = AutoTokenizer.from_pretrained(str(vendor_path), trust_remote_code=True)
        except Exception as exc:  # no tokenizer files in the checkout: same token ids policy as the reference
            first_line = (str(exc).splitlines() or [""])[0]
            log.warning("no tokenizer in %s (%s: %s); using the built-in tokenizer", vendor_path,
                        type(exc).__name__, first_line)
            metadata(model)["tokenizer"] = "builtin (checkpoint tokenizer not loadable)"
            tokenizer = BuiltinTokenizer()
        return model, tokenizer, self.opts.preset

    def _hardware(self, device: str) -> tuple[Any, Any]:
        """(hardware for predicted times, hardware for MFU)."""
        from opmeter.hardware import HARDWARE, detect_hardware, lookup

        detected = detect_hardware(None if device == "cuda" else "cpu")
        if self.opts.hardware:
            predict = lookup(self.opts.hardware)
        elif detected.known:
            predict = detected
        else:
            predict = HARDWARE[DEFAULT_HARDWARE]
        mfu_hw = predict if (device == "cuda" and self.opts.hardware) else detected
        return predict, mfu_hw

    # run -----------------------------------------------------------------------------------------------------------
    def run(self) -> ReportResult:
        o = self.opts
        total_start = time.perf_counter()
        out_dir = check_out_dir(o.out)
        self._check_time_options()
        self._hardware("meta")  # --hardware and the OPMETER_* environment, before the long work
        if o.trace_path is not None:
            return self._from_saved_trace(out_dir, total_start)
        device = resolve_device(o.device)
        self._hardware(device)
        kind, vendor_path = parse_model_spec(o.model)
        image = check_image(o.image, o.max_image_pixels) if o.image is not None else None
        from opmeter.models.deepseek_ocr.config import FULL_SIZE, get_config

        config = get_config(o.preset if kind == "reference" else FULL_SIZE)
        workload = self._workload(o.preset, image)
        self._check_sizes(config, workload, device)
        with tempfile.TemporaryDirectory(prefix="opmeter-report-") as tmp, _Progress(o.progress) as progress:
            with timed(self.seconds, "build_model"):
                model, tokenizer, preset = self._model(kind, vendor_path, device)
            image_file = image if image is not None else workload.save_image(tmp)
            kwargs = workload.infer_kwargs(image_file)
            if kind == "vendor":
                kwargs = vendor_infer_kwargs(model, kwargs, Path(tmp) / "vendor-output")

            def infer() -> Any:
                return model.infer(tokenizer, **kwargs)

            meta = {
                "workload_id": workload.id, "workload": workload.summary(tokenizer), "preset": preset,
                "model_spec": o.model, "device": device, "image_file": str(image) if image else "synthetic",
                "decode_tokens": workload.max_new_tokens,
            }
            with vendor_context(model, kind, workload.max_new_tokens):
                trace = self._trace(model, infer, meta, workload.max_new_tokens, progress, out_dir, device)
                workload = traced_decode_length(trace, workload)
                runtime = timing_trace = op_table = None
                if device != "meta":
                    runtime, timing_trace, op_table = self._execute(model, infer, workload, trace, progress, device)
            return self._finish(out_dir, trace, timing_trace, runtime, op_table, model, workload, preset, device,
                                total_start)

    def _check_time_options(self) -> None:
        """``--profile`` must be a readable profile and ``--dtype`` a known dtype for the reference model, before the
        long work starts."""
        o = self.opts
        if o.profile is not None:
            from opmeter.timemodel.profile import load_profile

            load_profile(o.profile)
        if o.dtype is not None:
            from opmeter.timemodel.calibrate import parse_dtype

            parse_dtype(o.dtype)
            if o.model != "reference" or o.trace_path is not None:
                raise OpmeterError("--dtype applies to the reference model when it runs (not to --model vendor:PATH "
                                   "or --trace)")

    def _time_model(self, trace: Any, runtime: Any, joined: Any, workload: Any, device: str, hw: Any
                    ) -> dict[str, Any]:
        """The time model's assessment (:mod:`opmeter.timemodel.assess`) as a dict for ``joined.metadata``."""
        from opmeter.timemodel.assess import assess, choose_profile

        executed = runtime is not None and device in ("cpu", "cuda")
        with timed(self.seconds, "time_model"):
            choice = choose_profile(self.opts.profile, device if executed else "meta", joined.metadata.get("dtype"),
                                    hw, torch.get_num_threads())
            mods = joined.by_module()
            component_of = dict(zip(mods["module"], mods["component"], strict=True)) if "component" in mods else {}
            bound_hw = hw if (not executed or self._comparable(device)) else None  # else: the profile's own peaks
            result = assess(trace, choice, joined.runtime if executed else None, workload.decode_steps,
                            VISION_MODULES, bound_hw, joined.by_component(), component_of)
        return result.to_dict()

    def _trace(self, model: Any, infer: Callable[[], Any], meta: dict[str, Any], tokens: int, progress: _Progress,
               out_dir: Path, device: str) -> Any:
        from opmeter.trace import OpTracer

        label = "tracing (shape-only)" if device == "meta" else "tracing (counts)"
        tracer = OpTracer(model, count_ops=True, timing=False, metadata=meta)
        try:
            with timed(self.seconds, "trace"), progress.forwards(label, model, tokens), tracer as trace, \
                    torch.inference_mode():
                infer()
        except BaseException as exc:
            saved = save_partial_trace(tracer.trace, out_dir)
            if isinstance(exc, KeyboardInterrupt):
                raise KeyboardInterrupt(saved) from exc
            what = str(exc) if isinstance(exc, OpmeterError) else f"the traced inference failed: " \
                f"{type(exc).__name__}: {exc}"
            raise OpmeterError(f"{what} ({saved}; the previous report, if any, is unchanged)") from exc
        if not trace.complete:  # the tracer lost ops (a foreign dispatch mode, a replaced __call__): no report
            raise OpmeterError(f"the trace is incomplete: {trace.error} ({save_partial_trace(trace, out_dir)})")
        return trace

    def _execute(self, model: Any, infer: Callable[[], Any], workload: Any, trace: Any, progress: _Progress,
                 device: str) -> tuple[Any, Any, pd.DataFrame | None]:
        from opmeter.runtime import operator_table, profile_runtime
        from opmeter.trace import OpTracer
        from opmeter.trace.categories import category_of_name

        _, mfu_hw = self._hardware(device)
        stages = trace.stages()
        prefill_flops = float(stages.loc[stages["group"] == "prefill", ["flops_tensor", "flops_cuda"]].sum().sum())
        decode_flops = float(stages.loc[stages["group"] == "decode", ["flops_tensor", "flops_cuda"]].sum().sum())
        peak = mfu_hw.tensor_tflops * 1e12 if mfu_hw.known else None
        vision = [(p, model.get_submodule(p)) for p in VISION_MODULES if _has_submodule(model, p)]
        runs = 1 + self.opts.repeats
        advance = progress.step(f"timing ({self.opts.repeats} repeats + warm-up)", runs)
        with timed(self.seconds, "timing"):
            runtime = profile_runtime(
                infer, model, vision, device=device, repeats=self.opts.repeats, warmup=1, peak_flops=peak,
                stage_flops={"prefill": prefill_flops, "decode": decode_flops}, progress=advance,
            )
        with timed(self.seconds, "module_timing"), progress.forwards(
            "module timing", model, workload.max_new_tokens
        ), OpTracer(model, count_ops=False, timing=True, nvtx="modules" if self.opts.nvtx_modules else True
                    ) as timing_trace, torch.inference_mode():
            infer()
        op_table = None
        if self.opts.profiler:
            with timed(self.seconds, "profiler"), progress.forwards("torch.profiler", model, workload.max_new_tokens):
                op_table = operator_table(infer, device=device, categorize=category_of_name)
        return runtime, timing_trace, op_table

    def _from_saved_trace(self, out_dir: Path, total_start: float) -> ReportResult:
        from opmeter.trace import load_trace

        path = Path(self.opts.trace_path or "")
        if not path.is_file():
            raise OpmeterError(f"trace file {path} not found")
        try:
            trace = load_trace(path)  # plain or gzipped
        except OpmeterError:
            raise
        except Exception as exc:
            raise OpmeterError(f"{path} is not an opmeter trace JSON ({type(exc).__name__}: {exc})") from None
        if not trace.complete:
            raise OpmeterError(f"{path} is an incomplete trace ({trace.error}); a report from it would undercount: "
                               "trace the run again")
        meta = dict(trace.metadata or {})
        preset = str(meta.get("preset") or self.opts.preset)
        wid = meta.get("workload_id")
        opts = self.opts
        if wid and wid != opts.workload:
            opts = attrs.evolve(opts, workload=str(wid))
        decode = meta.get("decode_tokens")
        if not decode:  # a trace recorded elsewhere: one token from the prefill plus one per decode step
            with contextlib.suppress(Exception):
                names = trace.stages()["stage"].astype(str)
                steps = int(names.str.startswith("decode[").sum())
                decode = steps + 1 if (names == "prefill").any() else None
        if decode and opts.decode_tokens is None:
            opts = attrs.evolve(opts, decode_tokens=int(decode))
        self.opts = opts
        # the geometry of a trace made elsewhere
        image = check_image(opts.image, opts.max_image_pixels) if opts.image is not None else None
        workload = self._workload(preset, image)
        wmeta = meta.get("workload") or {}
        if image is None and wmeta.get("image_width") and wmeta.get("image_height"):
            workload = attrs.evolve(workload, width=int(wmeta["image_width"]), height=int(wmeta["image_height"]))
        model = None
        if str(meta.get("model_spec", "reference")) == "reference":  # parameter bytes from a meta build (no memory)
            from opmeter.models.deepseek_ocr.model import build_reference

            with contextlib.suppress(Exception):
                model = build_reference(preset, device="meta")
        return self._finish(out_dir, trace, None, None, None, model, workload, preset, str(meta.get("device", "?")),
                            total_start)

    def _finish(self, out_dir: Path, trace: Any, timing_trace: Any, runtime: Any, op_table: pd.DataFrame | None,
                model: Any, workload: Any, preset: str, device: str, total_start: float) -> ReportResult:
        from opmeter.join import join
        from opmeter.models.deepseek_ocr.config import get_config

        predict_hw, _ = self._hardware(device if device in ("cuda", "cpu", "meta") else "meta")
        from opmeter.report.variant import choose_analytic

        with timed(self.seconds, "predict"):
            config = get_config(preset)
            vision = workload.vision(config)
            text_tokens = workload.text_tokens()
            choice = choose_analytic(trace, config, text_tokens + vision.image_tokens, workload.decode_steps)
            analytic = choice.analytic(config)
            pred_modules, pred_stages, pred_head = predicted_frames(
                analytic, vision, text_tokens, workload.decode_steps, predict_hw, choice
            )
        hw = {"name": predict_hw.name, "tensor_tflops": predict_hw.tensor_tflops,
              "cuda_tflops": predict_hw.cuda_tflops, "bandwidth_gbps": predict_hw.bandwidth_gbps,
              "source": predict_hw.source}
        with timed(self.seconds, "join"):
            joined = join(
                trace, pred_modules, pred_stages, param_bytes=_param_bytes(model) if model is not None else None,
                runtime=runtime, hardware=hw, operator_times=op_table, timing_trace=timing_trace,
                metadata={"predicted": pred_head, "analytic_variant": choice.label(),
                          "analytic_choice": choice.as_dict()},
            )
            if runtime is not None and op_table is not None:
                rt = dict(joined.runtime or {})
                rt["operator_table"] = [
                    {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
                    for r in op_table.head(200).to_dict("records")
                ]
                joined = attrs.evolve(joined, runtime=rt)
        if runtime is not None and not self._comparable(device):
            # predicted times are for another machine than the one measured: no ratio, say so in the report
            st = joined.by_stage()
            st["measured_over_predicted"] = float("nan")
            joined = attrs.evolve(joined, stages=st)
            joined.metadata["time_ratio"] = (
                f"not computed: measured on {device}, predicted for {predict_hw.name}; set OPMETER_PEAK_TFLOPS and "
                "OPMETER_BW_GBPS to predict for this machine"
            )
        joined.metadata["time_model"] = self._time_model(trace, runtime, joined, workload, device, predict_hw)
        verification = None
        if self.opts.verify:  # computed before anything is written, like everything else
            from opmeter.verify import verify

            with timed(self.seconds, "verify"):
                verification = verify(preset)
        if not self.opts.write_files:  # one page of a set report: the figures only
            return ReportResult(out_dir, (), tuple(_headline_lines(joined, pred_head)), dict(self.seconds), joined)
        from opmeter.report.outdir import staged_report

        kept = (self.opts.trace_path, self.opts.profile)  # inputs that live in --out stay in the new report
        carry = [Path(p).resolve() for p in kept if p is not None]
        with staged_report(out_dir, carry=carry) as staging:
            result = self._write(staging, joined, trace, timing_trace, workload, preset, device, pred_head,
                                 total_start, verification)
        return attrs.evolve(result, out_dir=out_dir)

    def _comparable(self, device: str) -> bool:
        """Whether predicted times are for the machine that measured: the predicted-for entry is the detected GPU
        (or the CPU given peaks through the environment), or ``--hardware`` names the GPU measured on."""
        from opmeter.hardware import detect_hardware

        predict, _ = self._hardware(device)
        detected = detect_hardware(None if device == "cuda" else "cpu")
        if self.opts.hardware:
            return device == "cuda" and (not detected.known or detected.name == predict.name)
        return detected.known and detected.name == predict.name

    def _write(self, out_dir: Path, joined: Any, trace: Any, timing_trace: Any, workload: Any, preset: str,
               device: str, pred_head: dict[str, float], total_start: float,
               verification: pd.DataFrame | None) -> ReportResult:
        from opmeter.io import atomic_write_text
        from opmeter.report import exporters, markdown, plots
        from opmeter.report import format as fmt

        o = self.opts
        files: list[str] = []
        with timed(self.seconds, "write"):
            if o.write_trace_json and o.trace_path is None:
                files.append(exporters.write_trace_json(trace, out_dir / "trace.json", o.compress).name)
            files.append(exporters.write_maybe_gzip(out_dir / "joined.json", joined.to_json(), o.compress).name)
            for stem, df in (("modules", joined.by_module()), ("operators", joined.by_operator()),
                             ("stages", joined.by_stage()), ("components", joined.by_component()),
                             ("categories", joined.by_category()), ("classes", joined.by_class()),
                             ("module_categories", joined.by_module_and_category())):
                files += [p.name for p in exporters.write_table(df, out_dir, stem, o.compress)]
            files += [p.name for p in exporters.write_callgraph(trace, out_dir)]
            if timing_trace is not None:
                chrome = exporters.write_chrome_trace(timing_trace, out_dir / "chrome_trace.json", o.compress)
                if chrome is not None:
                    files.append(chrome.name)
            comp = joined.by_component()
            plots.flops_by_component(comp, out_dir / "flops_by_component.svg")
            plots.categories(joined.by_category(), out_dir / "categories.svg")
            stages = joined.by_stage()
            plots.time_by_stage(stages[~stages["stage"].str.startswith("decode[")], out_dir / "time_by_stage.svg",
                                hardware=(joined.hardware or {}).get("name"))
            files += ["flops_by_component.svg", "categories.svg", "time_by_stage.svg"]
            verify_table = None
            if verification is not None:
                from opmeter.verify import worst_per_layer

                files += [p.name for p in exporters.write_table(verification, out_dir, "verification", o.compress)]
                verify_table = _verify_view(worst_per_layer(verification))
            mermaid = trace.to_mermaid() if hasattr(trace, "to_mermaid") else None
            summary = workload.summary()
            context = {
                "title": f"{workload.id} on {preset}",
                "command": f"`{o.command}`",
                "model": o.model,
                "preset": preset,
                "workload": f"{workload.id}: {summary['description']}",
                "device": device + (" (shape-only: meta tensors, nothing executed)" if device == "meta" else ""),
                "dtype": joined.metadata.get("dtype"),
                "hardware": f"{(joined.hardware or {}).get('name')} (predicted times) — "
                            f"{(joined.hardware or {}).get('source')}",
                "shape_only": device == "meta",
                "predicted_ttft_s": pred_head.get("predicted_ttft_s"),
                "predicted_tpot_s": pred_head.get("predicted_tpot_s"),
                "extra": {
                    "image": f"{summary['image_width']} x {summary['image_height']} px, crop grid "
                             f"{summary['crop_grid'][0]} x {summary['crop_grid'][1]}, {summary['image_tokens']} image "
                             f"tokens",
                    "prompt": f"{summary['prefill_length']} positions ({summary['text_tokens']} text + "
                              f"{summary['image_tokens']} image); {summary['max_new_tokens']} new tokens "
                              f"(1 prefill + {summary['decode_steps']} decode steps)",
                    "parameters": f"{fmt.integer(pred_head.get('parameters'))} "
                                  f"({fmt.nbytes(pred_head.get('parameter_bytes'))} at {joined.metadata.get('dtype')})",
                    "opmeter / torch": f"{_version()} / {torch.__version__}",
                },
            }
            from opmeter.timemodel.assess import summary as time_summary
            from opmeter.timemodel.assess import write_summary

            files.append(write_summary(out_dir / "summary.json", time_summary(
                joined.metadata.get("time_model"), f"{o.model} {preset}", workload.id, device,
                joined.metadata.get("dtype"))).name)
            files.append("report.md")
            text = markdown.render(joined, context, mermaid=mermaid, verify_table=verify_table,
                                   files=sorted(set(files)))
            elapsed = time.perf_counter() - total_start
            text += f"\n*Generated by `{o.command}` in {elapsed:.1f} s.*\n"
            atomic_write_text(out_dir / "report.md", text)
        headline = _headline_lines(joined, pred_head)
        return ReportResult(out_dir=out_dir, files=tuple(sorted(set(files))), headline=tuple(headline),
                            seconds=dict(self.seconds), joined=joined)


def save_partial_trace(trace: Any, out_dir: Path) -> str:
    """Save what an interrupted trace recorded beside ``out_dir``; returns the words saying where (or why not)."""
    from opmeter.report.outdir import partial_trace_path

    if trace is None:
        return "nothing was traced"
    path = partial_trace_path(out_dir)
    try:
        trace.save(path)
    except Exception as exc:  # said, never swallowed: the caller prints it with the error
        return f"the partial trace could not be saved to {path}: {type(exc).__name__}: {exc}"
    return f"partial trace in {path}"


def _verify_view(df: pd.DataFrame) -> pd.DataFrame:
    """The worst case per layer, formatted for Markdown."""
    from opmeter.report import format as fmt

    out = df[["layer", "case", "rel_tensor", "rel_cuda", "rel_bytes", "status"]].copy()
    for col in ("rel_tensor", "rel_cuda", "rel_bytes"):
        out[col] = out[col].map(fmt.rel)
    return out.reset_index(drop=True)


def vendor_infer_kwargs(model: Any, kwargs: dict[str, Any], output_path: Path) -> dict[str, Any]:
    """The workload's ``infer()`` arguments the vendor signature takes, with an ``output_path`` (the vendor creates
    it: an empty one fails). The decode budget is enforced by :func:`vendor_context` instead."""
    import inspect

    accepted = inspect.signature(model.infer).parameters
    kwargs = {**kwargs, "output_path": str(output_path)}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return kwargs
    dropped = sorted(k for k in kwargs if k not in accepted)
    if dropped:
        log.info("vendor infer() does not take %s; the generation cap enforces the decode budget", dropped)
    return {k: v for k, v in kwargs.items() if k in accepted}


def vendor_context(model: Any, kind: str, budget: int) -> contextlib.AbstractContextManager[Any]:
    """For the vendor model: the fixed token budget, CPU compatibility and, on meta, the shape-only patches
    (:mod:`opmeter.models.deepseek_ocr.vendor_compat`); entered outside every tracer."""
    if kind != "vendor":
        return contextlib.nullcontext()
    from opmeter.models.deepseek_ocr.vendor_compat import vendor_run

    return vendor_run(model, budget)


def traced_decode_length(trace: Any, workload: Any) -> Any:
    """The workload with the number of new tokens the trace actually generated (prefill + decode steps), so the
    prediction covers the same work as the trace."""
    stages = trace.stages()
    if stages.empty or "group" not in stages:
        return workload
    traced = int((stages["group"] == "prefill").sum() + (stages["group"] == "decode").sum())
    if traced and traced != workload.max_new_tokens:
        log.warning("the run generated %d tokens where the workload asks for %d; predicting the traced %d",
                    traced, workload.max_new_tokens, traced)
        workload = attrs.evolve(workload, max_new_tokens=traced)
    return workload


def _version() -> str:
    from opmeter import __version__

    return __version__


def _has_submodule(model: torch.nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _headline_lines(joined: Any, pred_head: dict[str, float]) -> list[str]:
    from opmeter.report import format as fmt

    tot = joined.totals()
    unc = joined.unclassified_summary()
    st = joined.by_stage().set_index("stage")
    lines = [
        f"FLOPs: {fmt.flops(tot.get('flops_tensor'))} tensor-core + {fmt.flops(tot.get('flops_cuda'))} CUDA-core; "
        f"bytes {fmt.nbytes(tot.get('bytes'))}",
        f"attributed FLOPs {fmt.pct(unc['attributed_flops_share'], 3)}; unclassified "
        f"{fmt.pct(unc['unclassified_flops_share'], 3)} FLOPs / {fmt.pct(unc['unclassified_bytes_share'], 3)} bytes",
    ]
    if joined.metadata.get("uncounted_ops"):
        lines.append(f"UNCOUNTED compute ops (no FLOP formula, FLOPs unknown): "
                     f"{fmt.uncounted(joined.metadata['uncounted_ops']).replace('`', '')}")
    if "total" in st.index:
        rel = fmt.rel(st.loc["total", "rel_flops_tensor"])
        lines.append(f"measured vs analytic tensor-core FLOPs (whole run): {rel}")
    if joined.metadata.get("analytic_variant"):
        lines.append(f"analytic variant (from the trace): {joined.metadata['analytic_variant']}")
    hw = (joined.hardware or {}).get("name")
    lines.append(f"roofline bound on {hw}: TTFT {fmt.seconds(pred_head.get('predicted_ttft_s'))}, TPOT "
                 f"{fmt.seconds(pred_head.get('predicted_tpot_s'))}")
    time_model = joined.metadata.get("time_model") or {}
    if time_model.get("headline"):
        lines.append(time_model["headline"])
    rt = joined.runtime
    if rt:
        m = rt.get("metrics", {})
        ttft = fmt.seconds((m.get("prefill_s") or {}).get("mean"))
        tpot = fmt.seconds((m.get("tpot_s") or {}).get("mean"))
        tps = (m.get("tokens_per_s") or {}).get("mean") or 0.0
        lines.append(f"measured ({rt.get('device')}, {rt.get('repeats')} repeats): TTFT {ttft}, TPOT {tpot}, "
                     f"{tps:.3g} tokens/s")
    return lines
