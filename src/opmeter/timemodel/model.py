"""The time model over a trace: predicted time per traced cell, module, component, stage and run.

For each traced cell (stage group, module call path, op) with ``calls`` calls, FLOPs ``F`` and bytes ``B``:

    host    = calls x host cost of the op's kind       (profile.host_s x profile.module_host_factor)
    compute = calls x (F / calls) / achieved FLOP/s at that per-call size and intensity    (profile.compute)
    memory  = bytes read / read bandwidth + bytes written / fill bandwidth, each at its per-call size
              (profile.bandwidth; argmax / top-k / sort: all bytes at their own measured bandwidth)
    touch   = bytes written / first-touch rate, for fresh outputs the allocator maps anew    (page faults)
    time    = host + max(compute, memory) + touch

(the first touch of new memory runs on the same core as the kernel that writes it, so it adds to a compute-bound
call instead of hiding under it; a profile without the ``fill`` and ``first_touch`` curves costs writes at its
``write`` curve, which includes both, and has no touch term) plus one host cost per ``nn.Module`` call
(``profile.module_call_s``, scaled alike), booked to the module. Per-call
sizes: the calls of a cell that moved 1 MiB or more are costed per half-octave of size from the trace's histogram
(``Trace.large_calls``), the others at their mean. A generation loop holds the first forward's output (the logits)
until the next forward returns, so the release of that buffer (``profile.bandwidth["release"]``, CPU) is moved
from the prefill cell that wrote it to a decode row (:func:`held_output`, :data:`HELD_RELEASE`). Three scenarios,
each with its assumptions (:data:`SCENARIOS`):

* ``eager``: the formula above; one kernel per traced op, host and device work in series (exact on a CPU, where
  kernels run synchronously; on a GPU it assumes the host never runs ahead of the device);
* ``graph``: ``max(compute, memory)`` only: host, dispatch and launch costs amortised away, as CUDA graphs and
  serving engines do (on a CPU a lower bound, nothing there captures graphs);
* ``bound``: the datasheet roofline ``max(tensor FLOPs / tensor peak + CUDA-core FLOPs / CUDA-core peak,
  bytes / bandwidth)`` of the hardware entry when its peaks are known, else of the profile's best measured rates.

Stages: ``vision`` = the model's request stage (vision tower or encoder: its explicit stage, or the cells of the first
forward under its modules), ``prefill`` = the rest of the first forward, TTFT = vision + prefill; ``decode`` = every
decode step plus the glue between forwards (what a measured TPOT includes); TPOT = decode / steps; ``total`` = TTFT +
decode (the generation, as measured from the first forward to the last step); ``setup`` (preprocessing ops before the
first forward) is predicted apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
import pandas as pd

from opmeter.timemodel.kinds import FILL, FIRST_TOUCH, IN_PLACE, RELEASE, RW, classify
from opmeter.timemodel.profile import DeviceProfile

MODULE_CALL: Final = "<module call>"
"""Pseudo-op of the rows holding the ``nn.Module`` call cost."""
HELD_RELEASE: Final = "<release of the first forward's output>"
"""Pseudo-op of the decode row holding the release of the output the generation loop held (see :func:`predict`)."""

SCENARIOS: Final[dict[str, str]] = {
    "eager": "one kernel per traced op, each paying its host/launch cost; host and device work in series",
    "graph": "host, dispatch and launch costs amortised to zero (CUDA graphs, serving engines); device time only",
    "bound": "datasheet roofline: work at peak compute or peak bandwidth, no host cost, no efficiency loss",
}
DECODE_GROUPS: Final = ("decode", "prefill.glue", "decode.glue")
STAGES: Final = ("vision", "prefill", "decode", "setup")


@attrs.frozen
class Peaks:
    """Peaks for the ``bound`` scenario (FLOP/s and bytes/s); ``label`` names where they come from."""

    tensor_flops_per_s: float
    cuda_flops_per_s: float
    bytes_per_s: float
    label: str

    @classmethod
    def of_profile(cls, profile: DeviceProfile) -> Peaks:
        """The profile's best measured GEMM rate and bandwidth."""
        peak = profile.peak_flops_per_s()
        return cls(peak, peak, profile.peak_bytes_per_s(), f"best measured rates of {profile.label}")

    @classmethod
    def of_hardware(cls, hw: Any) -> Peaks | None:
        """A :class:`~opmeter.hardware.HardwareSpec`'s datasheet peaks, ``None`` when unknown."""
        if hw is None or not getattr(hw, "known", False):
            return None
        return cls(hw.tensor_tflops * 1e12, hw.cuda_tflops * 1e12, hw.bandwidth_gbps * 1e9,
                   f"datasheet peaks of {hw.name}")


