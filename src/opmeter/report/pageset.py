"""Figures of a report over a set of pages: planning by geometry, decode extension, per-page rows, distributions.

Pages of equal geometry (the model's words for what decides the shapes: crop grid, image tokens, prompt length)
run the same ops on the same shapes, so a shape-only set report traces each distinct geometry once, with a short
decode, and extends the decode to each page's own length. The extension rests on one fact checked on every trace:
a decode step's counts are affine in the KV length, so consecutive steps differ by a constant. With the first
step ``d0`` and that difference ``delta``, ``n`` steps sum to ``n*d0 + n*(n-1)/2*delta`` (exact). When the steps of
a trace are not affine, the caller traces the page's full length instead.

Nothing here names a model: the model's side supplies the pages (:class:`PagePlanner`) and their geometry columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import pandas as pd

METRICS = ("flops_tensor", "flops_cuda", "bytes")
"""Additive stage metrics carried per page (bytes = read + written)."""
SHORT_NEW_TOKENS = 4
"""New tokens of the trace of a geometry: the prefill's plus three decode steps, two differences to compare."""
AFFINE_RTOL = 1e-9
DISTRIBUTION_STATS = ("mean", "std", "p50", "p90", "max")


@attrs.frozen
class Page:
    """One page of a set: its file, size, decode budget and geometry columns, or why it is skipped."""

    file: str
    path: Path | None
    width: int = 0
    height: int = 0
    decode_tokens: int = 1
    geometry: Mapping[str, int] = attrs.field(factory=dict)
    error: str | None = None

    @property
    def key(self) -> tuple[tuple[str, int], ...]:
        """Pages with equal keys do the same work per token."""
        return tuple(sorted(self.geometry.items()))


class PagePlanner(Protocol):
    """A model's side of a set report: which pages, their geometry, the single-page workload they run as."""

    @property
    def set_id(self) -> str:
        """The set's name in the report title."""
        ...

    @property
    def base_workload(self) -> str:
        """The single-page workload each page runs as."""
        ...

    @property
    def x_column(self) -> str:
        """The geometry column TTFT is plotted against (e.g. ``image_tokens``)."""
        ...

    @property
    def description(self) -> str:
        """One line for the report header."""
        ...

    def pages(self, directory: Path, decode_tokens: int | None, max_pixels: int) -> list[Page]:
        """The pages (rendered or loaded into ``directory``), each with its geometry and budget, or its error."""
        ...


def by_geometry(pages: Sequence[Page]) -> dict[tuple[tuple[str, int], ...], list[int]]:
    """Indices of the pages without error, grouped by geometry; groups and pages in first-seen order."""
    groups: dict[tuple[tuple[str, int], ...], list[int]] = {}
    for i, page in enumerate(pages):
        if page.error is None:
            groups.setdefault(page.key, []).append(i)
    return groups


