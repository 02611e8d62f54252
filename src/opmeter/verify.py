"""Layer-by-layer verification: analytic predictions vs the tracer on the model's own modules.

A model adapter supplies the cases (:class:`Case`): a module of a shape-only (meta) or real build of a preset, a call
at representative shapes traced under :class:`~opmeter.trace.OpTracer`, and the analytic layer its mapping table
builds from the same module instance and input shapes. Adapters usually add end-to-end rows (the request stage, the
full prefill, one decode step of the whole model).

Tolerances (relative, ``|analytic - measured| / measured``):

* tensor-core FLOPs: 1% (the requirement; the analytic layers are exact on the reference);
* CUDA-core FLOPs: 2% (per-element estimates; exact op-for-op on the reference);
* bytes (read + written): 5% (copies depend on memory layouts; exact on the reference in shape-only mode).

``LlamaFlashAttention2`` needs flash-attn on CUDA; its row compares tensor-core FLOPs with the traced eager
attention (same two GEMMs) and marks CUDA-core and bytes ``n/a``.

Shape-only tracing uses PyTorch's math decomposition of ``F.scaled_dot_product_attention`` and the balanced MoE
routing of the reference; the analytic side is told the same (``sdpa="math"``, balanced experts).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import pandas as pd

from opmeter.analytic.base import Layer
from opmeter.analytic.mapping import qualified_name
from opmeter.io import atomic_write_text

TOL_TENSOR = 0.01
TOL_CUDA = 0.02
TOL_BYTES = 0.05

COLUMNS = [
    "layer",
    "implementation",
    "case",
    "measured_tensor_flops",
    "analytic_tensor_flops",
    "rel_tensor",
    "measured_cuda_flops",
    "analytic_cuda_flops",
    "rel_cuda",
    "measured_bytes",
    "analytic_bytes",
    "rel_bytes",
    "status",
]


@attrs.frozen
class Case:
    """One verification row: a reference module, its call and the analytic layer to compare with."""

    layer: str
    case: str
    module: Any
    call: Callable[[], Any]
    analytic: Callable[[], Layer]
    implementation: str = ""
    root: Any = None
    """Module the tracer is attached to (default ``module``)."""
    tensor_only: bool = False
    """Compare tensor-core FLOPs only (an analytic variant checked against a module with the same GEMMs)."""


def rel_diff(measured: float, analytic: float) -> float:
    """``(analytic - measured) / measured``; 0 when both are 0, ``inf`` when only the measurement is 0."""
    if measured == 0:
        return 0.0 if analytic == 0 else math.inf
    return (analytic - measured) / measured


def _row(case: Case, totals: dict[str, Any], layer: Layer) -> dict[str, Any]:
    t, c, r, w = layer.totals()
    mt, mc = int(totals["flops_tensor"]), float(totals["flops_cuda"])
    mb = int(totals["bytes_read"]) + int(totals["bytes_written"])
    rt, rc, rb = rel_diff(mt, t), rel_diff(mc, c), rel_diff(mb, r + w)
    if case.tensor_only:
        rc = rb = math.nan
        ok = abs(rt) <= TOL_TENSOR
    else:
        ok = abs(rt) <= TOL_TENSOR and abs(rc) <= TOL_CUDA and abs(rb) <= TOL_BYTES
    return {
        "layer": case.layer,
        "implementation": case.implementation or qualified_name(case.module),
        "case": case.case,
        "measured_tensor_flops": mt,
        "analytic_tensor_flops": t,
        "rel_tensor": rt,
        "measured_cuda_flops": mc,
        "analytic_cuda_flops": c,
        "rel_cuda": rc,
        "measured_bytes": mb,
        "analytic_bytes": r + w,
        "rel_bytes": rb,
        "status": ("pass" if ok else "FAIL") + (" (tensor-core only)" if case.tensor_only else ""),
    }


def run_case(case: Case) -> dict[str, Any]:
    """Trace one case and compare it with its analytic layer."""
    import torch

    from opmeter.trace import OpTracer

    with OpTracer(case.root if case.root is not None else case.module, nvtx=False) as trace, torch.no_grad():
        case.call()
    return _row(case, trace.totals(), case.analytic())


def verify(cases: Iterable[Case], progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Run every case (a model adapter's, see :mod:`opmeter.models.base`); one row per case with :data:`COLUMNS`."""
    rows = []
    for case in cases:
        if progress is not None:
            progress(f"{case.layer} {case.case}")
        rows.append(run_case(case))
    return pd.DataFrame(rows, columns=COLUMNS)


