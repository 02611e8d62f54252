"""Microbenchmarks that build a :class:`~opmeter.timemodel.profile.DeviceProfile` (``opmeter calibrate``).

Everything is measured on synthetic tensors, never by timing the workload a profile will predict:

* host cost per op kind: one representative op per kind (:data:`opmeter.timemodel.kinds.HOST_KINDS`) on tiny
  tensors, called eagerly in a loop (the whole per-call cost: Python binding, dispatcher, allocator, launch);
* ``nn.Module`` call cost: a module whose ``forward`` returns its input;
* achieved FLOP/s of ``mm``, ``addmm``, ``bmm``, ``linear`` over a grid of shapes (GEMV-like, skinny, tall,
  square), of fused attention (``scaled_dot_product_attention``: prefill-like and decode-like) and of convolution
  (patch embedding, 1x1, 3x3, strided); of CUDA-core ``vector`` work (GELU, SiLU);
* achieved read bandwidth (``sum`` of a whole tensor), write bandwidth (``full``: a freshly allocated output, as
  every op writes one, page faults included) and index-reduction bandwidth (``argmax`` over one long row) from 4 KiB
  to 64 MiB per call; on a CPU, the bandwidth of writing into an existing buffer (``fill_``), the extra cost of a
  fresh output over it (``first_touch`` = write - fill: page faults, which add to the time of a compute-bound kernel
  that writes the output) and the time to release a large written buffer (``release``);
* the host cost of ops inside module code relative to a tight loop of one op (a stack of tiny transformer blocks,
  :func:`measure_module_host_factor`).

Each benchmark's FLOPs and bytes are counted by the tracer itself (one traced call), so they follow exactly the
conventions the trace of a workload uses. Its host cost is subtracted before the rate is computed.

Timing: CPU calls are timed over batches (median batch) with :func:`pick_clock` (the thread's CPU time with one
torch thread, else ``perf_counter``); on CUDA each batch is bracketed by
CUDA events after a warm-up and a synchronisation, the host cost is the launch-bound rate of a tiny kernel, and the
launch latency the host time of one launch. The CUDA path degrades to the CPU path when no GPU is present.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from opmeter.errors import OpmeterError
from opmeter.timemodel.kinds import FILL, FIRST_TOUCH, MEMORY_KINDS, RELEASE
from opmeter.timemodel.profile import MEASURED, BandwidthPoint, ComputePoint, DeviceProfile, mean_profile

log = logging.getLogger(__name__)

Bench = Callable[[], Any]


@attrs.frozen
class Budget:
    """How long each benchmark runs and how many shapes are measured."""

    name: str
    seconds_per_bench: float
    min_calls: int
    """Timed batches per benchmark (each at least one call), after one warm-up call."""
    max_flops: float
    """GEMM / attention / convolution shapes above this many FLOPs per call are skipped."""
    max_bytes: float
    max_buffer_bytes: float = 0.0
    """Largest buffer of the write and release benchmarks (fresh outputs the size of a prefill's logits or of a
    global-attention bias: far beyond the allocator's reuse, every page faulted); at least ``max_bytes``."""


FULL = Budget("full", 0.15, 3, 4e9, 64 * 2**20, 256 * 2**20)
QUICK = Budget("quick", 0.01, 3, 2e8, 4 * 2**20)
PASSES = {"full": 3, "quick": 1}
"""Calibration passes per budget, each with its share of the time per benchmark; every time of the profile is the
mean over the passes (:func:`opmeter.timemodel.profile.mean_profile`). A shared machine's speed drifts in phases of
seconds (the same loop of Python work takes 12 ms, then 20 ms, in CPU time on this one); a benchmark timed once
falls in one phase, while a run of the workload spans many: the mean of passes some tens of seconds apart estimates
the time it meets on average."""


def pick_clock(device: str) -> Callable[[], float]:
    """The clock of the calibration: on a CPU with one torch thread, the CPU time of the calling thread.

    A machine shared with other jobs takes the core away for milliseconds at a time; wall time then measures the
    neighbours' load at the moment of the calibration, CPU time measures the kernel. The profile then predicts a
    run on a quiet machine (where wall time and CPU time agree). Several threads (intra-op workers) and CUDA use
    ``perf_counter``: the calling thread's CPU time would miss the workers' work or the device's.
    """
    if device == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time
    return time.perf_counter


@attrs.define
class _Timer:
    device: str
    budget: Budget
    clock: Callable[[], float] = attrs.field(default=time.perf_counter)

    def seconds_per_call(self, fn: Bench) -> float:
        """Median over the budget's batches of the mean time per call (after a warm-up call, which sizes them).

        A batch lasts its share of the benchmark's budget (many scheduler ticks with the full budget), so on a machine
        shared with other jobs the rates include the share of the cores this process gets, as the workload's
        runs will; the median drops a batch that met an unusual burst. With the thread clock (:func:`pick_clock`)
        the time the core was taken away is not counted at all."""
        start = self.clock()
        fn()
        self._sync()
        once = max(self.clock() - start, 1e-7)
        batches = max(self.budget.min_calls, 1)
        per_batch = max(1, min(1000, int(self.budget.seconds_per_bench / batches / once)))
        samples = [self._batch(fn, per_batch) for _ in range(batches)]
        return statistics.median(samples)

    def _batch(self, fn: Bench, n: int) -> float:
        if self.device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            begin.record()
            for _ in range(n):
                fn()
            end.record()
            torch.cuda.synchronize()
            return float(begin.elapsed_time(end)) / 1e3 / n
        start = self.clock()
        for _ in range(n):
            fn()
        return (self.clock() - start) / n

    def seconds_per_cold_call(self, fn: Bench, flush: Bench | None, calls: int = 8) -> float:
        """Mean time per call of ``fn`` called ``calls`` times, each after ``flush`` (untimed; ``None``: no flush, the
        batches of :meth:`seconds_per_call`)."""
        if flush is None:
            return self.seconds_per_call(fn)
        fn()
        total = 0.0
        for _ in range(calls):
            flush()
            self._sync()
            start = self.clock()
            fn()
            self._sync()
            total += self.clock() - start
        return total / calls

    def host_seconds_per_call(self, fn: Bench, n: int = 200) -> float:
        """Host time per call without synchronising inside the loop (the launch-bound rate on a GPU): the mean over
        batches of ``n`` calls, as a run of the workload meets the machine's fast and slow moments alike."""
        fn()
        self._sync()
        samples = []
        for _ in range(max(3, self.budget.min_calls)):
            start = self.clock()
            for _ in range(n):
                fn()
            samples.append((self.clock() - start) / n)
            self._sync()
        return statistics.fmean(samples)

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


def count(fn: Bench) -> tuple[float, float]:
    """(FLOPs, bytes) of one call of ``fn`` as the tracer counts them (tensor-core + CUDA-core FLOPs)."""
    flops, nbytes, _written = count_written(fn)
    return flops, nbytes


def count_written(fn: Bench) -> tuple[float, float, float]:
    """(FLOPs, bytes, bytes written) of one call of ``fn`` as the tracer counts them."""
    from opmeter.trace import OpTracer

    with OpTracer(torch.nn.Module(), nvtx=False) as trace:
        fn()
    tot = trace.totals()
    return (float(tot["flops_tensor"] + tot["flops_cuda"]), float(tot["bytes_read"] + tot["bytes_written"]),
            float(tot["bytes_written"]))


def _host_benches(dev: str, dt: torch.dtype) -> dict[str, Bench]:
    """One tiny representative call per host kind."""
    a, b, c = (torch.randn(4, 4, device=dev, dtype=dt) for _ in range(3))
    bb = torch.randn(2, 4, 4, device=dev, dtype=dt)
    q = torch.randn(1, 1, 4, 8, device=dev, dtype=dt)
    img, w = torch.randn(1, 1, 4, 4, device=dev, dtype=dt), torch.randn(1, 1, 3, 3, device=dev, dtype=dt)
    idx = torch.tensor([0, 2], device=dev)
    s = torch.ones((), device=dev, dtype=dt)
    return {
        "view": lambda: a.view(16), "mm": lambda: torch.mm(a, b), "addmm": lambda: torch.addmm(c, a, b),
        "bmm": lambda: torch.bmm(bb, bb), "sdpa": lambda: F.scaled_dot_product_attention(q, q, q),
        "conv": lambda: F.conv2d(img, w), "elementwise": lambda: a + b, "activation": lambda: F.silu(a),
        "normalization": lambda: F.layer_norm(a, (4,)), "reduction": lambda: a.sum(-1),
        "copy": lambda: torch.cat([a, b]), "creation": lambda: torch.zeros(4, device=dev, dtype=dt),
        "index": lambda: torch.index_select(a, 0, idx), "routing": lambda: torch.topk(a, 2),
        "scalar": lambda: s.item(), "other": lambda: F.interpolate(img, scale_factor=2.0),
    }


def measure_host(timer: _Timer, dev: str, dt: torch.dtype) -> tuple[dict[str, float], float]:
    """Host cost per op kind and per ``nn.Module`` call (seconds)."""
    out = {}
    for kind, fn in _host_benches(dev, dt).items():
        out[kind] = timer.host_seconds_per_call(fn)
    empty = torch.nn.Identity()
    x = torch.zeros(1, device=dev, dtype=dt)
    module_call = max(timer.host_seconds_per_call(lambda: empty(x)) - timer.host_seconds_per_call(lambda: x), 0.0)
    return out, module_call


def _gemm_shapes(budget: Budget) -> list[tuple[int, int, int]]:
    """(M, K, N): GEMV-like, skinny, tall and square shapes, bounded by the budget's FLOPs per call."""
    full = budget.name == FULL.name
    ms = (1, 8, 64, 512, 4096) if full else (1, 64, 1024)
    ks = (64, 256, 1024) if full else (64, 512)
    ns = (64, 512, 4096, 32768) if full else (128, 4096)
    grid = [(m, k, n) for m in ms for k in ks for n in ns]
    wide = [(m, 64, 131072) for m in ((1, 16, 256) if full else (1,))]  # vocabulary-wide output layers
    return [(m, k, n) for m, k, n in grid + wide
            if 2 * m * k * n <= budget.max_flops and 4 * (m * k + k * n + m * n) <= 2 * budget.max_bytes]


def _gemm_benches(kind: str, shapes: Iterable[tuple[int, int, int]], dev: str, dt: torch.dtype,
                  max_bytes: float = math.inf) -> Iterable[tuple[str, Bench]]:
    for m, k, n in shapes:
        if kind == "bmm" and (m < 8 or 8 * k * n * dt.itemsize > 2 * max_bytes):
            continue  # a batch of 8 right-hand sides: the attention shapes bmm runs, not 8 vocabulary-wide weights
        a = torch.randn(m, k, device=dev, dtype=dt)
        if kind == "bmm":  # the same total work split over a batch of 8
            a3, w3 = a.reshape(8, m // 8, k), torch.randn(8, k, n, device=dev, dtype=dt)
            yield f"bmm B=8 M={m // 8} K={k} N={n}", partial(torch.bmm, a3, w3)
            continue
        # the weight as nn.Linear keeps it ([N, K]) and passes it to mm / addmm: a transposed view
        wt, bias = torch.randn(n, k, device=dev, dtype=dt), torch.randn(n, device=dev, dtype=dt)
        w, label = wt.t(), f"{kind} M={m} K={k} N={n}"
        if kind == "mm":
            yield label, partial(torch.mm, a, w)
        elif kind == "addmm":
            yield label, partial(torch.addmm, bias, a, w)
        else:
            yield label, partial(F.linear, a, wt, bias)


def _sdpa_benches(budget: Budget, dev: str, dt: torch.dtype) -> Iterable[tuple[str, Bench]]:
    """Fused attention: prefill-like (L = S) and decode-like (L = 1) shapes; windowed and global attention with an
    additive float mask (relative-position bias), whose bytes lower the call's intensity."""
    shapes = [(1, 2, 64, 64, 32, False), (1, 2, 256, 256, 32, False), (1, 2, 1024, 1024, 32, False),
              (1, 2, 4096, 4096, 32, False), (1, 16, 576, 576, 64, False), (1, 2, 1, 256, 32, False),
              (1, 2, 1, 1024, 32, False), (1, 16, 1, 1024, 64, False), (1, 8, 196, 196, 64, False),
              (1, 2, 257, 257, 64, False), (25, 2, 196, 196, 32, True), (1, 2, 1024, 1024, 32, True),
              (1, 2, 4096, 4096, 32, True)]
    for b, h, lq, lk, d, masked in shapes:
        if 4 * b * h * lq * lk * d > 2 * budget.max_flops or (budget.name == QUICK.name and lq * lk > 2**20):
            continue
        q = torch.randn(b, h, lq, d, device=dev, dtype=dt)
        k = torch.randn(b, h, lk, d, device=dev, dtype=dt)
        mask = torch.randn(b, h, lq, lk, device=dev, dtype=dt) if masked else None
        yield (f"sdpa B={b} H={h} L={lq} S={lk} D={d}{' masked' if masked else ''}",
               partial(F.scaled_dot_product_attention, q, k, k, attn_mask=mask))


def _conv_benches(budget: Budget, dev: str, dt: torch.dtype) -> Iterable[tuple[str, Bench]]:
    shapes = [(3, 1024, 64, 16, 16, 0), (3, 640, 64, 16, 16, 0), (3, 256, 32, 16, 16, 0), (64, 64, 32, 1, 1, 0),
              (32, 64, 32, 3, 1, 1), (32, 64, 64, 3, 2, 1), (64, 32, 128, 3, 2, 1), (256, 64, 256, 3, 1, 1)]
    for cin, hw, cout, k, stride, pad in shapes:
        x = torch.randn(1, cin, hw, hw, device=dev, dtype=dt)
        w = torch.randn(cout, cin, k, k, device=dev, dtype=dt)
        out_hw = (hw + 2 * pad - k) // stride + 1
        if 2 * cout * cin * k * k * out_hw**2 > budget.max_flops:
            continue
        yield (f"conv Cin={cin} HW={hw} Cout={cout} k={k} s={stride}",
               partial(F.conv2d, x, w, stride=stride, padding=pad))


FACTOR_ROUNDS = 3
"""The stacks of the module host factor are timed in turn this many times; each stack's mean counts."""


def measure_module_host_factor(timer: _Timer, provisional: DeviceProfile, dev: str, dt: torch.dtype) -> float:
    """How much more the host part of an op costs inside module code than in a tight loop of one op.

    Times the stacks of tiny synthetic blocks of :func:`opmeter.timemodel.synthetic.stacks` (tiny tensors: the
    kernels cost next to nothing) in the common eager styles: encoder blocks and LLM decoder layers with a mixture of
    experts one token at a time, windowed-attention image blocks with a relative-position bias and a convolutional
    neck, and a greedy generation loop; on a CPU each call follows a pass over a buffer twice the last-level cache
    (:func:`cache_flush`: a model's weights and activations stream through the caches between two calls of the same
    code, so its Python, dispatcher and tensor metadata are cold); predicts them with the tight-loop ``provisional``
    profile, and returns (measured - predicted device time) / predicted host time over all stacks (each timed
    :data:`FACTOR_ROUNDS` times in turn, its mean), at least 1: the cost of the Python lines between ops, of dispatch
    paths that a loop over one op keeps hot and of cold caches. Synthetic blocks, not the workload a profile will
    predict.
    """
    from opmeter.timemodel.model import predict_cells
    from opmeter.timemodel.synthetic import stacks
    from opmeter.trace import OpTracer

    host = device = 0.0
    calls = []
    for model, x in stacks(dev, dt):
        with OpTracer(model, nvtx=False) as trace:
            model(x)
        cells = predict_cells(trace, provisional)
        host, device = host + float(cells["host_s"].sum()), device + float(cells["graph_s"].sum())
        calls.append(partial(model, x))
    flush = cache_flush(dev)
    rounds = [[timer.seconds_per_cold_call(call, flush) for call in calls] for _ in range(FACTOR_ROUNDS)]
    measured = sum(statistics.fmean(times) for times in zip(*rounds, strict=True))
    return max((measured - device) / host, 1.0) if host > 0 else 1.0


def last_level_cache_bytes(sysfs: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> float:
    """Size of the CPU's largest cache (Linux sysfs), 32 MiB when it cannot be read (logged)."""
    best = 0.0
    for path in sysfs.glob("index*/size"):
        try:
            text = path.read_text(encoding="utf-8").strip().upper()
            best = max(best, float(text.rstrip("KMG")) * {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1))
        except (OSError, ValueError):
            continue
    if best <= 0:
        log.info("CPU cache size not readable from sysfs; assuming a 32 MiB last-level cache")
        return float(32 * 2**20)
    return best


def cache_flush(device: str) -> Bench | None:
    """On a CPU, a pass over a buffer twice the last-level cache: what a model's weights and activations streaming
    through the caches between two calls of the same code leave behind (an LLM's decode step reads every weight
    once; a vocabulary-wide output layer alone is tens of MB). ``None`` on CUDA, whose weights never pass through
    the host's caches."""
    if device != "cpu":
        return None
    buffer = torch.zeros(int(2 * last_level_cache_bytes() // 4))
    return partial(buffer.add_, 1.0)


def _sizes(budget: Budget, limit: float = 0.0) -> list[int]:
    """Elements per call for the bandwidth benchmarks: 4 KiB to ``limit`` bytes (the budget's ``max_bytes`` by
    default) in fp32."""
    sizes = [2**10, 2**12, 2**14, 2**16, 2**18, 2**20, 2**22, 2**24, 2**26]
    return [n for n in sizes if 4 * n <= max(limit, budget.max_bytes)]


def _buffer_sizes(budget: Budget) -> list[int]:
    """Elements per call for the fresh-output curves (write, fill, release): :func:`_sizes` up to the budget's
    ``max_buffer_bytes`` plus 24, 32, 40 and 48 MiB (fp32), where the C allocator stops reusing freed memory and
    starts mapping fresh pages for every large buffer (a step in the first-touch cost)."""
    steps = [6 * 2**20, 2**23, 10 * 2**20, 12 * 2**20]
    limit = max(budget.max_buffer_bytes, budget.max_bytes)
    return sorted({*_sizes(budget, limit), *(n for n in steps if 4 * n <= limit)})


def _memory_benches(kind: str, budget: Budget, dev: str, dt: torch.dtype) -> Iterable[tuple[str, Bench]]:
    for n in (_buffer_sizes(budget) if kind == "write" else _sizes(budget)):
        a = torch.randn(n, device=dev, dtype=dt)
        if kind == "read":  # read once, nothing written but one scalar
            yield f"sum(all) n={n}", partial(torch.sum, a)
        elif kind == "write":  # a fresh output of n elements, as every op allocates its result
            yield f"full n={n}", partial(torch.full, (n,), 1.0, device=dev, dtype=dt)
        else:  # index reductions over one long row (greedy sampling over a vocabulary, top-k routing)
            yield f"argmax n={n}", partial(torch.argmax, a.reshape(1, -1), -1)


def _release_points(timer: _Timer, budget: Budget, dev: str, dt: torch.dtype) -> tuple[BandwidthPoint, ...]:
    """Seconds to release a written tensor of 1 MiB and more (CPU): large buffers go back to the operating system.

    The ``write`` curve frees every output right away, so it includes this cost; the time model moves it to the
    step where a generation loop releases the output of the first forward it held (:mod:`opmeter.timemodel.model`).
    """
    points = []
    for n in _buffer_sizes(budget):
        nbytes = n * dt.itemsize
        if nbytes < 2**20:
            continue
        samples = []
        for _ in range(max(budget.min_calls, 3)):
            x = torch.full((n,), 1.0, device=dev, dtype=dt)
            start = timer.clock()
            del x
            samples.append(timer.clock() - start)
        seconds = max(statistics.median(samples), 1e-7)
        points.append(BandwidthPoint(bytes=float(nbytes), bytes_per_s=nbytes / seconds, label=f"release n={n}"))
    return tuple(points)


def _fill_points(timer: _Timer, budget: Budget, dev: str, dt: torch.dtype, host: float
                 ) -> tuple[BandwidthPoint, ...]:
    """Bandwidth of writing into an existing buffer (``fill_``), at the sizes of the write curve; the bytes are the
    bytes written (as the write curve's), whatever the tracer counts for an in-place op."""
    measured: list[tuple[Bench, BandwidthPoint]] = []
    for n in _buffer_sizes(budget):
        fn = partial(torch.empty(n, device=dev, dtype=dt).fill_, 1.0)
        nbytes = float(n * dt.itemsize)
        seconds = _net_seconds(timer.seconds_per_call(fn), host)
        measured.append((fn, BandwidthPoint(bytes=nbytes, bytes_per_s=nbytes / seconds, label=f"fill_ n={n}")))
    return _without_dips(timer, measured, host)


GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20
"""glibc's largest dynamic mmap threshold on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``): a larger allocation is always
mapped fresh from the operating system and unmapped when freed."""


def fresh_map_bytes(device: str) -> float:
    """Size from which every allocation of a CPU tensor is mapped fresh (page faults on each first touch): glibc's
    ``MALLOC_MMAP_THRESHOLD_`` when set, else its largest dynamic threshold on 64-bit; ``0`` (unknown, no
    first-touch term) for CUDA (a caching allocator) and other C libraries."""
    if device != "cpu" or platform.libc_ver()[0] != "glibc":
        return 0.0
    try:
        return float(int(os.environ.get("MALLOC_MMAP_THRESHOLD_", GLIBC_MMAP_THRESHOLD_MAX)))
    except ValueError:
        log.warning("MALLOC_MMAP_THRESHOLD_=%r is not an integer; assuming glibc's default",
                    os.environ["MALLOC_MMAP_THRESHOLD_"])
        return float(GLIBC_MMAP_THRESHOLD_MAX)


def first_touch_points(write: tuple[BandwidthPoint, ...], fill: tuple[BandwidthPoint, ...], threshold: float
                       ) -> tuple[BandwidthPoint, ...]:
    """The extra cost of a fresh output over writing existing memory, at the sizes of at least ``threshold`` bytes
    (always mapped fresh): page faults and the return of the pages to the system, as ``write`` (a fresh output per
    call) minus ``fill`` (the same bytes into one buffer).

    A size where the two agree within the noise gets a rate a thousand times its write bandwidth (next to free).
    """
    fill_at = {p.label.split(" ", 1)[-1]: p for p in fill}
    points = []
    for w in write:
        f = fill_at.get(w.label.split(" ", 1)[-1])
        if f is None or threshold <= 0 or w.bytes < threshold:
            continue
        seconds_write, seconds_fill = w.bytes / w.bytes_per_s, f.bytes / f.bytes_per_s
        extra = max(seconds_write - seconds_fill, 1e-3 * seconds_write)
        label = "first_touch " + w.label.split(" ", 1)[-1]
        points.append(BandwidthPoint(bytes=w.bytes, bytes_per_s=w.bytes / extra, label=label))
    return tuple(points)


def _vector_benches(budget: Budget, dev: str, dt: torch.dtype) -> Iterable[tuple[str, Bench]]:
    for n in _sizes(budget)[::2]:
        a = torch.randn(n, device=dev, dtype=dt)
        yield f"gelu n={n}", partial(F.gelu, a)
        yield f"silu n={n}", partial(F.silu, a)


_MEMORY_HOST = {"read": "reduction", "write": "creation", "arg_reduction": "routing"}
"""Host kind whose cost is subtracted from a memory benchmark's time, where the names differ."""


def _net_seconds(seconds: float, host: float) -> float:
    """Time of a call without its host cost, floored at a tenth of the call (a call is never free)."""
    return max(seconds - host, 0.1 * seconds)


Touch = Callable[[float], float]
"""Seconds of first touch of a fresh output of so many bytes (``0`` when the allocator reuses memory)."""


def _no_touch(_written: float) -> float:
    return 0.0


def _compute_points(timer: _Timer, benches: Iterable[tuple[str, Bench]], host: float, touch: Touch = _no_touch
                    ) -> tuple[ComputePoint, ...]:
    """Achieved FLOP/s per benchmark, net of its host cost and of the first touch of its output (which the time
    model adds apart)."""
    points = []
    for label, fn in benches:
        flops, nbytes, written = count_written(fn)
        if flops <= 0:
            continue
        seconds = _net_seconds(timer.seconds_per_call(fn), host + touch(written))
        points.append(ComputePoint(flops=flops, bytes=nbytes, flops_per_s=flops / seconds, label=label))
    return tuple(points)


OUTLIER_DIP = 0.25
"""A bandwidth point slower than this share of both its neighbours is a stall, not the curve: measured again."""


def _bandwidth_points(timer: _Timer, benches: Iterable[tuple[str, Bench]], host: float) -> tuple[BandwidthPoint, ...]:
    measured: list[tuple[Bench, BandwidthPoint]] = []
    for label, fn in benches:
        _, nbytes = count(fn)
        if nbytes <= 0:
            log.warning("calibration benchmark %s moved no bytes; skipped", label)
            continue
        seconds = _net_seconds(timer.seconds_per_call(fn), host)
        measured.append((fn, BandwidthPoint(bytes=nbytes, bytes_per_s=nbytes / seconds, label=label)))
    return _without_dips(timer, measured, host)


def _without_dips(timer: _Timer, measured: list[tuple[Bench, BandwidthPoint]], host: float
                  ) -> tuple[BandwidthPoint, ...]:
    """Measure again a point far below both neighbours (a burst of other work on a shared machine); the faster of
    the two measurements stays, and the log says so."""
    points = [p for _, p in measured]
    for i in range(1, len(points) - 1):
        rate = points[i].bytes_per_s
        if rate >= OUTLIER_DIP * min(points[i - 1].bytes_per_s, points[i + 1].bytes_per_s):
            continue
        fn, point = measured[i]
        again = point.bytes / _net_seconds(timer.seconds_per_call(fn), host)
        log.warning("calibration %s: %.3g GB/s is far below its neighbours; measured again: %.3g GB/s", point.label,
                    rate / 1e9, again / 1e9)
        points[i] = attrs.evolve(point, bytes_per_s=max(rate, again))
    return tuple(points)


def device_name(device: str) -> str:
    """The GPU name (CUDA) or the CPU model (``/proc/cpuinfo``, else ``platform.processor()``)."""
    if device == "cuda":
        return str(torch.cuda.get_device_name(0))
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def resolve_calibration_device(device: str) -> str:
    """``cpu`` or ``cuda``; ``cuda`` without a GPU is an error (one line), ``auto`` picks the GPU when present."""
    name = device.strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise OpmeterError(f"unsupported calibration device {device!r}; choose cpu, cuda or auto")
    if name == "cuda" and not torch.cuda.is_available():
        raise OpmeterError("--device cuda requested but no CUDA device is available (torch.cuda.is_available() is "
                           "False); calibrate the CPU with --device cpu")
    return name


def parse_dtype(name: str) -> torch.dtype:
    """``float32`` / ``bfloat16`` / ``float16`` (also ``fp32``, ``bf16``, ``fp16``) to a torch dtype."""
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
    key = aliases.get(name.strip().lower(), name.strip().lower())
    if key not in ("float32", "bfloat16", "float16"):
        raise OpmeterError(f"unsupported dtype {name!r}; choose float32, bfloat16 or float16")
    return getattr(torch, key)  # type: ignore[no-any-return]


def calibrate(device: str = "cpu", dtype: str = "float32", threads: int | None = None, quick: bool = False,
              progress: Callable[[str], None] | None = None) -> DeviceProfile:
    """Run the microbenchmarks and return the device profile (see the module docstring).

    Parameters
    ----------
    device
        ``cpu``, ``cuda`` or ``auto``.
    dtype
        Floating-point dtype of every benchmark tensor.
    threads
        ``torch.set_num_threads`` during the calibration (restored afterwards); default: the current setting.
    quick
        A few seconds instead of about a minute: fewer shapes, shorter timing, one pass instead of
        :data:`PASSES` (for tests and CI).
    progress
        Called with the name of each benchmark group as it starts.
    """
    dev = resolve_calibration_device(device)
    dt = parse_dtype(dtype)
    if threads is not None and threads < 1:
        raise OpmeterError(f"--threads must be at least 1, got {threads}")
    budget = QUICK if quick else FULL
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    passes = PASSES.get(budget.name, 1)
    share = attrs.evolve(budget, seconds_per_bench=budget.seconds_per_bench / passes)
    say = progress or (lambda _s: None)
    try:
        with torch.inference_mode():
            profiles = [_run(dev, dt, share, say if passes == 1 else partial(_in_pass, say, i + 1, passes))
                        for i in range(passes)]
    finally:
        torch.set_num_threads(before)
    return mean_profile(profiles)


def _in_pass(progress: Callable[[str], None], index: int, passes: int, step: str) -> None:
    progress(f"pass {index}/{passes}: {step}")


def _run(dev: str, dt: torch.dtype, budget: Budget, progress: Callable[[str], None]) -> DeviceProfile:
    timer = _Timer(dev, budget, pick_clock(dev))
    torch.manual_seed(0)
    progress("host cost per op kind")
    host, module_call = measure_host(timer, dev, dt)
    launch = _launch_latency(timer) if dev == "cuda" else 0.0
    bandwidth = _measure_bandwidth(timer, budget, dev, dt, host, progress)
    threshold = fresh_map_bytes(dev) if bandwidth.get(FIRST_TOUCH) else 0.0
    notes = ("CPU: kernels run synchronously, host cost and kernel time add up",) if dev == "cpu" else (
        "CUDA: batches timed with CUDA events; host cost = launch-bound host time per tiny op",)
    profile = DeviceProfile(
        device=dev, device_name=device_name(dev), dtype=str(dt).removeprefix("torch."),
        threads=torch.get_num_threads(), torch_version=str(torch.__version__),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), source=MEASURED,
        budget=budget.name, host_s=host, module_call_s=module_call, launch_latency_s=launch, compute={},
        bandwidth=bandwidth, notes=notes, fresh_map_bytes=threshold,
    )

    def touch(written: float) -> float:
        fresh = 0 < threshold <= written
        return written / profile.bytes_rate(FIRST_TOUCH, written) if fresh else 0.0

    profile = attrs.evolve(profile, compute=_measure_compute(timer, budget, dev, dt, host, touch, progress))
    progress("host cost inside module code")
    return attrs.evolve(profile, module_host_factor=measure_module_host_factor(timer, profile, dev, dt))


def _measure_compute(timer: _Timer, budget: Budget, dev: str, dt: torch.dtype, host: dict[str, float], touch: Touch,
                     progress: Callable[[str], None]) -> dict[str, tuple[ComputePoint, ...]]:
    compute: dict[str, tuple[ComputePoint, ...]] = {}
    shapes = _gemm_shapes(budget)
    for kind in ("mm", "addmm", "linear", "bmm"):
        progress(f"GEMM {kind}")
        compute[kind] = _compute_points(timer, _gemm_benches(kind, shapes, dev, dt, budget.max_bytes),
                                        host["addmm" if kind == "linear" else kind], touch)
    progress("attention (SDPA)")
    compute["sdpa"] = _compute_points(timer, _sdpa_benches(budget, dev, dt), host["sdpa"], touch)
    progress("convolution")
    compute["conv"] = _compute_points(timer, _conv_benches(budget, dev, dt), host["conv"], touch)
    progress("vector (CUDA-core) work")
    compute["vector"] = _compute_points(timer, _vector_benches(budget, dev, dt), host["activation"], touch)
    return compute


def _measure_bandwidth(timer: _Timer, budget: Budget, dev: str, dt: torch.dtype, host: dict[str, float],
                       progress: Callable[[str], None]) -> dict[str, tuple[BandwidthPoint, ...]]:
    bandwidth = {}
    for kind in MEMORY_KINDS:
        progress(f"{kind} bandwidth")
        bandwidth[kind] = _bandwidth_points(timer, _memory_benches(kind, budget, dev, dt),
                                            host[_MEMORY_HOST.get(kind, kind)])
    if dev == "cpu":
        progress("fill bandwidth and first touch")
        bandwidth[FILL] = _fill_points(timer, budget, dev, dt, host["elementwise"])
        bandwidth[FIRST_TOUCH] = first_touch_points(bandwidth["write"], bandwidth[FILL], fresh_map_bytes(dev))
        progress("release of large buffers")
        bandwidth[RELEASE] = _release_points(timer, budget, dev, dt)
    return bandwidth


def _launch_latency(timer: _Timer) -> float:
    """Host time of one kernel launch followed by a synchronisation, minus the synchronisation alone (CUDA)."""
    x = torch.zeros(1, device="cuda")

    def launch_and_sync() -> None:
        x.add_(1)
        torch.cuda.synchronize()

    return timer.host_seconds_per_call(launch_and_sync, n=100) - timer.host_seconds_per_call(
        torch.cuda.synchronize, n=100)


__all__ = ["FULL", "QUICK", "Budget", "calibrate", "count", "device_name", "parse_dtype",
           "resolve_calibration_device"]
