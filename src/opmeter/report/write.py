"""Step 6 of a report, write: tables, call graphs, plots, summary.json and report.md into the staging directory."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import pandas as pd
import torch

from opmeter.join import Joined
from opmeter.models.base import ModelAdapter, Workload
from opmeter.timemodel.profile import DeviceProfile
from opmeter.trace import Trace

if TYPE_CHECKING:
    from opmeter.report.exporters import Exporter


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


@attrs.frozen
class ReportData:
    """Everything the files of one report are written from, gathered once at the end of the pipeline."""

    joined: Joined
    trace: Trace
    timing_trace: Trace | None
    """The module-timing run's trace (spans), when the model executed."""
    adapter: ModelAdapter
    workload: Workload
    facts: RunFacts
    verification: pd.DataFrame | None
    """``--verify``: the per-layer verification rows."""
    started: float
    """``time.perf_counter()`` when the command started (report.md says how long it took)."""
    profile: DeviceProfile | None = None
    """The device profile the time model predicted with (saved beside the report, so it can be reused)."""


def _trace_json(d: ReportData, out: Path) -> list[Path]:
    from opmeter.report import exporters

    return [exporters.write_trace_json(d.trace, out / "trace.json", d.facts.compress)] if d.facts.write_trace else []


def _joined_json(d: ReportData, out: Path) -> list[Path]:
    from opmeter.report import exporters

    return [exporters.write_maybe_gzip(out / "joined.json", d.joined.to_json(), d.facts.compress)]


def _table(stem: str, frame: Callable[[Joined], pd.DataFrame]) -> Callable[[ReportData, Path], list[Path]]:
    def write(d: ReportData, out: Path) -> list[Path]:
        from opmeter.report import exporters

        return exporters.write_table(frame(d.joined), out, stem, d.facts.compress)
    return write


def _callgraph(d: ReportData, out: Path) -> list[Path]:
    from opmeter.report import exporters

    return exporters.write_callgraph(d.trace, out)


def _chrome_trace(d: ReportData, out: Path) -> list[Path]:
    from opmeter.report import exporters

    if d.timing_trace is None:
        return []
    written = exporters.write_chrome_trace(d.timing_trace, out / "chrome_trace.json", d.facts.compress)
    return [written] if written is not None else []


def _plot(name: str, draw: Callable[[Joined, Path], None]) -> Callable[[ReportData, Path], list[Path]]:
    def write(d: ReportData, out: Path) -> list[Path]:
        draw(d.joined, out / name)
        return [out / name]
    return write


def _flops_plot(joined: Joined, path: Path) -> None:
    from opmeter.report import plots

    plots.flops_by_component(joined.by_component(), path)


def _categories_plot(joined: Joined, path: Path) -> None:
    from opmeter.report import plots

    plots.categories(joined.by_category(), path)


def _time_plot(joined: Joined, path: Path) -> None:
    from opmeter.report import plots

    stages = joined.by_stage()
    plots.time_by_stage(stages[~stages["stage"].str.startswith("decode[")], path,
                        hardware=(joined.hardware or {}).get("name"))


def _verification(d: ReportData, out: Path) -> list[Path]:
    from opmeter.report import exporters

    if d.verification is None:
        return []
    return exporters.write_table(d.verification, out, "verification", d.facts.compress)


def _summary(d: ReportData, out: Path) -> list[Path]:
    from opmeter.timemodel.assess import summary as time_summary
    from opmeter.timemodel.assess import write_summary

    doc = time_summary(d.joined.metadata.get("time_model"), f"{d.facts.model_spec} {d.facts.preset}", d.workload.id,
                       d.facts.device, d.joined.metadata.get("dtype"))
    return [write_summary(out / "summary.json", doc)]


def _device_profile(d: ReportData, out: Path) -> list[Path]:
    return [d.profile.save(out / "device_profile.json")] if d.profile is not None else []


def _report_exporters() -> tuple[Exporter[ReportData], ...]:
    """Every file of a report but report.md, in the order they are written."""
    from opmeter.report.exporters import Exporter

    tables = (("modules", "module table", Joined.by_module), ("operators", "operator table", Joined.by_operator),
              ("stages", "stage table", Joined.by_stage), ("components", "component table", Joined.by_component),
              ("categories", "category table", Joined.by_category), ("classes", "class table", Joined.by_class),
              ("module_categories", "module x category table", Joined.by_module_and_category))
    return (
        Exporter("trace JSON", _trace_json),
        Exporter("joined JSON", _joined_json),
        *(Exporter(name, _table(stem, frame)) for stem, name, frame in tables),
        Exporter("call graph (DOT, Mermaid)", _callgraph, required=False),
        Exporter("Chrome trace", _chrome_trace, required=False),
        Exporter("FLOPs by component plot", _plot("flops_by_component.svg", _flops_plot), required=False),
        Exporter("categories plot", _plot("categories.svg", _categories_plot), required=False),
        Exporter("time by stage plot", _plot("time_by_stage.svg", _time_plot), required=False),
        Exporter("verification table", _verification),
        Exporter("summary JSON", _summary),
        Exporter("device profile", _device_profile),
    )


REPORT_EXPORTERS: Final = _report_exporters()
"""The registry of a report's files (report.md is written after them, naming any that failed)."""


def report_context(joined: Joined, adapter: ModelAdapter, workload: Workload, facts: RunFacts) -> dict[str, Any]:
    """The header facts of report.md."""
    from opmeter.report import format as fmt
    from opmeter.version import __version__

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


def write_report(out_dir: Path, data: ReportData) -> list[str]:
    """Every file of a report (:data:`REPORT_EXPORTERS`, then report.md with the elapsed time and the outputs that
    failed); returns their names."""
    from opmeter.io import atomic_write_text
    from opmeter.report import markdown
    from opmeter.report.exporters import failures_markdown, write_all

    files, failures = write_all(REPORT_EXPORTERS, data, out_dir)
    verify_table = None
    if data.verification is not None:
        from opmeter.verify import worst_per_layer

        verify_table = verify_view(worst_per_layer(data.verification))
    files = sorted({*files, "report.md"})
    text = markdown.render(data.joined, report_context(data.joined, data.adapter, data.workload, data.facts),
                           mermaid=data.trace.to_mermaid(), verify_table=verify_table, files=files)
    text += failures_markdown(failures)
    text += f"\n*Generated by `{data.facts.command}` in {time.perf_counter() - data.started:.1f} s.*\n"
    atomic_write_text(out_dir / "report.md", text)
    return files


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
        if (m.get("tpot_s") or {}).get("mean") is None:  # a model that generates nothing: one forward per request
            lines.append(f"measured ({rt.get('device')}, {rt.get('repeats')} repeats): {ttft} per request (one "
                         "forward; no tokens generated)")
        else:
            lines.append(f"measured ({rt.get('device')}, {rt.get('repeats')} repeats): TTFT {ttft}, TPOT {tpot}, "
                         f"{tps:.3g} tokens/s")
    return lines
