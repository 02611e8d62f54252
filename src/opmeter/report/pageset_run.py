"""``opmeter report`` over a set of pages: run each distinct geometry (shape-only) or each page (executed), then
write one report of per-page rows, distributions, TTFT against image tokens and the set's components.

Every run goes through the single-page report (:func:`opmeter.report.run.run_report` with ``write_files=False``)
and is read from its :class:`~opmeter.join.Joined`, so a set report counts, predicts and measures exactly as a
single-page report does.

* Shape-only (``--device meta``): each distinct geometry is traced once with :data:`~opmeter.report.pageset.
  SHORT_NEW_TOKENS` new tokens, and each page's decode is extended to its own length
  (:func:`opmeter.report.pageset.decode_figures`). A geometry whose traced steps are not affine is traced again at
  each page's own length (logged).
* Executed (``--device cpu|cuda``): every page runs at its own length with ``--repeats`` timed repeats. Without
  ``--profile`` the device is calibrated once (quick budget) for all pages.

Pages that cannot be read or run are listed with their error and skipped; the report fails (exit 1) only when no
page succeeded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pandas as pd

from opmeter.errors import OpmeterError
from opmeter.report.exporters import Exporter
from opmeter.report.inputs import check_out_dir, resolve_device
from opmeter.report.options import ReportOptions, ReportResult
from opmeter.report.pageset import (
    DISTRIBUTED,
    SHORT_NEW_TOKENS,
    GeometryRun,
    Page,
    PagePlanner,
    by_geometry,
    distributions,
    error_row,
    geometry_run,
    page_components,
    page_row,
    pages_frame,
    set_components,
)
from opmeter.timemodel.profile import DeviceProfile

log = logging.getLogger(__name__)


@attrs.frozen
class SetResult:
    """Everything a set report shows (before it is written)."""

    pages: pd.DataFrame
    distributions: pd.DataFrame
    components: pd.DataFrame
    geometries: pd.DataFrame
    geometry_columns: tuple[str, ...]
    device: str
    notes: tuple[str, ...]
    hardware: str = ""
    """Roofline columns: this hardware entry; predicted times: :attr:`profile`."""
    profile: str = ""
    device_profile: DeviceProfile | None = None
    """The profile every page was predicted with (executed sets), saved beside the set report."""


def _run_out(beside: Path, label: str) -> Path:
    """The ``out`` of one run of a set: never written (a page run writes no files), it places the partial trace an
    interrupted run saves beside the set's ``--out`` (``OUT.geometry-0.trace.partial.json``), where it outlives the
    process."""
    return beside.with_name(f"{beside.name}.{label}")


RunOne = Callable[[ReportOptions], ReportResult]
"""The single-page report (:func:`opmeter.report.run.run_report`), given by the caller."""


@attrs.frozen
class SetJob:
    """One set report in the making: its options, its pages' planner and the single-page report to run them with."""

    opts: ReportOptions
    planner: PagePlanner
    run_one: RunOne


def _page_options(job: SetJob, page: Page, tokens: int, out: Path) -> ReportOptions:
    return attrs.evolve(job.opts, workload=job.planner.base_workload, image=page.path, images=None,
                        decode_tokens=tokens, out=out, write_trace_json=False, profiler=False, progress=False,
                        write_files=False, verify=False, command=f"{job.opts.command} [page {page.file}]")


def _run(job: SetJob, page: Page, tokens: int, out: Path) -> GeometryRun:
    result = job.run_one(_page_options(job, page, tokens, out))
    return geometry_run(result.joined, result.seconds)


def _failed(page: Page, exc: OpmeterError) -> Page:
    log.warning("page %s skipped: %s", page.file, exc)
    return attrs.evolve(page, error=str(exc))


Runs = dict[int, tuple[Page, GeometryRun | None]]
"""Page index -> the page (its error set when it failed) and its run."""


