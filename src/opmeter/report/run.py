"""The report pipeline behind ``opmeter report``, along the data flow: inputs, trace, execute, predict, join, write.

Everything model-specific comes from a model adapter (:mod:`opmeter.models.base`), resolved from ``--model``.
Everything is computed before anything is written, and every file is written atomically, so a failure at any point
leaves an existing report directory as it was (a finished run replaces files one by one).

1. inputs (:mod:`.inputs`): options checked before the long work, the adapter's :class:`~opmeter.models.base.RunRequest`
   and its :class:`~opmeter.models.base.PreparedRun` (model, inputs, workload);
2. trace (:mod:`.tracing`): the counts trace (``OpTracer(count_ops=True)``) of one inference (meta = shape-only);
3. execute (:mod:`.execute`, ``--device cpu|cuda``): timed repeats after one warm-up, one module-timing trace and,
   unless disabled, one ``torch.profiler`` run for the operator table;
4. predict (:mod:`.predict`): the adapter's analytic prediction of the traced run, read from the trace itself
   (dtype, attention path, routing), with roofline times at ``--hardware`` and the time model;
5. join (:func:`opmeter.join.join`): measured and predicted per module, component, category and stage;
6. write (:mod:`.write`): the files, staged and swapped in at the end (:mod:`.outdir`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import pandas as pd
import torch

from opmeter.errors import OpmeterError
from opmeter.join import ROOT, Joined, join
from opmeter.models.base import (
    DEFAULT_MODEL,
    ModelAdapter,
    Prediction,
    RunRequest,
    SupportsPages,
    Workload,
    resolve_adapter,
    verifiable,
)
from opmeter.report.execute import Execution, execute
from opmeter.report.inputs import check_image, check_out_dir, parse_dtype_option, resolve_device
from opmeter.report.options import ReportOptions, ReportResult
from opmeter.report.pageset_run import run_page_set
from opmeter.report.predict import HardwareChoice, choose_hardware, predict, time_model
from opmeter.report.progress import Progress, timed
from opmeter.report.tracing import load_saved_trace, saved_decode_tokens, trace_run, traced_decode_length
from opmeter.report.write import ReportData, RunFacts, headline_lines, write_report
from opmeter.trace import Trace

log = logging.getLogger(__name__)

def param_bytes_by_module(model: torch.nn.Module) -> dict[str, int]:
    """Own parameter + buffer bytes per module path (tracer naming: the root is ``<root>``)."""
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
    planner = _page_planner(opts)
    if planner is not None:  # a set of pages: one report over all of them
        return run_page_set(attrs.evolve(opts, preset=opts.preset or planner.preset), planner, run_report)
    before = torch.get_num_threads()
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    try:
        return _Pipeline(opts).run()
    finally:
        torch.set_num_threads(before)


def _page_planner(opts: ReportOptions) -> Any:
    """The adapter's planner of a set of pages (``--images``, or a workload naming a page set); ``None``: one run."""
    if opts.trace_path is not None:
        return None
    adapter = resolve_adapter(opts.model or DEFAULT_MODEL)
    if not isinstance(adapter, SupportsPages):
        if opts.images is not None:
            raise OpmeterError(f"--images: {adapter.words.name} has no report over a set of pages")
        return None
    return adapter.page_planner(opts.workload, opts.images, opts.preset)


def adapter_of_trace(trace: Trace, requested: str | None) -> ModelAdapter:
    """The adapter that recorded a saved trace; refused (one line) when the trace names none, or another model than
    ``--model``."""
    meta = trace.metadata or {}
    spec, name = meta.get("model_spec"), meta.get("adapter")
    if not spec and not name:
        raise OpmeterError("the trace names no model adapter in its metadata (traced by hand, not by opmeter "
                           "report): trace the run with `opmeter report --model NAME`")
    recorded = str(spec or name)
    try:  # the full spec first (hf:llama carries its model type; the adapter name alone does not)
        adapter = resolve_adapter(recorded)
    except OpmeterError:
        if not name or str(name) == recorded:
            raise
        log.info("the trace's model %r cannot be resolved here; joining with its adapter %r", recorded, name)
        adapter = resolve_adapter(str(name))  # e.g. a vendor checkpoint not on this machine
    if requested is not None and resolve_adapter(requested).name != adapter.name:
        raise OpmeterError(f"the trace was recorded with --model {meta.get('model_spec', recorded)!r}, not "
                           f"{requested!r}: a report joins a trace with its own model's prediction")
    return adapter


