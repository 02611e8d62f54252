"""The ``TorchDispatchMode`` that sees every aten op and adds its cost to the current accumulator.

Hot path per op: one dict lookup for the cached :class:`~opmeter.trace.formulas.OpInfo`, the op call, the cost
function, one dict lookup in the current cell and a handful of in-place additions. No per-op objects are kept
(unless an event log is requested, which streams to disk).
"""

from __future__ import annotations

import time
import warnings
from typing import IO, Any

import orjson
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from opmeter.trace.categories import ATTENTION, COMPUTE
from opmeter.trace.formulas import OpInfo, compile_op
from opmeter.trace.recorder import LARGE_CALL_BYTES, Recorder, UncountedOpWarning
from opmeter.trace.refusals import check_subclass_types, refuse_nested_args

_EMPTY: dict[str, Any] = {}
_push = getattr(torch._C, "_push_on_torch_dispatch_stack", None)
_pop = getattr(torch._C, "_pop_torch_dispatch_stack", None)
_perf = time.perf_counter
_SHAPES_PER_KEY = 32


class CountingMode(TorchDispatchMode):
    """Counts every op into ``recorder.cell`` / ``recorder.stage_tot`` (no timing, no log)."""

    supports_higher_order_operators = False  # handlers per op are registered instead (trace.refusals)

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps __torch_dispatch__ in a dynamo-disable shim by default: it imports torch._dynamo on the
        # first op (~2 s) and adds a few microseconds per op. Eager op counting does not need it.
        return False

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.rec = recorder
        self.fast: dict[int, tuple[Any, Any, int, OpInfo]] = {}
        self.dtypes: dict[int, set[str]] = {}
        self.formula_errors: dict[str, str] = {}

    def learn(self, func: Any) -> tuple[Any, Any, int, OpInfo]:
        """Cache, per overload: the C++ callable (``OpOverload.__call__`` is a Python frame that only forwards to
        it), the cost function, a flag (0 count, 1 view: count with no cost, 2 decompose) and the :class:`OpInfo`."""
        info = compile_op(func)
        flag = 2 if info.decompose else (1 if info.is_view else 0)
        entry = (getattr(func, "_op", func), info.cost, flag, info)
        self.fast[id(func)] = entry
        return entry

    @property
    def infos(self) -> dict[int, OpInfo]:
        """The :class:`OpInfo` of every overload seen, by ``id(op)``."""
        return {k: entry[3] for k, entry in self.fast.items()}

    def count_whole(self, func: Any, info: OpInfo, args: Any, kwargs: Any, out: Any) -> None:
        """Count one call of an op run beneath the mode (a higher-order op with a formula) as a single op."""
        key = id(func)
        if key not in self.fast:
            self.fast[key] = (func, info.cost, 0, info)
        ft, fc, br, bw = self._cost(info, args, kwargs, out)
        rec = self.rec
        acc = rec.cell.get(key)
        if acc is None:
            acc = rec.cell[key] = [0, 0, 0.0, 0, 0, 0.0]
            self._seen_dtype(key, out)
        for i, v in enumerate((1, ft, fc, br, bw)):
            acc[i] += v
            rec.stage_tot[i] += v

    def _seen_dtype(self, key: int, out: Any) -> None:
        """Output dtype of an op, noted the first time it runs in each (stage group, call path): off the hot path."""
        dt = _dtype_of(out)
        if dt is not None:
            self.dtypes.setdefault(key, set()).add(dt)

    def _decompose(self, func: Any, args: Any, kwargs: Any) -> Any:
        """Run a CompositeImplicitAutograd op's decomposition with this mode re-pushed, so its parts are counted.

        (Under ``inference_mode`` composite ops such as ``aten.linear`` reach dispatch modes.) Pushing the mode on
        the C++ stack directly costs a fraction of ``with self:``. Composite *attention* (SDPA and its math
        fallback) goes through :meth:`_decompose_attention`.
        """
        if self.fast[id(func)][3].category == ATTENTION:
            return self._decompose_attention(func, args, kwargs)
        return self._run_decomposition(func, args, kwargs)

    def _run_decomposition(self, func: Any, args: Any, kwargs: Any) -> Any:
        if _push is None or _pop is None:  # pragma: no cover - older torch
            with self:
                return func.decompose(*args, **(kwargs or _EMPTY))
        _push(self)
        try:
            return func.decompose(*args, **(kwargs or _EMPTY))
        finally:
            _pop(None)

    def _decompose_attention(self, func: Any, args: Any, kwargs: Any) -> Any:
        """Decompose a composite attention op, keeping its work in the ``attention`` category.

        Where no fused kernel applies, SDPA falls back to its math decomposition (``bmm``, ``_safe_softmax``,
        ``mul``...). Those parts are then added up into one row of the attention op itself (its FLOPs and bytes are
        the parts', following the installed torch's decomposition); when a fused attention kernel ran among the
        parts, they are kept as they are. Only composite ops that reach the mode are seen this way: under
        ``no_grad`` (not ``inference_mode``) torch decomposes SDPA before any dispatch mode sees it.
        """
        rec = self.rec
        outer = rec.cell
        parts: dict[int, list[Any]] = {}
        rec.cell = parts
        try:
            out = self._run_decomposition(func, args, kwargs)
        finally:
            if rec.cell is parts:  # (unless a module hook inside the decomposition moved on to its own cell)
                rec.cell = outer
        fused = any(self.fast[k][3].category == ATTENTION for k in parts)
        if fused or out is NotImplemented or rec.cell is not outer:
            for k, vals in parts.items():
                acc = outer.setdefault(k, [0, 0, 0.0, 0, 0, 0.0])
                for i in range(6):
                    acc[i] += vals[i]
            return out
        key = id(func)
        if key not in outer:
            outer[key] = [0, 0, 0.0, 0, 0, 0.0]
            self._seen_dtype(key, out)
        row = outer[key]
        row[0] += 1
        for vals in parts.values():
            for i in range(1, 6):
                row[i] += vals[i]
        rec.stage_tot[0] -= sum(vals[0] for vals in parts.values()) - 1  # the parts ran as one op
        return out

    def _cost(self, info: OpInfo, args: Any, kwargs: Any, out: Any) -> tuple[int, float, int, int]:
        """The op's cost; a failing formula counts zero and is reported once per op in ``formula_errors``."""
        try:
            return info.cost(args, kwargs, out)
        except Exception as exc:  # a formula must never break the model (a nested tensor is refused instead)
            refuse_nested_args(args, info.name)
            if info.name not in self.formula_errors and info.category in COMPUTE:
                warnings.warn(f"opmeter: the FLOP formula of {info.name} failed ({type(exc).__name__}: {exc}); its "
                              "FLOPs are unknown and it is reported as uncounted", UncountedOpWarning, stacklevel=2)
            self.formula_errors.setdefault(info.name, f"{type(exc).__name__}: {exc}")
            return 0, 0.0, 0, 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if types:  # tensor subclasses only (plain tensors give an empty tuple)
            check_subclass_types(types, func)
        key = id(func)  # OpOverload.__hash__ is a Python function; id() is not
        entry = self.fast.get(key)
        if entry is None:
            entry = self.learn(func)
        op, cost, flag, info = entry
        if flag == 2:
            r = self._decompose(func, args, kwargs)
            if r is not NotImplemented:
                return r
        if kwargs:
            out = op(*args, **kwargs)
        else:
            out = op(*args)
            kwargs = _EMPTY
        rec = self.rec
        cell = rec.cell
        acc = cell.get(key)
        if acc is None:
            acc = cell[key] = [0, 0, 0.0, 0, 0, 0.0]
            self._seen_dtype(key, out)
        if flag == 1:
            acc[0] += 1
            rec.stage_tot[0] += 1
            return out
        try:
            ft, fc, br, bw = cost(args, kwargs, out)
        except Exception:
            ft, fc, br, bw = self._cost(info, args, kwargs, out)
        acc[0] += 1
        acc[1] += ft
        acc[2] += fc
        acc[3] += br
        acc[4] += bw
        s = rec.stage_tot
        s[0] += 1
        s[1] += ft
        s[2] += fc
        s[3] += br
        s[4] += bw
        if br + bw >= LARGE_CALL_BYTES:
            rec.note_large(key, ft, fc, br, bw)
        return out