@contextlib.contextmanager
def _progress(enabled: bool, total: int, what: str) -> Iterator[Callable[[], None]]:
    """A rich progress bar advanced once per run (or nothing)."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as bar:
        task = bar.add_task(what, total=total)
        yield lambda: bar.advance(task)


def _shape_only(job: SetJob, pages: list[Page], beside: Path) -> tuple[Runs, list[dict[str, Any]], list[str]]:
    """Trace each distinct geometry once; pages of a non-affine geometry at their own length."""
    done: Runs = {}
    geometries: list[dict[str, Any]] = []
    notes: list[str] = []
    groups = by_geometry(pages)
    with _progress(job.opts.progress, len(groups), "geometries (shape-only)") as tick:
        for g, (key, group) in enumerate(groups.items()):
            _geometry(job, pages, key, group, (beside, f"geometry-{g}"), done, geometries, notes)
            tick()
    return done, geometries, notes


def _geometry(job: SetJob, pages: list[Page], key: Any, group: list[int], at: tuple[Path, str], done: Runs,
              geometries: list[dict[str, Any]], notes: list[str]) -> None:
    """Trace one geometry (short decode) for the pages of ``group``; record their runs, the geometry, any note."""
    started = time.perf_counter()
    smallest = min(group, key=lambda i: pages[i].width * pages[i].height)  # same work, least image decoding
    try:
        run = _run(job, pages[smallest], SHORT_NEW_TOKENS, _run_out(*at))
    except OpmeterError as exc:
        done |= {i: (_failed(pages[i], exc), None) for i in group}
        return
    affine = run.affine()
    if affine:
        done |= {i: (pages[i], run) for i in group}
    else:
        note = (f"geometry {dict(key)}: the traced decode steps are not affine in the KV length; each of its "
                f"{len(group)} pages is traced at its own length")
        log.warning(note)
        notes.append(note)
        for i in group:
            done[i] = _run_or_fail(job, pages[i], _run_out(at[0], f"page-{i}"))
    geometries.append({**dict(key), "pages": len(group), "traced_new_tokens": SHORT_NEW_TOKENS,
                       "affine": affine, "seconds": time.perf_counter() - started})


def _run_or_fail(job: SetJob, page: Page, out: Path) -> tuple[Page, GeometryRun | None]:
    """The page run at its own length, or the page with its error."""
    try:
        return page, _run(job, page, page.decode_tokens, out)
    except OpmeterError as exc:
        return _failed(page, exc), None


def _machine_profile(job: SetJob, device: str, scratch: Path) -> tuple[SetJob, DeviceProfile, str]:
    """``--profile``, else this machine's cached or freshly measured profile, the same for every page (saved into
    ``scratch`` for the page runs); returns the job with it, the profile and the words saying where it came from."""
    from opmeter.timemodel.assess import machine_profile
    from opmeter.timemodel.profile import load_profile

    opts = job.opts
    if opts.profile is not None:
        return job, load_profile(opts.profile), f"device profile: {opts.profile}"
    profile, origin = machine_profile(device, opts.dtype or "float32", opts.threads, opts.recalibrate)
    path = profile.save(scratch / "device_profile.json")
    return attrs.evolve(job, opts=attrs.evolve(opts, profile=path)), profile, f"device profile {origin}"


def _executed(job: SetJob, pages: list[Page], device: str, scratch: Path, beside: Path
              ) -> tuple[Runs, list[dict[str, Any]], list[str], DeviceProfile]:
    """Run and time every page at its own length."""
    job, profile, note = _machine_profile(job, device, scratch)
    todo = [i for i, page in enumerate(pages) if page.error is None]
    done: Runs = {}
    with _progress(job.opts.progress, len(todo), f"pages ({device}, timed)") as tick:
        for i in todo:
            done[i] = _run_or_fail(job, pages[i], _run_out(beside, f"page-{i}"))
            tick()
    ran = [p for p, run in done.values() if run is not None]
    geometries = [{**dict(k), "pages": len(g)} for k, g in by_geometry(ran).items()]
    return done, geometries, [note], profile


def compute_set(job: SetJob, device: str) -> SetResult:
    """Run the pages of the job's planner and gather the set's tables (nothing written)."""
    opts = job.opts
    with tempfile.TemporaryDirectory(prefix="opmeter-pageset-") as tmp:
        scratch, beside = Path(tmp), Path(os.path.realpath(Path(opts.out).expanduser()))
        pages = job.planner.pages(scratch / "pages", opts.decode_tokens, opts.max_image_pixels)
        profile = None
        if device == "meta":
            done, geometries, notes = _shape_only(job, pages, beside)
        else:
            done, geometries, notes, profile = _executed(job, pages, device, scratch, beside)
    rows, parts = [], []
    for i, page in enumerate(pages):
        page, run = done.get(i, (page, None))
        if run is None:
            rows.append(error_row(page))
            continue
        rows.append(page_row(page, run))
        parts.append(page_components(page, run))
    geometry = tuple(dict.fromkeys(c for p in pages for c in p.geometry))
    frame = pages_frame(rows, geometry)
    runs = [run for _, run in done.values() if run is not None]
    hardware, label = (runs[0].hardware, runs[0].profile) if runs else ("", "")
    return SetResult(frame, distributions(frame, [*geometry, *DISTRIBUTED]), set_components(parts),
                     pd.DataFrame(geometries), geometry, device, tuple(notes), hardware, label, profile)


def _check(opts: ReportOptions) -> tuple[Path, str]:
    """The checks a single-page report makes before the long work, and those of a set: nothing is created."""
    out_dir = check_out_dir(opts.out, opts.force)
    if opts.image is not None:
        raise OpmeterError("--image and a set of pages (--images or a document-set workload) exclude each other")
    if opts.trace_path is not None:
        raise OpmeterError("--trace reports one saved run; a set of pages is traced afresh (drop --trace)")
    if opts.profile is not None:
        from opmeter.timemodel.profile import load_profile

        load_profile(opts.profile)
    if opts.hardware:
        from opmeter.hardware import lookup

        lookup(opts.hardware)
    return out_dir, resolve_device(opts.device)


def run_page_set(opts: ReportOptions, planner: PagePlanner, run_one: RunOne) -> ReportResult:
    """Produce the set report of ``planner``'s pages into ``opts.out`` (see the module docstring), running each
    page with ``run_one``.

    Raises
    ------
    OpmeterError
        When no page succeeded (every page's error in the message), or for bad options.
    """
    started = time.perf_counter()
    out_dir, device = _check(opts)
    result = compute_set(SetJob(opts, planner, run_one), device)
    ok = result.pages[result.pages["error"].isna()]
    if ok.empty:
        errors = "; ".join(f"{r['file']}: {r['error']}" for r in result.pages.head(5).to_dict("records"))
        raise OpmeterError(f"no page of {planner.set_id} could be reported ({len(result.pages)} pages: {errors})")
    files = write_set(out_dir, opts, planner, result, started)
    dist = result.distributions.set_index("figure")
    headline = [f"{len(ok)} of {len(result.pages)} pages reported ({len(result.pages) - len(ok)} skipped), "
                f"{len(result.geometries)} distinct geometries"]
    for col in (planner.x_column, "predicted_ttft_s", "measured_ttft_s"):
        if col in dist.index:
            d = dist.loc[col]
            show = (lambda v: f"{v:.4g} s") if col.endswith("_s") else (lambda v: f"{v:.0f}")
            headline.append(f"{col}: mean {show(d['mean'])}, std {show(d['std'])}, p50 {show(d['p50'])}, "
                            f"p90 {show(d['p90'])}, max {show(d['max'])}")
    return ReportResult(out_dir=out_dir, files=tuple(files), headline=tuple(headline),
                        seconds={"pages": time.perf_counter() - started}, joined=None)


@attrs.frozen
class SetOutput:
    """What the files of a set report are written from."""

    result: SetResult
    set_id: str
    x_column: str
    """The plot's x axis (the image tokens column of this model's pages)."""


def _csv(name: str, frame: Callable[[SetResult], pd.DataFrame], skip_empty: bool = False
         ) -> Callable[[SetOutput, Path], list[Path]]:
    def write(d: SetOutput, out: Path) -> list[Path]:
        from opmeter.report import exporters

        table = frame(d.result)
        return [] if skip_empty and table.empty else [exporters.write_csv(table, out / name)]
    return write


def _ttft_plot(d: SetOutput, out: Path) -> list[Path]:
    from opmeter.report import plots

    path = out / "ttft_vs_image_tokens.svg"
    plots.ttft_against(d.result.pages, d.x_column, path, title=f"TTFT per page ({d.set_id})")
    return [path]


SET_EXPORTERS: tuple[Exporter[SetOutput], ...] = (
    Exporter("page table", _csv("pages.csv", lambda r: r.pages)),
    Exporter("distribution table", _csv("distributions.csv", lambda r: r.distributions)),
    Exporter("component table", _csv("components.csv", lambda r: r.components)),
    Exporter("geometry table", _csv("geometries.csv", lambda r: r.geometries, skip_empty=True)),
    Exporter("TTFT per page plot", _ttft_plot, required=False),
    Exporter("device profile", lambda d, out: [d.result.device_profile.save(out / "device_profile.json")]
             if d.result.device_profile is not None else []),
)
"""The registry of a set report's files (report.md is written after them, naming any that failed)."""


