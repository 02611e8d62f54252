"""``report.md`` of a report over a set of pages (:mod:`opmeter.report.pageset_run`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from opmeter.report import format as fmt

_FORMATS = {
    "tensor_flops": fmt.flops, "cuda_flops": fmt.flops, "bytes": fmt.nbytes, "predicted_ttft_s": fmt.seconds,
    "predicted_tpot_s": fmt.seconds, "roofline_ttft_s": fmt.seconds, "roofline_tpot_s": fmt.seconds,
    "measured_ttft_s": fmt.seconds, "measured_tpot_s": fmt.seconds,
}


def _figure(name: str, value: Any) -> str:
    if name.endswith("_flops"):
        return fmt.flops(value)
    return _FORMATS.get(name, fmt.integer)(value)


def _distribution_table(dist: pd.DataFrame) -> str:
    rows = []
    for r in dist.to_dict("records"):
        name = str(r["figure"])
        rows.append({"figure": name, "pages": str(r["pages"]),
                     **{k: _figure(name, r[k]) for k in ("mean", "std", "p50", "p90", "max")}})
    return fmt.table(pd.DataFrame(rows)) if rows else "*(no page succeeded)*"


def _pages_table(pages: pd.DataFrame, geometry: Sequence[str]) -> str:
    ok = pages[pages["error"].isna()]
    if ok.empty:
        return "*(no page succeeded)*"
    cols = ["file", "width", "height", *geometry, "decode_tokens", "tensor_flops", "bytes", "predicted_ttft_s",
            "predicted_tpot_s", "roofline_ttft_s"]
    cols += [c for c in ("measured_ttft_s", "measured_tpot_s") if pd.to_numeric(ok[c], errors="coerce").notna().any()]
    formats = {c: (lambda v, c=c: _figure(c, v)) for c in cols if c != "file"}
    return fmt.table(ok, columns=cols, formats=formats)


def _components_table(comp: pd.DataFrame) -> str:
    if comp.empty:
        return "*(no page succeeded)*"
    return fmt.table(comp, columns=["component", "flops_tensor", "flops_cuda", "bytes", "flops_share",
                                    "bytes_share"],
                     formats={"flops_tensor": fmt.flops, "flops_cuda": fmt.flops, "bytes": fmt.nbytes,
                              "flops_share": fmt.pct, "bytes_share": fmt.pct})


def render(result: Any, context: Mapping[str, Any], files: Sequence[str]) -> str:
    """The Markdown of a set report (``result`` a :class:`~opmeter.report.pageset_run.SetResult`)."""
    pages, geometry = result.pages, list(result.geometry_columns)
    ok, bad = pages[pages["error"].isna()], pages[pages["error"].notna()]
    shape_only = result.device == "meta"
    lines = [f"# {context['title']}", "", f"- command: {context['command']}"]
    lines += [f"- {k}: {v}" for k, v in context["header"].items()]
    lines += [f"- pages: {len(pages)}; reported {len(ok)}; skipped {len(bad)}", ""]
    if shape_only:
        lines += [
            f"Shape-only: {len(result.geometries)} distinct geometries ({', '.join(geometry)}) were traced once each "
            "on the meta device with a short decode; each page's decode is extended to its own length from the "
            "traced steps, which are checked to be affine in the KV length. FLOPs and bytes are exact for every "
            "page; predicted TTFT is the time model's (eager scenario), predicted TPOT its per-step time plus the "
            "roofline growth of a longer KV cache; no time is measured.", ""]
    else:
        lines += ["Executed: every page ran at its decode length (above) and was timed over the repeats after a "
                  "warm-up; measured TTFT and TPOT are means over the repeats.", ""]
    lines += [*(f"> {n}" for n in result.notes), ""] if result.notes else []
    lines += ["## Distributions over the pages", "", _distribution_table(result.distributions), "",
              "mean and sample std (ddof = 1); p50 and p90 interpolated; skipped pages excluded.", "",
              "![TTFT against image tokens](ttft_vs_image_tokens.svg)", "",
              "## Pages", "", _pages_table(pages, geometry), ""]
    if not bad.empty:
        lines += ["## Skipped pages", "", fmt.table(bad, columns=["file", "error"]), ""]
    if shape_only and not result.geometries.empty:
        lines += ["## Distinct geometries traced", "",
                  fmt.table(result.geometries, formats={"seconds": lambda v: f"{v:.1f} s"}), ""]
    lines += ["## Components over the set", "",
              "Sums over the reported pages. The decode part of each component is scaled from the traced decode to "
              "each page's length in proportion to the decode total (exact in sum, approximate per component when "
              "lengths differ).", "", _components_table(result.components), "",
              "## Files", "", *(f"- `{f}`" for f in files), ""]
    return "\n".join(lines)