class FullMode(CountingMode):
    """Counting plus optional per-op timing, input shapes and a streamed JSONL event log."""

    def __init__(self, recorder: Recorder, *, timing: bool, sync_ops: Any, record_shapes: bool,
                 log: IO[bytes] | None) -> None:
        super().__init__(recorder)
        self.timing = timing
        self.sync_ops = sync_ops
        self.record_shapes = record_shapes
        self.log = log
        self.buffer: list[bytes] = []
        self.seq = 0
        self.shapes: dict[tuple[int, int, int], dict[str, int]] = {}

    def flush(self) -> None:
        """Write the buffered event-log lines."""
        if self.log is not None and self.buffer:
            self.log.write(b"".join(self.buffer))
            self.buffer.clear()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if types:
            check_subclass_types(types, func)
        key = id(func)
        entry = self.fast.get(key)
        if entry is None:
            entry = self.learn(func)
        info = entry[3]
        if info.decompose:
            r = self._decompose(func, args, kwargs)
            if r is not NotImplemented:
                return r
        kwargs = kwargs or _EMPTY
        if self.timing:
            if self.sync_ops is not None:
                self.sync_ops()
            t = _perf()
            out = func(*args, **kwargs)
            if self.sync_ops is not None:
                self.sync_ops()
            dt = _perf() - t
        else:
            out = func(*args, **kwargs)
            dt = 0.0
        rec = self.rec
        if info.is_view:
            ft, fc, br, bw = 0, 0.0, 0, 0
        else:
            ft, fc, br, bw = self._cost(info, args, kwargs, out)
        acc = rec.cell.get(key)
        if acc is None:
            acc = rec.cell[key] = [0, 0, 0.0, 0, 0, 0.0]
            self._seen_dtype(key, out)
        acc[0] += 1
        acc[1] += ft
        acc[2] += fc
        acc[3] += br
        acc[4] += bw
        acc[5] += dt
        s = rec.stage_tot
        s[0] += 1
        s[1] += ft
        s[2] += fc
        s[3] += br
        s[4] += bw
        s[5] += dt
        if br + bw >= LARGE_CALL_BYTES:
            rec.note_large(key, ft, fc, br, bw)
        if self.record_shapes or self.log is not None:
            sig = _shape_sig(args)
            if self.record_shapes:
                skey = (rec.gid, rec.stack[-1], key)
                d = self.shapes.get(skey)
                if d is None:
                    d = self.shapes[skey] = {}
                if sig in d or len(d) < _SHAPES_PER_KEY:
                    d[sig] = d.get(sig, 0) + 1
            if self.log is not None:
                ctx = rec.stack[-1]
                event = {
                    "i": self.seq, "op": info.name, "category": info.category,
                    "module": rec.records[rec.contexts[ctx][1]].path, "stage": rec.stages[rec.stage_idx].name,
                    "flops_tensor": ft, "flops_cuda": fc, "bytes_read": br, "bytes_written": bw,
                    "dtype": _dtype_of(out), "input_shapes": sig,
                }
                if self.timing:
                    event["time_s"] = dt
                self.buffer.append(orjson.dumps(event) + b"\n")
                if len(self.buffer) >= 4096:
                    self.flush()
        self.seq += 1
        return out


def _shape_sig(args: Any) -> str:
    parts = []
    for a in args:
        if isinstance(a, torch.Tensor):
            parts.append(str(list(a.shape)))
        elif isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
            parts.append("[" + ",".join(str(list(x.shape)) for x in a if isinstance(x, torch.Tensor)) + "]")
    return ";".join(parts)


def _dtype_of(out: Any) -> str | None:
    if isinstance(out, torch.Tensor):
        return str(out.dtype).removeprefix("torch.")
    if isinstance(out, (list, tuple)):
        for y in out:
            if isinstance(y, torch.Tensor):
                return str(y.dtype).removeprefix("torch.")
    return None
