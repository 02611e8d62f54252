"""Exports of a :class:`~opmeter.trace.trace.Trace`: class-level call graph (DOT, Mermaid), Chrome/Perfetto spans."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opmeter.io import write_json

if TYPE_CHECKING:
    from opmeter.trace.trace import Trace


def _class_nodes(trace: Trace) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str, int]]]:
    # by_class() rows are per qualified class; the graph (like edges(level="class")) names classes by their short
    # name, so classes of the same name in different modules share one node: their numbers add up.
    nodes: dict[str, dict[str, Any]] = {}
    for r in trace.by_class().to_dict(orient="records"):
        n = nodes.setdefault(str(r["class_name"]), {"calls": 0, "instances": 0, "flops": 0.0})
        n["calls"] += int(r["calls"])
        n["instances"] += int(r["instances"])
        n["flops"] += float(r["flops_tensor"]) + float(r["flops_cuda"])
    edges = [(str(r["parent"]), str(r["child"]), int(r["calls"]))
             for r in trace.edges(level="class").to_dict(orient="records")]
    return nodes, edges


def _fmt(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def to_dot(trace: Trace) -> str:
    """Class-level call graph as Graphviz DOT: nodes = module classes (calls, instances, FLOPs), edges = calls."""
    nodes, edges = _class_nodes(trace)
    lines = ["digraph opmeter {", "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];']
    for name, n in nodes.items():
        label = f"{name}\\ncalls={n['calls']} instances={n['instances']}\\nflops={_fmt(n['flops'])}"
        lines.append(f'  "{_esc(name)}" [label="{_esc(label).replace(chr(92) * 2 + "n", chr(92) + "n")}"];')
    for a, b, c in edges:
        lines.append(f'  "{_esc(a)}" -> "{_esc(b)}" [label="{c}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mid(name: str, ids: dict[str, str]) -> str:
    if name not in ids:
        ids[name] = f"n{len(ids)}_" + re.sub(r"\W", "_", name)[:40]
    return ids[name]


def to_mermaid(trace: Trace) -> str:
    """Class-level call graph as a Mermaid ``flowchart LR``."""
    nodes, edges = _class_nodes(trace)
    ids: dict[str, str] = {}
    lines = ["flowchart LR"]
    for name, n in nodes.items():
        label = f"{name}<br/>calls={n['calls']} x{n['instances']}<br/>flops={_fmt(n['flops'])}"
        lines.append(f'  {_mid(name, ids)}["{label.replace(chr(34), chr(39))}"]')
    for a, b, c in edges:
        lines.append(f"  {_mid(a, ids)} -->|{c}| {_mid(b, ids)}")
    return "\n".join(lines) + "\n"


def chrome_trace_events(trace: Trace) -> list[dict[str, Any]]:
    """Chrome trace events (``ph: X``, microseconds): stage intervals on thread 0, module spans on thread 1."""
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": 0, "args": {"name": "opmeter"}},
        {"name": "thread_name", "ph": "M", "pid": 0, "tid": 0, "args": {"name": "stages"}},
        {"name": "thread_name", "ph": "M", "pid": 0, "tid": 1, "args": {"name": "modules"}},
    ]
    for s, a, b in trace.stage_spans_raw:
        rec_s = trace.stage_records[s]
        if b > a:
            events.append({"name": rec_s.name, "cat": rec_s.group, "ph": "X", "pid": 0, "tid": 0, "ts": a * 1e6,
                           "dur": (b - a) * 1e6, "args": {"group": rec_s.group, "kind": rec_s.kind}})
    for m, s, a, b, d in trace.spans_raw:
        rec = trace.modules[m]
        events.append({"name": rec.path, "cat": rec.class_name, "ph": "X", "pid": 0, "tid": 1, "ts": a * 1e6,
                       "dur": max(b - a, 0.0) * 1e6,
                       "args": {"class": rec.qualified_class, "depth": d,
                                "stage": trace.stage_records[s].name if s >= 0 else None}})
    return events


def to_chrome_trace(trace: Trace, path: str | Path) -> Path:
    """Write :func:`chrome_trace_events` as ``{"traceEvents": [...]}`` (open in Perfetto or chrome://tracing)."""
    doc = {"traceEvents": chrome_trace_events(trace), "displayTimeUnit": "ms",
           "otherData": {"spans_truncated": trace.spans_truncated, "timed": trace.timing}}
    return write_json(path, doc)
