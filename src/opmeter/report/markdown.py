"""``report.md``: the human-readable report of a :class:`~opmeter.join.Joined`.

Sections: run header (and the shape-only notice at the top when nothing was timed), headline numbers, the analytic
variant (and why it matches the trace), components, stages (measured vs predicted work and time), predicted vs
measured time (the calibrated time model, :mod:`opmeter.timemodel.assess`), runtime metrics,
module hierarchy down to the analytic layers (modules called only through ``.forward()`` included), module classes,
call-graph excerpt, operator categories, top operators, the unclassified bucket, verification, files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from opmeter.join import GLUE, Joined
from opmeter.report import format as fmt
from opmeter.timemodel.assess import markdown as time_model_section

REL_TOLERANCE = 0.01
"""Measured vs predicted agreement required for ``ok`` in the verification tables (1 %)."""


def _flops_cols(prefix: str = "") -> dict[str, Any]:
    return {f"{prefix}flops_tensor": fmt.flops, f"{prefix}flops_cuda": fmt.flops, f"{prefix}bytes": fmt.nbytes}


def _verdict(value: Any) -> str:
    v = fmt.number(value)
    if v is None:
        return "—"
    return "ok" if abs(v) <= REL_TOLERANCE else "**off**"


def _header(joined: Joined, context: Mapping[str, Any]) -> list[str]:
    meta = joined.metadata
    lines = [f"# opmeter report: {context.get('title') or meta.get('workload_id') or 'run'}", ""]
    if context.get("shape_only"):
        lines += [
            "> **Shape-only run** (meta device, no GPU used): operator counts, FLOPs, bytes, call graph and the",
            "> analytic join are exact for these shapes, but **no time was measured**. Times below are *predicted* "
            "by the",
            f"> roofline at the hardware entry `{(joined.hardware or {}).get('name', 'none')}`. Run with "
            "`--device cuda` (or `cpu`) to measure.",
            "",
        ]
    if not meta.get("complete", True):
        lines += [f"> **Incomplete trace**: the traced code raised `{meta.get('error', '?')}`; totals are partial.", ""]
    rows = [(k, context[k]) for k in ("command", "model", "preset", "workload", "device", "dtype", "hardware")
            if context.get(k) is not None]
    rows += [(k, v) for k, v in (context.get("extra") or {}).items()]
    if meta.get("vendor_patches"):
        rows.append(("vendor compatibility patches", ", ".join(f"`{p}`" for p in meta["vendor_patches"])))
    if meta.get("host_reads_answered"):
        rows.append(("shape-only host reads answered", ", ".join(
            f"{k} {v}" for k, v in meta["host_reads_answered"].items())))
    if rows:
        lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]
    return lines


def request_stage(joined: Joined) -> str:
    """The name of the model's request stage (encoder or vision work inside TTFT)."""
    return str(joined.metadata.get("request_stage") or "vision")


def _stage_words(joined: Joined) -> str:
    """What the stages mean, in the model's words."""
    req = request_stage(joined)
    parts = joined.metadata.get("request_parts")
    what = f"`{req}` = {parts}" if parts else f"`{req}` = the model's {req} modules"
    return (f"{what}, wherever they run (inside the first forward or before it); `prefill` = the rest of the first "
            f"forward (decoder over the prompt, LM head); TTFT = {req} + prefill.")