class _Pipeline:
    """One report run (see :func:`run_report`)."""

    def __init__(self, opts: ReportOptions) -> None:
        self.opts = opts
        self.seconds: dict[str, float] = {}

    def _request(self, device: str, scratch: Path, image: Path | None, decode_tokens: int | None) -> RunRequest:
        o = self.opts
        return RunRequest(
            preset=o.preset, workload=o.workload, device=device, dtype=parse_dtype_option(o.dtype),
            decode_tokens=decode_tokens, image=image, weights=o.weights,
            weights_dir=Path(o.weights_dir) if o.weights_dir is not None else None, scratch=scratch,
        )

    def run(self) -> ReportResult:
        o = self.opts
        started = time.perf_counter()
        out_dir = check_out_dir(o.out, o.force)
        self._check_time_options()
        choose_hardware(o.hardware, "meta")  # --hardware and the OPMETER_* environment, before the long work
        if o.trace_path is not None:
            return self._from_saved_trace(out_dir, started)
        device = resolve_device(o.device)
        hardware = choose_hardware(o.hardware, device)
        adapter = resolve_adapter(o.model or DEFAULT_MODEL)
        image = check_image(o.image, o.max_image_pixels) if o.image is not None else None
        with tempfile.TemporaryDirectory(prefix="opmeter-report-") as tmp, Progress(o.progress) as progress:
            request = self._request(device, Path(tmp), image, o.decode_tokens)
            with timed(self.seconds, "build_model"):
                run = adapter.prepare(request)
            meta = {"adapter": adapter.name, "model_spec": adapter.spec, "device": device,
                    "workload_id": run.workload.id, **run.metadata}
            with run.context():
                trace = trace_run(run, adapter.stage_spec, meta, progress, self.seconds, out_dir, device)
                workload = traced_decode_length(trace, run.workload)
                execution = None
                if device != "meta":
                    peak = hardware.mfu.tensor_tflops * 1e12 if hardware.mfu.known else None
                    execution = execute(run, trace, adapter.stage_spec.request_modules, device, o.repeats, peak,
                                        progress, self.seconds, o.nvtx_modules, o.profiler)
            return self._finish(out_dir, adapter, trace, execution, run.model, workload, run.preset, device,
                                hardware, started)

    def _check_time_options(self) -> None:
        """``--profile`` must be a readable profile and ``--dtype`` a known dtype, before the long work starts."""
        o = self.opts
        if o.profile is not None:
            from opmeter.timemodel.profile import load_profile

            load_profile(o.profile)
        if o.dtype is not None:
            parse_dtype_option(o.dtype)
            if o.trace_path is not None:
                raise OpmeterError("--dtype applies to a model that runs, not to --trace (its dtype is recorded)")

    def _from_saved_trace(self, out_dir: Path, started: float) -> ReportResult:
        o = self.opts
        trace = load_saved_trace(Path(o.trace_path or ""))
        adapter = adapter_of_trace(trace, o.model)
        meta = dict(trace.metadata or {})
        image = check_image(o.image, o.max_image_pixels) if o.image is not None else None
        decode = saved_decode_tokens(trace, o.decode_tokens)
        request = self._request(str(meta.get("device", "meta")), Path("."), image, decode)
        try:
            workload, preset = adapter.workload_from_trace(meta, request)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # a damaged trace's metadata
            raise OpmeterError(f"the metadata of {o.trace_path} does not describe a workload: {type(exc).__name__}: "
                               f"{str(exc)[:200]}") from None
        try:  # parameter bytes from a meta build (no memory); a report without them says "n/a"
            model = adapter.parameter_model(preset, meta)
        except Exception as exc:
            log.warning("parameter bytes unavailable: the model of %s could not be built on meta (%s: %s)",
                        preset, type(exc).__name__, exc)
            model = None
        if model is None:
            log.info("measured parameter bytes are n/a in this report: no model of the trace at hand (%s)",
                     meta.get("model_spec"))
        hardware = choose_hardware(o.hardware, "meta")
        return self._finish(out_dir, adapter, trace, None, model, workload, preset, str(meta.get("device", "?")),
                            hardware, started)

    def _join(self, adapter: ModelAdapter, trace: Trace, prediction: Prediction | None,
              execution: Execution | None, model: torch.nn.Module | None, hardware: HardwareChoice) -> Joined:
        meta: dict[str, Any] = {"model_name": adapter.words.name, "request_stage": adapter.stage_spec.request_stage,
                                "request_parts": adapter.words.request_parts}
        if prediction is not None:
            meta |= {"predicted": prediction.headline, "analytic_variant": prediction.label,
                     "analytic_choice": prediction.details}
        else:
            meta["analytic_variant"] = f"none: {adapter.words.name} is measured only (no analytic model)"
        joined = join(
            trace, prediction.modules if prediction else None, prediction.stages if prediction else None,
            components=adapter.components(model), stage_spec=adapter.stage_spec,
            param_bytes=param_bytes_by_module(model) if model is not None else None,
            runtime=execution.runtime if execution else None, hardware=hardware.as_dict(),
            operator_times=execution.op_table if execution else None,
            timing_trace=execution.timing_trace if execution else None, metadata=meta,
        )
        if execution is not None and execution.op_table is not None:
            rt = dict(joined.runtime or {})
            rt["operator_table"] = [
                {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
                for r in execution.op_table.head(200).to_dict("records")
            ]
            joined = attrs.evolve(joined, runtime=rt)
        if execution is not None and not hardware.comparable:
            # predicted times are for another machine than the one measured: no ratio, say so in the report
            st = joined.by_stage()
            st["measured_over_predicted"] = float("nan")
            joined = attrs.evolve(joined, stages=st)
            joined.metadata["time_ratio"] = (
                f"not computed: predicted for {hardware.predict.name}, measured on another device; set "
                "OPMETER_PEAK_TFLOPS and OPMETER_BW_GBPS to predict for this machine"
            )
        return joined

    def _finish(self, out_dir: Path, adapter: ModelAdapter, trace: Trace, execution: Execution | None,
                model: torch.nn.Module | None, workload: Workload, preset: str, device: str,
                hardware: HardwareChoice, started: float) -> ReportResult:
        o = self.opts
        with timed(self.seconds, "predict"):
            prediction = predict(adapter, trace, workload, preset, hardware)
        with timed(self.seconds, "join"):
            joined = self._join(adapter, trace, prediction, execution, model, hardware)
        with timed(self.seconds, "time_model"):
            joined.metadata["time_model"], profile = time_model(
                trace, joined, workload.decode_steps, adapter.stage_spec, device,
                execution is not None and device in ("cpu", "cuda"), o.profile, hardware, o.recalibrate)
        verification = self._verification(adapter, preset)  # before anything is written, like everything else
        head = prediction.headline if prediction is not None else {}
        if not o.write_files:  # one page of a set report: the figures only
            return ReportResult(out_dir, (), tuple(headline_lines(joined, head)), dict(self.seconds), joined)
        from opmeter.report.outdir import staged_output

        facts = RunFacts(o.command, str(o.model or adapter.spec), preset, device, head, o.compress,
                         o.write_trace_json and o.trace_path is None)
        kept = (o.trace_path, o.profile)  # inputs that live in --out stay in the new report
        with staged_output(out_dir, [Path(p).resolve() for p in kept if p is not None], o.force) as staging, \
                timed(self.seconds, "write"):
            data = ReportData(joined, trace, execution.timing_trace if execution else None, adapter, workload, facts,
                              verification, started, profile)
            files = write_report(staging, data)
        return ReportResult(out_dir=out_dir, files=tuple(files), headline=tuple(headline_lines(joined, head)),
                            seconds=dict(self.seconds), joined=joined)

    def _verification(self, adapter: ModelAdapter, preset: str) -> pd.DataFrame | None:
        """``--verify``: the adapter's per-layer verification of the preset (:mod:`opmeter.verify`)."""
        if not self.opts.verify:
            return None
        cases_of = verifiable(adapter, "verification cases (--verify)")
        from opmeter.verify import verify

        with timed(self.seconds, "verify"), cases_of.verify_context():
            return verify(cases_of.verify_cases(preset))
