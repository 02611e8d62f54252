"""Runtime profiling: stage wall times, TTFT / TPOT / tokens per second, MFU, repeats, profiler operator table.

How time is measured
--------------------
A :class:`StageClock` hooks the *step module* (the module whose ``forward`` runs once per generated token, by default
the model itself): its first call is **prefill** (vision + decoder over the prompt), every later call a **decode
step**. Optional *vision modules* (the adapter's request modules, e.g. a vision tower and its projector)
are timed inside prefill.

* On **CPU** each boundary reads ``time.perf_counter()``; CPU kernels run synchronously, so boundaries are exact.
* On **CUDA** kernels run asynchronously: a hook that read the host clock would time the *launch*, not the work.
  Each boundary instead records a ``torch.cuda.Event`` on the current stream; after the run the clock synchronises
  once and reads ``Event.elapsed_time`` between boundaries, so stage times are GPU-timeline times with no
  synchronisation inside the run (which would perturb what is measured).

Derived metrics (per run, then mean and standard deviation over repeats):

* ``ttft_s``: time to first token = the first forward (vision + prefill).
* ``tpot_s``: time per output token = (end of the last step - end of the first forward) / decode steps; it includes
  the glue between forwards (sampling, concatenation) because a user waits for it too.
* ``decode_tokens_per_s`` = 1 / TPOT; ``tokens_per_s`` = generated tokens / whole-run time.
* MFU = FLOPs of the stage / stage time / hardware peak; ``None`` when the peak is unknown (CPU, unless given).

NVTX ranges ``prefill``, ``decode`` and ``decode_step[i]`` (and ``vision`` modules by name) are pushed at the same
boundaries, so Nsight Systems timelines line up with the trace's stage names.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import pandas as pd
import torch
from torch import nn

from opmeter.trace.stages import NVTX


def _nvtx_push(name: str) -> None:
    NVTX.push(name)


def _nvtx_pop() -> None:
    NVTX.pop()


class _Mark:
    """One timeline boundary: a host timestamp, or a CUDA event recorded on the current stream."""

    __slots__ = ("event", "host")

    def __init__(self, cuda: bool) -> None:
        self.event: Any = None
        if cuda:
            self.event = torch.cuda.Event(enable_timing=True)
            self.event.record()
        self.host = time.perf_counter()

    def seconds_until(self, other: _Mark) -> float:
        """Elapsed seconds from this mark to ``other`` (GPU timeline when both are CUDA events)."""
        if self.event is not None and other.event is not None:
            return float(self.event.elapsed_time(other.event)) / 1e3
        return other.host - self.host


@attrs.frozen
class RunTiming:
    """Stage times of one run (seconds).

    Attributes
    ----------
    total_s
        The whole timed call (preprocessing, prefill, decode, glue).
    vision_s
        The request modules (vision tower, encoder: the adapter's ``request_modules``), wherever they ran (0 when
        none were named or none ran).
    prefill_s
        Time to first token: the first forward of the step module, request modules included; for an encoder-first
        model, from the start of its first request module call (before the first forward) to the end of it.
    decode_step_s
        One entry per later forward: from the end of the previous forward to the end of this one (glue included).
    """

    total_s: float
    vision_s: float
    prefill_s: float
    decode_step_s: tuple[float, ...]
    forward_s: float = 0.0
    """Time inside forwards of the step module (the rest of ``total_s`` is host glue: preprocessing, sampling)."""
    peak_memory_bytes: float | None = None
    """Peak CUDA memory allocated during the run (``torch.cuda.max_memory_allocated``); ``None`` on CPU."""

    @property
    def decode_s(self) -> float:
        """Decode total: the sum of the decode steps."""
        return float(sum(self.decode_step_s))

    @property
    def ttft_s(self) -> float:
        """Time to first token: vision + prefill (the first forward)."""
        return self.prefill_s

    @property
    def tpot_s(self) -> float | None:
        """Time per output token over the decode steps, ``None`` without decode steps."""
        return self.decode_s / len(self.decode_step_s) if self.decode_step_s else None

    @property
    def generated_tokens(self) -> int:
        """Tokens produced: one by prefill, one per decode step."""
        return 1 + len(self.decode_step_s) if self.prefill_s > 0 else 0


class StageClock:
    """Forward hooks that time prefill, each decode step and vision modules; see the module docstring.

    Parameters
    ----------
    step_module
        Module whose ``forward`` runs once per generated token.
    vision_modules
        Modules timed inside the first forward (their time is part of prefill).
    device
        ``"cuda"`` to use CUDA events, anything else for the host clock.
    nvtx
        Push NVTX ranges ``prefill``, ``decode``, ``decode_step[i]`` and one per vision module.
    """

    def __init__(
        self,
        step_module: nn.Module,
        vision_modules: Sequence[tuple[str, nn.Module]] = (),
        device: str = "cpu",
        nvtx: bool = True,
    ) -> None:
        self._step = step_module
        self._vision = list(vision_modules)
        self._cuda = str(device).startswith("cuda") and torch.cuda.is_available()
        self._nvtx = nvtx
        self._handles: list[Any] = []
        self._depth = 0
        self._calls: list[tuple[_Mark, _Mark | None]] = []
        self._vision_spans: list[tuple[_Mark, _Mark | None]] = []
        self._vision_depth = 0
        self._start: _Mark | None = None
        self._end: _Mark | None = None
        self._decode_open = False

    # hooks -----------------------------------------------------------------------------------------------------
    def _step_pre(self, module: nn.Module, args: Any) -> None:
        self._depth += 1
        if self._depth > 1:  # re-entrant call of the same module: part of the outer step
            return
        index = len(self._calls)
        if self._nvtx:
            if index == 0:
                _nvtx_push("prefill")
            else:
                if not self._decode_open:
                    _nvtx_push("decode")
                    self._decode_open = True
                _nvtx_push(f"decode_step[{index - 1}]")
        self._calls.append((_Mark(self._cuda), None))

    def _step_post(self, module: nn.Module, args: Any, output: Any) -> None:
        self._depth -= 1
        if self._depth > 0 or not self._calls:
            return
        start, _ = self._calls[-1]
        self._calls[-1] = (start, _Mark(self._cuda))
        if self._nvtx:
            _nvtx_pop()

    def _vision_pre(self, name: str) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, args: Any) -> None:
            if self._calls and (len(self._calls) != 1 or self._calls[0][1] is not None):
                return  # only before the first forward ends (inside it, or before it for an encoder-first model)
            self._vision_depth += 1
            if self._vision_depth == 1:
                self._vision_spans.append((_Mark(self._cuda), None))
            if self._nvtx:
                _nvtx_push(name)

        return hook

    def _vision_post(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._vision_depth == 0:
            return
        self._vision_depth -= 1
        if self._nvtx:
            _nvtx_pop()
        if self._vision_depth == 0 and self._vision_spans:
            start, _ = self._vision_spans[-1]
            self._vision_spans[-1] = (start, _Mark(self._cuda))

    # context ---------------------------------------------------------------------------------------------------
    def __enter__(self) -> StageClock:
        self._handles.append(self._step.register_forward_pre_hook(self._step_pre))
        self._handles.append(self._step.register_forward_hook(self._step_post, always_call=True))
        for name, mod in self._vision:
            self._handles.append(mod.register_forward_pre_hook(self._vision_pre(name)))
            self._handles.append(mod.register_forward_hook(self._vision_post, always_call=True))
        self._start = _Mark(self._cuda)
        return self

    def __exit__(self, *exc: object) -> None:
        self._end = _Mark(self._cuda)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._nvtx and self._decode_open:
            _nvtx_pop()
            self._decode_open = False
        if self._cuda:
            torch.cuda.synchronize()

    def result(self) -> RunTiming:
        """The stage times of the finished run."""
        if self._start is None or self._end is None:
            raise RuntimeError("StageClock.result() called before the timed block finished")
        total = self._start.seconds_until(self._end)
        calls = [(s, e) for s, e in self._calls if e is not None]
        if not calls:
            return RunTiming(total_s=total, vision_s=0.0, prefill_s=0.0, decode_step_s=())
        first_start = calls[0][0]
        early = [s for s, _ in self._vision_spans if s.seconds_until(first_start) > 0]
        if early:  # an encoder-first model: its request modules ran before the first forward, inside TTFT
            first_start = early[0]
        prefill = first_start.seconds_until(calls[0][1])  # type: ignore[arg-type]
        steps = []
        for (_, prev_end), (_, end) in itertools.pairwise(calls):
            steps.append(prev_end.seconds_until(end))  # type: ignore[union-attr,arg-type]
        vision = sum(s.seconds_until(e) for s, e in self._vision_spans if e is not None)
        forward = sum(s.seconds_until(e) for s, e in calls)  # type: ignore[arg-type]
        return RunTiming(
            total_s=total, vision_s=vision, prefill_s=prefill, decode_step_s=tuple(steps), forward_s=forward
        )


@attrs.frozen
class Stat:
    """Mean and sample standard deviation over repeats (``std`` is 0 for a single repeat)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        """Summarise ``values``."""
        vals = [float(v) for v in values]
        if not vals:
            return cls(mean=math.nan, std=math.nan, n=0)
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return cls(mean=statistics.fmean(vals), std=std, n=len(vals))


