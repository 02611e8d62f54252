"""The typed seam of a report: the options a report is asked for and what it produced (shared by the single-run
pipeline, :mod:`opmeter.report.run`, and the set-of-pages one, :mod:`opmeter.report.pageset_run`)."""

from __future__ import annotations

from pathlib import Path

import attrs

from opmeter.join import Joined
from opmeter.report.limits import DEFAULT_MAX_IMAGE_PIXELS


@attrs.frozen
class ReportOptions:
    """Options of one report (the CLI flags)."""

    workload: str | None = None
    """Workload id (``None``: the adapter's default)."""
    model: str | None = None
    """``--model NAME[:ARG]`` (``None``: the default adapter, or the one that recorded ``trace_path``)."""
    preset: str | None = None
    """Preset id (``None``: the adapter's default)."""
    device: str = "auto"
    decode_tokens: int | None = None
    repeats: int = 3
    hardware: str | None = None
    out: str | Path = "reports/latest"
    image: str | Path | None = None
    trace_path: str | Path | None = None
    write_trace_json: bool = True
    compress: bool = False
    """Write trace.json, joined.json and the CSV tables gzipped (``*.gz``): for committed example reports."""
    profiler: bool = True
    weights: bool = True
    """Load the checkpoint's weights when the model has one (``False``: random initialisation from its config)."""
    weights_dir: str | Path | None = None
    """``--weights DIR``: a local checkpoint for adapters that build from a config."""
    nvtx_modules: bool = False
    """NVTX ranges per module call (not only per stage) in the module-timing run, for Nsight Systems."""
    verify: bool = False
    """Also run the per-layer verification (:mod:`opmeter.verify`) of the preset and add it to the report."""
    progress: bool = False
    command: str = "opmeter report"
    profile: str | Path | None = None
    """Device profile (``opmeter calibrate``) for the predicted times; ``None``: calibrate on the spot when executing,
    documented defaults of the hardware entry when shape-only (:mod:`opmeter.timemodel.assess`)."""
    dtype: str | None = None
    """dtype of the model (``float32``, ``bfloat16``...); ``None``: the adapter's default for the device."""
    threads: int | None = None
    """``torch.set_num_threads`` for the run (restored afterwards); ``None``: torch's setting."""
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    """Refuse larger ``--image`` pages (header read only); 0 = no limit."""
    images: str | None = None
    """``--images DIR|GLOB``: a report over these pages (:mod:`opmeter.report.pageset_run`)."""
    write_files: bool = True
    """``False``: compute and return the figures, write nothing (one page of a set report)."""
    recalibrate: bool = False
    """``--recalibrate``: measure a fresh device profile even when a cached one fits
    (:mod:`opmeter.timemodel.cache`)."""
    force: bool = False
    """``--force``: write into an existing directory opmeter did not make (:mod:`opmeter.report.outdir`)."""


@attrs.frozen
class ReportResult:
    """What a report produced."""

    out_dir: Path
    files: tuple[str, ...]
    headline: tuple[str, ...]
    seconds: dict[str, float]
    joined: Joined | None
    """The joined tables (``None`` for a report over a set of pages, which has one per geometry)."""
