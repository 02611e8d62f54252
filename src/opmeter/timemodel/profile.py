"""The device profile: what one device achieves, measured by microbenchmarks (:mod:`opmeter.timemodel.calibrate`).

A profile holds, for one device, dtype and thread count:

* ``host_s``: the host cost of one eager op call by op kind (:mod:`opmeter.timemodel.kinds`), measured with tiny
  tensors (Python binding, dispatcher, allocator, kernel launch; on a GPU the launch latency);
* ``module_call_s``: the cost of calling an ``nn.Module`` whose ``forward`` does nothing;
* ``compute``: per compute kind (``mm``, ``addmm``, ``bmm``, ``linear``, ``sdpa``, ``conv``, ``vector``), measured
  points ``(flops per call, bytes per call, achieved FLOP/s)``; the achieved rate of another call is interpolated from
  the nearest points in (log size, log arithmetic intensity), the intensity standing for the shape class (a GEMV has
  about 0.5 FLOP per byte in fp32, a square GEMM hundreds);
* ``bandwidth``: per memory kind (``read``, ``write``, ``arg_reduction``; on a CPU also ``fill``, writing into an
  existing buffer, ``first_touch``, the extra cost per byte of a fresh output over ``fill``, and ``release``, the
  time to free a large written buffer), points ``(bytes per call, achieved bytes/s)``, interpolated in log size (small
  tensors stay in cache and run faster than DRAM; large fresh outputs pay page faults).

Profiles are JSON files (orjson) with a ``schema_version``; :func:`load_profile` refuses any other schema with one
clear line. A profile made of documented defaults instead of measurements (:mod:`opmeter.timemodel.defaults`) says
so in ``source``.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from opmeter.errors import OpmeterError
from opmeter.io import read_json, write_json

SCHEMA_VERSION: Final = "opmeter.device_profile/1"
MEASURED: Final = "measured"
DEFAULTS: Final = "defaults"
_NEIGHBOURS = 3
_COST_CURVES: Final = ("release", "first_touch")
"""Bandwidth curves that express a cost per byte, not a transfer rate."""


@attrs.frozen
class ComputePoint:
    """One measured call of a compute kind: its size, bytes and achieved rate (host cost excluded)."""

    flops: float
    bytes: float
    flops_per_s: float
    label: str = ""

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved (the shape class: low for GEMV-like calls, high for square GEMMs)."""
        return self.flops / max(self.bytes, 1.0)


@attrs.frozen
class BandwidthPoint:
    """One measured call of a memory kind: bytes moved and the achieved bandwidth (host cost excluded)."""

    bytes: float
    bytes_per_s: float
    label: str = ""


def _log(x: float) -> float:
    return math.log(max(x, 1e-30))


def achieved_flops_per_s(points: Sequence[ComputePoint], flops: float, nbytes: float) -> float:
    """The achieved FLOP/s of a call of ``flops`` and ``nbytes``, interpolated from measured ``points``.

    Inverse-distance weighting of the log rate over the nearest :data:`_NEIGHBOURS` points in (log FLOPs per call,
    log FLOPs per byte); an exact match returns its measured rate. ``nan`` when there are no points.
    """
    if not points:
        return math.nan
    lf, li = _log(flops), _log(flops / max(nbytes, 1.0))
    dists = sorted(((math.hypot(_log(p.flops) - lf, _log(p.intensity) - li), p) for p in points),
                   key=lambda dp: dp[0])[:_NEIGHBOURS]
    if dists[0][0] < 1e-9:
        return dists[0][1].flops_per_s
    weights = [1.0 / d**2 for d, _ in dists]
    log_rate = sum(w * _log(p.flops_per_s) for w, (_, p) in zip(weights, dists, strict=True)) / sum(weights)
    return math.exp(log_rate)