def _headline(joined: Joined, context: Mapping[str, Any]) -> list[str]:
    tot = joined.totals()
    unc = joined.unclassified_summary()
    st = joined.by_stage().set_index("stage")
    lines = ["## Headline numbers", ""]
    items = [
        ("tensor-core FLOPs (whole run)", fmt.flops(tot.get("flops_tensor"))),
        ("CUDA-core FLOPs (whole run)", fmt.flops(tot.get("flops_cuda"))),
        ("bytes read + written by ops", fmt.nbytes(tot.get("bytes"))),
        ("aten op calls", fmt.integer(tot.get("calls", tot.get("ops")))),
        ("compute ops with unknown FLOPs (no formula: uncounted, not zero)",
         fmt.uncounted(joined.metadata.get("uncounted_ops"))),
    ]
    req = request_stage(joined)
    for stage in (req, "prefill", "decode"):
        if stage in st.index:
            row = st.loc[stage]
            items.append((f"{stage}: FLOPs measured / predicted", f"{fmt.flops(row['flops'])} / "
                          f"{fmt.flops(row['pred_flops'])} ({fmt.rel(fmt_rel(row['flops'], row['pred_flops']))})"))
    if "total" in st.index:
        row = st.loc["total"]
        items.append(("whole run: tensor-core FLOPs measured vs predicted", fmt.rel(row["rel_flops_tensor"])))
    items.append(("FLOPs attributed to named components and categories", fmt.pct(unc["attributed_flops_share"], 2)))
    items.append(("unclassified FLOPs (glue + no category)", fmt.pct(unc["unclassified_flops_share"], 3)))
    items.append(("unclassified bytes (glue + no category)", fmt.pct(unc["unclassified_bytes_share"], 3)))
    if not math.isnan(unc.get("unclassified_time_share", math.nan)):
        items.append(("measured time attributed to named components (module timing)",
                      fmt.pct(unc["attributed_time_share"], 2)))
        items.append(("unclassified time (glue + no category)", fmt.pct(unc["unclassified_time_share"], 2)))
        if unc.get("outside_time_share", 0.0) > 0:
            items.append(("… of which outside every model call (preprocessing, host loop)",
                          fmt.pct(unc["outside_time_share"], 2)))
            items.append(("time inside model calls attributed to named components",
                          fmt.pct(unc["attributed_time_share_in_model"], 2)))
    cats = joined.by_category()
    if "time_share" in cats and cats["time_share"].notna().any():
        named = cats[cats["category"] != "unclassified"]["time_share"].sum()
        items.append(("profiled op time in named categories (torch.profiler)", fmt.pct(named, 2)))
    hw = (joined.hardware or {}).get("name", "?")
    for key, label in (("ttft", f"TTFT roofline bound on {hw} ({req} + prefill)"),
                       ("tpot", f"TPOT roofline bound on {hw} (decode step)")):
        if context.get(f"predicted_{key}_s") is not None:
            items.append((label, fmt.seconds(context[f"predicted_{key}_s"])))
    predicted = (joined.metadata.get("time_model") or {}).get("predicted") or {}
    if predicted:
        items.append(("TTFT / TPOT predicted by the time model (eager; see \"Predicted vs measured time\")",
                      f"{fmt.seconds(predicted.get('ttft_s'))} / {fmt.seconds(predicted.get('tpot_s'))}"))
    if (joined.metadata.get("time_model") or {}).get("headline"):
        items.append(("predicted vs measured total (criterion SC-002: within 15 %)",
                      joined.metadata["time_model"]["headline"]))
    rt = joined.runtime
    if rt:
        m = rt.get("metrics", {})

        def ms(metric: str, unit: str = "s") -> str:
            v = m.get(metric) or {}
            if v.get("mean") is None:
                return "—"
            if unit == "s":
                return f"{fmt.seconds(v['mean'])} ± {fmt.seconds(v.get('std') or 0.0)}"
            return f"{v['mean']:.4g} ± {(v.get('std') or 0.0):.2g}"

        generates = (m.get("tpot_s") or {}).get("mean") is not None
        items += [
            (f"TTFT measured ({req} + prefill), mean ± std of {rt.get('repeats')}", ms("prefill_s")),
            ("TPOT measured", ms("tpot_s")),
            ("tokens/s end to end", ms("tokens_per_s", "")),
            ("tokens/s decode (1/TPOT)", ms("decode_tokens_per_s", "")),
        ] if generates else [
            (f"time per request measured (the model's forward; it generates no tokens), mean ± std of "
             f"{rt.get('repeats')}", ms("prefill_s")),
        ]
        items += [
            ("MFU prefill / decode", f"{fmt.pct((m.get('mfu_prefill') or {}).get('mean'), 2)} / "
                                      f"{fmt.pct((m.get('mfu_decode') or {}).get('mean'), 2)}"
             + ("" if rt.get("peak_flops") else " (unknown peak: set OPMETER_PEAK_TFLOPS or run on a listed GPU)")),
        ]
    lines += ["| figure | value |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in items] + [""]
    return lines


def _analytic_variant(joined: Joined) -> list[str]:
    """Which analytic variant predicted this run, and the evidence the adapter read from the trace."""
    choice = joined.metadata.get("analytic_choice")
    if not isinstance(choice, Mapping):
        label = joined.metadata.get("analytic_variant")
        return ["## Analytic variant", "", f"`{label}`", ""] if label else []
    lines = [
        "## Analytic variant",
        "",
        f"Predicted with `{choice.get('label')}`, chosen from the trace so that the prediction follows the execution "
        "path that actually ran:",
        "",
    ]
    lines += [f"- {reason}" for reason in choice.get("reasons") or ()]
    return [*lines, ""]


def fmt_rel(measured: Any, predicted: Any) -> float:
    """Relative difference helper for formatted cells."""
    from opmeter.join import rel_diff

    return rel_diff(measured, predicted)


def _timed(df: pd.DataFrame, col: str = "time_s") -> bool:
    return col in df and bool(pd.to_numeric(df[col], errors="coerce").fillna(0).abs().sum() > 0)


def _components(joined: Joined) -> list[str]:
    df = joined.by_component()
    timed = _timed(df)
    roof = _timed(df, "roofline_time_s")
    hw = (joined.hardware or {}).get("name", "?")
    total = {"component": "**total**", **{c: df[c].sum() for c in df.columns if c != "component"
                                          and pd.api.types.is_numeric_dtype(df[c])}}
    total["rel_flops_tensor"] = fmt_rel(total["flops_tensor"], total.get("pred_flops_tensor"))
    df = pd.concat([df, pd.DataFrame([total])], ignore_index=True)
    return [
        "## Components",
        "",
        "Disjoint components (each module's *self* work goes to its nearest component root); the glue row is work "
        "outside every component (model `forward`, `generate` loop). Components + glue = total. Roofline time = "
        "each component's traced work at the hardware's peaks (`max(compute, bytes / bandwidth)`), i.e. where the "
        "time would go on that GPU at full efficiency.",
        "",
        fmt.table(
            df,
            ["component", "flops_tensor", "flops_cuda", "bytes", "flops_share", "bytes_share",
             *(["time_s", "time_share"] if timed else []), *(["roofline_time_s", "roofline_share"] if roof else []),
             "pred_flops_tensor", "rel_flops_tensor", "weight_bytes"],
            {**_flops_cols(), "flops_share": fmt.pct, "bytes_share": fmt.pct, "pred_flops_tensor": fmt.flops,
             "rel_flops_tensor": fmt.rel, "weight_bytes": fmt.nbytes, "time_s": fmt.seconds, "time_share": fmt.pct,
             "roofline_time_s": fmt.seconds, "roofline_share": fmt.pct},
            {"flops_tensor": "tensor-core", "flops_cuda": "CUDA-core", "flops_share": "FLOPs %",
             "bytes_share": "bytes %", "pred_flops_tensor": "predicted tensor-core", "rel_flops_tensor": "Δ vs pred",
             "weight_bytes": "params", "time_s": "time (self)", "time_share": "time %",
             "roofline_time_s": f"roofline time ({hw})", "roofline_share": "roofline %"},
        ),
        "",
        "![FLOPs by component](flops_by_component.svg)",
        "",
    ]


def _stages(joined: Joined) -> list[str]:
    df = joined.by_stage()
    steps = df[df["stage"].str.startswith("decode[")]
    keep = df[~df["stage"].str.startswith("decode[")]
    if len(steps) > 4:  # first two and last decode steps (before the decode total), the rest in the exports
        at = int((keep["stage"] == "decode").to_numpy().argmax()) if (keep["stage"] == "decode").any() else len(keep)
        keep = pd.concat([keep.iloc[:at], steps.iloc[:2], steps.iloc[-1:], keep.iloc[at:]], ignore_index=True)
    else:
        keep = df
    cols = ["stage", "flops_tensor", "flops_cuda", "bytes", "pred_flops_tensor", "rel_flops_tensor", "rel_bytes",
            "predicted_time_s", "measured_time_s", "measured_time_std_s", "measured_over_predicted"]
    lines = [
        "## Stages",
        "",
        _stage_words(joined) + " Predicted time = roofline "
        "max(compute at peak, bytes at bandwidth). Bytes are summed per aten op as dispatched (unfused; on meta, "
        "attention takes the math path with scores in memory), so memory-bound predictions are upper bounds for "
        "fused kernels. `total` includes the setup and glue stages, which the analytic model does not predict.",
        "",
        fmt.table(
            keep, [c for c in cols if c in keep],
            {**_flops_cols(), "pred_flops_tensor": fmt.flops, "rel_flops_tensor": fmt.rel, "rel_bytes": fmt.rel,
             "predicted_time_s": fmt.seconds, "measured_time_s": fmt.seconds, "measured_time_std_s": fmt.seconds,
             "measured_over_predicted": lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v))
             else f"{v:.2f}x"},
            {"flops_tensor": "tensor-core", "flops_cuda": "CUDA-core", "pred_flops_tensor": "predicted tensor-core",
             "rel_flops_tensor": "Δ FLOPs", "rel_bytes": "Δ bytes", "predicted_time_s": "predicted time",
             "measured_time_s": "measured time", "measured_time_std_s": "± std",
             "measured_over_predicted": "measured / predicted"},
        ),
        "",
    ]
    if len(steps) > 4:
        lines += [f"*{len(steps)} decode steps; all in `joined.json` (`stages`).*", ""]
    if joined.metadata.get("time_ratio"):
        lines += [f"*Measured / predicted: {joined.metadata['time_ratio']}.*", ""]
    lines += ["![Time by stage](time_by_stage.svg)", ""]
    return lines


