"""Live state of a tracer: module stack (as call-path context ids), current stage, streaming accumulators.

The hot path (:mod:`opmeter.trace.dispatch`) only reads ``recorder.cell`` (the op table of the current
(stage group, call path)) and ``recorder.stage_tot`` (totals of the current stage); module hooks and stage marks
switch those two references. Everything else is derived when the trace is queried.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from typing import Any, Final

import torch

from opmeter.trace import stages as st
from opmeter.trace.backward import BackwardAttribution
from opmeter.trace.modules import ROOT_INDEX, ModuleRecord
from opmeter.trace.trace import SPAN_CAP, StageRecord, Trace

_perf = time.perf_counter
LARGE_CALL_BYTES: Final = 1 << 20
"""An op call moving at least this many bytes is also added to its cell's size histogram (``Trace.large_calls``):
a cell mixing a few large calls with many small ones is then not costed at its mean size. Rare, so off the hot
path's common branch."""


def _no_sync() -> None:
    return None


class Recorder:
    """Streaming accumulators of one tracer activation (see module docstring)."""

    def __init__(self, trace: Trace, records: list[ModuleRecord], index: dict[int, int], root: torch.nn.Module,
                 *, timing: bool, sync: Any, nvtx_stages: bool, nvtx_modules: bool) -> None:
        self.trace = trace
        self.records = records
        self.index = index
        self.root = root
        self.root_alias: Any = None
        """A ``torch.compile`` wrapper of the root, once it was called (its calls are the root's)."""
        self.timing = timing
        self.sync = sync or _no_sync
        self.nvtx_stages = nvtx_stages
        self.nvtx_modules = nvtx_modules
        self.contexts: list[tuple[int, int]] = trace.contexts
        self.children: list[dict[int, int]] = [{}]
        self.first_call: list[int] = [-1] * len(records)
        self.call_counter = 0
        # module stack: context ids and module objects (None at the bottom); when timing, the start of the time not
        # yet charged (moved on at each stage switch) and the start of the call (for its span).
        # A module outside the tree pushes its parent's context again, so "known" == (ctx != the one below).
        self.stack: list[int] = [0]
        self.objs: list[Any] = [None]
        self.starts: list[float] = [0.0]
        self.began: list[float] = [0.0]
        # per stage group, lists indexed by context: op cells {op id: [calls, ft, fc, br, bw, t]}, [calls, time]
        self.cells_by_gid: list[list[dict[int, list[Any]] | None]] = []
        self.stats_by_gid: list[list[list[Any] | None]] = []
        self.gcells: list[dict[int, list[Any]] | None] = []
        self.gstats: list[list[Any] | None] = []
        self.groups: list[str] = trace.groups
        self.group_ids: dict[str, int] = {}
        self.stages: list[StageRecord] = trace.stage_records
        self.stage_counts: dict[str, int] = {}
        self.glue: dict[str, int] = {}
        self.explicit: list[tuple[int, int]] = []  # (stage index entered, stage index to restore)
        self.root_active = 0
        self.closed = False
        self.thread = threading.get_ident()
        self.auto_open = False
        self.prefill_seen = False
        self.n_decode = 0
        self.n_forward = 0
        self.t0 = _perf()
        self.last_switch = self.t0
        self.spans = trace.spans_raw
        self.gid = 0
        self.stage_idx = -1
        self.cell: dict[int, list[Any]] = {}
        self.stage_tot: list[Any] = [0, 0, 0.0, 0, 0, 0.0]
        self.backward = BackwardAttribution(self)
        self.large: dict[tuple[int, int, int, int], list[Any]] = {}
        """(stage group, context, op key, half-octave of bytes per call) -> [calls, ft, fc, br, bw]."""
        self._switch(self._new_stage(st.SETUP, st.SETUP, st.GLUE))
        self.glue[st.SETUP] = self.stage_idx

    # ------------------------------------------------------------------------------------------- stages

    def _group(self, name: str) -> int:
        gid = self.group_ids.get(name)
        if gid is None:
            gid = self.group_ids[name] = len(self.groups)
            self.groups.append(name)
            self.cells_by_gid.append([])
            self.stats_by_gid.append([])
        return gid

    def _new_stage(self, name: str, group: str, kind: str, tokens: int | None = None,
                   batch: int | None = None) -> int:
        self._group(group)
        rec = StageRecord(name=name, group=group, index=len(self.stages), kind=kind, tokens=tokens, batch=batch)
        self.stages.append(rec)
        return rec.index

    def _cell(self, ctx: int) -> dict[int, list[Any]]:
        """The op table of ``ctx`` in the current stage group."""
        gcells = self.gcells
        if ctx >= len(gcells):
            gcells.extend([None] * (ctx + 1 - len(gcells)))
        cell = gcells[ctx]
        if cell is None:
            cell = gcells[ctx] = {}
        return cell

    @staticmethod
    def _stat(gstats: list[list[Any] | None], ctx: int) -> list[Any]:
        if ctx >= len(gstats):
            gstats.extend([None] * (ctx + 1 - len(gstats)))
        st_ = gstats[ctx]
        if st_ is None:
            st_ = gstats[ctx] = [0, 0.0]
        return st_

    def _charge(self, now: float) -> None:
        """Charge the time since the last stage switch to the current stage and to the open module calls."""
        self.stages[self.stage_idx].time_s += now - self.last_switch
        if len(self.trace.stage_spans_raw) < SPAN_CAP:
            self.trace.stage_spans_raw.append((self.stage_idx, self.last_switch - self.t0, now - self.t0))
        stack, starts = self.stack, self.starts
        for i in range(1, len(stack)):
            if stack[i] != stack[i - 1]:  # a module of the tree (one outside it repeats the context below)
                self._stat(self.gstats, stack[i])[1] += now - starts[i]
                starts[i] = now

    def _switch(self, stage_idx: int) -> None:
        """Make ``stage_idx`` current: charge elapsed time to the outgoing stage and to the open module calls."""
        if self.timing:
            self.sync()
            now = _perf()
            if self.stage_idx >= 0:
                self._charge(now)
            self.last_switch = now
        rec = self.stages[stage_idx]
        rec.calls += 1
        self.stage_idx = stage_idx
        self.gid = self.group_ids[rec.group]
        self.gcells = self.cells_by_gid[self.gid]
        self.gstats = self.stats_by_gid[self.gid]
        self.stage_tot = rec.totals
        self.cell = self._cell(self.stack[-1])

    def enter_stage(self, name: str) -> int:
        """Open an explicit stage; returns a token for :meth:`exit_stage`."""
        k = self.stage_counts.get(name, 0)
        self.stage_counts[name] = k + 1
        idx = self._new_stage(name if k == 0 else f"{name}[{k}]", name, st.EXPLICIT)
        self.explicit.append((idx, self.stage_idx))
        self._switch(idx)
        self.stages[idx].calls = 1
        if self.nvtx_stages:
            st.NVTX.push(name)
        return idx

    def exit_stage(self, token: int) -> None:
        """Close the explicit stage opened with ``token`` (and any left open inside it); no-op once finished."""
        if self.closed:
            return
        while self.explicit:
            idx, restore = self.explicit.pop()
            if self.nvtx_stages:
                st.NVTX.pop()
            if idx == token:
                self._switch(restore)
                self.stages[restore].calls -= 1
                return

    # ------------------------------------------------------------------------------------------- module stack

    def _push(self, idx: int, mod: Any) -> None:
        stack = self.stack
        top = stack[-1]
        kids = self.children[top]
        ctx = kids.get(idx)
        if ctx is None:
            ctx = kids[idx] = len(self.contexts)
            self.contexts.append((top, idx))
            self.children.append({})
        gstats = self.gstats
        if ctx < len(gstats) and gstats[ctx] is not None:
            gstats[ctx][0] += 1  # type: ignore[index]
        else:
            self._stat(gstats, ctx)[0] = 1
        if self.first_call[idx] < 0:
            self.first_call[idx] = self.call_counter
            self.call_counter += 1
        stack.append(ctx)
        self.objs.append(mod)
        if self.timing:
            self.sync()
            now = _perf()
            self.starts.append(now)
            self.began.append(now)
        if self.nvtx_modules:
            st.NVTX.push(self.records[idx].path)
        gcells = self.gcells
        cell = gcells[ctx] if ctx < len(gcells) else None
        self.cell = cell if cell is not None else self._cell(ctx)

    def _pop(self, mod: Any) -> None:
        objs = self.objs
        stack = self.stack
        i = len(objs) - 1
        while i > 0 and objs[i] is not mod:
            i -= 1
        if i == 0:
            return
        timing = self.timing
        now = 0.0
        if timing:
            self.sync()
            now = _perf()
        while len(objs) > i:
            ctx = stack.pop()
            objs.pop()
            start = self.starts.pop() if timing else 0.0
            began = self.began.pop() if timing else 0.0
            if ctx == stack[-1]:  # a module outside the tree: nothing of its own
                continue
            if self.nvtx_modules:
                st.NVTX.pop()
            if timing:
                self._stat(self.gstats, ctx)[1] += now - start
                if len(self.spans) < SPAN_CAP:
                    self.spans.append((self.contexts[ctx][1], self.stage_idx, began - self.t0, now - self.t0,
                                       len(stack) - 1))
                else:
                    self.trace.spans_truncated = True
        top = stack[-1]
        gcells = self.gcells
        cell = gcells[top] if top < len(gcells) else None
        self.cell = cell if cell is not None else self._cell(top)

    def enter(self, mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A module call starts (see :mod:`opmeter.trace.callpatch`)."""
        idx = self.index.get(id(mod))
        if idx is None:
            idx = self._compiled_alias(mod)
        if idx is None:
            # not in the tree (created on the fly, another model...): its ops go to the nearest known ancestor
            self.stack.append(self.stack[-1])
            self.objs.append(mod)
            if self.timing:
                self.starts.append(0.0)
                self.began.append(0.0)
        elif idx == ROOT_INDEX:
            self.root_pre_hook(mod, args, kwargs)
        else:
            self._push(idx, mod)

    def after_call(self, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """A module call returned with grad enabled: hooks attributing its backward (:mod:`opmeter.trace.backward`)."""
        if not self.closed:
            self.backward.after_call(args, kwargs, out)

    def exit(self, mod: Any) -> None:
        """A module call ends (normally or by an exception)."""
        if self.closed:
            return
        if mod is self.root or mod is self.root_alias:
            self.root_post_hook(mod, None, None)
        else:
            self._pop(mod)

    def _compiled_alias(self, mod: Any) -> int | None:
        """The index of the traced module a ``torch.compile`` wrapper (not in the tree) compiled, if any; the
        wrapper's calls count as that module's from now on (:mod:`opmeter.trace.compiled`)."""
        from opmeter.trace.compiled import is_compiled_wrapper, original

        if not is_compiled_wrapper(mod):
            return None
        idx = self.index.get(id(original(mod)))
        if idx is not None:
            self.index[id(mod)] = idx
            if idx == ROOT_INDEX:
                self.root_alias = mod
        return idx

    def root_pre_hook(self, mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """The root's call starts: a root-level call opens an automatic stage, then push the root."""
        if self.root_active == 0 and not self.explicit:
            seq = st.sequence_length(args, kwargs or {})
            tokens, batch = (seq if seq is not None else (None, None))
            if tokens is not None and not self.prefill_seen and self.n_decode == 0:  # the first call with tokens
                self.prefill_seen = True
                name, group = st.PREFILL, st.PREFILL
            elif tokens == 1:
                name, group = f"{st.DECODE}[{self.n_decode}]", st.DECODE
                self.n_decode += 1
            else:
                name, group = f"forward[{self.n_forward}]", st.OTHER
                self.n_forward += 1
            self._switch(self._new_stage(name, group, st.AUTO, tokens, batch))
            self.auto_open = True
            if self.nvtx_stages:
                st.NVTX.push(name)
        self.root_active += 1
        self._push(ROOT_INDEX, mod)

    def root_post_hook(self, mod: Any, args: Any, out: Any) -> None:
        """The root's call ends: pop the root; a root-level call ends its stage and opens the glue stage."""
        if self.root_active <= 0:
            return
        self._pop(mod)
        self.root_active -= 1
        if self.root_active == 0 and self.auto_open:
            self.auto_open = False
            if self.nvtx_stages:
                st.NVTX.pop()
            group = self.stages[self.stage_idx].group
            gname = st.glue_group(group)
            idx = self.glue.get(gname)
            if idx is None:
                idx = self.glue[gname] = self._new_stage(gname, gname, st.GLUE)
            self._switch(idx)

    def note_large(self, key: int, ft: Any, fc: Any, br: Any, bw: Any) -> None:
        """Add one call of at least :data:`LARGE_CALL_BYTES` to the size histogram of the current cell."""
        where = (self.gid, self.stack[-1], key, int(2 * math.log2(br + bw)))
        acc = self.large.get(where)
        if acc is None:
            acc = self.large[where] = [0, 0, 0.0, 0, 0]
        acc[0] += 1
        acc[1] += ft
        acc[2] += fc
        acc[3] += br
        acc[4] += bw

    # ------------------------------------------------------------------------------------------- finish

    def finish(self, names: dict[int, str]) -> None:
        """Close the clock, unwind what is still open, convert op keys to names into the :class:`Trace`."""
        self.closed = True
        if self.timing:
            self.sync()
            now = _perf()
            self._charge(now)
            self.trace.wall_time_s = now - self.t0
        else:
            for rec in self.stages:
                rec.time_s = float("nan")
        while self.explicit and self.nvtx_stages:
            self.explicit.pop()
            st.NVTX.pop()
        if self.auto_open and self.nvtx_stages:
            st.NVTX.pop()
        cells: dict[tuple[int, int], dict[str, list[Any]]] = {}
        for gid, gcells in enumerate(self.cells_by_gid):
            for ctx, ops in enumerate(gcells):
                if ops:
                    cells[(gid, ctx)] = {names.get(k, str(k)): vals for k, vals in ops.items()}
        self.trace.cells = cells
        large: dict[tuple[int, int], dict[str, list[list[Any]]]] = {}
        for (gid, ctx, key, _bucket), vals in sorted(self.large.items()):
            large.setdefault((gid, ctx), {}).setdefault(names.get(key, str(key)), []).append(vals)
        self.trace.large_calls = large
        self.trace.ctx_stats = {(gid, ctx): s for gid, gstats in enumerate(self.stats_by_gid)
                                for ctx, s in enumerate(gstats) if s is not None}
        self.trace.first_call = self.first_call
        self._note_uncounted(cells)

    def _note_uncounted(self, cells: dict[tuple[int, int], dict[str, list[Any]]]) -> None:
        """Record the compute ops that ran without a FLOP formula and warn, naming each with its call count."""
        from opmeter.trace.formulas import is_uncounted

        calls: dict[str, int] = {}
        for ops in cells.values():
            for name, vals in ops.items():
                calls[name] = calls.get(name, 0) + vals[0]
        uncounted = sorted((n for n in calls if is_uncounted(n)), key=lambda n: (-calls[n], n))
        self.trace.uncounted_ops = uncounted
        if uncounted:
            listed = ", ".join(f"{n} ({calls[n]} calls)" for n in uncounted)
            warnings.warn(f"opmeter: {len(uncounted)} compute op(s) have no FLOP formula, so their FLOPs are "
                          f"unknown and left out of the totals (reported as uncounted, not zero): {listed}; "
                          "add one with opmeter.trace.formulas.register_formula", UncountedOpWarning, stacklevel=5)


class UncountedOpWarning(UserWarning):
    """A compute op (gemm, attention, convolution) ran without a FLOP formula: its FLOPs are unknown."""