def achieved_bytes_per_s(points: Sequence[BandwidthPoint], nbytes: float) -> float:
    """Achieved bandwidth for a call moving ``nbytes``.

    Points are grouped by benchmark (the first word of their label: ``sum(rows)``, ``softmax``...); each group's
    curve is interpolated log-log between measured sizes (clamped at the ends) and the groups' rates are averaged
    geometrically, so two kernels of one kind measured at interleaved sizes make a smooth curve, not a zigzag.
    """
    if not points:
        return math.nan
    families: dict[str, list[BandwidthPoint]] = {}
    for p in points:
        families.setdefault(p.label.split(" ", 1)[0], []).append(p)
    rates = [_curve_at(sorted(f, key=lambda p: p.bytes), nbytes) for f in families.values()]
    return math.exp(sum(_log(r) for r in rates) / len(rates))


def _curve_at(pts: Sequence[BandwidthPoint], nbytes: float) -> float:
    if nbytes <= pts[0].bytes:
        return pts[0].bytes_per_s
    if nbytes >= pts[-1].bytes:
        return pts[-1].bytes_per_s
    for lo, hi in itertools.pairwise(pts):
        if lo.bytes <= nbytes <= hi.bytes:
            span = _log(hi.bytes) - _log(lo.bytes)
            frac = (_log(nbytes) - _log(lo.bytes)) / span if span > 0 else 0.0
            return math.exp(_log(lo.bytes_per_s) + frac * (_log(hi.bytes_per_s) - _log(lo.bytes_per_s)))
    return pts[-1].bytes_per_s  # pragma: no cover - the loop always brackets