def _memory(joined: Joined) -> list[str]:
    """Parameters (measured from the module tree vs the analytic footprint), predicted activation peaks and KV
    cache per stage, and the measured peak CUDA memory when the model ran on a GPU."""
    mods = joined.by_module().set_index("module")
    lines = ["## Memory", ""]
    rows = []
    if "<root>" in mods.index:
        root = mods.loc["<root>"]
        rows.append(("parameters + buffers", fmt.nbytes(root.get("weight_bytes")),
                     fmt.nbytes(root.get("pred_weight_bytes")), fmt.rel(root.get("rel_weight_bytes"))))
    st = joined.by_stage().set_index("stage")
    req = request_stage(joined)
    for stage in (req, "prefill", "decode"):
        if stage in st.index:
            row = st.loc[stage]
            rows.append((f"{stage}: activation peak (predicted)", "—", fmt.nbytes(row.get("pred_activation_bytes")),
                         "—"))
            if stage != req:
                rows.append((f"{stage}: KV cache at the end (predicted)", "—",
                             fmt.nbytes(row.get("pred_kv_cache_bytes")), "—"))
    rt = joined.runtime or {}
    peak = (rt.get("metrics") or {}).get("peak_memory_bytes")
    if peak and peak.get("mean") is not None:
        rows.append(("peak CUDA memory allocated (measured)", fmt.nbytes(peak["mean"]), "—", "—"))
    if not rows:
        return []
    lines += ["| quantity | measured | predicted | Δ |", "|---|---:|---:|---:|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines += ["", "Activation peaks are analytic estimates of live activation memory (inference, no autograd); "
              "per-module weights are in `modules.csv` (`weight_bytes`, `pred_weight_bytes`).", ""]
    return lines


