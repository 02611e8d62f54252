"""Step 6 of a report, write: tables, call graphs, plots, summary.json and report.md into the staging directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
import pandas as pd
import torch

from opmeter.join import Joined
from opmeter.models.base import ModelAdapter, Workload
from opmeter.trace import Trace


@attrs.frozen
class RunFacts:
    """What the report says about the run beside the joined tables."""

    command: str
    model_spec: str
    preset: str
    device: str
    headline: dict[str, float]
    """The prediction's headline (predicted TTFT/TPOT, parameters...); empty for a measured-only report."""
    compress: bool = False
    write_trace: bool = True


def write_data(out_dir: Path, joined: Joined, trace: Trace, timing_trace: Trace | None, facts: RunFacts
               ) -> list[str]:
    """trace.json, joined.json, the CSV tables, the call graphs and the Chrome trace; returns the file names."""
    from opmeter.report import exporters

    files: list[str] = []
    if facts.write_trace:
        files.append(exporters.write_trace_json(trace, out_dir / "trace.json", facts.compress).name)
    files.append(exporters.write_maybe_gzip(out_dir / "joined.json", joined.to_json(), facts.compress).name)
    for stem, df in (("modules", joined.by_module()), ("operators", joined.by_operator()),
                     ("stages", joined.by_stage()), ("components", joined.by_component()),
                     ("categories", joined.by_category()), ("classes", joined.by_class()),
                     ("module_categories", joined.by_module_and_category())):
        files += [p.name for p in exporters.write_table(df, out_dir, stem, facts.compress)]
    files += [p.name for p in exporters.write_callgraph(trace, out_dir)]
    if timing_trace is not None:
        chrome = exporters.write_chrome_trace(timing_trace, out_dir / "chrome_trace.json", facts.compress)
        if chrome is not None:
            files.append(chrome.name)
    return files


def write_plots(out_dir: Path, joined: Joined) -> list[str]:
    """FLOPs per component, categories and time per stage (SVG)."""
    from opmeter.report import plots

    plots.flops_by_component(joined.by_component(), out_dir / "flops_by_component.svg")
    plots.categories(joined.by_category(), out_dir / "categories.svg")
    stages = joined.by_stage()
    plots.time_by_stage(stages[~stages["stage"].str.startswith("decode[")], out_dir / "time_by_stage.svg",
                        hardware=(joined.hardware or {}).get("name"))
    return ["flops_by_component.svg", "categories.svg", "time_by_stage.svg"]


def report_context(joined: Joined, adapter: ModelAdapter, workload: Workload, facts: RunFacts) -> dict[str, Any]:
    """The header facts of report.md."""
    from opmeter import __version__
    from opmeter.report import format as fmt

    head = facts.headline
    hw = joined.hardware or {}
    extra = dict(workload.describe())
    if head.get("parameters"):
        extra["parameters"] = (f"{fmt.integer(head.get('parameters'))} ({fmt.nbytes(head.get('parameter_bytes'))} "
                               f"at {joined.metadata.get('dtype')})")
    extra["opmeter / torch"] = f"{__version__} / {torch.__version__}"
    summary = workload.summary()
    return {
        "title": f"{workload.id} on {facts.preset}",
        "command": f"`{facts.command}`",
        "model": f"{facts.model_spec} ({adapter.words.name})",
        "preset": facts.preset,
        "workload": f"{workload.id}: {summary.get('description', '')}",
        "device": facts.device + (" (shape-only: meta tensors, nothing executed)" if facts.device == "meta" else ""),
        "dtype": joined.metadata.get("dtype"),
        "hardware": f"{hw.get('name')} (predicted times) — {hw.get('source')}",
        "shape_only": facts.device == "meta",
        "predicted_ttft_s": head.get("predicted_ttft_s"),
        "predicted_tpot_s": head.get("predicted_tpot_s"),
        "request_stage": adapter.stage_spec.request_stage,
        "request_parts": adapter.words.request_parts,
        "predicted": adapter.words.predicted,
        "extra": extra,
    }


def write_report(out_dir: Path, joined: Joined, trace: Trace, timing_trace: Trace | None, adapter: ModelAdapter,
                 workload: Workload, facts: RunFacts, verification: pd.DataFrame | None, started: float
                 ) -> list[str]:
    """Every file of a report; returns their names (report.md last, with the elapsed time)."""
    from opmeter.io import atomic_write_text
    from opmeter.report import exporters, markdown
    from opmeter.timemodel.assess import summary as time_summary
    from opmeter.timemodel.assess import write_summary

    files = write_data(out_dir, joined, trace, timing_trace, facts) + write_plots(out_dir, joined)
    verify_table = None
    if verification is not None:
        from opmeter.verify import worst_per_layer

        files += [p.name for p in exporters.write_table(verification, out_dir, "verification", facts.compress)]
        verify_table = verify_view(worst_per_layer(verification))
    files.append(write_summary(out_dir / "summary.json", time_summary(
        joined.metadata.get("time_model"), f"{facts.model_spec} {facts.preset}", workload.id, facts.device,
        joined.metadata.get("dtype"))).name)
    files.append("report.md")
    text = markdown.render(joined, report_context(joined, adapter, workload, facts), mermaid=trace.to_mermaid(),
                           verify_table=verify_table, files=sorted(set(files)))
    text += f"\n*Generated by `{facts.command}` in {time.perf_counter() - started:.1f} s.*\n"
    atomic_write_text(out_dir / "report.md", text)
    return sorted(set(files))


def verify_view(df: pd.DataFrame) -> pd.DataFrame:
    """The worst case per layer, formatted for Markdown."""
    from opmeter.report import format as fmt

    out = df[["layer", "case", "rel_tensor", "rel_cuda", "rel_bytes", "status"]].copy()
    for col in ("rel_tensor", "rel_cuda", "rel_bytes"):
        out[col] = out[col].map(fmt.rel)
    return out.reset_index(drop=True)


def headline_lines(joined: Any, pred_head: dict[str, float]) -> list[str]:
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