@attrs.frozen
class DeviceProfile:
    """What one device achieves (see the module docstring).

    Attributes
    ----------
    device
        ``"cpu"`` or ``"cuda"``.
    device_name
        CPU model or GPU name as the machine reports it.
    dtype
        Floating-point dtype the microbenchmarks ran in (``"float32"``, ``"bfloat16"``...).
    threads
        ``torch.get_num_threads()`` during calibration (CPU).
    torch_version, created
        torch version and UTC time of the calibration.
    source
        ``"measured"`` (microbenchmarks) or ``"defaults"`` (documented assumptions, no measurement).
    budget
        ``"quick"`` or ``"full"`` calibration budget, ``"none"`` for defaults.
    host_s
        Host cost of one eager op call per op kind (seconds).
    module_call_s
        Cost of one ``nn.Module`` call around the ops (seconds).
    launch_latency_s
        CUDA kernel launch latency (seconds; ``0`` on CPU, where there is no launch).
    compute, bandwidth
        Measured points per compute kind and per memory kind.
    notes
        Free-text remarks (what was skipped, which numbers are defaults).
    module_host_factor
        Inside module code an op's host part costs this many times its tight-loop cost (Python lines between ops,
        dispatch paths a loop over one op keeps in cache, on a CPU caches that a model's data flushes between two
        calls of the same code); the time model scales ``host_s`` by it.
    fresh_map_bytes
        Outputs of at least this many bytes are mapped fresh from the operating system by the C allocator on every
        allocation, so each call pays the ``first_touch`` curve (glibc on 64-bit Linux: 32 MiB, its largest dynamic
        mmap threshold); smaller outputs reuse freed heap memory. ``0``: no first-touch term.
    """

    device: str
    device_name: str
    dtype: str
    threads: int
    torch_version: str
    created: str
    source: str
    budget: str
    host_s: Mapping[str, float]
    module_call_s: float
    launch_latency_s: float
    compute: Mapping[str, tuple[ComputePoint, ...]]
    bandwidth: Mapping[str, tuple[BandwidthPoint, ...]]
    notes: tuple[str, ...] = ()
    module_host_factor: float = 1.0
    """Host cost of an op inside module code over its cost in a tight loop of that op (at least 1)."""
    fresh_map_bytes: float = 0.0
    schema_version: str = SCHEMA_VERSION

    @property
    def label(self) -> str:
        """One line naming the profile: device, dtype, threads, source and date."""
        threads = f", {self.threads} threads" if self.device == "cpu" else ""
        return (f"{self.device_name} ({self.device}, {self.dtype}{threads}; {self.source}"
                f"{'' if self.source == DEFAULTS else f', {self.budget} calibration {self.created[:10]}'})")

    def host_cost(self, kind: str) -> float:
        """Host cost of one call of op kind ``kind`` inside module code (tight-loop cost x ``module_host_factor``;
        the ``other`` kind's for a kind not measured)."""
        value = self.host_s.get(kind)
        return float(value if value is not None else self.host_s.get("other", math.nan)) * self.module_host_factor

    def flops_rate(self, kind: str, flops: float, nbytes: float) -> float:
        """Achieved FLOP/s of one call of compute kind ``kind`` (``vector`` for a kind not measured)."""
        points = self.compute.get(kind) or self.compute.get("vector") or ()
        return achieved_flops_per_s(points, flops, nbytes)

    def bytes_rate(self, kind: str, nbytes: float) -> float:
        """Achieved bytes/s of one call of memory kind ``kind`` (``read`` for a kind not measured)."""
        points = self.bandwidth.get(kind) or self.bandwidth.get("read") or ()
        return achieved_bytes_per_s(points, nbytes)

    def peak_flops_per_s(self) -> float:
        """Highest achieved FLOP/s of any GEMM-like point (the profile's own ceiling)."""
        rates = [p.flops_per_s for k in ("mm", "addmm", "bmm", "linear") for p in self.compute.get(k, ())]
        return max(rates) if rates else math.nan

    def peak_bytes_per_s(self) -> float:
        """Highest achieved bandwidth of reading or writing (not of the release or first-touch cost curves)."""
        rates = [p.bytes_per_s for kind, pts in self.bandwidth.items() if kind not in _COST_CURVES for p in pts]
        return max(rates) if rates else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what :meth:`save` writes)."""
        return {
            "schema_version": self.schema_version, "device": self.device, "device_name": self.device_name,
            "dtype": self.dtype, "threads": self.threads, "torch_version": self.torch_version,
            "created": self.created, "source": self.source, "budget": self.budget, "host_s": dict(self.host_s),
            "module_call_s": self.module_call_s, "launch_latency_s": self.launch_latency_s,
            "compute": {k: [attrs.asdict(p) for p in pts] for k, pts in self.compute.items()},
            "bandwidth": {k: [attrs.asdict(p) for p in pts] for k, pts in self.bandwidth.items()},
            "notes": list(self.notes), "module_host_factor": self.module_host_factor,
            "fresh_map_bytes": self.fresh_map_bytes,
        }

    @classmethod
    def from_dict(cls, d: Any) -> DeviceProfile:
        """Rebuild a profile from :meth:`to_dict` output.

        Raises
        ------
        OpmeterError
            For another schema version or malformed data.
        """
        if not isinstance(d, dict):
            raise OpmeterError("not an opmeter device profile: expected a JSON object at the top level")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise OpmeterError(f"unsupported device profile schema {d.get('schema_version')!r}: this opmeter reads "
                               f"{SCHEMA_VERSION!r}; re-run `opmeter calibrate`")
        try:
            profile = cls(
                device=str(d["device"]), device_name=str(d["device_name"]), dtype=str(d["dtype"]),
                threads=int(d["threads"]), torch_version=str(d["torch_version"]), created=str(d["created"]),
                source=str(d["source"]), budget=str(d["budget"]),
                host_s={str(k): float(v) for k, v in d["host_s"].items()},
                module_call_s=float(d["module_call_s"]), launch_latency_s=float(d["launch_latency_s"]),
                compute={str(k): tuple(ComputePoint(**p) for p in pts) for k, pts in d["compute"].items()},
                bandwidth={str(k): tuple(BandwidthPoint(**p) for p in pts) for k, pts in d["bandwidth"].items()},
                notes=tuple(str(n) for n in d.get("notes", ())),
                module_host_factor=float(d["module_host_factor"]),
                fresh_map_bytes=float(d.get("fresh_map_bytes", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise OpmeterError(f"malformed device profile ({type(exc).__name__}: {str(exc)[:120]})") from None
        _check_values(profile)
        return profile

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON (atomic); returns the path."""
        return write_json(path, self.to_dict(), indent=True)