def _runtime(joined: Joined) -> list[str]:
    rt = joined.runtime
    if not rt:
        return []
    rows = [{"metric": k, **v} for k, v in rt.get("metrics", {}).items()]
    df = pd.DataFrame(rows)
    lines = [
        "## Runtime",
        "",
        f"{rt.get('repeats')} measured repeats after one warm-up, device `{rt.get('device')}`; stage boundaries from "
        "forward hooks (CUDA events on GPU, host clock on CPU; see `opmeter.runtime`).",
        "",
    ]
    if len(df):
        def cell(v: Any) -> str:
            return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"

        lines += [fmt.table(df, ["metric", "mean", "std", "n"], {"mean": cell, "std": cell}), ""]
    ops = rt.get("operator_table")
    if ops:
        top = pd.DataFrame(ops).head(15)
        lines += [
            "PyTorch profiler, top operators by **self** time (self times add up; total time includes children and "
            "is not summed):",
            "",
            fmt.table(top, ["op", "category", "calls", "self_time_s", "total_time_s", "self_share"],
                      {"self_time_s": fmt.seconds, "total_time_s": fmt.seconds, "self_share": fmt.pct}),
            "",
        ]
    return lines


def _hierarchy(joined: Joined, max_depth: int) -> list[str]:
    df = joined.hierarchy(max_depth=max_depth)
    invoked = df["invoked"] if "invoked" in df else pd.Series("call", index=df.index)
    forward = invoked == "forward"
    uncalled = df[(df["calls"] == 0) & ~forward & ~df["module"].isin(["<root>"])]
    direct = df[forward]
    df = df[(df["calls"] > 0) | forward | (df["module"] == "<root>")].copy()
    df["module"] = [("&nbsp;&nbsp;" * int(d)) + str(m) for m, d in zip(df["module"], df["depth"], strict=True)]
    calls = [f"{fmt.integer(fc)} via `.forward()`" if f else fmt.integer(c)
             for c, fc, f in zip(df["calls"], df.get("forward_calls", df["calls"]), forward.loc[df.index],
                                 strict=True)]
    df["calls"] = calls
    lines = [
        "## Module hierarchy",
        f"Inclusive metrics, numeric indices collapsed to `*` (summed over instances), depth ≤ {max_depth}. "
        "Predicted = the analytic layer mapped to the module; Δ = (measured − predicted) / predicted. The full "
        "per-instance table is `modules.csv`, the category breakdown of every module `module_categories.csv`.",
        "",
        fmt.table(
            df,
            ["module", "class_name", "instances", "calls", "flops_tensor", "flops_cuda", "bytes", "self_flops_tensor",
             "top_category", "pred_flops_tensor", "rel_flops_tensor", "rel_flops_cuda", "rel_bytes",
             *(["time_s"] if _timed(df) else [])],
            {**_flops_cols(), "self_flops_tensor": fmt.flops, "pred_flops_tensor": fmt.flops,
             "rel_flops_tensor": fmt.rel, "rel_flops_cuda": fmt.rel, "rel_bytes": fmt.rel, "instances": fmt.integer,
             "time_s": fmt.seconds},
            {"class_name": "class", "flops_tensor": "tensor-core", "flops_cuda": "CUDA-core",
             "self_flops_tensor": "self tensor-core", "pred_flops_tensor": "predicted tensor-core",
             "rel_flops_tensor": "Δ tensor", "rel_flops_cuda": "Δ CUDA", "rel_bytes": "Δ bytes",
             "time_s": "time (incl.)", "top_category": "top category"},
        ),
        "",
    ]
    if len(direct):
        lines += _forward_only(joined, direct)
    return lines + _uncalled(uncalled)


