"""Step 2 of a report, trace: the counts trace of one inference, with the adapter's request stage marked."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from opmeter.errors import OpmeterError
from opmeter.models.base import PreparedRun, StageSpec, Workload, marked_stages
from opmeter.report.progress import Progress, timed
from opmeter.trace import Trace

log = logging.getLogger(__name__)


def trace_run(run: PreparedRun, spec: StageSpec, metadata: dict[str, Any], progress: Progress,
              seconds: dict[str, float], out_dir: Path, device: str) -> Trace:
    """Trace ``run.infer()`` with ``OpTracer(count_ops=True)`` under ``inference_mode``.

    A failure or an interruption saves what was recorded beside ``out_dir`` and says where; an incomplete trace (the
    tracer lost ops) is an error too, never a report.
    """
    from opmeter.trace import OpTracer

    label = "tracing (shape-only)" if device == "meta" else "tracing (counts)"
    tracer = OpTracer(run.model, count_ops=True, timing=False, metadata=metadata)
    marks = marked_stages(run.model, spec) if spec.mark else contextlib.nullcontext()
    try:
        with timed(seconds, "trace"), progress.forwards(label, run.model, run.workload.max_new_tokens), tracer as \
                trace, marks, torch.inference_mode():
            run.infer()
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


def save_partial_trace(trace: Trace | None, out_dir: Path) -> str:
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


def traced_decode_length(trace: Trace, workload: Workload) -> Workload:
    """The workload with the number of new tokens the trace actually generated (prefill + decode steps), so the
    prediction covers the same work as the trace."""
    stages = trace.stages()
    if stages.empty or "group" not in stages:
        return workload
    traced = int((stages["group"] == "prefill").sum() + (stages["group"] == "decode").sum())
    if traced and traced != workload.max_new_tokens:
        log.warning("the run generated %d tokens where the workload asks for %d; predicting the traced %d",
                    traced, workload.max_new_tokens, traced)
        workload = workload.with_new_tokens(traced)
    return workload


def load_saved_trace(path: Path) -> Trace:
    """A complete trace from ``--trace FILE`` (plain or gzipped), or one clear error."""
    from opmeter.trace import load_trace

    if not path.is_file():
        raise OpmeterError(f"trace file {path} not found")
    try:
        trace = load_trace(path)
    except OpmeterError:
        raise
    except Exception as exc:
        raise OpmeterError(f"{path} is not an opmeter trace JSON ({type(exc).__name__}: {exc})") from None
    if not trace.complete:
        raise OpmeterError(f"{path} is an incomplete trace ({trace.error}); a report from it would undercount: "
                           "trace the run again")
    return trace


MAX_NEW_TOKENS = 1 << 20
"""No model opmeter knows generates more new tokens in one request (a bound for values read from a trace)."""


def saved_decode_tokens(trace: Trace, asked: int | None = None) -> int | None:
    """New tokens of a saved trace: one from the prefill plus one per decode step it traced, else its metadata.

    Raises
    ------
    OpmeterError
        When ``asked`` (``--decode-tokens``) differs from what the trace generated, or the metadata's value is not a
        whole number of tokens.
    """
    from opmeter.checks import optional_whole_number

    names = trace.stages()["stage"].astype(str) if not trace.stages().empty else None
    if names is not None and (names == "prefill").any():
        traced = int(names.str.startswith("decode[").sum()) + 1
        if asked is not None and asked != traced:
            raise OpmeterError(f"--decode-tokens {asked} with --trace: the trace generated {traced} tokens and a "
                               f"report covers what was traced (drop --decode-tokens, or trace {asked} tokens)")
        return traced
    saved = optional_whole_number((trace.metadata or {}).get("decode_tokens"), "the trace's metadata decode_tokens",
                                  0, MAX_NEW_TOKENS)
    return asked or saved or None