def _memory_seconds(profile: DeviceProfile, kind: str, read: float, written: float) -> tuple[float, float]:
    """(bandwidth seconds, first-touch seconds) of one call moving ``read`` + ``written`` bytes.

    A profile that measured writing into existing memory (``fill``) costs writes at it, and a fresh output
    (``read_write``, not ``in_place``) of at least ``profile.fresh_map_bytes`` also at ``first_touch`` (page faults
    and the return of the pages to the system: the allocator maps such buffers fresh every time); a profile without
    ``fill`` costs every write at ``write``, the fresh-output curve, with no first-touch term.
    """
    if kind not in (RW, IN_PLACE):
        return ((read + written) / profile.bytes_rate(kind, read + written) if read + written > 0 else 0.0), 0.0
    split = bool(profile.bandwidth.get(FILL))
    seconds = read / profile.bytes_rate("read", read) if read > 0 else 0.0
    if written <= 0:
        return seconds, 0.0
    seconds += written / profile.bytes_rate(FILL if split else "write", written)
    fresh = kind == RW and 0 < profile.fresh_map_bytes <= written and bool(profile.bandwidth.get(FIRST_TOUCH))
    return seconds, (written / profile.bytes_rate(FIRST_TOUCH, written) if fresh else 0.0)


def _parts(vals: Sequence[Any], large: Sequence[Sequence[Any]]) -> list[tuple[float, ...]]:
    """The calls of one cell as groups of similar size: each half-octave of large calls (the trace's size
    histogram) and the rest at their mean; the whole cell at its mean when the histogram does not fit in it."""
    whole = tuple(float(v) for v in vals[:5])
    if not large:
        return [whole]
    buckets = [tuple(float(v) for v in b[:5]) for b in large]
    rest = tuple(w - sum(b[i] for b in buckets) for i, w in enumerate(whole))
    if any(v < -1e-6 * max(abs(w), 1.0) for v, w in zip(rest, whole, strict=True)):
        return [whole]  # e.g. parts of a decomposed op noted under another key: keep the mean
    return [*buckets, *([tuple(max(v, 0.0) for v in rest)] if rest[0] >= 1 else [])]


def _part_times(profile: DeviceProfile, kind: Any, part: tuple[float, ...]) -> tuple[float, float, float]:
    """(compute, memory, first-touch) seconds of ``calls`` calls of the same per-call size."""
    calls, flops, nread, nwritten = part[0], part[1] + part[2], part[3], part[4]
    n = max(calls, 1.0)
    compute = flops / profile.flops_rate(kind.compute, flops / n, (nread + nwritten) / n) if flops > 0 else 0.0
    memory, touch = _memory_seconds(profile, kind.memory, nread / n, nwritten / n)
    return compute, memory * calls, touch * calls


def _cell_row(profile: DeviceProfile, op: str, category: str, vals: Sequence[Any], peaks: Peaks,
              large: Sequence[Sequence[Any]] = ()) -> dict[str, Any]:
    calls, ft, fc, nread, nwritten = vals[0], float(vals[1]), float(vals[2]), float(vals[3]), float(vals[4])
    flops, nbytes = ft + fc, nread + nwritten
    kind = classify(op, category, flops, nbytes)
    times = [_part_times(profile, kind, part) for part in _parts(vals, large)]
    compute, memory, touch = (sum(t[i] for t in times) for i in range(3))
    device = sum(max(c, m) + t for c, m, t in times)
    host = calls * profile.host_cost(kind.host)
    bound = max(ft / peaks.tensor_flops_per_s + fc / peaks.cuda_flops_per_s, nbytes / peaks.bytes_per_s)
    return {"op": op, "category": category, "host_kind": kind.host, "compute_kind": kind.compute,
            "memory_kind": kind.memory, "calls": calls, "flops": flops, "bytes": nbytes, "host_s": host,
            "compute_s": compute, "memory_s": memory, "touch_s": touch, "device_s": device,
            "limit": "compute" if compute >= memory else "memory", "eager_s": host + device, "graph_s": device,
            "bound_s": bound}