def _forward_only(joined: Joined, direct: pd.DataFrame) -> list[str]:
    """The modules called only through ``.forward()`` (calls shown as "n via `.forward()`" in the hierarchy)."""
    names = ", ".join(f"`{m}` ({c})" for m, c in zip(direct["module"], direct["class_name"], strict=True))
    lines = [
        f"Called only through `.forward()`: {names}. Their `forward` is invoked directly, not through "
        "`__call__` (the vendor CLIP block calls `self.self_attn.forward(...)` and `self.mlp.forward(...)`), so the "
        "tracer never puts them on the module stack: their inclusive metrics and calls are their children's, and "
        "their own ops (attention core, activation) are in the calling block's *self* metrics. The prediction is the "
        "same scope (the analytic layer's children).",
    ]
    if "pred_layer_flops_tensor" in direct and direct["pred_layer_flops_tensor"].notna().any():
        rows = direct[direct["pred_layer_flops_tensor"].notna()]
        parts = []
        for r in rows.to_dict("records"):
            own_t = float(r["pred_layer_flops_tensor"]) - float(r["pred_flops_tensor"])
            own_c = float(r["pred_layer_flops_cuda"]) - float(r["pred_flops_cuda"])
            parts.append(f"`{r['module']}` {fmt.flops(r['pred_layer_flops_tensor'])} tensor-core / "
                         f"{fmt.flops(r['pred_layer_flops_cuda'])} CUDA-core, of which {fmt.flops(own_t)} / "
                         f"{fmt.flops(own_c)} own ops counted in the caller")
        lines[-1] += " Whole analytic layers, own ops included: " + "; ".join(parts) + "."
    return [*lines, ""]