def _stage_metrics(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    def num(col: str) -> float:
        value = row.get(prefix + col)
        return float(value) if value is not None and value == value else math.nan

    nbytes = num("bytes")
    if math.isnan(nbytes):
        nbytes = num("bytes_read") + num("bytes_written")
    return {"flops_tensor": num("flops_tensor"), "flops_cuda": num("flops_cuda"), "bytes": nbytes}


@attrs.frozen
class AffineSteps:
    """Decode-step figures as ``first + i * delta`` for step ``i`` (each a metric -> value dict)."""

    first: dict[str, float]
    delta: dict[str, float]

    def step(self, i: int) -> dict[str, float]:
        """Figures of step ``i`` (0-based)."""
        return {m: self.first[m] + i * self.delta[m] for m in self.first}

    def total(self, steps: int) -> dict[str, float]:
        """Sum over ``steps`` steps."""
        tri = steps * (steps - 1) / 2
        return {m: steps * self.first[m] + tri * self.delta[m] for m in self.first}

    @classmethod
    def fit(cls, steps: Sequence[Mapping[str, float]]) -> AffineSteps | None:
        """The affine form of traced steps, ``None`` when consecutive differences are not constant (or < 3 steps)."""
        if len(steps) < 3:
            return None
        first = {m: float(steps[0][m]) for m in METRICS}
        delta = {m: float(steps[1][m]) - first[m] for m in METRICS}
        for i, step in enumerate(steps):
            for m in METRICS:
                expected = first[m] + i * delta[m]
                if abs(float(step[m]) - expected) > AFFINE_RTOL * max(1.0, abs(expected)):
                    return None
        return cls(first, delta)


@attrs.frozen
class GeometryRun:
    """What one traced (or executed) run of a page says, reduced to what a set report needs.

    Attributes
    ----------
    fixed
        Per non-decode stage (the request stage, ``prefill``, glue before decoding): metric -> value.
    steps
        The traced decode steps' figures (measured by the trace) and the analytic prediction's, in order.
    decode_glue
        Work between and after the decode steps (``decode.glue``), all steps together.
    components
        Per component: the whole run's and the decode group's figures.
    ttft_s, tpot_s
        The time model's predicted TTFT and per-step decode time (eager scenario) of the traced run.
    roofline_ttft_s
        The analytic roofline bound of the first forward at the hardware entry.
    roofline
        Roofline seconds of ``(flops_tensor, flops_cuda, bytes)`` at the hardware entry.
    measured_ttft_s, measured_tpot_s
        Means over the timed repeats when the run executed, else NaN.
    seconds
        Wall time of the run, by phase.
    """

    fixed: dict[str, dict[str, float]]
    steps: list[dict[str, float]]
    pred_steps: list[dict[str, float]]
    decode_glue: dict[str, float]
    components: pd.DataFrame
    ttft_s: float
    tpot_s: float
    roofline_ttft_s: float
    roofline: Callable[[float, float, float], float]
    measured_ttft_s: float = math.nan
    measured_tpot_s: float = math.nan
    seconds: dict[str, float] = attrs.field(factory=dict)
    hardware: str = ""
    """The hardware entry of the roofline columns; ``profile`` the device profile of the time model."""
    profile: str = ""

    @property
    def traced_steps(self) -> int:
        """Decode steps the run traced."""
        return len(self.steps)

    def affine(self) -> bool:
        """Whether both the traced and the predicted steps are affine in the KV length."""
        return AffineSteps.fit(self.steps) is not None and (
            not self.pred_steps or AffineSteps.fit(self.pred_steps) is not None)


def geometry_run(joined: Any, seconds: Mapping[str, float]) -> GeometryRun:
    """Reduce a report's :class:`~opmeter.join.Joined` (from ``ReportResult.joined``) to a :class:`GeometryRun`."""
    stages = joined.by_stage()
    fixed, steps, pred_steps, glue = {}, [], [], {m: 0.0 for m in METRICS}
    for row in stages.to_dict("records"):
        name = str(row["stage"])
        if name.startswith("decode["):
            steps.append(_stage_metrics(row))
            pred = _stage_metrics(row, "pred_")
            if not any(math.isnan(v) for v in pred.values()):
                pred_steps.append(pred)
        elif name == "decode.glue":
            glue = _stage_metrics(row)
        elif name not in ("decode", "total"):
            fixed[name] = _stage_metrics(row)
    if len(pred_steps) != len(steps):
        pred_steps = []
    comp = _component_figures(joined)
    tm = (joined.metadata.get("time_model") or {})
    predicted = tm.get("predicted") or {}
    measured = tm.get("measured") or {}
    head = joined.metadata.get("predicted") or {}
    return GeometryRun(
        fixed=fixed, steps=steps, pred_steps=pred_steps, decode_glue=glue, components=comp,
        ttft_s=_float(predicted.get("ttft_s")), tpot_s=_float(predicted.get("tpot_s")),
        roofline_ttft_s=_float(head.get("predicted_ttft_s")), roofline=joined.roofline_seconds,
        measured_ttft_s=_float(measured.get("ttft_s")), measured_tpot_s=_float(measured.get("tpot_s")),
        seconds=dict(seconds), hardware=str((joined.hardware or {}).get("name", "")),
        profile=str((tm.get("profile") or {}).get("label") or tm.get("profile_label") or ""))


def _float(value: Any) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _component_figures(joined: Any) -> pd.DataFrame:
    """Per component: the whole run's and the decode group's metrics (``decode_`` prefix)."""
    whole = joined.by_component()
    out = pd.DataFrame({"component": whole["component"]})
    for m in METRICS:
        out[m] = whole[m].astype(float)
    try:
        dec = joined.by_component("decode").set_index("component")
    except KeyError:  # no decode stage
        dec = None
    for m in METRICS:
        out[f"decode_{m}"] = (out["component"].map(dec[m]).astype(float).fillna(0.0) if dec is not None else 0.0)
    return out


PAGE_COLUMNS = ("file", "width", "height")
FIGURE_COLUMNS = ("decode_tokens", "tensor_flops", "bytes", "predicted_ttft_s", "predicted_tpot_s",
                  "measured_ttft_s", "measured_tpot_s")
"""``pages.csv``: ``file, width, height``, the model's geometry columns, these, then per-stage and extra columns."""
DISTRIBUTED = ("decode_tokens", "tensor_flops", "bytes", "predicted_ttft_s", "predicted_tpot_s",
               "roofline_ttft_s", "roofline_tpot_s", "measured_ttft_s", "measured_tpot_s")


def _is_glue(stage: str) -> bool:
    return stage == "setup" or stage.endswith(".glue")


def _add(a: Mapping[str, float], b: Mapping[str, float], scale: float = 1.0) -> dict[str, float]:
    return {m: a[m] + scale * b[m] for m in METRICS}


def decode_figures(run: GeometryRun, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    """``(decode steps, decode glue)`` figures of ``steps`` decode steps.

    The traced length is taken as traced; any other length is extended from the affine steps (the caller checked
    :meth:`GeometryRun.affine`), the glue between steps in proportion to the steps (the generate loop's glue
    grows by a few bytes per step with the generated ids, so extended bytes are within about 1e-5 of a full trace).
    """
    zero = {m: 0.0 for m in METRICS}
    if steps == run.traced_steps:
        total = zero
        for s in run.steps:
            total = _add(total, s)
        return total, dict(run.decode_glue)
    fit = AffineSteps.fit(run.steps)
    if fit is None:
        raise ValueError(f"the traced decode steps are not affine; trace {steps} steps instead")
    per_step = steps / run.traced_steps if run.traced_steps else 0.0
    return fit.total(steps), {m: v * per_step for m, v in run.decode_glue.items()}


def _mean_roofline(run: GeometryRun, steps: int) -> float:
    """Mean roofline seconds per decode step over ``steps`` steps (analytic figures; traced ones if absent)."""
    if steps <= 0:
        return math.nan
    source = run.pred_steps or run.steps
    fit = AffineSteps.fit(source)
    if fit is None or steps == len(source):
        cells = list(source) if steps == len(source) else []
    else:
        cells = [fit.step(i) for i in range(steps)]
    if not cells:
        return math.nan
    return sum(run.roofline(c["flops_tensor"], c["flops_cuda"], c["bytes"]) for c in cells) / len(cells)


def page_row(page: Page, run: GeometryRun) -> dict[str, Any]:
    """One ``pages.csv`` row: the page's figures at its own decode length (see :func:`decode_figures`).

    The predicted TPOT is the time model's per-step time of the traced run plus the growth of the roofline step
    time between the traced and the page's decode length (a longer KV cache reads more); both come from the same
    hardware entry or device profile.
    """
    steps = page.decode_tokens - 1
    decode, glue = decode_figures(run, steps)
    total = _add(decode, glue)
    row: dict[str, Any] = {"file": page.file, "width": page.width, "height": page.height, **page.geometry,
                           "decode_tokens": page.decode_tokens}
    for stage, figures in run.fixed.items():
        total = _add(total, figures)
        if not _is_glue(stage):
            row[f"{stage}_tensor_flops"], row[f"{stage}_bytes"] = figures["flops_tensor"], figures["bytes"]
    row["decode_tensor_flops"], row["decode_bytes"] = decode["flops_tensor"], decode["bytes"]
    roof_page, roof_traced = _mean_roofline(run, steps), _mean_roofline(run, run.traced_steps)
    growth = roof_page - roof_traced if steps != run.traced_steps else 0.0
    row |= {"tensor_flops": total["flops_tensor"], "cuda_flops": total["flops_cuda"], "bytes": total["bytes"],
            "predicted_ttft_s": run.ttft_s,
            "predicted_tpot_s": run.tpot_s + growth if steps > 0 else math.nan,
            "measured_ttft_s": run.measured_ttft_s, "measured_tpot_s": run.measured_tpot_s,
            "roofline_ttft_s": run.roofline_ttft_s, "roofline_tpot_s": roof_page,
            "traced_decode_steps": run.traced_steps, "error": None}
    return row


def error_row(page: Page) -> dict[str, Any]:
    """The row of a skipped page: what is known of it, and its error."""
    return {"file": page.file, "width": page.width, "height": page.height, **page.geometry,
            "decode_tokens": page.decode_tokens, "error": page.error}


def pages_frame(rows: Sequence[Mapping[str, Any]], geometry: Sequence[str]) -> pd.DataFrame:
    """The per-page table in ``pages.csv`` column order (missing figures empty)."""
    df = pd.DataFrame(list(rows))
    head = [*PAGE_COLUMNS, *geometry, *FIGURE_COLUMNS]
    for col in [*head, "error"]:
        if col not in df:
            df[col] = None
    rest = [c for c in df.columns if c not in head and c != "error"]
    df = df[[*head, *rest, "error"]]
    for col in ["width", "height", *geometry, "decode_tokens", "traced_decode_steps"]:
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return df


def distributions(pages: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``mean, std`` (sample, ddof=1), ``p50, p90, max`` of each column over the pages that succeeded.

    Columns without any value (measured times of a shape-only run) are left out.
    """
    ok = pages[pages["error"].isna()]
    rows = []
    for col in columns:
        if col not in ok:
            continue
        values = pd.to_numeric(ok[col], errors="coerce").dropna()
        if values.empty:
            continue
        rows.append({"figure": col, "pages": len(values), "mean": values.mean(),
                     "std": values.std() if len(values) > 1 else 0.0, "p50": values.quantile(0.5),
                     "p90": values.quantile(0.9), "max": values.max()})
    return pd.DataFrame(rows, columns=["figure", "pages", *DISTRIBUTION_STATS])


def page_components(page: Page, run: GeometryRun) -> pd.DataFrame:
    """The run's components at the page's decode length.

    The non-decode part is as traced; each component's decode part scales by the decode stage's growth factor of
    each metric (the KV-length growth is spread over the decode components in proportion, an approximation when
    the page's length differs from the traced one; the total stays exact).
    """
    steps = page.decode_tokens - 1
    decode, glue = decode_figures(run, steps)
    traced, traced_glue = decode_figures(run, run.traced_steps)
    comp = run.components.copy()
    for m in METRICS:
        short = traced[m] + traced_glue[m]
        factor = (decode[m] + glue[m]) / short if short else 0.0
        comp[m] = comp[m] - comp[f"decode_{m}"] + factor * comp[f"decode_{m}"]
    return comp[["component", *METRICS]]


def set_components(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Components summed over the pages, with their shares of FLOPs and bytes."""
    if not parts:
        return pd.DataFrame(columns=["component", *METRICS, "flops_share", "bytes_share"])
    whole = pd.concat(parts).groupby("component", sort=False)[list(METRICS)].sum().reset_index()
    flops = whole["flops_tensor"] + whole["flops_cuda"]
    whole["flops_share"] = flops / flops.sum() if flops.sum() else math.nan
    whole["bytes_share"] = whole["bytes"] / whole["bytes"].sum() if whole["bytes"].sum() else math.nan
    return whole
