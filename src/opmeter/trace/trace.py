"""The :class:`Trace`: streaming aggregates of one traced run, with plain queries returning DataFrames.

Raw data is kept in a compact form (what the tracer accumulates while the model runs):

* *contexts*: every distinct module call path seen, as a tree ``(parent context, module index)``; context 0 is
  the empty stack (outside every module);
* *cells*: ``(stage group, context) -> op name -> [calls, flops_tensor, flops_cuda, bytes_read, bytes_written,
  op_time_s]``;
* *context stats*: ``(stage group, context) -> [calls, time_s]`` (time = wall time inside the module call);
* per individual stage totals.

Inclusive numbers (an op counts in the module that ran it and in every module on its call stack, once) and
everything else are derived at query time, so the hot path stays cheap and memory stays bounded by the number of
distinct (call path, op) pairs, not the number of ops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import pandas as pd

from opmeter.errors import OpmeterError
from opmeter.io import atomic_write_bytes, json_bytes, read_json
from opmeter.trace import categories as cat
from opmeter.trace.modules import OUTSIDE, OUTSIDE_INDEX, ROOT, ModuleRecord
from opmeter.trace.schema import check_raw

SCHEMA_VERSION: Final = "opmeter.trace/1"
SPAN_CAP: Final = 200_000
"""At most this many module spans are kept when timing (``Trace.spans_truncated`` says whether more happened)."""

NUMERIC: Final = ("ops", "flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "time_s")
_N = 6  # cell list length: calls, ft, fc, br, bw, op_time

NAN = math.nan
_STANDARD_GROUPS: Final = frozenset({"prefill", "decode", "other", "setup", "prefill.glue", "decode.glue",
                                     "other.glue"})
_OP_COLS: Final = ("op", "category", "calls", "flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "time_s",
                   "exact")


@attrs.define
class StageRecord:
    """One individual stage (``prefill``, ``decode[3]``, ``vision``, ``decode.glue``...)."""

    name: str
    group: str
    index: int
    """Position among the stages of the trace, in start order."""
    kind: str
    """``auto`` (root-level forward call), ``explicit`` (``trace.stage(...)``) or ``glue``."""
    tokens: int | None = None
    """Sequence length of the root call's input (auto stages)."""
    batch: int | None = None
    totals: list[float] = attrs.Factory(lambda: [0, 0, 0.0, 0, 0, 0.0])
    """``[ops, flops_tensor, flops_cuda, bytes_read, bytes_written, op_time_s]``."""
    time_s: float = 0.0
    """Wall time spent in the stage (NaN when not timed)."""
    calls: int = 0
    """Root calls (auto) or entries (explicit, glue)."""