def _uncalled(df: pd.DataFrame) -> list[str]:
    """Modules defined but never called (containers such as ``ModuleList`` are never called themselves)."""
    if df.empty:
        return []
    containers = {"ModuleList", "ModuleDict", "ParameterList", "ParameterDict"}
    real = df[~df["class_name"].isin(containers)]
    names = ", ".join(f"`{m}` ({c})" for m, c in zip(real["module"], real["class_name"], strict=True))
    line = f"Defined but never called: {names}." if len(real) else "Every module that computes was called."
    return [line + f" ({len(df) - len(real)} container rows such as `ModuleList` omitted.)", ""]


def _classes(joined: Joined) -> list[str]:
    df = joined.by_class()
    fwd = df["forward_calls"] if "forward_calls" in df else pd.Series(0, index=df.index)
    df = df[(df["calls"] > 0) | (fwd > 0)].copy()  # never-called classes (containers) are in classes.csv
    df["calls"] = [f"{fmt.integer(f)} via `.forward()`" if not c and f else fmt.integer(c)
                   for c, f in zip(df["calls"], fwd.loc[df.index], strict=True)]
    return [
        "## Module classes",
        "",
        "Sums over the instances of each class (inclusive metrics; classes nest, so rows do not add up).",
        "",
        fmt.table(
            df,
            ["class_name", "instances", "calls", "flops_tensor", "flops_cuda", "bytes", "pred_flops_tensor",
             "rel_flops_tensor", "rel_flops_cuda", "rel_bytes", "weight_bytes"],
            {**_flops_cols(), "pred_flops_tensor": fmt.flops, "rel_flops_tensor": fmt.rel, "rel_flops_cuda": fmt.rel,
             "rel_bytes": fmt.rel, "weight_bytes": fmt.nbytes},
            {"class_name": "class", "flops_tensor": "tensor-core", "flops_cuda": "CUDA-core",
             "pred_flops_tensor": "predicted tensor-core", "rel_flops_tensor": "Δ tensor", "rel_flops_cuda": "Δ CUDA",
             "rel_bytes": "Δ bytes", "weight_bytes": "params"},
        ),
        "",
    ]


def _callgraph(mermaid: str | None, max_lines: int = 60) -> list[str]:
    if not mermaid:
        return []
    lines = mermaid.strip().splitlines()
    more = len(lines) - max_lines
    body = "\n".join(lines[:max_lines])
    out = ["## Call graph (module classes)", "", "```mermaid", body, "```", ""]
    if more > 0:
        out += [f"*Excerpt: {more} more lines in `callgraph.mmd` / `callgraph.dot`.*", ""]
    else:
        out += ["Full graph: `callgraph.mmd`, `callgraph.dot`.", ""]
    return out


