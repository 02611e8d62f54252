"""The public :class:`OpTracer` context manager.

``with OpTracer(model) as trace:`` installs, for the duration of the block, a ``TorchDispatchMode`` (every aten op)
and a wrapper around ``nn.Module.__call__`` (the module stack, see :mod:`opmeter.trace.callpatch`); whatever
Python code runs inside is traced. On exit, also on an
exception or Ctrl-C, every global it installed is removed, what was recorded is kept, and the trace is marked
incomplete with the error text when the block raised.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack, _pop_mode, _push_mode

from opmeter.errors import OpmeterError
from opmeter.trace import callpatch
from opmeter.trace import stages as st
from opmeter.trace.compiled import original
from opmeter.trace.dispatch import CountingMode, FullMode
from opmeter.trace.modules import module_table
from opmeter.trace.recorder import Recorder
from opmeter.trace.refusals import flex_eager_off, flex_eager_on, register_higher_order
from opmeter.trace.trace import SCHEMA_VERSION, Trace


def _model_device_dtype(model: torch.nn.Module) -> tuple[str, str]:
    for p in model.parameters():
        return str(p.device), str(p.dtype).removeprefix("torch.")
    for b in model.buffers():
        return str(b.device), str(b.dtype).removeprefix("torch.")
    return "cpu", str(torch.get_default_dtype()).removeprefix("torch.")


class OpTracer:
    """Trace every aten op run inside the block, attributed to the ``nn.Module`` stack of ``model``.

    Parameters
    ----------
    model
        The module whose tree names the modules (``named_modules()`` paths; the root is ``"<root>"``). Any code
        may run inside the block (``model.generate(...)``, plain forward calls, other Python).
    count_ops
        Install the dispatch interceptor (FLOPs, bytes, categories). ``False``: module hooks only (calls, call
        graph, and module/stage time when ``timing``) at very low overhead.
    timing
        Measure wall time per module call (inclusive), per stage and per op. On CUDA the device is synchronised at
        module and stage boundaries so asynchronous kernels land in the right module; per-op time on CUDA needs
        ``sync_ops=True`` (which perturbs the run). On CPU per-op time is ``perf_counter`` around the op call.
    sync_ops
        On CUDA with ``timing``, synchronise around every op for per-op time.
    event_log
        Path of a JSONL file receiving one line per op (streamed to ``<path>.partial``, renamed on exit).
    record_shapes
        Keep the distinct input shapes per (stage group, module, op) (at most 32 each): ``Trace.shapes()``.
    nvtx
        NVTX ranges per stage (``True``), also per module (``"modules"``), or none (``False``); no-ops without
        the ``nvtx`` package or a profiler.
    metadata
        Extra key/values stored in ``trace.metadata`` (a model's ``opmeter_metadata`` dict is merged at exit).

    Examples
    --------
    >>> with OpTracer(model) as trace:          # doctest: +SKIP
    ...     model.generate(input_ids, max_new_tokens=8)
    >>> trace.by_module(stage="decode")          # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, *, count_ops: bool = True, timing: bool = False,
                 sync_ops: bool = False, event_log: str | os.PathLike[str] | None = None,
                 record_shapes: bool = False, nvtx: bool | str = True,
                 metadata: dict[str, Any] | None = None) -> None:
        if not isinstance(model, torch.nn.Module):
            raise OpmeterError(f"OpTracer needs a torch.nn.Module, got {type(model).__name__}")
        if nvtx not in (True, False, "modules"):
            raise OpmeterError(f"nvtx must be True, False or 'modules', not {nvtx!r}")
        if metadata is not None and not isinstance(metadata, dict):
            raise OpmeterError(f"metadata must be a dict, got {type(metadata).__name__}")
        self.model = model
        self.count_ops = bool(count_ops)
        self.timing = bool(timing)
        self.sync_ops = bool(sync_ops)
        self.event_log = Path(event_log) if event_log is not None else None
        self.record_shapes = bool(record_shapes)
        self.nvtx = nvtx
        self.user_metadata = dict(metadata or {})
        self.trace: Trace | None = None
        self._active = False
        self._mode: CountingMode | None = None
        self._installed = False
        self._recorder: Recorder | None = None
        self._log: IO[bytes] | None = None
        self._t_start = 0.0
        self._owner = 0
        """``threading.get_ident()`` of the thread that entered the tracer."""
        self._lost: list[str] = []
        self._flex: Any = None
        """What made the trace lose data in silence (detected at exit): the trace is marked incomplete."""

    # ------------------------------------------------------------------------------------------- enter

    def __enter__(self) -> Trace:
        if self._active:
            raise OpmeterError("this OpTracer is already active: a tracer cannot be entered twice (use a new one)")
        records, index, _ = module_table(self.model)
        trace = Trace(modules=records, count_ops=self.count_ops, timing=self.timing)
        trace.metadata = self._base_metadata()
        on_cuda = torch.cuda.is_available() and any(
            p.device.type == "cuda" for p in self.model.parameters(recurse=True))
        sync: Callable[[], None] | None = torch.cuda.synchronize if (on_cuda and self.timing) else None
        rec = Recorder(trace, records, index, self.model, timing=self.timing, sync=sync,
                       nvtx_stages=bool(self.nvtx), nvtx_modules=self.nvtx == "modules")
        self._recorder = rec
        self.trace = trace
        self._lost = []
        self._owner = threading.get_ident()
        self._active = True
        try:
            if self.event_log is not None:
                if self.event_log.is_dir():
                    raise OpmeterError(f"the event log {self.event_log} is a directory; give a file path")
                try:
                    self.event_log.parent.mkdir(parents=True, exist_ok=True)
                    self._log = open(self._partial_log(), "wb")
                except OSError as exc:
                    raise OpmeterError(f"cannot write the event log {self.event_log}: {exc.strerror or exc}") from exc
            callpatch.install(rec)
            self._installed = True
            if self.count_ops:
                register_higher_order((CountingMode, FullMode))
                self._flex = flex_eager_on()
                if self.timing or self.record_shapes or self._log is not None:
                    mode: CountingMode = FullMode(rec, timing=self.timing,
                                                  sync_ops=sync if self.sync_ops else None,
                                                  record_shapes=self.record_shapes, log=self._log)
                else:
                    mode = CountingMode(rec)
                mode.__enter__()
                self._mode = mode
            trace._stage_ctl = self._stage_ctl
            st.ACTIVE.append(rec)
        except BaseException:
            self._restore()
            self._active = False
            if self._log is not None:
                self._log.close()
                self._log = None
            raise
        self._t_start = time.perf_counter()
        return trace

    def _partial_log(self) -> Path:
        assert self.event_log is not None
        return self.event_log.with_name(self.event_log.name + ".partial")

    def _stage_ctl(self, name: str) -> Any:
        from contextlib import contextmanager

        rec = self._recorder

        @contextmanager
        def ctl() -> Any:
            if rec is None or not self._active:
                raise OpmeterError("trace.stage() is only valid inside the tracer's with-block")
            tok = rec.enter_stage(name)
            try:
                yield
            finally:
                rec.exit_stage(tok)

        return ctl()

    def _base_metadata(self) -> dict[str, Any]:
        device, dtype = _model_device_dtype(self.model)
        cls = type(original(self.model))
        from opmeter.version import __version__

        return {
            "schema_version": SCHEMA_VERSION,
            "model_class": cls.__name__,
            "model_qualified_class": f"{cls.__module__}.{cls.__qualname__}",
            "device": device,
            "dtype": dtype,
            "torch_version": torch.__version__,
            "opmeter_version": __version__,
            "python_version": platform.python_version(),
            "platform": sys.platform,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "options": {"count_ops": self.count_ops, "timing": self.timing, "sync_ops": self.sync_ops,
                        "record_shapes": self.record_shapes, "nvtx": self.nvtx,
                        "event_log": str(self.event_log) if self.event_log else None},
            **self.user_metadata,
        }

    # ------------------------------------------------------------------------------------------- exit

    def _pop_our_mode(self) -> None:
        """Take our dispatch mode off the stack, wherever it is; modes pushed above it go back in place."""
        mode = self._mode
        if mode is None:
            return
        self._mode = None
        if mode not in _get_current_dispatch_mode_stack():
            self._lost.append(
                "the tracer's dispatch mode was taken off the stack before the tracer exited (a mode entered before "
                "the tracer and exited inside it, e.g. FlopCounterMode, pops whatever mode is on top): ops after "
                "that were not counted")
            return
        above: list[Any] = []
        try:
            while _get_current_dispatch_mode_stack()[-1] is not mode:
                above.append(_pop_mode())
            try:
                mode.__exit__(None, None, None)
            finally:
                if _get_current_dispatch_mode_stack()[-1:] == [mode]:  # __exit__ failed before popping it
                    _pop_mode()
        finally:
            for m in reversed(above):
                _push_mode(m)

    def _restore(self) -> None:
        """Remove every global this tracer installed; never raises."""
        errors: list[BaseException] = []
        try:
            self._pop_our_mode()
        except BaseException as exc:  # pragma: no cover - defensive
            errors.append(exc)
        flex_eager_off(self._flex)
        self._flex = None
        if self._installed and self._recorder is not None:
            try:
                lost = callpatch.uninstall(self._recorder)
                if lost:
                    self._lost.append(lost)
            except BaseException as exc:  # pragma: no cover - defensive
                errors.append(exc)
            self._installed = False
        if self._recorder is not None and self._recorder in st.ACTIVE:
            st.ACTIVE.remove(self._recorder)
        if errors:  # pragma: no cover - defensive
            print(f"opmeter: while restoring globals: {errors[0]!r}", file=sys.stderr)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if not self._active:
            return False
        if threading.get_ident() != self._owner:  # its dispatch mode is on the entering thread's stack only
            raise OpmeterError("an OpTracer must be exited on the thread that entered it; it is still tracing there "
                               "(nothing was changed on this thread)")
        mode = self._mode
        try:
            self._restore()
        finally:
            self._active = False
            try:
                self._finish(mode, exc_type, exc)
            except Exception as bug:
                if exc_type is None:
                    raise
                # never mask the traced code's own exception with a bookkeeping failure
                print(f"opmeter: could not finalise the trace: {bug!r}", file=sys.stderr)
        return False

    def _finish(self, mode: CountingMode | None, exc_type: Any, exc: Any) -> None:
        trace, rec = self.trace, self._recorder
        assert trace is not None and rec is not None
        infos = mode.infos if mode is not None else {}
        rec.finish({k: info.name for k, info in infos.items()})
        trace._stage_ctl = None
        if mode is not None:
            for info in infos.values():
                trace.op_info[info.name] = (info.category, info.exact)
            trace.formula_errors = dict(mode.formula_errors)
            trace.op_dtypes = {infos[k].name: sorted(v) for k, v in mode.dtypes.items()}
            if isinstance(mode, FullMode):
                trace.shapes_raw = {(g, c, infos[k].name): d for (g, c, k), d in mode.shapes.items()}
                try:
                    mode.flush()
                except OSError as exc_:  # pragma: no cover
                    trace.metadata["event_log_error"] = str(exc_)
        # make sure every recorded op has an info entry (ops seen but compiled elsewhere)
        for ops in trace.cells.values():
            for name in ops:
                if name not in trace.op_info:
                    trace.op_info[name] = ("unclassified", False)
        extra = getattr(self.model, "opmeter_metadata", None)
        if isinstance(extra, dict):
            trace.metadata.update(extra)
        trace.metadata["wall_time_s"] = time.perf_counter() - self._t_start
        reasons = list(self._lost)
        if exc_type is not None:
            msg = str(exc) if exc is not None else ""
            reasons.insert(0, f"{exc_type.__name__}: {msg}" if msg else exc_type.__name__)
        trace.complete = not reasons
        trace.error = "; ".join(reasons) or None
        if self._log is not None:  # last: the trace above is whole even when the log cannot be renamed
            self._log.close()
            self._log = None
            assert self.event_log is not None
            try:
                os.replace(self._partial_log(), self.event_log)
            except OSError as exc_:
                raise OpmeterError(f"cannot write the event log {self.event_log}: {exc_.strerror or exc_} "
                                   f"(the events are in {self._partial_log()})") from exc_

