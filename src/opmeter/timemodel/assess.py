"""Predicted vs measured time of one report run: which profile, the comparison, ``summary.json``, the report section.

The profile is chosen by :func:`choose_profile`: ``--profile FILE``; else, when the model executed, a quick
calibration of this machine on the spot; else (shape-only) the documented defaults of the hardware entry
(:mod:`opmeter.timemodel.defaults`), or none. A profile of another device than the one that ran is named and its
times are not compared with the measured ones; a dtype or thread-count mismatch is named beside the comparison.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from opmeter.timemodel.model import SCENARIOS, TimePrediction
from opmeter.timemodel.profile import DeviceProfile

log = logging.getLogger(__name__)

SUMMARY_SCHEMA: Final = "opmeter.summary/1"
SC002_TOLERANCE: Final = 0.15
"""SC-002: predicted total within 15 % of the measured total."""


@attrs.frozen
class ProfileChoice:
    """The profile a report predicts with, how it was obtained, and what does not match the run."""

    profile: DeviceProfile | None
    origin: str
    """``file PATH``, ``calibrated on the spot (quick)``, ``defaults for ENTRY`` or ``none``."""
    foreign: str | None = None
    """Why the profile is not of the device that ran (then nothing is compared), else ``None``."""
    mismatches: tuple[str, ...] = ()
    """Differences that do not prevent the comparison but are named (dtype, threads)."""

    @property
    def label(self) -> str:
        """One line: the profile and where it came from."""
        if self.profile is None:
            return f"no device profile ({self.origin})"
        return f"{self.profile.label} — {self.origin}"


def check_profile(profile: DeviceProfile, origin: str, device: str, device_name: str, dtype: str | None,
                  threads: int | None) -> ProfileChoice:
    """A :class:`ProfileChoice` for a given profile against the device that ran (``meta``: nothing ran)."""
    foreign = None
    if device in ("cpu", "cuda") and (profile.device != device or profile.device_name != device_name):
        foreign = (f"the profile is of {profile.device_name} ({profile.device}); this run executed on "
                   f"{device_name} ({device}): predicted times are for the profile's device and are not compared "
                   "with the measured ones")
    mismatches = []
    if dtype and profile.dtype != dtype:
        mismatches.append(f"profile calibrated in {profile.dtype}, the model ran in {dtype}")
    if device == "cpu" and threads is not None and profile.device == "cpu" and profile.threads != threads:
        mismatches.append(f"profile calibrated with {profile.threads} threads, the run used {threads}")
    return ProfileChoice(profile, origin, foreign, tuple(mismatches))


def machine_profile(device: str, dtype: str, threads: int | None, recalibrate: bool = False,
                    name: str | None = None) -> tuple[DeviceProfile, str]:
    """This machine's profile for an executed run: the cached one (:mod:`opmeter.timemodel.cache`) unless
    ``recalibrate`` or there is none fresh, else a quick calibration on the spot, cached for the next run; returns
    it and the words saying where it came from."""
    import torch

    from opmeter.timemodel import cache
    from opmeter.timemodel.calibrate import calibrate, device_name

    key = cache.MachineKey(device, name or device_name(device), dtype, threads or torch.get_num_threads(),
                           torch.__version__)
    held = None if recalibrate else cache.lookup(key)
    if held is not None:
        return held.profile, (f"cached {held.profile.budget} profile measured {held.profile.created[:16]} "
                              f"({held.path}; --recalibrate measures a fresh one)")
    log.info("no --profile%s: calibrating %s on the spot (quick budget)",
             " (--recalibrate)" if recalibrate else " and none cached", device)
    profile = calibrate(device, dtype, threads, quick=True)
    stored = cache.store(profile)
    where = f"; cached in {stored} for the next runs" if stored is not None else ""
    return profile, ("calibrated on the spot (quick budget; `opmeter calibrate` makes a full one, pass it with "
                     f"--profile){where}")


def choose_profile(profile_path: str | Path | None, device: str, dtype: str | None, hardware: Any,
                   threads: int | None = None, recalibrate: bool = False) -> ProfileChoice:
    """The profile for a report run (see the module docstring).

    Parameters
    ----------
    profile_path
        ``--profile FILE`` (already validated), or ``None``.
    device
        ``cpu``, ``cuda`` (executed) or ``meta`` (shape-only).
    dtype
        dtype the model ran in (``float32``...).
    hardware
        The hardware entry predicted times are for (shape-only defaults come from its peaks).
    threads
        ``torch.get_num_threads()`` of the run (CPU).
    recalibrate
        Measure a fresh profile even when a cached one fits (``--recalibrate``).
    """
    from opmeter.timemodel.calibrate import device_name
    from opmeter.timemodel.profile import load_profile

    here = device_name(device) if device in ("cpu", "cuda") else ""
    if profile_path is not None:
        return check_profile(load_profile(profile_path), f"file {profile_path}", device, here, dtype, threads)
    if device in ("cpu", "cuda"):
        profile, origin = machine_profile(device, dtype or "float32", threads, recalibrate, here)
        return check_profile(profile, origin, device, here, dtype, threads)
    if hardware is not None and getattr(hardware, "known", False):
        from opmeter.timemodel.defaults import default_profile

        return check_profile(default_profile(hardware, dtype or "bfloat16"),
                             f"DEFAULTS for {hardware.name} (documented assumptions, not a measurement: "
                             "opmeter.timemodel.defaults)", device, here, dtype, threads)
    return ProfileChoice(None, "none given and the hardware entry has no known peaks; pass --profile FILE")


def _rel(predicted: float | None, measured: float | None) -> float | None:
    """(predicted - measured) / measured, ``None`` when either is missing."""
    if predicted is None or measured is None or not math.isfinite(predicted) or not math.isfinite(measured):
        return None
    return (predicted - measured) / measured if measured > 0 else None


def measured_times(runtime: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """TTFT, TPOT, total (= TTFT + decode) and per-stage means of a runtime profile dict, ``None`` if not run."""
    if not runtime:
        return None
    m = runtime.get("metrics") or {}

    def mean(key: str) -> float | None:
        value = (m.get(key) or {}).get("mean")
        return float(value) if value is not None else None

    ttft, decode, vision, whole = mean("prefill_s"), mean("decode_s") or 0.0, mean("vision_s") or 0.0, mean("total_s")
    if ttft is None:
        return None
    total = ttft + decode
    return {"ttft_s": ttft, "tpot_s": mean("tpot_s"), "total_s": total,
            "stages": {"vision": vision, "prefill": ttft - vision, "decode": decode},
            "outside_model_s": whole - total if whole is not None else None}


@attrs.frozen
class TimeAssessment:
    """The time section of one report: profile, predictions (three scenarios), measured times, errors."""

    choice: ProfileChoice
    prediction: TimePrediction | None
    measured: dict[str, Any] | None
    components: list[dict[str, Any]] = attrs.Factory(list)

    @property
    def comparable(self) -> bool:
        """Whether predicted and measured times are of the same device."""
        return self.prediction is not None and self.measured is not None and self.choice.foreign is None

    def predicted(self) -> dict[str, Any] | None:
        """``ttft_s, tpot_s, total_s, stages`` (eager) plus every scenario's headline."""
        if self.prediction is None:
            return None
        head = self.prediction.headline("eager")
        return {**head, "stages": self.prediction.stage_seconds("eager"), "scenario": "eager",
                "scenarios": {name: {"assumption": text, **self.prediction.headline(name)}
                              for name, text in SCENARIOS.items()}}

    def relative_error(self) -> dict[str, float | None]:
        """(predicted - measured) / measured for TTFT, TPOT, total; ``None`` when not comparable."""
        pred, meas = self.predicted(), self.measured
        if not self.comparable or pred is None or meas is None:
            return {"ttft": None, "tpot": None, "total": None}
        return {k: _rel(pred[f"{k}_s"], meas[f"{k}_s"]) for k in ("ttft", "tpot", "total")}

    def sc002(self) -> bool | None:
        """Whether the predicted total is within :data:`SC002_TOLERANCE` of the measured one (``None``: no check)."""
        err = self.relative_error()["total"]
        return None if err is None else abs(err) <= SC002_TOLERANCE

    def headline(self) -> str:
        """One line with this run's SC-002 result."""
        pred = self.predicted()
        if pred is None:
            return f"predicted time: not computed ({self.choice.label})"
        if self.measured is None:
            return (f"predicted (eager, {self.choice.label}): total {_s(pred['total_s'])}; predicted vs measured not "
                    "checked (shape-only run: nothing measured)")
        if not self.comparable:
            return f"predicted vs measured not checked: {self.choice.foreign}"
        err = self.relative_error()["total"]
        verdict = "within" if self.sc002() else "NOT within"
        return (f"predicted total {verdict} {SC002_TOLERANCE:.0%} of measured (criterion SC-002): predicted "
                f"{_s(pred['total_s'])}, measured {_s(self.measured['total_s'])}, Δ {_pct(err)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (kept in ``joined.metadata["time_model"]`` and written as ``summary.json``)."""
        p = self.choice.profile
        profile = None if p is None else {
            "label": p.label, "origin": self.choice.origin, "source": p.source, "device": p.device,
            "device_name": p.device_name, "dtype": p.dtype, "threads": p.threads, "budget": p.budget,
            "created": p.created, "foreign": self.choice.foreign, "mismatches": list(self.choice.mismatches)}
        bound = self.prediction.peaks.label if self.prediction is not None else None
        return {"profile": profile, "profile_label": self.choice.label, "predicted": self.predicted(),
                "bound_peaks": bound,
                "measured": self.measured, "relative_error": self.relative_error(),
                "sc002": {"tolerance": SC002_TOLERANCE, "within": self.sc002()}, "headline": self.headline(),
                "stages": self._stage_rows(), "components": self.components, "kinds": self._kind_rows()}

    def _stage_rows(self) -> list[dict[str, Any]]:
        if self.prediction is None:
            return []
        meas = self.measured if self.comparable else None
        mstage = dict((meas or {}).get("stages") or {})
        if meas:
            mstage |= {"ttft": meas["ttft_s"], "tpot": meas["tpot_s"], "total": meas["total_s"]}
        rows = []
        for r in _records(self.prediction.by_stage()):
            m = mstage.get(r["stage"])
            rows.append({**r, "measured_s": m, "rel_error": _rel(r["eager_s"], m)})
        return rows

    def _kind_rows(self) -> list[dict[str, Any]]:
        if self.prediction is None:
            return []
        return [{"stage": s, **r} for s in ("vision", "prefill", "decode")
                for r in _records(self.prediction.by_kind(s).head(6))]


def _records(df: Any) -> list[dict[str, Any]]:
    return [{str(k): v for k, v in r.items()} for r in df.to_dict("records")]


def component_rows(prediction: TimePrediction | None, components: Any, component_of: Mapping[str, str],
                   comparable: bool) -> list[dict[str, Any]]:
    """Predicted (eager, graph, bound) vs measured (module timing, self) time per component."""
    if prediction is None:
        return []
    pred = prediction.by_component(component_of).set_index("component")
    measured = {}
    if comparable and components is not None and "time_s" in components:
        measured = dict(zip(components["component"], components["time_s"], strict=True))
    rows = []
    for name in [*pred.index]:
        m = measured.get(name)
        m = float(m) if m is not None and math.isfinite(float(m)) and float(m) > 0 else None
        r = pred.loc[name]
        rows.append({"component": name, "predicted_s": float(r["eager_s"]), "graph_s": float(r["graph_s"]),
                     "bound_s": float(r["bound_s"]), "host_s": float(r["host_s"]), "measured_s": m,
                     "rel_error": _rel(float(r["eager_s"]), m)})
    return rows


def assess(trace: Any, choice: ProfileChoice, runtime: Mapping[str, Any] | None, decode_steps: int,
           request_roots: Sequence[str], hardware: Any = None, components: Any = None,
           component_of: Mapping[str, str] | None = None, request_group: str = "vision") -> TimeAssessment:
    """Predict ``trace`` with the chosen profile and compare with the measured ``runtime`` (a runtime dict).

    ``components`` (the join's per-component table, with measured ``time_s`` when timed) and ``component_of``
    (module path -> component) add the per-component rows.
    """
    from opmeter.timemodel.model import predict

    prediction = None
    if choice.profile is not None:
        prediction = predict(trace, choice.profile, decode_steps, request_roots, hardware, request_group)
    result = TimeAssessment(choice, prediction, measured_times(runtime))
    rows = component_rows(prediction, components, component_of or {}, result.comparable)
    return attrs.evolve(result, components=rows)


def _s(value: Any) -> str:
    from opmeter.report import format as fmt

    return fmt.seconds(value)


def _pct(value: Any) -> str:
    return "—" if value is None else f"{value:+.1%}"


def summary(assessment: Mapping[str, Any] | None, model: str, workload: str, device: str, dtype: str | None
            ) -> dict[str, Any]:
    """The ``summary.json`` document of a report directory (documented in ``reports/README.md``)."""
    a = dict(assessment or {})
    empty = {"ttft": None, "tpot": None, "total": None}
    return {"schema_version": SUMMARY_SCHEMA, "model": model, "workload": workload, "device": device, "dtype": dtype,
            "profile": a.get("profile"), "predicted": a.get("predicted"), "measured": a.get("measured"),
            "relative_error": a.get("relative_error") or empty, "sc002": a.get("sc002"),
            "headline": a.get("headline")}


def write_summary(path: str | Path, doc: Mapping[str, Any]) -> Path:
    """Write ``summary.json`` atomically (NaN as null); returns the path."""
    from opmeter.io import write_json

    return write_json(path, _clean(doc), indent=True)


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


def markdown(assessment: Mapping[str, Any] | None) -> list[str]:
    """The report section "Predicted vs measured time" (empty without an assessment)."""
    if not assessment:
        return []
    lines = ["## Predicted vs measured time", "", f"**{assessment['headline']}**", "",
             f"Profile: {assessment['profile_label']}.", ""]
    prof = assessment.get("profile") or {}
    if prof.get("foreign"):
        lines += [f"> **Profile of another device**: {prof['foreign']}.", ""]
    lines += [f"> Note: {m}." for m in prof.get("mismatches") or ()]
    if prof.get("mismatches"):
        lines.append("")
    if not assessment.get("stages"):
        return lines
    lines += _scenario_notes(assessment.get("bound_peaks")) + _stage_table(assessment["stages"])
    lines += _component_table(assessment["components"])
    lines += _kind_table(assessment.get("kinds") or [])
    return lines


def _scenario_notes(bound_peaks: str | None) -> list[str]:
    return ["Per traced op: predicted = calls x host cost of its kind + max(FLOPs at the achieved rate for its kind "
            "and per-call size, bytes at the achieved bandwidth), from the profile's microbenchmarks "
            "(`opmeter.timemodel`); TTFT = vision + prefill (first forward), TPOT = (decode steps + glue between "
            "them) / steps, total = TTFT + decode (preprocessing before the first forward is `setup`, not in the "
            "total). Scenarios:", "", *[f"- **{k}**: {v}" for k, v in SCENARIOS.items()],
            f"- the bound uses the {bound_peaks or 'profile peaks'}", ""]


def _stage_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    out = ["| stage | predicted (eager) | measured | Δ | graph-captured | bound (roofline) | compute | memory | "
           "host/launch |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        split = [r["compute_s"], r["memory_s"], r["host_s"]]
        total = sum(split) or 1.0
        shares = " | ".join(f"{_s(v)} ({v / total:.0%})" for v in split)
        out.append(f"| {r['stage']} | {_s(r['eager_s'])} | {_s(r.get('measured_s'))} | {_pct(r.get('rel_error'))} "
                   f"| {_s(r['graph_s'])} | {_s(r['bound_s'])} | {shares} |")
    return [*out, "", "Compute / memory / host/launch: where the eager time goes (device time of ops limited by "
            "compute or by bytes, and the host cost of every op and module call).", ""]


def _component_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    out = ["Per component (whole generation; measured = module self time of the module-timing run, whose glue row "
           "also holds the time outside every module):", "",
           "| component | predicted (eager) | measured | Δ | graph-captured | bound | host/launch |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    out += [f"| {r['component']} | {_s(r['predicted_s'])} | {_s(r.get('measured_s'))} | {_pct(r.get('rel_error'))} "
            f"| {_s(r['graph_s'])} | {_s(r['bound_s'])} | {_s(r['host_s'])} |" for r in rows]
    return [*out, ""]


def _kind_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    out = ["Largest predicted op kinds per stage (eager):", "",
           "| stage | op kind | calls | predicted | host/launch | compute | memory |",
           "|---|---|---:|---:|---:|---:|---:|"]
    out += [f"| {r['stage']} | {r['host_kind']} | {int(r['calls'])} | {_s(r['eager_s'])} | {_s(r['host_s'])} | "
            f"{_s(r['compute_s'])} | {_s(r['memory_s'])} |" for r in rows]
    return [*out, ""]


__all__ = ["SC002_TOLERANCE", "SUMMARY_SCHEMA", "ProfileChoice", "TimeAssessment", "assess", "check_profile",
           "choose_profile", "component_rows", "markdown", "measured_times", "summary", "write_summary"]