def _categories(joined: Joined) -> list[str]:
    df = joined.by_category()
    cols = ["category", "calls", "flops_tensor", "flops_cuda", "bytes", "flops_share", "bytes_share", "time_share"]
    lines = [
        "## Operator categories",
        "",
        fmt.table(
            df, [c for c in cols if c in df],
            {**_flops_cols(), "calls": fmt.integer, "flops_share": fmt.pct, "bytes_share": fmt.pct,
             "time_share": fmt.pct},
            {"flops_tensor": "tensor-core", "flops_cuda": "CUDA-core", "flops_share": "FLOPs %",
             "bytes_share": "bytes %", "time_share": "time % (profiler)"},
        ),
        "",
        "![Operator categories](categories.svg)",
        "",
    ]
    cc = joined.by_component_and_category()
    if len(cc):
        cc = cc.assign(flops=cc["flops_tensor"] + cc["flops_cuda"])
        pivot = cc.pivot_table(index="component", columns="category", values="flops", aggfunc="sum", fill_value=0.0)
        order = [c for c in [*joined.component_order, GLUE] if c in pivot.index]
        pivot = pivot.loc[order]
        pivot = pivot[[c for c in pivot.columns if pivot[c].sum() > 0]].reset_index()
        lines += [
            "FLOPs by component and category:",
            "",
            fmt.table(pivot, None, {c: fmt.flops for c in pivot.columns if c != "component"}),
            "",
        ]
    return lines


def _operators(joined: Joined, top: int) -> list[str]:
    df = joined.by_operator()
    if df.empty:
        return []
    df = df.assign(_f=df.get("flops_tensor", 0) + df.get("flops_cuda", 0)).sort_values("_f", ascending=False)
    cols = ["op", "category", "calls", "flops_tensor", "flops_cuda", "bytes", "flops_share", "exact"]
    return [
        f"## Top {top} operators by FLOPs",
        "",
        fmt.table(df, [c for c in cols if c in df], {**_flops_cols(), "calls": fmt.integer, "flops_share": fmt.pct},
                  {"flops_tensor": "tensor-core", "flops_cuda": "CUDA-core", "flops_share": "FLOPs %"}, max_rows=top),
        "",
    ]


def _unclassified(joined: Joined, top: int) -> list[str]:
    summary = joined.unclassified_summary()
    df = joined.unclassified()
    df = df[(df[["flops_tensor", "flops_cuda", "bytes", "time_s"]].abs().sum(axis=1) > 0)]  # drop empty rows
    df = df.assign(_f=df["flops_tensor"] + df["flops_cuda"] + df["bytes"] * 1e-9).sort_values("_f", ascending=False)
    timed = _timed(df)
    lines = [
        "## Unclassified",
        "",
        "Two kinds: **glue** — work outside every named component (the model's own `forward` lines such as "
        "`masked_scatter_`, the `generate` loop, ops outside any module); **no category** — aten ops no category "
        "rule matched (listed by name, never dropped).",
        "",
        "| bucket | FLOPs | bytes | time |",
        "|---|---:|---:|---:|",
    ]
    for kind in ("glue", "no_category", "unclassified"):
        lines.append(
            f"| {kind} | {fmt.pct(summary[f'{kind}_flops_share'], 3)} | {fmt.pct(summary[f'{kind}_bytes_share'], 3)} "
            f"| {fmt.pct(summary[f'{kind}_time_share'], 2)} |"
        )
    lines += [""]
    if len(df):
        lines += [
            fmt.table(df, ["kind", "name", "class_name", "calls", "flops_tensor", "flops_cuda", "bytes", "flops_share",
                           "bytes_share", *(["time_s", "time_share"] if timed else [])],
                      {**_flops_cols(), "calls": fmt.integer, "flops_share": fmt.pct, "bytes_share": fmt.pct,
                       "time_s": fmt.seconds, "time_share": fmt.pct},
                      {"class_name": "class", "flops_tensor": "tensor-core", "flops_cuda": "CUDA-core",
                       "flops_share": "FLOPs %", "bytes_share": "bytes %", "time_s": "time (self)",
                       "time_share": "time %"}, max_rows=top),
            "",
        ]
    else:
        lines += ["Nothing unclassified.", ""]
    return lines


