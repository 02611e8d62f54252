"""Two reports side by side (``opmeter compare A B``): what moving from model A to model B costs, and where.

Reads only the files a report writes (``joined.json``, ``summary.json``), so any two reports compare: two models on
the same pages, two presets, two devices. Each figure gets A, B and B / A.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from opmeter.errors import OpmeterError
from opmeter.join import Joined, load_joined
from opmeter.report import format as fmt


@attrs.frozen
class ReportFigures:
    """The comparable figures of one report directory."""

    path: Path
    label: str
    workload: str
    request_stage: str
    facts: dict[str, float]
    """Model-level figures: parameters, image tokens, prompt length, KV cache at the end."""
    stages: dict[str, dict[str, float]]
    """Per stage (request stage, prefill, decode, total): FLOPs and bytes, measured (traced) and predicted."""
    times: dict[str, float]
    """Predicted TTFT / TPOT (roofline bound and time model) and measured ones when executed."""


def _joined_path(directory: Path) -> Path:
    for name in ("joined.json", "joined.json.gz"):
        if (directory / name).is_file():
            return directory / name
    raise OpmeterError(f"{directory} is not an opmeter report directory (no joined.json or joined.json.gz)")


def _finite(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x


def _stage_figures(joined: Joined, request: str) -> dict[str, dict[str, float]]:
    st = joined.by_stage().set_index("stage")
    out: dict[str, dict[str, float]] = {}
    for stage in (request, "prefill", "decode", "total"):
        if stage in st.index:
            row = st.loc[stage]
            out[stage] = {key: _finite(row.get(key)) for key in (
                "flops_tensor", "flops_cuda", "bytes", "pred_activation_bytes", "pred_kv_cache_bytes")}
    return out


def _times(joined: Joined, summary: dict[str, Any]) -> dict[str, float]:
    head = joined.metadata.get("predicted") or {}
    times = {"roofline TTFT": _finite(head.get("predicted_ttft_s")),
             "roofline TPOT": _finite(head.get("predicted_tpot_s"))}
    predicted = summary.get("predicted") or {}
    times |= {"time-model TTFT": _finite(predicted.get("ttft_s")), "time-model TPOT": _finite(predicted.get("tpot_s"))}
    measured = summary.get("measured") or {}
    times |= {"measured TTFT": _finite(measured.get("ttft_s")), "measured TPOT": _finite(measured.get("tpot_s"))}
    return times


def read_report(directory: str | Path) -> ReportFigures:
    """The figures of one report directory; one clear error when it is not one."""
    path = Path(directory)
    if not path.is_dir():
        raise OpmeterError(f"report directory {path} not found")
    joined = load_joined(_joined_path(path))
    summary: dict[str, Any] = {}
    if (path / "summary.json").is_file():
        from opmeter.io import read_json

        summary = read_json(path / "summary.json", "report summary", limit=16 << 20)
        if not isinstance(summary, dict):
            raise OpmeterError(f"{path / 'summary.json'} is not a JSON object (a report's summary)")
    try:
        return _figures(path, joined, summary)
    except (AttributeError, TypeError, ValueError, KeyError) as exc:  # a field of the wrong type in a damaged report
        raise OpmeterError(f"report directory {path} holds damaged figures ({type(exc).__name__}: "
                           f"{str(exc)[:120]})") from None


def _figures(path: Path, joined: Joined, summary: dict[str, Any]) -> ReportFigures:
    meta = joined.metadata
    workload = meta.get("workload") or {}
    head = meta.get("predicted") or {}
    request = str(meta.get("request_stage") or "vision")
    stages = _stage_figures(joined, request)
    facts = {
        "parameters": _finite(head.get("parameters")),
        "image tokens": _finite(workload.get("image_tokens", head.get("image_tokens"))),
        "prompt positions": _finite(workload.get("prefill_length", head.get("prefill_length"))),
        "new tokens": _finite(workload.get("max_new_tokens", meta.get("decode_tokens"))),
        "KV cache at the end (bytes)": stages.get("decode", stages.get("prefill", {})).get("pred_kv_cache_bytes",
                                                                                            math.nan),
    }
    label = f"{meta.get('model_name') or meta.get('model_spec', '?')} {meta.get('preset', '')}".strip()[:120]
    return ReportFigures(path, label, str(meta.get("workload_id", "?"))[:120], request[:40], facts, stages,
                         _times(joined, summary))


def _ratio(a: float, b: float) -> str:
    if not (math.isfinite(a) and math.isfinite(b)) or a == 0:
        return "—"
    return f"{b / a:.3g}x"


STAGE_FIGURES: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("flops_tensor", "tensor-core FLOPs", fmt.flops), ("flops_cuda", "CUDA-core FLOPs", fmt.flops),
    ("bytes", "bytes", fmt.nbytes),
)


def _rows(a: ReportFigures, b: ReportFigures) -> list[tuple[str, float, float, Callable[[Any], str]]]:
    rows: list[tuple[str, float, float, Callable[[Any], str]]] = [
        (name, a.facts.get(name, math.nan), b.facts.get(name, math.nan),
         fmt.nbytes if "bytes" in name else fmt.integer) for name in a.facts]
    stage_names = [("request", a.request_stage, b.request_stage), ("prefill", "prefill", "prefill"),
                   ("decode", "decode", "decode"), ("total", "total", "total")]
    for label, sa, sb in stage_names:
        name = f"{sa}/{sb}" if sa != sb else sa
        for key, what, f in STAGE_FIGURES:
            rows.append((f"{name}: {what}", a.stages.get(sa, {}).get(key, math.nan),
                         b.stages.get(sb, {}).get(key, math.nan), f))
        if label in ("request", "prefill"):
            rows.append((f"{name}: activation peak (predicted)", a.stages.get(sa, {}).get("pred_activation_bytes",
                         math.nan), b.stages.get(sb, {}).get("pred_activation_bytes", math.nan), fmt.nbytes))
    rows += [(name, a.times.get(name, math.nan), b.times.get(name, math.nan), fmt.seconds) for name in a.times]
    return rows


def to_markdown(a: ReportFigures, b: ReportFigures, plot: str | None = None) -> str:
    """The comparison as Markdown: one row per figure with A, B and B / A."""
    lines = [
        f"# {a.label} vs {b.label}",
        "",
        f"A: `{a.path}` ({a.label}, workload {a.workload}); B: `{b.path}` ({b.label}, workload {b.workload}).",
        "FLOPs and bytes are the traced (measured) counts; activation and KV-cache figures are the analytic model's;",
        "times: the roofline bound, the time model's eager prediction, and the measurement when the report executed.",
        "",
        "| figure | A | B | B / A |",
        "|---|---:|---:|---:|",
    ]
    for name, va, vb, f in _rows(a, b):
        if math.isnan(va) and math.isnan(vb):
            continue
        lines.append(f"| {name} | {f(va) if math.isfinite(va) else '—'} | {f(vb) if math.isfinite(vb) else '—'} | "
                     f"{_ratio(va, vb)} |")
    if plot:
        lines += ["", f"![FLOPs and bytes per stage]({plot})"]
    return "\n".join(lines) + "\n"


def plot_stages(a: ReportFigures, b: ReportFigures, path: Path) -> Path:
    """Grouped bars: tensor-core FLOPs and bytes per stage, A beside B."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    stages = [("request", a.request_stage, b.request_stage), ("prefill", "prefill", "prefill"),
              ("decode", "decode", "decode")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    x = np.arange(len(stages))
    for ax, key, unit, scale in ((axes[0], "flops_tensor", "TFLOPs", 1e12), (axes[1], "bytes", "GB", 1e9)):
        va = [a.stages.get(sa, {}).get(key, 0.0) / scale for _, sa, _ in stages]
        vb = [b.stages.get(sb, {}).get(key, 0.0) / scale for _, _, sb in stages]
        ax.bar(x - 0.2, va, 0.4, label=a.label)
        ax.bar(x + 0.2, vb, 0.4, label=b.label)
        ax.set_xticks(x, [s for s, _, _ in stages])
        ax.set_ylabel(unit)
        ax.set_title("tensor-core FLOPs" if key == "flops_tensor" else "bytes read + written")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="svg")
    plt.close(fig)
    return path


def compare_reports(dir_a: str | Path, dir_b: str | Path, out: str | Path, force: bool = False) -> list[Path]:
    """Write ``compare.md`` and ``compare.svg`` into ``out`` (a directory opmeter owns,
    :mod:`opmeter.report.outdir`); returns the paths."""
    from opmeter.io import atomic_write_text
    from opmeter.report.outdir import check_output_dir, staged_output

    out_dir = check_output_dir(out, force)
    a, b = read_report(dir_a), read_report(dir_b)
    with staged_output(out_dir, force=force, command="compare") as staging:
        svg = plot_stages(a, b, staging / "compare.svg")
        atomic_write_text(staging / "compare.md", to_markdown(a, b, svg.name))
    return [out_dir / "compare.md", out_dir / "compare.svg"]