def worst_per_layer(df: pd.DataFrame) -> pd.DataFrame:
    """The row with the largest relative difference (any metric) per layer."""
    if df.empty:
        return df
    score = df[["rel_tensor", "rel_cuda", "rel_bytes"]].abs().max(axis=1)
    idx = score.groupby(df["layer"], sort=False).idxmax()
    return df.loc[idx.to_numpy()]


def _fmt_rel(value: Any) -> str:
    x = float(value)
    if math.isnan(x):
        return "n/a"
    return "inf" if math.isinf(x) else f"{x:+.2e}" if x else "0"


def to_markdown(df: pd.DataFrame, preset: str, seconds: float, device: str = "meta") -> str:
    """Markdown report: tolerances, a pass/fail line, the worst row per layer and every row."""

    def table(d: pd.DataFrame) -> str:
        head = ("| layer | implementation | case | tensor meas. | tensor analytic | rel | CUDA meas. | CUDA analytic "
                "| rel | bytes meas. | bytes analytic | rel | status |")
        lines = [head, "|" + "---|" * 13]
        for r in d.to_dict("records"):
            lines.append(
                f"| {r['layer']} | `{r['implementation']}` | {r['case']} | {r['measured_tensor_flops']:,} | "
                f"{r['analytic_tensor_flops']:,} | {_fmt_rel(r['rel_tensor'])} | {r['measured_cuda_flops']:,.0f} | "
                f"{r['analytic_cuda_flops']:,.0f} | {_fmt_rel(r['rel_cuda'])} | {r['measured_bytes']:,} | "
                f"{r['analytic_bytes']:,} | {_fmt_rel(r['rel_bytes'])} | {r['status']} |"
            )
        return "\n".join(lines)

    fails = int(df["status"].str.startswith("FAIL").sum())
    verdict = "all rows pass" if fails == 0 else f"**{fails} row(s) FAIL**"
    return "\n".join([
        f"# Verification: analytic layers vs traced reference modules ({preset})",
        "",
        f"{len(df)} rows, {verdict}; traced "
        + ("shape-only (meta device, bf16)" if device == "meta" else f"with real tensors on {device}")
        + f" in {seconds:.1f} s.",
        f"Tolerances: tensor-core FLOPs {TOL_TENSOR:.0%}, CUDA-core FLOPs {TOL_CUDA:.0%}, bytes (read + written) "
        f"{TOL_BYTES:.0%}. `rel` = (analytic - measured) / measured.",
        "",
        "## Worst row per layer",
        "",
        table(worst_per_layer(df)),
        "",
        "## All rows",
        "",
        table(df),
        "",
    ])


def write_verification(
    df: pd.DataFrame, out: str | Path, preset: str, seconds: float, device: str = "meta"
) -> tuple[Path, Path]:
    """Write ``verification.csv`` and ``verification.md`` into ``out``."""
    out_dir = Path(out)
    csv = atomic_write_text(out_dir / "verification.csv", df.to_csv(index=False))
    md = atomic_write_text(out_dir / "verification.md", to_markdown(df, preset, seconds, device))
    return csv, md


def run_verify(cases: Iterable[Case], preset: str, out: str | Path, progress: Callable[[str], None] | None = None,
               device: str = "meta") -> tuple[pd.DataFrame, float]:
    """Verify, write the files (titled with ``preset``), return the table and the elapsed seconds."""
    t0 = time.perf_counter()
    df = verify(cases, progress)
    seconds = time.perf_counter() - t0
    write_verification(df, out, preset, seconds, device)
    return df, seconds