def _verification(joined: Joined, verify_table: pd.DataFrame | None) -> list[str]:
    lines = ["## Verification", ""]
    checks = joined.checks()
    lines += [fmt.table(checks, ["check", "value", "expected", "ok"], {"value": lambda v: f"{v:.6g}",
                                                                       "expected": lambda v: f"{v:.6g}"}), ""]
    jm = joined.joined_modules()
    if len(jm):
        by_class = jm.groupby("class_name", sort=False).agg(
            modules=("module", "size"),
            flops_tensor=("flops_tensor", "sum"), pred_flops_tensor=("pred_flops_tensor", "sum"),
            flops_cuda=("flops_cuda", "sum"), pred_flops_cuda=("pred_flops_cuda", "sum"),
            bytes=("bytes", "sum"), pred_bytes=("pred_bytes", "sum"),
        ).reset_index()
        for m in ("flops_tensor", "flops_cuda", "bytes"):
            by_class[f"rel_{m}"] = [fmt_rel(a, b) for a, b in zip(by_class[m], by_class[f"pred_{m}"], strict=True)]
        by_class["tensor"] = by_class["rel_flops_tensor"].map(_verdict)
        by_class["cuda"] = by_class["rel_flops_cuda"].map(_verdict)
        n_off = int(((by_class["tensor"] == "**off**") | (by_class["cuda"] == "**off**")).sum())
        lines += [
            f"Traced modules joined with an analytic layer: {len(jm)} instances of {len(by_class)} classes; "
            f"{len(by_class) - n_off} classes within {REL_TOLERANCE:.0%} on both tensor-core and CUDA-core FLOPs.",
            "",
            fmt.table(by_class, ["class_name", "modules", "flops_tensor", "pred_flops_tensor", "rel_flops_tensor",
                                 "tensor", "flops_cuda", "pred_flops_cuda", "rel_flops_cuda", "cuda", "rel_bytes"],
                      {"flops_tensor": fmt.flops, "pred_flops_tensor": fmt.flops, "flops_cuda": fmt.flops,
                       "pred_flops_cuda": fmt.flops, "rel_flops_tensor": fmt.rel, "rel_flops_cuda": fmt.rel,
                       "rel_bytes": fmt.rel},
                      {"class_name": "analytic layer / class", "flops_tensor": "measured tensor",
                       "pred_flops_tensor": "predicted tensor", "rel_flops_tensor": "Δ", "flops_cuda": "measured CUDA",
                       "pred_flops_cuda": "predicted CUDA", "rel_flops_cuda": "Δ", "rel_bytes": "Δ bytes"}),
            "",
        ]
    else:
        lines += ["No analytic prediction was joined.", ""]
    if verify_table is not None and len(verify_table):
        lines += ["Per-layer verification (`opmeter verify`: each analytic layer against the traced reference module "
                  "at representative shapes; worst case per layer, all cases in `verification.csv`):", "",
                  fmt.table(verify_table), ""]
    return lines


def render(
    joined: Joined,
    context: Mapping[str, Any] | None = None,
    mermaid: str | None = None,
    verify_table: pd.DataFrame | None = None,
    files: Sequence[str] = (),
    hierarchy_depth: int = 7,
    top: int = 25,
) -> str:
    """The whole ``report.md`` as a string.

    Parameters
    ----------
    context
        Run description: ``title``, ``command``, ``model``, ``preset``, ``workload``, ``device``, ``dtype``,
        ``hardware``, ``shape_only``, ``predicted_ttft_s``, ``predicted_tpot_s``, ``extra`` (more header rows).
    mermaid
        Class-level call graph (Mermaid) for the excerpt.
    verify_table
        Optional per-layer verification table to append.
    files
        Names of the files written next to the report.
    """
    ctx = dict(context or {})
    parts: list[str] = []
    parts += _header(joined, ctx)
    parts += _headline(joined, ctx)
    parts += _analytic_variant(joined)
    parts += _components(joined)
    parts += _stages(joined)
    parts += time_model_section(joined.metadata.get("time_model"))
    parts += _memory(joined)
    parts += _runtime(joined)
    parts += _hierarchy(joined, hierarchy_depth)
    parts += _classes(joined)
    parts += _callgraph(mermaid)
    parts += _categories(joined)
    parts += _operators(joined, top)
    parts += _unclassified(joined, top)
    parts += _verification(joined, verify_table)
    if files:
        parts += ["## Files", ""] + [f"- `{name}`" for name in files] + [""]
    return "\n".join(parts)