def write_set(out_dir: Path, opts: ReportOptions, planner: PagePlanner, result: SetResult, started: float
              ) -> list[str]:
    """Write the set report into ``out_dir`` as one unit (:func:`opmeter.report.outdir.staged_output`)."""
    from opmeter.io import atomic_write_text
    from opmeter.report import pageset_markdown
    from opmeter.report.exporters import failures_markdown, write_all
    from opmeter.report.outdir import staged_output

    decode = (f"{opts.decode_tokens} new tokens per page (--decode-tokens)" if opts.decode_tokens else
              "each page's own length (a built-in page's expected output, a user's decode_tokens.json entry, else "
              "the workload's default)")
    header = {"set": planner.description, "decode": decode, "model": f"{opts.model}, preset {opts.preset}",
              "device": result.device + (" (shape-only: meta tensors, nothing executed)"
                                         if result.device == "meta" else f" ({opts.repeats} timed repeats)"),
              "predicted times": f"time model with {result.profile}" if result.profile else "no device profile",
              "roofline columns": f"{result.hardware} peaks" if result.hardware else "no hardware entry"}
    context = {"title": f"{planner.set_id} on {opts.preset}", "command": f"`{opts.command}`", "header": header}
    with staged_output(out_dir, force=opts.force) as staging:
        files, failures = write_all(SET_EXPORTERS, SetOutput(result, planner.set_id, planner.x_column), staging)
        files = sorted({*files, "report.md"})
        text = pageset_markdown.render(result, context, files)
        text += failures_markdown(failures)
        text += f"\n*Generated by `{opts.command}` in {time.perf_counter() - started:.1f} s.*\n"
        atomic_write_text(staging / "report.md", text)
    return files
