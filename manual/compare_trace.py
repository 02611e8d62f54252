"""Compare a saved trace JSON with the analytic model, per layer (module class and module) and per stage.

The trace must be of DeepSeek-OCR (reference or vendor) on a known workload: preset, workload id, decode tokens and
image size are read from the trace metadata written by ``opmeter report`` (override them with the options for a
trace recorded elsewhere, e.g. around the vendor ``model.infer()``).

Writes into ``--out`` (default ``reports/compare/<trace stem>``): ``compare.md`` (stages, per class, the modules
that disagree most), ``compare_classes.svg`` (measured / predicted tensor-core FLOPs per class) and
``compare_stages.svg`` (measured vs predicted FLOPs per stage). Ends with ``max_abs_rel_tensor=<x>``.

Usage::

    .venv/bin/python manual/compare_trace.py reports/dsocr-standard-v1/trace.json.gz
        [--preset deepseek-ocr-v1-base] [--workload dsocr-standard-v1] [--decode-tokens 512] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import attrs
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import orjson
import pandas as pd

from opmeter.errors import OpmeterError
from opmeter.hardware import HARDWARE
from opmeter.io import atomic_write_text
from opmeter.join import join
from opmeter.models.deepseek_ocr.adapter import DeepseekOCRAdapter
from opmeter.models.deepseek_ocr.config import get_config
from opmeter.models.deepseek_ocr.workloads import load_workload
from opmeter.report import format as fmt
from opmeter.report.exporters import read_maybe_gzip
from opmeter.report.plots import _save
from opmeter.trace import Trace


def load(path: Path) -> Trace:
    """A trace from ``.json`` or ``.json.gz``."""
    try:
        return Trace.from_dict(orjson.loads(read_maybe_gzip(path)))
    except OpmeterError:
        raise
    except Exception as exc:
        raise OpmeterError(f"{path}: not an opmeter trace ({type(exc).__name__}: {exc})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("trace", type=Path)
    parser.add_argument("--preset")
    parser.add_argument("--workload")
    parser.add_argument("--decode-tokens", type=int)
    parser.add_argument("--hardware", default="H100-SXM", help="for predicted stage times (default: %(default)s)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    try:
        trace = load(args.trace)
        meta: dict[str, Any] = dict(trace.metadata or {})
        preset = args.preset or meta.get("preset") or "deepseek-ocr-v1-base"
        workload = load_workload(args.workload or meta.get("workload_id") or "dsocr-standard-v1").for_config(preset)
        tokens = args.decode_tokens or meta.get("decode_tokens")
        if tokens:
            workload = attrs.evolve(workload, max_new_tokens=int(tokens))
        wmeta = meta.get("workload") or {}
        if wmeta.get("image_width"):
            workload = attrs.evolve(workload, width=int(wmeta["image_width"]), height=int(wmeta["image_height"]))
        get_config(preset)
        # the same analytic variant the report picks: dtype, SDPA path, host checks and routing read from the trace
        adapter = DeepseekOCRAdapter()
        prediction = adapter.predict(trace, workload, preset, HARDWARE[args.hardware])
        joined = join(trace, prediction.modules, prediction.stages, components=adapter.components(),
                      stage_spec=adapter.stage_spec)
    except OpmeterError as exc:
        print(f"compare_trace: error: {exc}", file=sys.stderr)
        return 1
    stem = args.trace.name.split(".")[0]
    out = args.out or Path("reports/compare") / stem
    stages = joined.by_stage()
    stages = stages[~stages["stage"].str.startswith("decode[")]
    jm = joined.joined_modules()
    by_class = jm.groupby("class_name", sort=False)[
        ["flops_tensor", "pred_flops_tensor", "flops_cuda", "pred_flops_cuda", "bytes", "pred_bytes"]
    ].sum().reset_index()
    for m in ("flops_tensor", "flops_cuda", "bytes"):
        by_class[f"rel_{m}"] = (by_class[m] - by_class[f"pred_{m}"]) / by_class[f"pred_{m}"].where(
            by_class[f"pred_{m}"] != 0)
    score = jm[["rel_flops_tensor", "rel_flops_cuda", "rel_bytes"]].abs().max(axis=1)
    worst = jm.assign(score=score).sort_values("score", ascending=False).head(25)
    rel_fmt = {c: fmt.rel for c in ("rel_flops_tensor", "rel_flops_cuda", "rel_bytes")}
    flops_fmt = {c: fmt.flops for c in ("flops_tensor", "pred_flops_tensor", "flops_cuda", "pred_flops_cuda")}
    md = [
        f"# Trace vs analytic: `{args.trace.name}`", "",
        f"Preset `{preset}`, workload `{workload.id}`, {workload.max_new_tokens} new tokens; "
        f"{len(jm)} traced modules joined with an analytic layer. Δ = (measured − predicted) / predicted.", "",
        "## Per stage", "",
        fmt.table(stages, ["stage", "flops_tensor", "pred_flops_tensor", "rel_flops_tensor", "flops_cuda",
                           "pred_flops_cuda", "rel_flops_cuda", "bytes", "pred_bytes", "rel_bytes"],
                  {**flops_fmt, **rel_fmt, "bytes": fmt.nbytes, "pred_bytes": fmt.nbytes}), "",
        "![stages](compare_stages.svg)", "",
        "## Per layer (module class)", "",
        fmt.table(by_class, ["class_name", "flops_tensor", "pred_flops_tensor", "rel_flops_tensor", "flops_cuda",
                             "pred_flops_cuda", "rel_flops_cuda", "rel_bytes"], {**flops_fmt, **rel_fmt}), "",
        "![classes](compare_classes.svg)", "",
        "## Modules that disagree most", "",
        fmt.table(worst, ["module", "class_name", "calls", "flops_tensor", "pred_flops_tensor", "rel_flops_tensor",
                          "rel_flops_cuda", "rel_bytes"], {**flops_fmt, **rel_fmt}), "",
    ]
    atomic_write_text(out / "compare.md", "\n".join(md))

    fig, ax = plt.subplots(figsize=(8, 0.35 * len(by_class) + 1.5))
    ratio = (by_class["flops_tensor"] / by_class["pred_flops_tensor"].where(by_class["pred_flops_tensor"] > 0))
    ax.barh(list(by_class["class_name"]), ratio.fillna(0.0))
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("measured / predicted tensor-core FLOPs")
    ax.set_title("Trace vs analytic per layer")
    _save(fig, out / "compare_classes.svg")

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(stages))
    ax.bar([x - 0.2 for x in xs], stages["flops"] / 1e12, width=0.4, label="measured")
    ax.bar([x + 0.2 for x in xs], stages["pred_flops"].fillna(0) / 1e12, width=0.4, label="predicted")
    ax.set_xticks(list(xs), list(stages["stage"]), rotation=20, ha="right")
    ax.set_ylabel("TFLOP")
    ax.legend()
    ax.set_title("Trace vs analytic per stage")
    _save(fig, out / "compare_stages.svg")

    max_rel = float(pd.to_numeric(jm["rel_flops_tensor"], errors="coerce").abs().max())
    print(f"wrote {out / 'compare.md'}")
    print(f"max_abs_rel_tensor={max_rel:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
