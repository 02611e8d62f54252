"""The join: a measured :class:`~opmeter.trace.Trace` beside the analytic prediction of the same workload.

:func:`join` builds a :class:`Joined`, an analysis object with plain query methods returning DataFrames (the same
feel as ``Trace``):

* :meth:`Joined.by_module` — per module path: measured (trace) vs predicted (analytic) tensor-core FLOPs,
  CUDA-core FLOPs, bytes, weight / activation / KV memory, with relative differences ``(measured - predicted) /
  predicted``; inclusive and ``self_*`` metrics, depth and parent, so it *is* the module hierarchy.
  Modules never called through ``__call__`` whose children ran (the vendor CLIP block calls
  ``self.self_attn.forward(...)``) are ``invoked == "forward"``: their inclusive metrics are their children's, their
  ``self_*`` stay 0 (their own ops are in the caller's), and they are joined with the analytic layer of the same scope
  (:meth:`Joined.forward_invoked`).
* :meth:`Joined.by_class` — the same summed per module class.
* :meth:`Joined.hierarchy` — the hierarchy with repeated siblings collapsed (``layers.*``), for reading.
* :meth:`Joined.by_component` — disjoint named components (SAM encoder, CLIP tower, ..., LM head) built from the
  *self* metrics of the modules below each component root, plus one ``unattributed (glue)`` row; their sum equals
  the trace total, which :meth:`Joined.checks` verifies.
* :meth:`Joined.by_stage` — vision, prefill (decoder part), each decode step, decode total, total: measured work,
  predicted work, predicted time (roofline at the chosen hardware), measured time (when executed) and the ratio.
* :meth:`Joined.by_category`, :meth:`Joined.by_operator`, :meth:`Joined.by_component_and_category`.
* :meth:`Joined.unclassified` — the unclassified bucket: ops outside every component (glue in ``forward`` /
  ``generate``) and ops of no category, each with its share of FLOPs, bytes and time.

:meth:`Joined.save` writes ``joined.json`` (orjson, ``schema_version``, atomic); :func:`load_joined` reads it back.

The join knows the model only through its adapter's component table and stage specification
(:mod:`opmeter.structure`) and the predicted per-module frame (:func:`opmeter.analytic.base.layer_frame` layout),
keyed by the same module paths.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pandas as pd

from opmeter.errors import OpmeterError
from opmeter.io import atomic_write_bytes
from opmeter.structure import Component, StageSpec
from opmeter.trace import OUTSIDE, ROOT, Trace

SCHEMA_VERSION = 1
"""Version of ``joined.json``; bumped on any incompatible change."""

SCHEMA_NAME = "opmeter.joined"

GLUE = "unattributed (glue)"
UNCLASSIFIED = "unclassified"

METRICS = ("flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "time_s")
"""Additive measured metrics; ``bytes`` = read + written is derived."""

MEMORY = ("weight_bytes", "activation_bytes", "kv_cache_bytes")

INCLUSIVE = ("ops", "flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "bytes", "time_s", "op_time_s")
"""Inclusive measured columns of the module table (a forward-invoked module sums them over its children)."""

LAYER_COLS = ("layer_flops_tensor", "layer_flops_cuda", "layer_bytes")
"""Optional predicted columns: the whole analytic layer of a forward-invoked module, own ops included."""

CALL, FORWARD, CONTAINER, NEVER = "call", "forward", "container", "never"
"""Values of the ``invoked`` column of :meth:`Joined.by_module` (see :func:`_forward_invoked`)."""

CONTAINERS = frozenset({"ModuleList", "ModuleDict", "ParameterList", "ParameterDict"})


def rel_diff(measured: Any, predicted: Any) -> float:
    """``(measured - predicted) / predicted``; 0 when both are 0, NaN when either is missing or only predicted is 0."""
    try:
        m, p = float(measured), float(predicted)
    except (TypeError, ValueError):
        return math.nan
    if math.isnan(m) or math.isnan(p):
        return math.nan
    if p == 0:
        return 0.0 if m == 0 else math.nan
    return (m - p) / p


def _num(df: pd.DataFrame, col: str) -> pd.Series:
    if col in df:
        return pd.to_numeric(df[col], errors="coerce").fillna(0.0)
    return pd.Series(0.0, index=df.index)


def _parent(path: str) -> str:
    if path in (ROOT, OUTSIDE):
        return ""
    return path.rsplit(".", 1)[0] if "." in path else ROOT


def _ancestors(path: str) -> list[str]:
    """``a.b.c`` -> ``["a.b.c", "a.b", "a", "<root>"]`` (self first)."""
    if path in (ROOT, OUTSIDE):
        return [path]
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)] + [ROOT]


def assign_components(modules: pd.DataFrame, components: Sequence[Component]) -> pd.Series:
    """Component of every module path (the deepest matching ancestor-or-self), ``GLUE`` when none matches."""
    classes = dict(zip(modules["module"], modules.get("class_name", pd.Series("", index=modules.index)), strict=True))
    cache: dict[str, str | None] = {}

    def own(path: str) -> str | None:
        if path not in cache:
            cls = str(classes.get(path, ""))
            cache[path] = next((c.name for c in components if c.matches(path, cls)), None)
        return cache[path]

    out = []
    for path in modules["module"]:
        found = next((name for anc in _ancestors(str(path)) if (name := own(anc)) is not None), None)
        out.append(found if found is not None else GLUE)
    return pd.Series(out, index=modules.index, dtype=object)


def _with_bytes(df: pd.DataFrame, prefix: str = "") -> pd.DataFrame:
    df = df.copy()
    df[f"{prefix}bytes"] = _num(df, f"{prefix}bytes_read") + _num(df, f"{prefix}bytes_written")
    return df


def _shares(df: pd.DataFrame, totals: Mapping[str, float]) -> pd.DataFrame:
    df = df.copy()
    for metric, key in (("flops", "flops"), ("bytes", "bytes"), ("time_s", "time_s")):
        total = totals.get(key) or 0.0
        values = _num(df, "flops_tensor") + _num(df, "flops_cuda") if metric == "flops" else _num(df, metric)
        share_col = "time_share" if metric == "time_s" else f"{metric}_share"
        df[share_col] = values / total if total else math.nan
    return df


@attrs.frozen
class Joined:
    """Measured vs predicted, per module, class, component, stage and category; see the module docstring.

    Build it with :func:`join` (or :func:`load_joined`); every query returns a fresh DataFrame.
    """

    _modules: pd.DataFrame
    _stages: pd.DataFrame
    _categories: pd.DataFrame
    _operators: pd.DataFrame
    _unclassified_ops: pd.DataFrame
    _edges: pd.DataFrame
    _component_category: pd.DataFrame
    totals_: dict[str, float]
    metadata: dict[str, Any]
    runtime: dict[str, Any] | None = None
    hardware: dict[str, Any] | None = None
    component_order: tuple[str, ...] = ()
    _module_category: pd.DataFrame = attrs.field(factory=pd.DataFrame)

    # -- queries ---------------------------------------------------------------------------------------------------
    def by_module(self) -> pd.DataFrame:
        """Per module path: hierarchy, measured inclusive/self metrics, predicted metrics, relative differences.

        ``invoked``: ``call`` / ``forward`` / ``container`` / ``never`` (see :func:`_forward_invoked`);
        ``forward_calls``: inferred ``.forward()`` invocations of ``forward`` rows; ``pred_layer_*``: the whole analytic
        layer of a ``forward`` row, own ops included (when the prediction provides it).
        """
        return self._modules.copy()

    def joined_modules(self) -> pd.DataFrame:
        """Modules that have a prediction (the analytic layers), with their relative differences."""
        df = self._modules
        return df[df["predicted"]].copy()

    def forward_invoked(self) -> pd.DataFrame:
        """Modules never called through ``__call__`` whose children ran (``invoked == "forward"``): their inclusive
        metrics are their children's (own ops are in the caller's self metrics); see :func:`_forward_invoked`."""
        df = self._modules
        if "invoked" not in df:
            return df.iloc[0:0].copy()
        return df[df["invoked"] == FORWARD].copy()

    def by_class(self) -> pd.DataFrame:
        """Per module class: instances, calls, measured vs predicted FLOPs / bytes / weights (inclusive sums).

        Only classes whose instances do not nest in one another sum meaningfully; those of a typical tree do not.
        """
        df = self._modules[~self._modules["module"].isin([ROOT, OUTSIDE])]
        cols = ["calls", *(["forward_calls"] if "forward_calls" in df else []), "flops_tensor", "flops_cuda", "bytes",
                "time_s", "weight_bytes"]
        pcols = ["pred_flops_tensor", "pred_flops_cuda", "pred_bytes", "pred_weight_bytes"]
        grouped = df.groupby("class_name", sort=False)
        out = grouped[cols + pcols].sum(min_count=1)
        out.insert(0, "instances", grouped.size())
        out["predicted_instances"] = grouped["predicted"].sum()
        out = out.reset_index()
        for m in ("flops_tensor", "flops_cuda", "bytes", "weight_bytes"):
            out[f"rel_{m}"] = [rel_diff(a, b) for a, b in zip(out[m], out[f"pred_{m}"], strict=True)]
        return out.sort_values("flops_tensor", ascending=False, ignore_index=True)

    def hierarchy(self, max_depth: int | None = None, collapse: bool = True) -> pd.DataFrame:
        """The module tree in pre-order, numeric path segments collapsed to ``*`` (summed) when ``collapse``."""
        df = self._modules[self._modules["module"] != OUTSIDE].copy()
        if max_depth is not None:
            df = df[df["depth"] <= max_depth]
        if not collapse:
            return df.reset_index(drop=True)
        df["pattern"] = df["module"].map(lambda p: re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)", "*", str(p)))
        sums = ["calls", *[c for c in df.columns if c.startswith(("flops", "self_", "bytes", "time", "pred_",
                                                                   "forward_calls"))]]
        sums = [c for c in dict.fromkeys(sums) if pd.api.types.is_numeric_dtype(df[c])]
        keys = ["pattern", "class_name"]  # model.layers.*.mlp is a dense MLP in layer 0 and an MoE elsewhere
        extra = {"invoked": ("invoked", "first")} if "invoked" in df else {}
        first = df.groupby(keys, sort=False).agg(
            depth=("depth", "first"), instances=("module", "size"), component=("component", "first"), **extra,
        )
        out = first.join(df.groupby(keys, sort=False)[sums].sum(min_count=1)).reset_index()
        out = out.rename(columns={"pattern": "module"})
        out["top_category"] = self._top_categories(df, keys)
        for m in ("flops_tensor", "flops_cuda", "bytes"):
            if f"pred_{m}" in out:
                out[f"rel_{m}"] = [rel_diff(a, b) for a, b in zip(out[m], out[f"pred_{m}"], strict=True)]
        return out

    def _top_categories(self, df: pd.DataFrame, keys: list[str]) -> list[str | None]:
        """Per hierarchy row: the category with most FLOPs (most bytes when there are no FLOPs)."""
        mc = self._module_category
        if mc.empty or "module" not in mc:
            return [None] * df.groupby(keys, sort=False).ngroups
        mc = mc.merge(df[["module", *keys]], on="module", how="inner")
        mc = mc.assign(_f=_num(mc, "flops_tensor") + _num(mc, "flops_cuda"), _b=_num(mc, "bytes"))
        agg = mc.groupby([*keys, "category"], sort=False)[["_f", "_b"]].sum().reset_index()
        agg = agg.sort_values(["_f", "_b"], ascending=False)
        top = agg.drop_duplicates(keys).set_index(keys)["category"]
        order = df.groupby(keys, sort=False).size().index
        return [top.get(k) for k in order]

    def by_component(self, stage: str | None = None) -> pd.DataFrame:
        """Disjoint components plus the glue row; ``stage`` = ``"prefill"`` / ``"decode"`` restricts to a stage group.

        Columns: ``component``, self-summed measured metrics, their shares, predicted FLOPs/bytes (sum of the
        predicted self metrics of the same modules).
        """
        df = self._modules
        prefix = "" if stage is None else f"{stage}_"
        cols = {m: f"{prefix}self_{m}" for m in METRICS}
        if stage is not None and cols["flops_tensor"] not in df:
            raise KeyError(f"no per-stage module metrics for stage {stage!r}")
        rows = []
        order = [*self.component_order, GLUE]
        grouped = {name: g for name, g in df.groupby("component", sort=False)}
        for name in order:
            g = grouped.get(name)
            row: dict[str, Any] = {"component": name}
            for m, col in cols.items():
                row[m] = float(_num(g, col).sum()) if g is not None else 0.0
            if stage is None:
                for m in ("flops_tensor", "flops_cuda", "bytes_read", "bytes_written"):
                    col = f"pred_self_{m}"
                    row[f"pred_{m}"] = float(g[col].sum(min_count=1)) if g is not None and col in g else math.nan
                row["weight_bytes"] = float(_num(g, "param_bytes").sum()) if g is not None else 0.0
            rows.append(row)
        out = _with_bytes(pd.DataFrame(rows))
        if stage is None:
            out["pred_bytes"] = out["pred_bytes_read"] + out["pred_bytes_written"]
            out["pred_flops"] = out["pred_flops_tensor"] + out["pred_flops_cuda"]
            out["rel_flops_tensor"] = [
                rel_diff(a, b) for a, b in zip(out["flops_tensor"], out["pred_flops_tensor"], strict=True)
            ]
        totals = {
            "flops": float(out["flops_tensor"].sum() + out["flops_cuda"].sum()),
            "bytes": float(out["bytes"].sum()),
            "time_s": float(out["time_s"].sum()),
        }
        out = _shares(out, totals)
        out["roofline_time_s"] = [
            self.roofline_seconds(t, c, b) for t, c, b in zip(out["flops_tensor"], out["flops_cuda"], out["bytes"],
                                                               strict=True)
        ]
        total_roof = float(out["roofline_time_s"].sum())
        out["roofline_share"] = out["roofline_time_s"] / total_roof if total_roof > 0 else math.nan
        return out

    def roofline_seconds(self, flops_tensor: float, flops_cuda: float, nbytes: float) -> float:
        """Roofline time of some traced work at :attr:`hardware`'s peaks (NaN when a peak is unknown)."""
        hw = self.hardware or {}
        try:
            tc, cc, bw = (float(hw[k]) for k in ("tensor_tflops", "cuda_tflops", "bandwidth_gbps"))
        except (KeyError, TypeError, ValueError):
            return math.nan
        if not all(math.isfinite(v) and v > 0 for v in (tc, cc, bw)):
            return math.nan
        return max(flops_tensor / (tc * 1e12) + flops_cuda / (cc * 1e12), nbytes / (bw * 1e9))

    def by_stage(self) -> pd.DataFrame:
        """vision, prefill (decoder part), decode[i], decode, total: measured and predicted work and time."""
        return self._stages.copy()

    def by_category(self) -> pd.DataFrame:
        """Operator categories with FLOPs, bytes, (profiled) time and their shares."""
        return self._categories.copy()

    def by_operator(self) -> pd.DataFrame:
        """aten overloads with category, calls, FLOPs, bytes and shares."""
        return self._operators.copy()

    def by_component_and_category(self) -> pd.DataFrame:
        """Long table: component x category with calls, FLOPs and bytes (from the trace's module x operator table)."""
        return self._component_category.copy()

    def by_module_and_category(self) -> pd.DataFrame:
        """Per (module, category): calls, FLOPs and bytes, inclusive as :meth:`by_module` (from the trace)."""
        return self._module_category.copy()

    def edges(self) -> pd.DataFrame:
        """Parent -> child call edges of the module graph (from the trace)."""
        return self._edges.copy()

    def unclassified(self) -> pd.DataFrame:
        """The unclassified bucket, one row per entry.

        ``kind`` is ``glue`` (self work of a module outside every component, or of no module at all) or
        ``no_category`` (an op no category rule matched); shares are of the trace totals.
        """
        mods = self._modules
        glue = mods[mods["component"] == GLUE]
        rows = []
        for rec in glue.to_dict("records"):
            rows.append(
                {
                    "kind": "glue",
                    "name": rec["module"],
                    "class_name": rec.get("class_name", ""),
                    "calls": rec.get("calls", 0),
                    "flops_tensor": rec.get("self_flops_tensor", 0.0),
                    "flops_cuda": rec.get("self_flops_cuda", 0.0),
                    "bytes": rec.get("self_bytes", 0.0),
                    "time_s": rec.get("self_time_s", 0.0),
                }
            )
        for rec in self._unclassified_ops.to_dict("records"):
            rows.append(
                {
                    "kind": "no_category",
                    "name": rec.get("op", ""),
                    "class_name": "",
                    "calls": rec.get("calls", 0),
                    "flops_tensor": rec.get("flops_tensor", 0.0),
                    "flops_cuda": rec.get("flops_cuda", 0.0),
                    "bytes": float(rec.get("bytes_read", 0.0) or 0.0) + float(rec.get("bytes_written", 0.0) or 0.0),
                    "time_s": rec.get("time_s", 0.0),
                }
            )
        cols = ["kind", "name", "class_name", "calls", "flops_tensor", "flops_cuda", "bytes", "time_s"]
        out = pd.DataFrame(rows, columns=cols)
        for c in cols[3:]:
            out[c] = pd.to_numeric(out[c], errors="coerce").fillna(0.0)
        return _shares(out, self.totals_)

    def unclassified_summary(self) -> dict[str, float]:
        """Shares of FLOPs, bytes and time in glue and in ops of no category (and both together)."""
        df = self.unclassified()
        timed = math.isfinite(float(self.totals_.get("time_s", math.nan))) and bool(self.totals_.get("time_s"))
        out: dict[str, float] = {}
        for kind in ("glue", "no_category"):
            part = df[df["kind"] == kind]
            for share in ("flops_share", "bytes_share", "time_share"):
                if share == "time_share" and not timed:
                    out[f"{kind}_{share}"] = math.nan
                    continue
                out[f"{kind}_{share}"] = float(part[share].sum()) if len(part) else 0.0
        for share in ("flops_share", "bytes_share", "time_share"):
            out[f"unclassified_{share}"] = out[f"glue_{share}"] + out[f"no_category_{share}"]
            out[f"attributed_{share}"] = 1.0 - out[f"unclassified_{share}"]
        # Time outside every model call (image preprocessing, tokenisation, the generate loop's host code) is glue
        # by definition; the share of the *model's* own time attributed to components leaves it out.
        outside = df[(df["kind"] == "glue") & (df["name"] == OUTSIDE)]
        out["outside_time_share"] = float(outside["time_share"].sum()) if timed and len(outside) else math.nan
        in_model = 1.0 - out["outside_time_share"]
        out["attributed_time_share_in_model"] = (
            out["attributed_time_share"] / in_model if timed and in_model > 0 else math.nan
        )
        return out

    def totals(self) -> dict[str, float]:
        """Trace totals: tensor-core and CUDA-core FLOPs, bytes, time, ops."""
        return dict(self.totals_)

    def checks(self) -> pd.DataFrame:
        """Consistency checks: components + glue = total (FLOPs and bytes); every predicted module was traced."""
        comp = self.by_component()
        rows = []
        for metric, total_key in (("flops_tensor", "flops_tensor"), ("flops_cuda", "flops_cuda"), ("bytes", "bytes")):
            summed = float(comp[metric].sum())
            total = float(self.totals_.get(total_key, math.nan))
            ok = math.isclose(summed, total, rel_tol=1e-9, abs_tol=1e-6)
            rows.append({"check": f"components + glue = total ({metric})", "value": summed, "expected": total,
                         "ok": ok})
        mods = self._modules
        invoked = mods["invoked"] if "invoked" in mods else pd.Series(CALL, index=mods.index)
        missing = mods[mods["predicted"] & (mods["calls"] == 0) & (invoked != FORWARD)]
        rows.append({"check": "every predicted module was traced", "value": float(len(missing)), "expected": 0.0,
                     "ok": len(missing) == 0})
        return pd.DataFrame(rows)

    # -- export ----------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything as plain JSON-ready data (see :data:`SCHEMA_VERSION`)."""
        return {
            "schema": SCHEMA_NAME,
            "schema_version": SCHEMA_VERSION,
            "metadata": self.metadata,
            "hardware": self.hardware,
            "totals": self.totals_,
            "unclassified_summary": self.unclassified_summary(),
            "component_order": list(self.component_order),
            "components": _records(self.by_component()),
            "stages": _records(self._stages),
            "modules": _records(self._modules),
            "categories": _records(self._categories),
            "operators": _records(self._operators),
            "unclassified_ops": _records(self._unclassified_ops),
            "component_category": _records(self._component_category),
            "module_category": _records(self._module_category),
            "edges": _records(self._edges),
            "checks": _records(self.checks()),
            "runtime": self.runtime,
        }

    def to_json(self) -> bytes:
        """``joined.json`` content (orjson, compact; NaN become ``null``)."""
        from opmeter.io import json_bytes

        return json_bytes(self.to_dict())

    def save(self, path: str | Path) -> Path:
        """Write ``joined.json`` atomically (gzipped when the name ends in ``.gz``)."""
        from opmeter.io import gzip_bytes

        data = self.to_json()
        return atomic_write_bytes(path, gzip_bytes(data) if str(path).endswith(".gz") else data)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return _clean(value.item())
        except (AttributeError, ValueError):
            return value
    return value


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): _clean(v) for k, v in rec.items()} for rec in df.to_dict("records")]