@attrs.frozen
class RuntimeProfile:
    """Stage metrics over repeated runs.

    Attributes
    ----------
    runs
        One :class:`RunTiming` per measured repeat (warm-up runs excluded).
    device
        Device the runs executed on.
    peak_flops
        Hardware peak used for MFU (FLOP/s), ``None`` when unknown.
    stage_flops
        FLOPs per stage (``"prefill"``, ``"decode"``) from the trace, for MFU; empty when not counted.
    """

    runs: tuple[RunTiming, ...]
    device: str
    peak_flops: float | None = None
    stage_flops: dict[str, float] = attrs.field(factory=dict)

    def stat(self, metric: str) -> Stat:
        """Mean/std of a :class:`RunTiming` attribute (``total_s``, ``ttft_s``, ``tpot_s``, ...)."""
        values = [getattr(r, metric) for r in self.runs]
        return Stat.of([v for v in values if v is not None])

    def mfu(self, stage: str) -> float | None:
        """Model FLOPs utilisation of ``stage`` (``"prefill"`` or ``"decode"``) or ``None`` when unknown."""
        flops = self.stage_flops.get(stage)
        if not self.peak_flops or not flops:
            return None
        seconds = self.stat("prefill_s" if stage == "prefill" else "decode_s").mean
        if not seconds or math.isnan(seconds):
            return None
        return flops / seconds / self.peak_flops

    def summary(self) -> pd.DataFrame:
        """One row per metric: mean, std, n (seconds, tokens/s, MFU)."""
        rows: list[dict[str, Any]] = []
        for metric, label in (
            ("total_s", "total (s)"),
            ("vision_s", "vision (s)"),
            ("prefill_s", "prefill = TTFT, vision + decoder (s)"),
            ("decode_s", "decode total (s)"),
            ("tpot_s", "TPOT (s)"),
        ):
            st = self.stat(metric)
            rows.append({"metric": metric, "label": label, "mean": st.mean, "std": st.std, "n": st.n})
        mem = [r.peak_memory_bytes for r in self.runs if r.peak_memory_bytes is not None]
        if mem:
            st = Stat.of(mem)
            rows.append({"metric": "peak_memory_bytes", "label": "peak CUDA memory allocated (bytes)",
                         "mean": st.mean, "std": st.std, "n": st.n})
        tps = Stat.of([r.generated_tokens / r.total_s for r in self.runs if r.total_s > 0])
        rows.append({"metric": "tokens_per_s", "label": "tokens/s, end to end", **attrs.asdict(tps)})
        dtps = Stat.of([1.0 / t for r in self.runs if (t := r.tpot_s)])
        rows.append({"metric": "decode_tokens_per_s", "label": "tokens/s, decode (1/TPOT)", **attrs.asdict(dtps)})
        for stage in ("prefill", "decode"):
            value = self.mfu(stage)
            rows.append(
                {
                    "metric": f"mfu_{stage}",
                    "label": f"MFU {stage}" + ("" if value is not None else " (unknown peak)"),
                    "mean": value if value is not None else math.nan,
                    "std": math.nan,
                    "n": len(self.runs),
                }
            )
        return pd.DataFrame(rows)

    def steps(self) -> pd.DataFrame:
        """Per decode step: mean and std of its time over repeats."""
        n = min((len(r.decode_step_s) for r in self.runs), default=0)
        rows = []
        for i in range(n):
            st = Stat.of([r.decode_step_s[i] for r in self.runs])
            rows.append({"stage": f"decode[{i}]", "mean_s": st.mean, "std_s": st.std, "n": st.n})
        return pd.DataFrame(rows, columns=["stage", "mean_s", "std_s", "n"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (per-run stage times, means and standard deviations)."""
        summary = self.summary()
        return {
            "device": self.device,
            "peak_flops": self.peak_flops,
            "repeats": len(self.runs),
            "metrics": {
                row["metric"]: {"mean": _finite(row["mean"]), "std": _finite(row["std"]), "n": int(row["n"])}
                for row in summary.to_dict("records")
            },
            "runs": [
                {
                    "total_s": r.total_s,
                    "vision_s": r.vision_s,
                    "prefill_s": r.prefill_s,
                    "decode_step_s": list(r.decode_step_s),
                    "forward_s": r.forward_s,
                    "peak_memory_bytes": r.peak_memory_bytes,
                }
                for r in self.runs
            ],
        }


def _finite(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def profile_runtime(
    run: Callable[[], Any],
    step_module: nn.Module,
    vision_modules: Sequence[tuple[str, nn.Module]] = (),
    device: str = "cpu",
    repeats: int = 3,
    warmup: int = 1,
    peak_flops: float | None = None,
    stage_flops: dict[str, float] | None = None,
    nvtx: bool = True,
    progress: Callable[[int], None] | None = None,
) -> RuntimeProfile:
    """Run ``run()`` ``warmup + repeats`` times with a :class:`StageClock`; summarise the measured repeats.

    Parameters
    ----------
    run
        Zero-argument callable running one inference (for example ``lambda: model.generate(...)``).
    step_module, vision_modules, device, nvtx
        See :class:`StageClock`.
    repeats, warmup
        Measured runs (at least 1) and discarded warm-up runs.
    peak_flops, stage_flops
        For MFU; see :class:`RuntimeProfile`.
    progress
        Called with the number of finished runs (warm-up included) after each run.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    runs: list[RunTiming] = []
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    for i in range(warmup + repeats):
        clock = StageClock(step_module, vision_modules, device=device, nvtx=nvtx)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode(), clock:
            run()
        if i >= warmup:
            result = clock.result()
            if cuda:
                result = attrs.evolve(result, peak_memory_bytes=float(torch.cuda.max_memory_allocated()))
            runs.append(result)
        if progress is not None:
            progress(i + 1)
    return RuntimeProfile(runs=tuple(runs), device=str(device), peak_flops=peak_flops, stage_flops=stage_flops or {})


# -- PyTorch profiler operator table ---------------------------------------------------------------------------------


def operator_table(
    run: Callable[[], Any],
    device: str = "cpu",
    categorize: Callable[[str], str] | None = None,
) -> pd.DataFrame:
    """Operator table from ``torch.profiler`` for one run of ``run()``.

    ``categorize`` maps a profiler op name (``aten::mm``) to a category, e.g.
    :func:`opmeter.trace.categories.category_of_name`; rows that are not aten ops get ``non_aten``.

    Self time is the time inside an op minus its children, so the ``self_time_s`` column sums to the profiled time
    without double counting; ``total_time_s`` includes children (an ``aten::linear`` contains its ``aten::addmm``)
    and must not be summed. On CUDA the device self time is used when available.

    Returns
    -------
    DataFrame
        Columns ``op``, ``category``, ``calls``, ``self_time_s``, ``total_time_s``, ``self_share``; sorted by self time.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    with torch.inference_mode(), profile(activities=activities) as prof:
        run()
    rows = []
    for evt in prof.key_averages():
        name = str(evt.key)
        if cuda and getattr(evt, "self_device_time_total", None):
            self_us = float(evt.self_device_time_total)
            total_us = float(getattr(evt, "device_time_total", self_us))
        else:
            self_us = float(evt.self_cpu_time_total)
            total_us = float(evt.cpu_time_total)
        category = "other"
        if categorize is not None and name.startswith("aten::"):
            with contextlib.suppress(Exception):
                category = categorize(name)
        elif not name.startswith("aten::"):
            category = "non_aten"
        rows.append(
            {
                "op": name,
                "category": category,
                "calls": int(evt.count),
                "self_time_s": self_us / 1e6,
                "total_time_s": total_us / 1e6,
            }
        )
    df = pd.DataFrame(rows, columns=["op", "category", "calls", "self_time_s", "total_time_s"])
    total = float(df["self_time_s"].sum()) if len(df) else 0.0
    df["self_share"] = df["self_time_s"] / total if total > 0 else 0.0
    return df.sort_values("self_time_s", ascending=False, ignore_index=True)


@contextlib.contextmanager
def nvtx_range(name: str) -> Iterator[None]:
    """An NVTX range around a block (no-op without Nsight)."""
    _nvtx_push(name)
    try:
        yield
    finally:
        _nvtx_pop()