def predict_cells(trace: Any, profile: DeviceProfile, peaks: Peaks | None = None) -> pd.DataFrame:
    """One row per traced cell (stage group, innermost module, op), plus one module-call row per module and group.

    Columns: ``group, module, op, category, host_kind, compute_kind, memory_kind, calls, flops, bytes, host_s,
    compute_s, memory_s, limit`` (``compute`` or ``memory``: the larger device term) and the scenario times
    ``eager_s, graph_s, bound_s``.
    """
    peaks = peaks or Peaks.of_profile(profile)
    rows = []
    large_calls = getattr(trace, "large_calls", {})
    for (gid, ctx), ops in trace.cells.items():
        group, module = trace.groups[gid], trace.modules[trace.contexts[ctx][1]].path
        large = large_calls.get((gid, ctx), {})
        for op, vals in ops.items():
            category = trace.op_info.get(op, ("unclassified", False))[0]
            rows.append({"group": group, "module": module,
                         **_cell_row(profile, op, category, vals, peaks, large.get(op, ()))})
    for (gid, ctx), (calls, _time) in trace.ctx_stats.items():
        if not calls:
            continue
        host = calls * profile.module_call_s * profile.module_host_factor
        rows.append({"group": trace.groups[gid], "module": trace.modules[trace.contexts[ctx][1]].path,
                     "op": MODULE_CALL, "category": "module_call", "host_kind": "module_call", "compute_kind": "",
                     "memory_kind": "", "calls": calls, "flops": 0.0, "bytes": 0.0, "host_s": host,
                     "compute_s": 0.0, "memory_s": 0.0, "touch_s": 0.0, "device_s": 0.0, "limit": "compute",
                     "eager_s": host, "graph_s": 0.0, "bound_s": 0.0})
    cols = ["group", "module", "op", "category", "host_kind", "compute_kind", "memory_kind", "calls", "flops", "bytes",
            "host_s", "compute_s", "memory_s", "touch_s", "device_s", "limit", "eager_s", "graph_s", "bound_s"]
    return pd.DataFrame(rows, columns=cols)


def _under(module: str, roots: Sequence[str]) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots)


def stage_of(cells: pd.DataFrame, request_roots: Sequence[str] = (), request_group: str = "vision") -> pd.Series:
    """Report stage of every cell: ``vision`` (the model's request stage, whatever its name), ``prefill``,
    ``decode``, ``setup`` or ``other``.

    Request work is the explicit stage group ``request_group`` (marked while tracing, wherever it ran) or, in traces
    without the marks, the first forward's cells under ``request_roots``. A model that generates nothing (no root
    call with a sequence length: a vision or encoder-only model called once) has its forwards in group ``other``;
    they are its whole request, so they are reported as ``prefill``, where the measured side puts its first forward
    (the time to the answer).
    """
    forwards_only = "prefill" not in set(cells["group"])

    def one(group: str, module: str) -> str:
        if group == request_group:
            return "vision"
        if group == "prefill" or (forwards_only and group == "other"):
            return "vision" if _under(module, request_roots) else "prefill"
        if group in DECODE_GROUPS:
            return "decode"
        return "setup" if group == "setup" else "other"

    return pd.Series([one(g, m) for g, m in zip(cells["group"], cells["module"], strict=True)], index=cells.index,
                     dtype=object)


def _split(df: pd.DataFrame) -> dict[str, float]:
    """Where the eager time goes: compute-limited and memory-limited device time (the first touch of fresh outputs
    counts as memory), host/launch overhead."""
    overlapped = df["device_s"] - df["touch_s"]
    return {"compute_s": float(overlapped[df["limit"] == "compute"].sum()),
            "memory_s": float(overlapped[df["limit"] == "memory"].sum() + df["touch_s"].sum()),
            "host_s": float(df["host_s"].sum()),
            "eager_s": float(df["eager_s"].sum()), "graph_s": float(df["graph_s"].sum()),
            "bound_s": float(df["bound_s"].sum()), "calls": float(df.loc[df["op"] != MODULE_CALL, "calls"].sum())}