_REQUIRED_KEYS = ("schema_version", "modules", "stages", "categories", "operators", "totals", "metadata")


def load_joined(path: str | Path) -> Joined:
    """Read a ``joined.json`` written by :meth:`Joined.save`.

    Raises
    ------
    OpmeterError
        When the file is missing, not JSON, of another schema or of an unsupported version.
    """
    from opmeter.io import read_json

    p = Path(path)
    data = read_json(p, "joined file")
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_NAME:
        found = data.get("schema") if isinstance(data, dict) else None
        raise OpmeterError(f"{p}: not an opmeter joined.json (schema {found!r}, expected {SCHEMA_NAME!r})")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise OpmeterError(
            f"{p}: joined.json schema_version {data.get('schema_version')!r} is not supported "
            f"(this opmeter reads version {SCHEMA_VERSION}); regenerate it with `opmeter report`"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise OpmeterError(f"{p}: joined.json lacks {', '.join(missing)}")

    from opmeter.checks import mapping, records

    def frame(key: str) -> pd.DataFrame:
        return pd.DataFrame(records(data.get(key), f"{p}: {key}"))

    order = data.get("component_order") or []
    if not isinstance(order, list) or not all(isinstance(c, str) for c in order):
        raise OpmeterError(f"{p}: component_order is not a list of component names")
    totals = mapping(data["totals"], f"{p}: totals")
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in totals.values()):
        raise OpmeterError(f"{p}: totals holds a value that is not a number")
    metadata = mapping(data["metadata"], f"{p}: metadata")
    runtime, hardware = data.get("runtime"), data.get("hardware")
    for key, value in (("runtime", runtime), ("hardware", hardware)):
        if value is not None:
            mapping(value, f"{p}: {key}")

    modules = frame("modules")
    if "predicted" in modules:
        modules["predicted"] = modules["predicted"].fillna(False).astype(bool)
    return Joined(
        modules=modules,
        stages=frame("stages"),
        categories=frame("categories"),
        operators=frame("operators"),
        unclassified_ops=frame("unclassified_ops"),
        edges=frame("edges"),
        component_category=frame("component_category"),
        totals_={k: (math.nan if v is None else float(v)) for k, v in totals.items()},
        metadata=dict(metadata),
        runtime=runtime,
        hardware=hardware,
        component_order=tuple(order),
        module_category=frame("module_category"),
    )