@attrs.define(eq=False)
class Trace:
    """Aggregates of one traced run; the object ``with OpTracer(model) as trace:`` binds.

    Query methods return :class:`pandas.DataFrame`; ``stage=`` filters by stage *group* (``"prefill"``,
    ``"decode"``, an explicit stage name, ``"other"``, ``"setup"``, ``"decode.glue"``...) or a list of groups.
    """

    modules: list[ModuleRecord] = attrs.Factory(list)
    first_call: list[int] = attrs.Factory(list)
    contexts: list[tuple[int, int]] = attrs.Factory(lambda: [(-1, OUTSIDE_INDEX)])
    groups: list[str] = attrs.Factory(list)
    cells: dict[tuple[int, int], dict[str, list[Any]]] = attrs.Factory(dict)
    ctx_stats: dict[tuple[int, int], list[Any]] = attrs.Factory(dict)
    stage_records: list[StageRecord] = attrs.Factory(list)
    op_info: dict[str, tuple[str, bool]] = attrs.Factory(dict)
    spans_raw: list[tuple[int, int, float, float, int]] = attrs.Factory(list)
    stage_spans_raw: list[tuple[int, float, float]] = attrs.Factory(list)
    spans_truncated: bool = False
    metadata: dict[str, Any] = attrs.Factory(dict)
    complete: bool = False
    error: str | None = None
    wall_time_s: float = NAN
    count_ops: bool = True
    timing: bool = False
    shapes_raw: dict[tuple[int, int, str], dict[str, int]] = attrs.Factory(dict)
    formula_errors: dict[str, str] = attrs.Factory(dict)
    op_dtypes: dict[str, list[str]] = attrs.Factory(dict)
    uncounted_ops: list[str] = attrs.Factory(list)
    """Compute ops (gemm, attention, convolution) with no FLOP formula: FLOPs unknown, not zero (:meth:`uncounted`)."""
    large_calls: dict[tuple[int, int], dict[str, list[list[Any]]]] = attrs.Factory(dict)
    """Per cell and op, the calls that moved at least 1 MiB each, by half-octave of bytes per call: ``[calls,
    flops_tensor, flops_cuda, bytes_read, bytes_written]`` (the time model costs them at their own size)."""
    schema_version: str = SCHEMA_VERSION
    _stage_ctl: Any = attrs.field(default=None, repr=False)

    # ------------------------------------------------------------------------------------------- stages (live)

    def stage(self, name: str) -> Any:
        """Context manager marking an explicit stage while the tracer is active (``with trace.stage("vision"):``)."""
        if self._stage_ctl is None:
            raise OpmeterError("trace.stage() marks stages while the tracer is active; this trace is closed")
        return self._stage_ctl(name)

    # ------------------------------------------------------------------------------------------- helpers

    def _group_ids(self, stage: str | Sequence[str] | None) -> set[int] | None:
        if stage is None:
            return None
        wanted = [stage] if isinstance(stage, str) else list(stage)
        ids = set()
        for w in wanted:
            if w in self.groups:
                ids.add(self.groups.index(w))
            elif w in _STANDARD_GROUPS:
                continue  # a standard group this run did not have (no decode step...): selects nothing
            else:
                known = ", ".join(self.groups) or "none"
                raise OpmeterError(f"unknown stage group {w!r}; this trace has: {known}")
        return ids

    def _paths(self) -> list[tuple[int, ...]]:
        """Per context: the distinct modules on its call stack (outermost first, outside excluded)."""
        paths: list[tuple[int, ...]] = []
        for parent, mod in self.contexts:
            base = paths[parent] if parent >= 0 else ()
            if mod == OUTSIDE_INDEX or mod in base:
                paths.append(base)
            else:
                paths.append((*base, mod))
        return paths

    def _merged(self, gids: set[int] | None) -> dict[int, dict[str, list[Any]]]:
        """``context -> op -> summed cell`` over the selected groups."""
        out: dict[int, dict[str, list[Any]]] = {}
        for (gid, ctx), ops in self.cells.items():
            if gids is not None and gid not in gids:
                continue
            dest = out.setdefault(ctx, {})
            for op, vals in ops.items():
                acc = dest.get(op)
                if acc is None:
                    dest[op] = list(vals)
                else:
                    self._add(acc, vals)
        return out

    def _ctx_calls_time(self, gids: set[int] | None) -> tuple[dict[int, int], dict[int, float]]:
        calls: dict[int, int] = {}
        times: dict[int, float] = {}
        for (gid, ctx), (c, t) in self.ctx_stats.items():
            if gids is not None and gid not in gids:
                continue
            calls[ctx] = calls.get(ctx, 0) + c
            times[ctx] = times.get(ctx, 0.0) + t
        return calls, times

    def _stage_time(self, gids: set[int] | None) -> float:
        if not self.timing:
            return NAN
        return sum(s.time_s for s in self.stage_records if gids is None or self.groups.index(s.group) in gids)

    @staticmethod
    def _add(acc: list[Any], vals: Sequence[Any]) -> None:
        for i in range(_N):
            acc[i] += vals[i]

    def _module_arrays(self, stage: str | Sequence[str] | None) -> dict[str, Any]:
        gids = self._group_ids(stage)
        paths = self._paths()
        merged = self._merged(gids)
        n = len(self.modules)
        incl = [[0, 0, 0.0, 0, 0, 0.0] for _ in range(n)]
        self_ = [[0, 0, 0.0, 0, 0, 0.0] for _ in range(n)]
        for ctx, ops in merged.items():
            tot = [0, 0, 0.0, 0, 0, 0.0]
            for vals in ops.values():
                self._add(tot, vals)
            mod = self.contexts[ctx][1]
            self._add(self_[mod], tot)
            if mod == OUTSIDE_INDEX:
                self._add(incl[mod], tot)
            for m in paths[ctx]:
                self._add(incl[m], tot)
        calls_by_ctx, time_by_ctx = self._ctx_calls_time(gids)
        calls = [0] * n
        t_incl = [0.0] * n
        t_self = [0.0] * n
        child_time: dict[int, float] = {}
        for ctx, t in time_by_ctx.items():
            parent = self.contexts[ctx][0]
            child_time[parent] = child_time.get(parent, 0.0) + t
        callers: list[set[int]] = [set() for _ in range(n)]
        callees: list[set[int]] = [set() for _ in range(n)]
        for ctx, c in calls_by_ctx.items():
            parent, mod = self.contexts[ctx]
            calls[mod] += c
            if c and parent >= 0:
                pm = self.contexts[parent][1]
                callers[mod].add(pm)
                callees[pm].add(mod)
        for ctx, t in time_by_ctx.items():
            parent, mod = self.contexts[ctx]
            if mod not in paths[parent]:
                t_incl[mod] += t
            t_self[mod] += t - child_time.get(ctx, 0.0)
        if self.timing:
            outside = self._stage_time(gids) - child_time.get(0, 0.0)
            t_incl[OUTSIDE_INDEX] = t_self[OUTSIDE_INDEX] = max(outside, 0.0)
        return {"merged": merged, "paths": paths, "incl": incl, "self": self_, "calls": calls, "t_incl": t_incl,
                "t_self": t_self, "gids": gids, "fan_in": [len(x) for x in callers],
                "fan_out": [len(x) for x in callees]}

    def _row_order(self) -> list[int]:
        called = sorted((fc, i) for i, fc in enumerate(self.first_call) if fc >= 0 and i != OUTSIDE_INDEX)
        order = [i for _, i in called]
        seen = set(order)
        rest = [i for i in range(1, len(self.modules)) if i not in seen]
        return [*order, OUTSIDE_INDEX, *rest]

    def _time_or_nan(self, t: float) -> float:
        return t if self.timing else NAN

    # ------------------------------------------------------------------------------------------- queries

    def by_module(self, stage: str | Sequence[str] | None = None) -> pd.DataFrame:
        """One row per module (first-call order, then never-called modules), inclusive and self metrics.

        Columns: ``module, class_name, qualified_class, parent, depth, calls, ops, flops_tensor, flops_cuda,
        bytes_read, bytes_written, time_s, op_time_s`` (inclusive of everything the module's calls ran) and
        ``self_ops, self_flops_tensor, self_flops_cuda, self_bytes_read, self_bytes_written, self_time_s,
        self_op_time_s``; ``fan_in`` / ``fan_out``: distinct calling / called modules (``<outside>`` calls the
        root). ``time_s`` is module wall time (NaN when not timed); ``op_time_s`` sums per-op times. The
        ``<outside>`` row holds ops run outside every module (present only when there are any).
        """
        a = self._module_arrays(stage)
        rows = []
        for i in self._row_order():
            rec = self.modules[i]
            inc, slf = a["incl"][i], a["self"][i]
            if i == OUTSIDE_INDEX and slf[0] == 0:
                continue
            rows.append({
                "module": rec.path, "class_name": rec.class_name, "qualified_class": rec.qualified_class,
                "parent": rec.parent, "depth": rec.depth, "calls": a["calls"][i],
                "ops": inc[0], "flops_tensor": inc[1], "flops_cuda": float(inc[2]), "bytes_read": inc[3],
                "bytes_written": inc[4], "time_s": self._time_or_nan(a["t_incl"][i]),
                "op_time_s": self._time_or_nan(inc[5]),
                "self_ops": slf[0], "self_flops_tensor": slf[1], "self_flops_cuda": float(slf[2]),
                "self_bytes_read": slf[3], "self_bytes_written": slf[4],
                "self_time_s": self._time_or_nan(a["t_self"][i]), "self_op_time_s": self._time_or_nan(slf[5]),
                "fan_in": a["fan_in"][i], "fan_out": a["fan_out"][i],
            })
        return self._frame(rows, ["module", "class_name", "qualified_class", "parent", "depth", "calls", "ops",
                                  "flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "time_s", "op_time_s",
                                  "self_ops", "self_flops_tensor", "self_flops_cuda", "self_bytes_read",
                                  "self_bytes_written", "self_time_s", "self_op_time_s", "fan_in", "fan_out"])

    def _frame(self, rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
        df = pd.DataFrame(rows, columns=columns)
        if not self.count_ops:
            for c in columns:
                if c.removeprefix("self_") in ("ops", "flops_tensor", "flops_cuda", "bytes_read", "bytes_written",
                                                "op_time_s"):
                    df[c] = NAN
        return df

    def _op_row(self, op: str, vals: Sequence[Any]) -> dict[str, Any]:
        category, exact = self.op_info.get(op, (cat.UNCLASSIFIED, False))
        return {"op": op, "category": category, "calls": vals[0], "flops_tensor": vals[1],
                "flops_cuda": float(vals[2]), "bytes_read": vals[3], "bytes_written": vals[4],
                "time_s": self._time_or_nan(vals[5]), "exact": exact}

    def by_operator(self, stage: str | Sequence[str] | None = None) -> pd.DataFrame:
        """One row per aten overload (``aten.mm.default``), sorted by FLOPs then calls.

        Columns: ``op, category, calls, flops_tensor, flops_cuda, bytes_read, bytes_written, time_s, exact,
        dtypes`` (``time_s`` sums per-op times, NaN when not timed; ``dtypes``: output dtypes seen, comma-joined).
        """
        totals: dict[str, list[Any]] = {}
        for ops in self._merged(self._group_ids(stage)).values():
            for op, vals in ops.items():
                acc = totals.setdefault(op, [0, 0, 0.0, 0, 0, 0.0])
                self._add(acc, vals)
        rows = [{**self._op_row(op, v), "dtypes": ",".join(self.op_dtypes.get(op, []))} for op, v in totals.items()]
        df = self._frame(rows, [*_OP_COLS, "dtypes"])
        return self._sort_ops(df)

    @staticmethod
    def _sort_ops(df: pd.DataFrame) -> pd.DataFrame:
        if df.empty:
            return df
        key = df["flops_tensor"].astype(float) + df["flops_cuda"].astype(float)
        return df.assign(_k=key).sort_values(["_k", "calls"], ascending=False, kind="stable").drop(
            columns="_k").reset_index(drop=True)

    def by_module_and_operator(self, stage: str | Sequence[str] | None = None) -> pd.DataFrame:
        """One row per (module, op): an op counts in the module that ran it and in every module on its stack.

        Columns: ``module, class_name, op, category, calls, flops_tensor, flops_cuda, bytes_read, bytes_written,
        time_s, exact, self_calls`` (``self_calls``: calls made by the module itself, not by its children).
        """
        gids = self._group_ids(stage)
        paths = self._paths()
        acc: dict[tuple[int, str], list[Any]] = {}
        selfc: dict[tuple[int, str], int] = {}
        for ctx, ops in self._merged(gids).items():
            mod = self.contexts[ctx][1]
            targets = paths[ctx] if mod != OUTSIDE_INDEX else (OUTSIDE_INDEX,)
            for op, vals in ops.items():
                for m in targets:
                    self._add(acc.setdefault((m, op), [0, 0, 0.0, 0, 0, 0.0]), vals)
                selfc[(mod, op)] = selfc.get((mod, op), 0) + vals[0]
        order = {m: k for k, m in enumerate(self._row_order())}
        rows = []
        for (m, op), vals in sorted(acc.items(), key=lambda kv: (order[kv[0][0]], -(kv[1][1] + kv[1][2]), kv[0][1])):
            rec = self.modules[m]
            row = {"module": rec.path, "class_name": rec.class_name, **self._op_row(op, vals),
                   "self_calls": selfc.get((m, op), 0)}
            rows.append(row)
        return self._frame(rows, ["module", "class_name", *_OP_COLS, "self_calls"])

    def by_pass(self) -> pd.DataFrame:
        """Forward and backward numbers per module side by side (see :func:`opmeter.trace.backward.by_pass`)."""
        from opmeter.trace.backward import by_pass

        return by_pass(self)

    def by_category(self, stage: str | Sequence[str] | None = None) -> pd.DataFrame:
        """One row per category: ``category, calls, flops_tensor, flops_cuda, bytes_read, bytes_written, time_s``."""
        ops = self.by_operator(stage)
        cols = ["calls", "flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "time_s"]
        if ops.empty:
            return pd.DataFrame(columns=["category", *cols])
        df = ops.groupby("category", sort=False)[cols].sum(min_count=1).reset_index()
        return df.sort_values(["flops_tensor", "flops_cuda", "calls"], ascending=False).reset_index(drop=True)

    def by_module_and_category(self, stage: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Per (module, category), inclusive as :meth:`by_module`."""
        df = self.by_module_and_operator(stage)
        cols = ["calls", "flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "time_s"]
        if df.empty:
            return pd.DataFrame(columns=["module", "category", *cols])
        return df.groupby(["module", "category"], sort=False)[cols].sum(min_count=1).reset_index()

    def by_class(self, stage: str | Sequence[str] | None = None) -> pd.DataFrame:
        """One row per module class: ``class_name, qualified_class, instances, called_instances, calls`` and the
        inclusive metrics (an op counts once per class on its call stack) plus ``self_*`` sums."""
        a = self._module_arrays(stage)
        paths, merged = a["paths"], a["merged"]
        classes: dict[str, int] = {}
        cls_of = []
        for rec in self.modules:
            cls_of.append(classes.setdefault(rec.qualified_class, len(classes)))
        names = list(classes)
        incl = [[0, 0, 0.0, 0, 0, 0.0] for _ in names]
        for ctx, ops in merged.items():
            tot = [0, 0, 0.0, 0, 0, 0.0]
            for vals in ops.values():
                self._add(tot, vals)
            mod = self.contexts[ctx][1]
            targets = {cls_of[m] for m in paths[ctx]} if mod != OUTSIDE_INDEX else {cls_of[OUTSIDE_INDEX]}
            for c in targets:
                self._add(incl[c], tot)
        rows: dict[int, dict[str, Any]] = {}
        for i in self._row_order():
            rec = self.modules[i]
            if i == OUTSIDE_INDEX and a["self"][i][0] == 0:
                continue
            c = cls_of[i]
            r = rows.get(c)
            if r is None:
                inc = incl[c]
                r = rows[c] = {"class_name": rec.class_name, "qualified_class": rec.qualified_class, "instances": 0,
                               "called_instances": 0, "calls": 0, "ops": inc[0], "flops_tensor": inc[1],
                               "flops_cuda": float(inc[2]), "bytes_read": inc[3], "bytes_written": inc[4],
                               "self_ops": 0, "self_flops_tensor": 0, "self_flops_cuda": 0.0, "self_bytes_read": 0,
                               "self_bytes_written": 0, "self_time_s": 0.0}
            slf = a["self"][i]
            r["instances"] += 1
            r["called_instances"] += int(a["calls"][i] > 0)
            r["calls"] += a["calls"][i]
            r["self_ops"] += slf[0]
            r["self_flops_tensor"] += slf[1]
            r["self_flops_cuda"] += float(slf[2])
            r["self_bytes_read"] += slf[3]
            r["self_bytes_written"] += slf[4]
            r["self_time_s"] += a["t_self"][i]
        out = list(rows.values())
        for r in out:
            r["self_time_s"] = self._time_or_nan(r["self_time_s"])
        return self._frame(out, ["class_name", "qualified_class", "instances", "called_instances", "calls", "ops",
                                 "flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "self_ops",
                                 "self_flops_tensor", "self_flops_cuda", "self_bytes_read", "self_bytes_written",
                                 "self_time_s"])

    def edges(self, level: str = "module", stage: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Parent -> child call edges with call counts (``level="module"`` or ``"class"``).

        Columns: ``parent, child, calls``. Calls of the root from the traced block come from ``<outside>``.
        """
        if level not in ("module", "class"):
            raise OpmeterError(f"edges(level=...) must be 'module' or 'class', not {level!r}")
        calls_by_ctx, _ = self._ctx_calls_time(self._group_ids(stage))
        acc: dict[tuple[str, str], int] = {}
        for ctx, c in calls_by_ctx.items():
            parent_ctx, mod = self.contexts[ctx]
            if parent_ctx < 0 or c == 0:
                continue
            pm = self.contexts[parent_ctx][1]
            if level == "module":
                key = (self.modules[pm].path, self.modules[mod].path)
            else:
                key = (self.modules[pm].class_name, self.modules[mod].class_name)
            acc[key] = acc.get(key, 0) + c
        rows = [{"parent": p, "child": ch, "calls": c} for (p, ch), c in acc.items()]
        return pd.DataFrame(rows, columns=["parent", "child", "calls"])

    def stages(self) -> pd.DataFrame:
        """One row per individual stage, in start order (glue stages without ops are omitted).

        Columns: ``stage, group, index, kind, calls, tokens, batch, ops, flops_tensor, flops_cuda, bytes_read,
        bytes_written, time_s, op_time_s``.
        """
        rows = []
        for s in self.stage_records:
            t = s.totals
            if s.kind == "glue" and t[0] == 0:
                continue
            rows.append({"stage": s.name, "group": s.group, "index": s.index, "kind": s.kind, "calls": s.calls,
                         "tokens": s.tokens, "batch": s.batch, "ops": t[0], "flops_tensor": t[1],
                         "flops_cuda": float(t[2]), "bytes_read": t[3], "bytes_written": t[4],
                         "time_s": self._time_or_nan(s.time_s), "op_time_s": self._time_or_nan(t[5])})
        df = pd.DataFrame(rows, columns=["stage", "group", "index", "kind", "calls", "tokens", "batch", "ops",
                                         "flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "time_s",
                                         "op_time_s"])
        df["tokens"] = df["tokens"].astype("Int64")
        df["batch"] = df["batch"].astype("Int64")
        return df

    def stage_groups(self) -> pd.DataFrame:
        """Per stage group totals (``group, stages, ops, flops_tensor, ...``)."""
        df = self.stages()
        cols = ["ops", "flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "time_s", "op_time_s"]
        if df.empty:
            return pd.DataFrame(columns=["group", "stages", *cols])
        g = df.groupby("group", sort=False)
        out = g[cols].sum(min_count=1)
        out.insert(0, "stages", g.size())
        return out.reset_index()

    def unclassified(self, stage: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Ops of no category, and ops run outside every module of the tree, with their shares.

        Columns: ``reason`` (``"no category"``, ``"uncounted"`` — a compute op with no FLOP formula, see
        :meth:`uncounted` — or ``"outside modules"``), ``op, category, calls, flops_tensor,
        flops_cuda, bytes_read, bytes_written, time_s, share_flops, share_bytes, share_time`` (shares of the
        grand total of the same stage selection; FLOPs = tensor + CUDA core).
        """
        merged = self._merged(self._group_ids(stage))
        total = [0, 0, 0.0, 0, 0, 0.0]
        no_cat: dict[str, list[Any]] = {}
        uncounted: dict[str, list[Any]] = {}
        outside: dict[str, list[Any]] = {}
        uncounted_names = self._uncounted_names()
        for ctx, ops in merged.items():
            is_out = self.contexts[ctx][1] == OUTSIDE_INDEX
            for op, vals in ops.items():
                self._add(total, vals)
                if self.op_info.get(op, (cat.UNCLASSIFIED, False))[0] == cat.UNCLASSIFIED:
                    self._add(no_cat.setdefault(op, [0, 0, 0.0, 0, 0, 0.0]), vals)
                if op in uncounted_names:
                    self._add(uncounted.setdefault(op, [0, 0, 0.0, 0, 0, 0.0]), vals)
                if is_out:
                    self._add(outside.setdefault(op, [0, 0, 0.0, 0, 0, 0.0]), vals)
        tf = total[1] + total[2]
        tb = total[3] + total[4]
        tt = total[5]
        rows = []
        for reason, table in (("no category", no_cat), ("uncounted", uncounted), ("outside modules", outside)):
            for op, v in sorted(table.items(), key=lambda kv: (-(kv[1][1] + kv[1][2]), -kv[1][0], kv[0])):
                row = {"reason": reason, **self._op_row(op, v)}
                row.pop("exact")
                row["share_flops"] = (v[1] + v[2]) / tf if tf else 0.0
                row["share_bytes"] = (v[3] + v[4]) / tb if tb else 0.0
                row["share_time"] = v[5] / tt if (self.timing and tt) else NAN
                rows.append(row)
        cols = ["reason", "op", "category", "calls", "flops_tensor", "flops_cuda", "bytes_read", "bytes_written",
                "time_s", "share_flops", "share_bytes", "share_time"]
        return pd.DataFrame(rows, columns=cols)

    def _uncounted_names(self) -> set[str]:
        """Compute ops without a FLOP formula, and compute ops whose formula failed (they counted zero)."""
        failed = {op for op in self.formula_errors if self.op_info.get(op, (cat.UNCLASSIFIED,))[0] in cat.COMPUTE}
        return set(self.uncounted_ops) | failed

    def uncounted(self, stage: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Compute ops (gemm, attention, convolution) whose FLOPs are unknown: no formula (or a failing one).

        Their FLOPs are *not* zero: the totals leave them out and say so. Columns: ``op, category, calls,
        bytes_read, bytes_written, time_s``, most calls first.
        """
        names = self._uncounted_names()
        acc: dict[str, list[Any]] = {}
        for ops in self._merged(self._group_ids(stage)).values():
            for op, vals in ops.items():
                if op in names:
                    self._add(acc.setdefault(op, [0, 0, 0.0, 0, 0, 0.0]), vals)
        rows = [{"op": op, "category": self.op_info.get(op, (cat.UNCLASSIFIED,))[0], "calls": v[0],
                 "bytes_read": v[3], "bytes_written": v[4], "time_s": self._time_or_nan(v[5])}
                for op, v in sorted(acc.items(), key=lambda kv: (-kv[1][0], kv[0]))]
        return pd.DataFrame(rows, columns=["op", "category", "calls", "bytes_read", "bytes_written", "time_s"])

    def uncalled_modules(self) -> pd.DataFrame:
        """Modules of the tree never called inside the block: ``module, class_name, qualified_class, parent``."""
        rows = [{"module": r.path, "class_name": r.class_name, "qualified_class": r.qualified_class,
                 "parent": r.parent} for i, r in enumerate(self.modules)
                if i != OUTSIDE_INDEX and self.first_call[i] < 0]
        return pd.DataFrame(rows, columns=["module", "class_name", "qualified_class", "parent"])

    def totals(self, stage: str | Sequence[str] | None = None) -> dict[str, Any]:
        """Grand totals: ``ops, flops_tensor, flops_cuda, bytes_read, bytes_written, time_s, op_time_s, modules,
        modules_called, outside_ops, unclassified_ops, uncounted_ops (calls of compute ops with unknown FLOPs),
        complete, error, schema_version``."""
        gids = self._group_ids(stage)
        merged = self._merged(gids)
        tot = [0, 0, 0.0, 0, 0, 0.0]
        outside_ops = 0
        uncl = 0
        uncounted = 0
        uncounted_names = self._uncounted_names()
        for ctx, ops in merged.items():
            for op, vals in ops.items():
                self._add(tot, vals)
                if self.contexts[ctx][1] == OUTSIDE_INDEX:
                    outside_ops += vals[0]
                if self.op_info.get(op, (cat.UNCLASSIFIED, False))[0] == cat.UNCLASSIFIED:
                    uncl += vals[0]
                if op in uncounted_names:
                    uncounted += vals[0]
        measured = self.count_ops
        return {
            "ops": tot[0] if measured else NAN, "flops_tensor": tot[1] if measured else NAN,
            "flops_cuda": float(tot[2]) if measured else NAN, "bytes_read": tot[3] if measured else NAN,
            "bytes_written": tot[4] if measured else NAN,
            "time_s": (self.wall_time_s if gids is None else self._stage_time(gids)) if self.timing else NAN,
            "op_time_s": self._time_or_nan(tot[5]),
            "modules": len(self.modules) - 1, "modules_called": sum(1 for f in self.first_call[1:] if f >= 0),
            "outside_ops": outside_ops, "unclassified_ops": uncl, "uncounted_ops": uncounted,
            "complete": self.complete, "error": self.error,
            "schema_version": self.schema_version,
        }

    def spans(self) -> pd.DataFrame:
        """Module call spans when timed: ``module, stage, start_s, end_s, depth`` (seconds from the block start).

        At most :data:`SPAN_CAP` spans are kept; ``spans_truncated`` tells whether more calls happened.
        """
        rows = [{"module": self.modules[m].path, "stage": self.stage_records[s].name if s >= 0 else None,
                 "start_s": a, "end_s": b, "depth": d} for m, s, a, b, d in self.spans_raw]
        return pd.DataFrame(rows, columns=["module", "stage", "start_s", "end_s", "depth"])

    def shapes(self) -> pd.DataFrame:
        """Input shapes per (stage group, module, op) when traced with ``record_shapes=True``."""
        rows = []
        for (gid, ctx, op), shapes in self.shapes_raw.items():
            for sig, n in shapes.items():
                rows.append({"group": self.groups[gid], "module": self.modules[self.contexts[ctx][1]].path,
                             "op": op, "input_shapes": sig, "calls": n})
        return pd.DataFrame(rows, columns=["group", "module", "op", "input_shapes", "calls"])

    # ------------------------------------------------------------------------------------------- exports

    def to_dot(self) -> str:
        """The class-level call graph as Graphviz DOT."""
        from opmeter.trace.export import to_dot

        return to_dot(self)

    def to_mermaid(self) -> str:
        """The class-level call graph as a Mermaid flowchart."""
        from opmeter.trace.export import to_mermaid

        return to_mermaid(self)

    def to_chrome_trace(self, path: str | Path) -> Path:
        """Write the module spans (and stages) as Chrome / Perfetto trace JSON; returns the path.

        Raises
        ------
        OpmeterError
            When the trace was not timed (``OpTracer(timing=True)``): it has no spans to show.
        """
        from opmeter.trace.export import to_chrome_trace

        if not self.timing:
            raise OpmeterError("this trace was not timed, so it has no spans for a Chrome trace; trace with "
                               "OpTracer(model, timing=True)")
        return to_chrome_trace(self, path)

    def to_dict(self, tables: bool = True) -> dict[str, Any]:
        """Plain-data form (what :meth:`save` writes): raw aggregates plus, with ``tables``, the derived tables."""
        d: dict[str, Any] = {
            "schema_version": self.schema_version,
            "complete": self.complete,
            "error": self.error,
            "metadata": self.metadata,
            "wall_time_s": _nan_none(self.wall_time_s),
            "count_ops": self.count_ops,
            "timing": self.timing,
            "modules": [[m.path, m.class_name, m.qualified_class, m.parent, m.depth] for m in self.modules],
            "first_call": self.first_call,
            "contexts": [list(c) for c in self.contexts],
            "groups": self.groups,
            "cells": [[g, c, op, *v] for (g, c), ops in self.cells.items() for op, v in ops.items()],
            "ctx_stats": [[g, c, *v] for (g, c), v in self.ctx_stats.items()],
            "stages": [[s.name, s.group, s.index, s.kind, s.tokens, s.batch, s.totals, s.time_s, s.calls]
                       for s in self.stage_records],
            "op_info": {k: list(v) for k, v in self.op_info.items()},
            "spans": [list(s) for s in self.spans_raw],
            "stage_spans": [list(s) for s in self.stage_spans_raw],
            "spans_truncated": self.spans_truncated,
            "shapes": [[g, c, op, sig, n] for (g, c, op), d2 in self.shapes_raw.items() for sig, n in d2.items()],
            "formula_errors": self.formula_errors,
            "op_dtypes": self.op_dtypes,
            "uncounted_ops": self.uncounted_ops,
            "large_calls": [[g, c, op, *v] for (g, c), ops in self.large_calls.items() for op, vs in ops.items()
                            for v in vs],
        }
        if tables:
            d["tables"] = {
                "totals": self.totals(),
                "modules": _records(self.by_module()),
                "edges": _records(self.edges()),
                "class_edges": _records(self.edges(level="class")),
                "ops": _records(self.by_operator()),
                "categories": _records(self.by_category()),
                "module_categories": _records(self.by_module_and_category()),
                "stages": _records(self.stages()),
                "unclassified": _records(self.unclassified()),
                "uncounted": _records(self.uncounted()),
                "uncalled_modules": _records(self.uncalled_modules()),
            }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trace:
        """Rebuild a trace from :meth:`to_dict` output.

        Raises
        ------
        OpmeterError
            When the schema version is unknown or the data is malformed.
        """
        if not isinstance(d, dict):
            raise OpmeterError("not an opmeter trace: expected a JSON object at the top level")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise OpmeterError(
                f"unsupported trace schema {version!r}: this opmeter reads {SCHEMA_VERSION!r}; "
                "re-trace the model with this version (or load it with the opmeter that wrote it)"
            )
        check_raw(d)
        try:
            t = cls(
                modules=[ModuleRecord(p, cn, qc, par, dep) for p, cn, qc, par, dep in d["modules"]],
                first_call=list(d["first_call"]),
                contexts=[(int(a), int(b)) for a, b in d["contexts"]],
                groups=list(d["groups"]),
                metadata=dict(d.get("metadata") or {}),
                complete=bool(d["complete"]),
                error=d.get("error"),
                wall_time_s=_none_nan(d.get("wall_time_s")),
                count_ops=bool(d.get("count_ops", True)),
                timing=bool(d.get("timing", False)),
                op_info={k: (v[0], bool(v[1])) for k, v in d["op_info"].items()},
                spans_raw=[(int(m), int(s), float(a), float(b), int(dp)) for m, s, a, b, dp in d.get("spans", [])],
                stage_spans_raw=[(int(s), float(a), float(b)) for s, a, b in d.get("stage_spans", [])],
                spans_truncated=bool(d.get("spans_truncated", False)),
                formula_errors=dict(d.get("formula_errors") or {}),
                op_dtypes={k: list(v) for k, v in (d.get("op_dtypes") or {}).items()},
            )
            for g, c, op, *v in d["cells"]:
                t.cells.setdefault((int(g), int(c)), {})[op] = [v[0], v[1], v[2], v[3], v[4], _none_nan(v[5])]
            for g, c, calls, tm in d["ctx_stats"]:
                t.ctx_stats[(int(g), int(c))] = [calls, _none_nan(tm)]
            for name, group, index, kind, tokens, batch, totals, time_s, calls in d["stages"]:
                tot = list(totals)
                tot[5] = _none_nan(tot[5])
                t.stage_records.append(StageRecord(name, group, index, kind, tokens, batch, tot,
                                                   _none_nan(time_s), calls))
            for g, c, op, *v in d.get("large_calls", []):
                t.large_calls.setdefault((int(g), int(c)), {}).setdefault(op, []).append(list(v))
            for g, c, op, sig, n in d.get("shapes", []):
                t.shapes_raw.setdefault((int(g), int(c), op), {})[sig] = n
            stored = d.get("uncounted_ops")
            t.uncounted_ops = [str(op) for op in stored] if stored is not None else t._zero_flop_compute_ops()
        except (KeyError, TypeError, ValueError) as exc:
            raise OpmeterError(f"malformed opmeter trace ({type(exc).__name__}: {exc})") from exc
        bad = t._bad_reference()
        if bad:
            raise OpmeterError(f"malformed opmeter trace ({bad})")
        return t

    def _zero_flop_compute_ops(self) -> list[str]:
        """Traces written before opmeter recorded uncounted ops: compute ops that counted no FLOPs at all."""
        flops: dict[str, float] = {}
        for ops in self.cells.values():
            for op, vals in ops.items():
                if self.op_info.get(op, (cat.UNCLASSIFIED,))[0] in cat.COMPUTE:
                    flops[op] = flops.get(op, 0) + vals[1]
        return sorted(op for op, f in flops.items() if f == 0)

    def _bad_reference(self) -> str | None:
        """What in the raw data points outside its table (the queries would fail with an IndexError), or None."""
        n_mod, n_ctx, n_grp, n_stg = len(self.modules), len(self.contexts), len(self.groups), len(self.stage_records)
        if len(self.first_call) != n_mod:
            return f"first_call has {len(self.first_call)} entries for {n_mod} modules"
        for i, (parent, mod) in enumerate(self.contexts):
            if not (-1 <= parent < i and 0 <= mod < n_mod):
                return f"context {i} = ({parent}, {mod}) is out of range"
        for what, keys in (("cells", self.cells), ("ctx_stats", self.ctx_stats),
                           ("shapes", {k[:2] for k in self.shapes_raw})):
            for g, c in keys:
                if not (0 <= g < n_grp and 0 <= c < n_ctx):
                    return f"{what} entry (group {g}, context {c}) is out of range"
        for st in self.stage_records:
            if st.group not in self.groups:
                return f"stage {st.name!r} has an unknown group {st.group!r}"
        for m, stg, *_ in self.spans_raw:
            if not (0 <= m < n_mod and -1 <= stg < n_stg):
                return f"span (module {m}, stage {stg}) is out of range"
        for stg, *_ in self.stage_spans_raw:
            if not 0 <= stg < n_stg:
                return f"stage span of stage {stg} is out of range"
        return None

    def save(self, path: str | Path) -> Path:
        """Write the trace as JSON (orjson, atomic write); returns the path.

        Metadata values JSON cannot hold (a ``Path``, a dtype...) are written as their ``str()``.
        """
        try:
            data = json_bytes(self.to_dict())
        except OpmeterError as exc:  # an integer past 64 bits in the metadata, a cycle...
            raise OpmeterError(f"cannot write the trace to {path}: {exc}") from exc
        return atomic_write_bytes(path, data)

    def summary(self) -> str:
        """A few lines for humans."""
        t = self.totals()
        state = "complete" if self.complete else f"INCOMPLETE ({self.error})"
        return (f"opmeter trace of {self.metadata.get('model_class', '?')}: {t['ops']} ops, "
                f"{t['flops_tensor']:.4g} tensor-core FLOPs, {t['flops_cuda']:.4g} CUDA-core FLOPs, "
                f"{t['modules_called']}/{t['modules']} modules called, {len(self.stage_records)} stages, {state}")


def _nan_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _none_nan(x: Any) -> float:
    return NAN if x is None else float(x)


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    return [{str(k): v for k, v in r.items()} for r in out]


def load_trace(path: str | Path) -> Trace:
    """Load a trace saved with :meth:`Trace.save`.

    Raises
    ------
    OpmeterError
        When the file is missing, not JSON (plain or gzipped), of an unknown schema version, or malformed.
    """
    data = read_json(path, "trace")
    return Trace.from_dict(data)


__all__ = ["NUMERIC", "OUTSIDE", "ROOT", "SCHEMA_VERSION", "SPAN_CAP", "StageRecord", "Trace", "load_trace"]