@attrs.frozen
class TimePrediction:
    """Predicted times of one trace on one profile (see the module docstring).

    Attributes
    ----------
    cells
        :func:`predict_cells` output with a ``stage`` column (:func:`stage_of`).
    decode_steps
        Decode steps of the run (TPOT = decode / steps).
    profile
        The profile the times are for.
    peaks
        Peaks of the ``bound`` scenario.
    """

    cells: pd.DataFrame
    decode_steps: int
    profile: DeviceProfile
    peaks: Peaks

    def by_stage(self) -> pd.DataFrame:
        """Rows ``vision, prefill, ttft, decode, tpot, total, setup``; columns of the eager split (``compute_s``,
        ``memory_s``, ``host_s``, which add up to ``eager_s``), ``graph_s``, ``bound_s``, ``calls``."""
        parts = {s: _split(self.cells[self.cells["stage"] == s]) for s in STAGES}
        ttft = {k: parts["vision"][k] + parts["prefill"][k] for k in parts["vision"]}
        steps = max(self.decode_steps, 1)
        tpot = {k: (v / steps if self.decode_steps else 0.0) for k, v in parts["decode"].items()}
        total = {k: ttft[k] + parts["decode"][k] for k in ttft}
        rows = [{"stage": "vision", **parts["vision"]}, {"stage": "prefill", **parts["prefill"]},
                {"stage": "ttft", **ttft}, {"stage": "decode", **parts["decode"]}, {"stage": "tpot", **tpot},
                {"stage": "total", **total}, {"stage": "setup", **parts["setup"]}]
        return pd.DataFrame(rows)

    def headline(self, scenario: str = "eager") -> dict[str, float]:
        """``ttft_s``, ``tpot_s``, ``total_s`` in one scenario."""
        st = self.by_stage().set_index("stage")[f"{scenario}_s"]
        return {"ttft_s": float(st["ttft"]), "tpot_s": float(st["tpot"]) if self.decode_steps else math.nan,
                "total_s": float(st["total"])}

    def stage_seconds(self, scenario: str = "eager") -> dict[str, float]:
        """Predicted seconds per stage (``vision``, ``prefill``, ``decode``, ``setup``) in one scenario."""
        st = self.by_stage().set_index("stage")[f"{scenario}_s"]
        return {s: float(st[s]) for s in STAGES}

    def by_module(self) -> pd.DataFrame:
        """Per module (its own cells, children excluded): the eager split and the scenario times."""
        cols = ["host_s", "compute_s", "memory_s", "eager_s", "graph_s", "bound_s"]
        return self.cells.groupby("module", sort=False)[cols].sum().reset_index()

    def by_component(self, component_of: Mapping[str, str], glue: str = "unattributed (glue)") -> pd.DataFrame:
        """Per component (``component_of`` maps module paths, the join's assignment); unmapped modules go to
        ``glue``. Columns as :meth:`by_module`, for the generation (setup excluded, as the measured component times
        of the forwards)."""
        df = self.cells[self.cells["stage"] != "setup"]
        comp = df["module"].map(lambda m: component_of.get(m, glue))
        cols = ["host_s", "compute_s", "memory_s", "eager_s", "graph_s", "bound_s"]
        return df.assign(component=comp).groupby("component", sort=False)[cols].sum().reset_index()

    def by_kind(self, stage: str | None = None) -> pd.DataFrame:
        """Per (host kind, compute kind, memory kind): calls and the eager split; ``stage`` restricts the rows."""
        df = self.cells if stage is None else self.cells[self.cells["stage"] == stage]
        cols = ["calls", "flops", "bytes", "host_s", "compute_s", "memory_s", "eager_s"]
        out = df.groupby("host_kind", sort=False)[cols].sum().reset_index()
        return out.sort_values("eager_s", ascending=False, ignore_index=True)