# -- building ----------------------------------------------------------------------------------------------------


def _call(trace: Trace, name: str, *args: Any, **kwargs: Any) -> pd.DataFrame:
    fn = getattr(trace, name, None)
    if fn is None:
        return pd.DataFrame()
    try:
        out = fn(*args, **kwargs)
    except (KeyError, ValueError, TypeError):
        return pd.DataFrame()
    return out if isinstance(out, pd.DataFrame) else pd.DataFrame(out)


def _stage_modules(trace: Trace, stage: str) -> pd.DataFrame:
    df = _call(trace, "by_module", stage=stage)
    if df.empty:
        return df
    keep = ["module", *[f"self_{m}" for m in METRICS if f"self_{m}" in df], *[m for m in METRICS if m in df]]
    df = df[keep].rename(columns={c: f"{stage}_{c}" for c in keep if c != "module"})
    return df


def join(
    trace: Trace,
    predicted_modules: pd.DataFrame | None = None,
    predicted_stages: pd.DataFrame | None = None,
    components: Sequence[Component] = (),
    stage_spec: StageSpec | None = None,
    param_bytes: Mapping[str, int] | None = None,
    runtime: Any = None,
    hardware: Mapping[str, Any] | None = None,
    operator_times: pd.DataFrame | None = None,
    metadata: Mapping[str, Any] | None = None,
    timing_trace: Trace | None = None,
) -> Joined:
    """Join a trace with the analytic prediction of the same run.

    Parameters
    ----------
    trace
        A :class:`opmeter.trace.Trace` (anything with its query methods).
    predicted_modules
        Per-module prediction in :func:`opmeter.analytic.base.layer_frame` layout (``module`` key = module path as
        the tracer names it); ``None`` joins nothing (measured only).
    predicted_stages
        Per-stage prediction: ``stage`` (``vision``, ``prefill``, ``decode``, ``decode[i]``), ``flops_tensor``,
        ``flops_cuda``, ``bytes_read``, ``bytes_written`` and optionally memory columns and ``predicted_time_s``.
    components
        Disjoint named components (path patterns; the adapter's); the rest is glue.
    stage_spec
        Where the model's request stage is (:class:`~opmeter.structure.StageSpec`); ``None``: no request stage.
    param_bytes
        Parameter + buffer bytes owned by each module path (its own, not children's), for measured weight memory.
    runtime
        A :class:`opmeter.runtime.RuntimeProfile` when the model executed for real.
    hardware
        Hardware entry used for predicted times (name, peaks), recorded in the output.
    operator_times
        The profiler operator table (:func:`opmeter.runtime.operator_table`) for category time shares.
    metadata
        Extra run metadata merged over the trace's.
    timing_trace
        A module-timing trace of the same run (``OpTracer(count_ops=False, timing=True)``): its per-module and
        per-stage times replace the counts trace's (which has none, or inflated ones, when it counted ops).
    """
    meta = _run_metadata(trace, metadata)
    modules = _measured_modules(trace)
    if timing_trace is not None:
        modules = _with_module_times(modules, timing_trace)
    modules = _with_bytes(modules)
    modules = _with_bytes(modules, "self_")
    modules["component"] = assign_components(modules, components)
    modules["param_bytes"] = modules["module"].map(lambda p: float((param_bytes or {}).get(p, 0)))
    modules["weight_bytes"] = _subtree_sum(modules, "param_bytes")

    modules = _with_stage_columns(modules, trace, timing_trace)
    modules = _forward_invoked(modules)
    modules = _with_prediction(modules, predicted_modules, components, param_bytes)

    totals = _totals(trace, modules)
    if timing_trace is not None:
        totals["time_s"] = _totals(timing_trace, modules)["time_s"]
    categories = _categories(trace, totals, operator_times)
    operators = _call(trace, "by_operator")
    if not operators.empty:
        operators = _shares(_with_bytes(operators), totals)
    unclassified_ops = _call(trace, "unclassified")
    if "reason" in unclassified_ops:  # ops outside every module are glue already (the <outside> module row)
        unclassified_ops = unclassified_ops[unclassified_ops["reason"] == "no category"].reset_index(drop=True)
    edges = _call(trace, "edges")
    comp_cat = _component_category(trace, modules, components)
    mod_cat = _call(trace, "by_module_and_category")
    if not mod_cat.empty:
        mod_cat = _with_bytes(mod_cat).drop(columns=["bytes_read", "bytes_written"])
        if "time_s" in mod_cat and mod_cat["time_s"].isna().all():
            mod_cat = mod_cat.drop(columns=["time_s"])
        mod_cat = _forward_module_category(modules, mod_cat)

    joined = Joined(
        modules=modules,
        stages=pd.DataFrame(),
        categories=categories,
        operators=operators,
        unclassified_ops=unclassified_ops,
        edges=edges,
        component_category=comp_cat,
        totals_=totals,
        metadata=meta,
        runtime=runtime.to_dict() if runtime is not None and hasattr(runtime, "to_dict") else runtime,
        hardware=dict(hardware) if hardware else None,
        component_order=tuple(dict.fromkeys(c.name for c in components)),
        module_category=mod_cat,
    )
    stages = _stages(trace, joined, predicted_stages, runtime, timing_trace, stage_spec or StageSpec())
    return attrs.evolve(joined, stages=stages)