def mean_profile(profiles: Sequence[DeviceProfile]) -> DeviceProfile:
    """One profile from several calibration passes of the same device: every time is the mean over the passes (host
    costs, the module factor; rates as the mean of the times per unit of work, points matched by label), the rest is
    the first pass's.

    Raises
    ------
    ValueError
        For no profiles, or profiles of different devices, dtypes or thread counts.
    """
    if not profiles:
        raise ValueError("mean_profile needs at least one profile")
    first = profiles[0]
    if len(profiles) == 1:
        return first
    if {(p.device, p.device_name, p.dtype, p.threads) for p in profiles} != {
            (first.device, first.device_name, first.dtype, first.threads)}:
        raise ValueError("mean_profile merges passes of one device, dtype and thread count")
    kinds = dict.fromkeys(k for p in profiles for k in p.host_s)
    host = {k: statistics.fmean([p.host_s[k] for p in profiles if k in p.host_s]) for k in kinds}
    return attrs.evolve(
        first, host_s=host,
        module_call_s=statistics.fmean(p.module_call_s for p in profiles),
        launch_latency_s=statistics.fmean(p.launch_latency_s for p in profiles),
        module_host_factor=statistics.fmean(p.module_host_factor for p in profiles),
        compute=_mean_rates([p.compute for p in profiles], "flops_per_s"),
        bandwidth=_mean_rates([p.bandwidth for p in profiles], "bytes_per_s"),
        notes=(*first.notes, f"every time: the mean of {len(profiles)} calibration passes"),
    )


def _mean_rates(curves: Sequence[Mapping[str, tuple[Any, ...]]], rate: str) -> dict[str, tuple[Any, ...]]:
    """Per kind, the points of the first pass (and any label only a later pass has), each at the harmonic mean of
    ``rate`` over the passes that measured its label (the mean time per unit of work)."""
    out: dict[str, tuple[Any, ...]] = {}
    for kind in dict.fromkeys(k for c in curves for k in c):
        by_label: dict[str, list[Any]] = {}
        for curve in curves:
            for point in curve.get(kind, ()):
                by_label.setdefault(point.label, []).append(point)
        out[kind] = tuple(attrs.evolve(pts[0], **{rate: statistics.harmonic_mean([getattr(p, rate) for p in pts])})
                          for pts in by_label.values())
    return out


def _number(value: Any, what: str, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise OpmeterError(f"malformed device profile: {what} is {str(value)[:40]!r}; expected a finite "
                           f"{'positive' if positive else 'non-negative'} number")


def _check_values(p: DeviceProfile) -> None:
    """Every time, rate and size a prediction divides by or multiplies with: finite, and positive where a zero would
    predict infinite or zero time."""
    if p.threads < 0:  # 0: not a CPU thread count (GPU profiles, defaults)
        raise OpmeterError(f"malformed device profile: threads is {p.threads}; expected a count >= 0")
    for kind, seconds in p.host_s.items():
        _number(seconds, f"host_s[{kind[:40]!r}]", positive=False)
    _number(p.module_call_s, "module_call_s", positive=False)
    _number(p.launch_latency_s, "launch_latency_s", positive=False)
    _number(p.module_host_factor, "module_host_factor", positive=True)
    _number(p.fresh_map_bytes, "fresh_map_bytes", positive=False)
    for kind, cpts in p.compute.items():
        for i, c in enumerate(cpts):
            for name in ("flops", "bytes", "flops_per_s"):
                _number(getattr(c, name), f"compute[{kind[:40]!r}][{i}].{name}", positive=name != "bytes")
    for kind, bpts in p.bandwidth.items():
        for i, b in enumerate(bpts):
            for name in ("bytes", "bytes_per_s"):
                _number(getattr(b, name), f"bandwidth[{kind[:40]!r}][{i}].{name}", positive=True)


def load_profile(path: str | Path) -> DeviceProfile:
    """Read a profile written by :meth:`DeviceProfile.save`.

    Raises
    ------
    OpmeterError
        When the file is missing, not JSON, or not a profile of this schema.
    """
    data = read_json(path, "device profile", limit=64 << 20)
    try:
        return DeviceProfile.from_dict(data)
    except OpmeterError as exc:
        raise OpmeterError(f"{path}: {exc}") from None


__all__ = ["DEFAULTS", "MEASURED", "SCHEMA_VERSION", "BandwidthPoint", "ComputePoint", "DeviceProfile",
           "achieved_bytes_per_s", "achieved_flops_per_s", "load_profile", "mean_profile"]