def held_output(trace: Any) -> tuple[str, str, float] | None:
    """(module, op, bytes per call) of the first forward's output that a generation loop holds until the next forward
    returns: the largest output one call writes in the prefill under the last module the root calls first (the LM
    head of a causal LM: its logits). ``None`` without a prefill or a child of the root."""
    if "prefill" not in trace.groups:
        return None
    prefill = trace.groups.index("prefill")
    children = [(trace.first_call[i], m.path) for i, m in enumerate(trace.modules)
                if m.depth == 1 and i < len(trace.first_call) and trace.first_call[i] >= 0]
    if not children:
        return None
    last, best = max(children)[1], None
    large_calls = getattr(trace, "large_calls", {})
    for (gid, ctx), ops in trace.cells.items():
        path = trace.modules[trace.contexts[ctx][1]].path
        if gid != prefill or not _under(path, (last,)):
            continue
        for op, vals in ops.items():
            sizes = [b[4] / b[0] for b in large_calls.get((gid, ctx), {}).get(op, ()) if b[0]]
            size = max(sizes or [vals[4] / max(vals[0], 1)])
            if best is None or size > best[2]:
                best = (path, op, float(size))
    return best


def _move_release(cells: pd.DataFrame, profile: DeviceProfile, held: tuple[str, str, float]) -> pd.DataFrame:
    """Move the release of the held output from the prefill cell that wrote it (the ``write`` curve frees at once)
    to a decode row."""
    module, op, nbytes = held
    seconds = nbytes / profile.bytes_rate(RELEASE, nbytes) if nbytes > 0 else 0.0
    at = cells.index[(cells["group"] == "prefill") & (cells["module"] == module) & (cells["op"] == op)]
    if not len(at) or not seconds > 0:
        return cells
    part = "touch_s" if profile.bandwidth.get(FILL) else "memory_s"  # where the profile's curves put the release
    moved = min(seconds, float(cells.loc[at[0], part]))
    if not moved > 0:  # an output the allocator reuses: its release costs nothing to move
        return cells
    cols = [part, "device_s", "eager_s", "graph_s"]
    cells.loc[at[0], cols] = (cells.loc[at[0], cols] - moved).clip(lower=0.0)
    row = {**{c: 0.0 for c in cells.columns}, "group": "decode", "module": module, "op": HELD_RELEASE,
           "category": "release", "host_kind": "release", "compute_kind": "", "memory_kind": RELEASE,
           "limit": "memory", part: moved, "device_s": moved, "eager_s": moved, "graph_s": moved}
    return pd.concat([cells, pd.DataFrame([row], columns=cells.columns)], ignore_index=True)


def predict(trace: Any, profile: DeviceProfile, decode_steps: int, request_roots: Sequence[str] = (),
            hardware: Any = None, request_group: str = "vision") -> TimePrediction:
    """The :class:`TimePrediction` of ``trace`` on ``profile``.

    Parameters
    ----------
    trace
        An :class:`~opmeter.trace.Trace` with counts (shape-only or executed).
    profile
        Device profile (measured or defaults).
    decode_steps
        Decode steps of the run.
    request_roots
        Module paths whose first-forward work is the request stage (reported as ``vision``).
    hardware
        A :class:`~opmeter.hardware.HardwareSpec` whose datasheet peaks make the ``bound`` scenario (the profile's
        best measured rates when ``None`` or unknown).
    request_group
        The request stage's name in the trace (an explicit stage, e.g. ``vision`` or ``encoder``).
    """
    peaks = Peaks.of_hardware(hardware) or Peaks.of_profile(profile)
    cells = predict_cells(trace, profile, peaks)
    held = held_output(trace) if decode_steps > 0 and profile.bandwidth.get(RELEASE) else None
    if held is not None:
        cells = _move_release(cells, profile, held)
    cells["stage"] = stage_of(cells, request_roots, request_group)
    return TimePrediction(cells=cells, decode_steps=decode_steps, profile=profile, peaks=peaks)


__all__ = ["DECODE_GROUPS", "HELD_RELEASE", "MODULE_CALL", "SCENARIOS", "STAGES", "Peaks", "TimePrediction",
           "held_output", "predict", "predict_cells", "stage_of"]