def _run_metadata(trace: Trace, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The trace's metadata with the caller's over it, completeness, and the uncounted compute ops."""
    meta: dict[str, Any] = dict(getattr(trace, "metadata", {}) or {})
    meta.update(metadata or {})
    meta.setdefault("complete", bool(getattr(trace, "complete", True)))
    if getattr(trace, "error", None):
        meta.setdefault("error", str(trace.error))
    uncounted = _call(trace, "uncounted")  # compute ops without a FLOP formula: named in the report's headline
    if len(uncounted):
        meta["uncounted_ops"] = {str(r["op"]): int(r["calls"]) for r in uncounted.to_dict("records")}
    return meta


def _measured_modules(trace: Trace) -> pd.DataFrame:
    """The trace's per-module table with numeric inclusive and ``self_`` columns, parent and depth."""
    modules = _call(trace, "by_module")
    if modules.empty:
        modules = pd.DataFrame(columns=["module", "class_name", "parent", "depth", "calls"])
    modules = modules.copy()
    for col in ("flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "time_s", "calls"):
        modules[col] = _num(modules, col)
        modules[f"self_{col}"] = _num(modules, f"self_{col}") if col != "calls" else modules["calls"]
    modules = modules.drop(columns=["self_calls"])
    if "class_name" not in modules:
        modules["class_name"] = ""
    if "parent" not in modules:
        modules["parent"] = modules["module"].map(_parent)
    if "depth" not in modules:
        modules["depth"] = modules["module"].map(lambda p: 0 if p in (ROOT, OUTSIDE) else str(p).count(".") + 1)
    return modules


def _with_module_times(modules: pd.DataFrame, timing_trace: Trace) -> pd.DataFrame:
    """Per-module times from a module-timing trace, and the time outside every module call."""
    tm = _call(timing_trace, "by_module")
    if not tm.empty and "time_s" in tm:
        times = tm.set_index("module")
        for col in ("time_s", "self_time_s"):
            if col in times:
                modules[col] = modules["module"].map(times[col]).fillna(0.0).astype(float)
        # time outside every module call (preprocessing, the generate loop): the block's wall time minus the
        # root's calls; a module-timing trace counts no ops, so it has no <outside> row of its own
        wall = float(_totals(timing_trace, tm).get("time_s", math.nan))
        root_time = float(times["time_s"].get(ROOT, math.nan)) if "time_s" in times else math.nan
        outside = wall - root_time
        if math.isfinite(outside) and outside >= 0:
            if OUTSIDE not in set(modules["module"]):
                row = {"module": OUTSIDE, "class_name": OUTSIDE, "parent": None, "depth": 0}
                modules = pd.concat([modules, pd.DataFrame([row])], ignore_index=True)
                for col in modules.columns:
                    if col.startswith(("flops", "self_", "bytes", "time", "calls")):
                        modules[col] = _num(modules, col)
            mask = modules["module"] == OUTSIDE
            modules.loc[mask, "time_s"] = outside
            modules.loc[mask, "self_time_s"] = outside
    return modules


def _with_stage_columns(modules: pd.DataFrame, trace: Trace, timing_trace: Trace | None) -> pd.DataFrame:
    """``prefill_*`` and ``decode_*`` per-module columns (times from the timing trace when there is one)."""
    for stage in ("prefill", "decode"):
        per_stage = _stage_modules(trace, stage)
        if timing_trace is not None and not per_stage.empty:
            timed_stage = _stage_modules(timing_trace, stage)
            if not timed_stage.empty:
                tcols = [c for c in timed_stage.columns if c.endswith("time_s")]
                per_stage = per_stage.drop(columns=[c for c in tcols if c in per_stage]).merge(
                    timed_stage[["module", *tcols]], on="module", how="left"
                )
        if not per_stage.empty:
            modules = modules.merge(per_stage, on="module", how="left")
            for c in per_stage.columns:
                if c != "module":
                    modules[c] = _num(modules, c)
    return modules


def _with_prediction(modules: pd.DataFrame, predicted_modules: pd.DataFrame | None,
                     components: Sequence[Component], param_bytes: Mapping[str, int] | None) -> pd.DataFrame:
    """The predicted columns (``pred_*``), predicted-but-never-traced rows, and the relative differences."""
    pred_cols = [
        "flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "self_flops_tensor", "self_flops_cuda",
        "self_bytes_read", "self_bytes_written", "weight_bytes", "activation_bytes", "kv_cache_bytes",
    ]
    if predicted_modules is not None and len(predicted_modules):
        pm = predicted_modules.copy()
        keep = ["module", *[c for c in [*pred_cols, *LAYER_COLS] if c in pm], *(["calls"] if "calls" in pm else [])]
        pm = pm[keep].rename(columns={c: f"pred_{c}" for c in keep if c != "module"})
        pm["pred_layer"] = predicted_modules.get("class_name", pd.Series("", index=predicted_modules.index))
        extra = pm[~pm["module"].isin(modules["module"])]
        modules = modules.merge(pm, on="module", how="left")
        if len(extra):  # predicted but never traced: keep them visible with zero measurements
            filler = extra.copy()
            filler["class_name"] = filler["pred_layer"]
            filler["parent"] = filler["module"].map(_parent)
            filler["depth"] = filler["module"].map(lambda p: str(p).count(".") + 1)
            filler["invoked"] = NEVER
            filler["forward_calls"] = 0.0
            modules = pd.concat([modules[~modules["module"].isin(extra["module"])], filler], ignore_index=True)
            modules = modules.drop_duplicates("module", keep="first")
            for c in modules.columns:
                if c.startswith(("flops", "self_", "bytes", "time", "calls")) and not c.startswith("pred_"):
                    modules[c] = _num(modules, c)
            modules["component"] = assign_components(modules, components)
    for c in [*pred_cols, "calls"]:
        if f"pred_{c}" not in modules:
            modules[f"pred_{c}"] = math.nan
    if "pred_layer" not in modules:
        modules["pred_layer"] = None
    modules = _forward_invoked_prediction(modules)
    modules["predicted"] = modules["pred_flops_tensor"].notna()
    modules["pred_bytes"] = modules["pred_bytes_read"] + modules["pred_bytes_written"]
    modules["pred_self_bytes"] = modules["pred_self_bytes_read"] + modules["pred_self_bytes_written"]
    for m in ("flops_tensor", "flops_cuda", "bytes", "bytes_read", "bytes_written"):
        modules[f"rel_{m}"] = [rel_diff(a, b) for a, b in zip(modules[m], modules[f"pred_{m}"], strict=True)]
    modules["rel_weight_bytes"] = [
        rel_diff(a, b) if param_bytes else math.nan
        for a, b in zip(modules["weight_bytes"], modules["pred_weight_bytes"], strict=True)
    ]
    return modules


def _structure(modules: pd.DataFrame) -> tuple[list[str], dict[str, list[str]]]:
    paths = [str(p) for p in modules["module"]]
    children: dict[str, list[str]] = {}
    for p in paths:
        if p not in (ROOT, OUTSIDE):
            children.setdefault(_parent(p), []).append(p)
    return paths, children


def _forward_invoked(modules: pd.DataFrame) -> pd.DataFrame:
    """Classify every module (``invoked``) and give forward-invoked ones the inclusive metrics of their children.

    ``invoked`` is ``call`` (called through ``__call__``: on the tracer's module stack), ``forward`` (never called
    itself, but modules below it ran: its ``forward`` was invoked directly, as the vendor CLIP block does with
    ``self.self_attn.forward(...)``, or its children were called by another module), ``container`` (a
    ``ModuleList`` & co. whose items ran) or ``never``. A ``forward`` module's inclusive columns (FLOPs, bytes,
    time, per stage) become the sums over its children, and ``forward_calls`` the most calls of one child; its
    ``self_*`` columns stay 0 — its own ops ran in the caller's frame and are counted there — so components plus
    glue still equal the total.
    """
    modules = modules.copy()
    paths, children = _structure(modules)
    calls = dict(zip(paths, _num(modules, "calls").to_numpy(dtype=float), strict=True))
    classes = dict(zip(paths, modules["class_name"].astype(str), strict=True))
    cols = [c for c in INCLUSIVE if c in modules]
    cols += [f"{s}_{m}" for s in ("prefill", "decode") for m in METRICS if f"{s}_{m}" in modules]
    values = dict(zip(paths, np.nan_to_num(modules[cols].to_numpy(dtype=float)), strict=True))
    memo: dict[str, tuple[np.ndarray, float] | None] = {}

    def resolve(path: str) -> tuple[np.ndarray, float] | None:
        if calls[path] > 0:
            return values[path], calls[path]
        if path not in memo:
            memo[path] = None  # guards against cycles in odd path sets
            parts = [r for c in children.get(path, []) if (r := resolve(c)) is not None]
            memo[path] = (np.sum([v for v, _ in parts], axis=0), max(n for _, n in parts)) if parts else None
        return memo[path]

    invoked, forward_calls = [], []
    derived: dict[int, np.ndarray] = {}
    for i, path in enumerate(paths):
        if calls[path] > 0 or path == OUTSIDE:
            invoked.append(CALL)
            forward_calls.append(0.0)
            continue
        got = resolve(path) if path != ROOT else None
        if got is None:
            invoked.append(NEVER)
            forward_calls.append(0.0)
        elif classes[path] in CONTAINERS:
            invoked.append(CONTAINER)
            forward_calls.append(0.0)
        else:
            invoked.append(FORWARD)
            forward_calls.append(got[1])
            derived[i] = got[0]
    modules["invoked"] = invoked
    modules["forward_calls"] = forward_calls
    if derived:
        idx = modules.index[list(derived)]
        modules.loc[idx, cols] = np.vstack(list(derived.values()))
    return _forward_order(modules)


def _called_below(path: str, children: Mapping[str, list[str]], called: set[str]) -> list[str]:
    """The called modules nearest below ``path`` (no called module between them and ``path``)."""
    out: list[str] = []
    for child in children.get(path, []):
        out += [child] if child in called else _called_below(child, children, called)
    return out


def _forward_order(modules: pd.DataFrame) -> pd.DataFrame:
    """Move each forward-invoked module just before its first descendant, so the table stays in pre-order."""
    forward = modules["invoked"] == FORWARD
    if not forward.any():
        return modules
    paths = [str(p) for p in modules["module"]]
    key = [float(i) for i in range(len(paths))]
    for i in np.flatnonzero(forward.to_numpy()):
        prefix = paths[i] + "."
        first = next((j for j, p in enumerate(paths) if p.startswith(prefix) and not forward.iat[j]), None)
        if first is not None:
            key[i] = first - 0.5 + 1e-3 * paths[i].count(".")
    return modules.iloc[np.argsort(key, kind="stable")].reset_index(drop=True)


def _forward_module_category(modules: pd.DataFrame, mod_cat: pd.DataFrame) -> pd.DataFrame:
    """Per (module, category) rows of the forward-invoked modules: the sums of their nearest called descendants."""
    if "invoked" not in modules or mod_cat.empty or not (modules["invoked"] == FORWARD).any():
        return mod_cat
    _, children = _structure(modules)
    called = set(modules.loc[modules["calls"] > 0, "module"].astype(str))
    num = [c for c in mod_cat.columns if c not in ("module", "category") and
           pd.api.types.is_numeric_dtype(mod_cat[c])]
    rows = []
    for path in modules.loc[modules["invoked"] == FORWARD, "module"].astype(str):
        below = mod_cat[mod_cat["module"].isin(_called_below(path, children, called))]
        if len(below):
            rows.append(below.groupby("category", sort=False)[num].sum().reset_index().assign(module=path))
    return pd.concat([mod_cat, *rows], ignore_index=True) if rows else mod_cat


def _forward_invoked_prediction(modules: pd.DataFrame) -> pd.DataFrame:
    """Forward-invoked modules without a predicted row: the sum of their children's predictions (self = 0)."""
    if "invoked" not in modules or not (modules["invoked"] == FORWARD).any():
        return modules
    todo = modules["invoked"].eq(FORWARD) & modules["pred_flops_tensor"].isna()
    if not todo.any():
        return modules
    modules = modules.copy()
    paths, children = _structure(modules)
    cols = [f"pred_{m}" for m in ("flops_tensor", "flops_cuda", "bytes_read", "bytes_written")]
    values = dict(zip(paths, modules[cols].to_numpy(dtype=float), strict=True))

    def resolve(path: str) -> np.ndarray | None:
        if not np.isnan(values[path]).all():
            return values[path]
        parts = [r for c in children.get(path, []) if (r := resolve(c)) is not None]
        return np.nansum(parts, axis=0) if parts else None

    for i in modules.index[todo]:
        got = resolve(str(modules.at[i, "module"]))
        if got is None:
            continue
        modules.loc[i, cols] = got
        for m in ("flops_tensor", "flops_cuda", "bytes_read", "bytes_written"):
            modules.at[i, f"pred_self_{m}"] = 0.0
        modules.at[i, "pred_layer"] = str(modules.at[i, "class_name"]) + " (children)"
    return modules


def _subtree_sum(modules: pd.DataFrame, col: str) -> pd.Series:
    own = dict(zip(modules["module"], modules[col], strict=True))
    total: dict[str, float] = {}
    for path, value in own.items():
        for anc in _ancestors(str(path)):
            total[anc] = total.get(anc, 0.0) + float(value)
    return modules["module"].map(lambda p: total.get(p, 0.0))


def _totals(trace: Trace, modules: pd.DataFrame) -> dict[str, float]:
    raw: dict[str, Any] = {}
    fn = getattr(trace, "totals", None)
    if fn is not None:
        got = fn()
        raw = dict(got) if isinstance(got, Mapping) else dict(pd.Series(got))
    out: dict[str, float] = {}
    for key in ("flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "time_s", "ops", "calls"):
        if key in raw and raw[key] is not None:
            out[key] = float(raw[key])
    # fall back to the self sums of the module table (they partition the trace)
    for key in ("flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "time_s"):
        out.setdefault(key, float(_num(modules, f"self_{key}").sum()))
    out["flops"] = out["flops_tensor"] + out["flops_cuda"]
    out["bytes"] = out["bytes_read"] + out["bytes_written"]
    return out


def _categories(trace: Trace, totals: Mapping[str, float], operator_times: pd.DataFrame | None) -> pd.DataFrame:
    df = _call(trace, "by_category")
    if df.empty:
        df = pd.DataFrame(columns=["category", "calls", "flops_tensor", "flops_cuda", "bytes_read", "bytes_written"])
    df = _with_bytes(df)
    if operator_times is not None and len(operator_times):
        aten = operator_times[operator_times["op"].astype(str).str.startswith("aten::")]
        times = aten.groupby("category")["self_time_s"].sum()
        df["profiled_time_s"] = df["category"].map(times).fillna(0.0)
        extra = times[~times.index.isin(df["category"])]
        if len(extra):
            df = pd.concat(
                [df, pd.DataFrame({"category": extra.index, "profiled_time_s": extra.to_numpy()})], ignore_index=True
            )
        total_time = float(times.sum())
        df["time_share"] = df["profiled_time_s"] / total_time if total_time else math.nan
        df["time_s"] = df["profiled_time_s"]
    out = _shares(df, {**totals, "time_s": float(_num(df, "time_s").sum())} if "time_s" in df else totals)
    if "time_s" not in df:
        out["time_share"] = math.nan
    sort_key = _num(out, "flops_tensor") + _num(out, "flops_cuda")
    return out.assign(_k=sort_key).sort_values("_k", ascending=False).drop(columns="_k").reset_index(drop=True)


def _component_roots(modules: pd.DataFrame, components: Sequence[Component]) -> dict[str, tuple[str, str | None]]:
    """Component roots: ``path -> (component, nearest enclosing root path or None)``."""
    classes = dict(zip(modules["module"], modules["class_name"], strict=True))
    own: dict[str, str] = {}
    for path, cls in classes.items():
        name = next((c.name for c in components if c.matches(str(path), str(cls))), None)
        if name is not None and path not in (ROOT, OUTSIDE):
            own[str(path)] = name
    # a matched container that is never called itself (a ModuleList) is not on any call stack: its children are
    calls = dict(zip(modules["module"], modules["calls"], strict=True))
    children: dict[str, list[str]] = {}
    for path in classes:
        children.setdefault(_parent(str(path)), []).append(str(path))
    pending = [p for p, _ in own.items() if not calls.get(p)]
    while pending:
        path = pending.pop()
        name = own.pop(path)
        for child in children.get(path, []):
            if child not in own:
                own[child] = name
                if not calls.get(child):
                    pending.append(child)
    out: dict[str, tuple[str, str | None]] = {}
    for path, name in own.items():
        parent = next((a for a in _ancestors(path)[1:] if a in own), None)
        out[path] = (name, parent)
    return out


def _component_category(trace: Trace, modules: pd.DataFrame, components: Sequence[Component]) -> pd.DataFrame:
    """Component x category from inclusive per-(module, category) numbers: a component root's inclusive work minus
    the inclusive work of the component roots nested directly inside it; glue = category total - top-level roots."""
    cols = ["calls", "flops_tensor", "flops_cuda", "bytes"]
    mc = _call(trace, "by_module_and_category")
    cats = _call(trace, "by_category")
    if mc.empty or "module" not in mc or cats.empty:
        return pd.DataFrame(columns=["component", "category", *cols])
    mc = _with_bytes(mc)
    cats = _with_bytes(cats)
    roots = _component_roots(modules, components)
    acc: dict[tuple[str, str], list[float]] = {}

    def add(component: str, category: str, values: Sequence[float], sign: float) -> None:
        row = acc.setdefault((component, category), [0.0] * len(cols))
        for i, v in enumerate(values):
            row[i] += sign * float(v)

    for rec in mc.to_dict("records"):
        path = str(rec["module"])
        if path not in roots:
            continue
        name, parent = roots[path]
        values = [float(rec.get(c, 0.0) or 0.0) for c in cols]
        add(name, str(rec["category"]), values, 1.0)
        if parent is not None:
            add(roots[parent][0], str(rec["category"]), values, -1.0)
        else:
            add(GLUE, str(rec["category"]), values, -1.0)
    for rec in cats.to_dict("records"):
        add(GLUE, str(rec["category"]), [float(rec.get(c, 0.0) or 0.0) for c in cols], 1.0)
    rows = [{"component": comp, "category": cat_, **dict(zip(cols, vals, strict=True))}
            for (comp, cat_), vals in acc.items()]
    out = pd.DataFrame(rows, columns=["component", "category", *cols])
    keep = (out[cols].abs() > 1e-9).any(axis=1)
    return out[keep].reset_index(drop=True)


def _stage_frame(trace: Trace) -> pd.DataFrame:
    df = _call(trace, "stages")
    if df.empty:
        return df
    if "stage" not in df.columns:
        df = df.reset_index().rename(columns={"index": "stage"})
    return df


def _stages(
    trace: Trace, joined: Joined, predicted: pd.DataFrame | None, runtime: Any, timing_trace: Trace | None,
    spec: StageSpec,
) -> pd.DataFrame:
    """Measured (trace) and predicted stage rows; measured times from the runtime profile when executed.

    The request stage (``spec.request_stage``) gathers the explicit stages of that name (the request modules' calls,
    marked while tracing, wherever they ran); without them, the request components' share of the prefill.
    """
    st = _stage_frame(trace)
    if timing_trace is not None and not st.empty:
        tst = _stage_frame(timing_trace)
        if not tst.empty and "time_s" in tst:
            st = st.drop(columns=["time_s"], errors="ignore").merge(tst[["stage", "time_s"]], on="stage", how="left")
    rows: dict[str, dict[str, Any]] = {}

    def add(stage: str, **values: float) -> None:
        row = rows.setdefault(stage, {"stage": stage})
        for k, v in values.items():
            row[k] = row.get(k, 0.0) + float(v)

    req = spec.request_stage
    names = [str(n) for n in st["stage"]] if not st.empty else []
    explicit = [n for n in names if n == req or n.startswith(f"{req}[")]
    mods = joined.by_module()
    vis = {m: 0.0 for m in METRICS}
    if not explicit and spec.request_components:
        # the request components' work during prefill (the tracer's prefill stage includes it)
        mask = mods["component"].isin(spec.request_components)
        src = "prefill_self_" if "prefill_self_flops_tensor" in mods else "self_"
        vis = {m: float(_num(mods[mask], f"{src}{m}").sum()) for m in METRICS}
        add(req, **vis)
    decode_steps: list[str] = []
    for rec in st.to_dict("records") if not st.empty else []:
        name = str(rec["stage"])
        vals = {m: float(rec.get(m, 0.0) or 0.0) for m in METRICS}
        if name in explicit:
            add(req, **vals)
        elif name == "prefill":
            add("prefill", **{m: vals[m] - vis[m] for m in METRICS})
        elif name.startswith("decode["):
            decode_steps.append(name)
            add(name, **vals)
            add("decode", **vals)
        elif name not in ("decode", "total"):
            add(name, **vals)
    request = [req] if (spec.request_modules or spec.request_components or req in rows) else []
    for name in (*request, "prefill", "decode"):
        rows.setdefault(name, {"stage": name})
    head = [s for s in ("setup",) if s in rows]
    ordered = [*head, *request, "prefill", *[s for s in ("prefill.glue",) if s in rows], *decode_steps, "decode"]
    ordered += [s for s in rows if s not in ordered]
    out = pd.DataFrame([rows[s] for s in ordered])
    for m in METRICS:
        out[m] = _num(out, m)
    parts = out[~out["stage"].str.startswith("decode[")]
    total = {m: float(parts[m].sum()) for m in METRICS}
    out = pd.concat([out, pd.DataFrame([{"stage": "total", **total}])], ignore_index=True)
    out = _with_bytes(out)
    out["flops"] = out["flops_tensor"] + out["flops_cuda"]
    out["trace_time_s"] = out.pop("time_s")
    out = _with_predicted_stages(out, predicted, spec.request_stage)
    return _with_measured_times(out, runtime, spec.request_stage)


def _with_predicted_stages(out: pd.DataFrame, predicted: pd.DataFrame | None, req: str) -> pd.DataFrame:
    """The predicted work and time per stage (``pred_*``, ``predicted_time_s``) and the relative differences."""
    pcols = ["flops_tensor", "flops_cuda", "bytes_read", "bytes_written", "weight_bytes", "activation_bytes",
             "kv_cache_bytes", "predicted_time_s"]
    if predicted is not None and len(predicted):
        pr = predicted.copy()
        keep = ["stage", *[c for c in pcols if c in pr]]
        pr = pr[keep].rename(columns={c: (c if c == "predicted_time_s" else f"pred_{c}") for c in keep[1:]})
        if "total" not in set(pr["stage"]):
            base = pr[pr["stage"].isin([req, "prefill", "decode"])]
            tot: dict[str, Any] = {"stage": "total"}
            for c in pr.columns[1:]:
                if (c.startswith("pred_") and c.removeprefix("pred_") in ("flops_tensor", "flops_cuda", "bytes_read",
                                                                         "bytes_written")) or c == "predicted_time_s":
                    tot[c] = base[c].sum(min_count=1)
                else:
                    tot[c] = base[c].max()
            pr = pd.concat([pr, pd.DataFrame([tot])], ignore_index=True)
        out = out.merge(pr, on="stage", how="left")
    for c in pcols:
        name = c if c == "predicted_time_s" else f"pred_{c}"
        if name not in out:
            out[name] = math.nan
    if predicted is not None and "bytes" in predicted:
        out = out.merge(predicted[["stage", "bytes"]].rename(columns={"bytes": "pred_bytes"}), on="stage", how="left")
    else:
        out["pred_bytes"] = out["pred_bytes_read"] + out["pred_bytes_written"]
    out["pred_flops"] = out["pred_flops_tensor"] + out["pred_flops_cuda"]
    for m in ("flops_tensor", "flops_cuda", "bytes"):
        out[f"rel_{m}"] = [rel_diff(a, b) for a, b in zip(out[m], out[f"pred_{m}"], strict=True)]
    return out


def _with_measured_times(out: pd.DataFrame, runtime: Any, req: str) -> pd.DataFrame:
    """Measured stage times (mean, std) from the runtime profile, and measured / predicted."""
    out["measured_time_s"] = math.nan
    out["measured_time_std_s"] = math.nan
    if runtime is not None and getattr(runtime, "runs", None):
        from opmeter.runtime import Stat

        runs = runtime.runs
        per_stage: dict[str, Stat] = {
            req: Stat.of([r.vision_s for r in runs]),
            "prefill": Stat.of([r.prefill_s - r.vision_s for r in runs]),
            "decode": Stat.of([r.decode_s for r in runs]),
            "total": Stat.of([r.total_s for r in runs]),
        }
        n = min(len(r.decode_step_s) for r in runs)
        for i in range(n):
            per_stage[f"decode[{i}]"] = Stat.of([r.decode_step_s[i] for r in runs])
        out["measured_time_s"] = out["stage"].map(lambda s: per_stage[s].mean if s in per_stage else math.nan)
        out["measured_time_std_s"] = out["stage"].map(lambda s: per_stage[s].std if s in per_stage else math.nan)
    out["measured_over_predicted"] = [
        (m / p) if (isinstance(p, float) and p > 0 and not math.isnan(m)) else math.nan
        for m, p in zip(out["measured_time_s"].astype(float), out["predicted_time_s"].astype(float), strict=True)
    ]
    return out
