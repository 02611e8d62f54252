"""Default device profiles for GPU entries of the hardware table that were never calibrated.

Without a GPU to measure, a profile is derived from the datasheet peaks of :mod:`opmeter.hardware` with the
assumptions below. Every number here is an assumption, not a measurement: such a profile has ``source ==
"defaults"`` and every output naming it says so. Calibrate the GPU (``opmeter calibrate --device cuda``) to replace
it.

* Achieved rate of a call that needs ``t`` seconds at the efficiency ceiling: ``ceiling * t / (t + RAMP_S)``, i.e. a
  kernel reaches half its ceiling when its ideal duration equals :data:`RAMP_S` (launch ramp-up, tail effects and
  partial waves of small kernels), so even a tiny kernel takes about :data:`RAMP_S`; the time model charges an op's
  reads and writes separately, so the read and write curves each get half of it;
* ceilings: :data:`GEMM_EFFICIENCY` of the dense tensor-core peak for GEMMs, :data:`ATTENTION_EFFICIENCY` for fused
  attention, :data:`CONV_EFFICIENCY` for convolution, :data:`VECTOR_EFFICIENCY` of the CUDA-core peak for other
  FLOPs, :data:`BANDWIDTH_EFFICIENCY` of the DRAM bandwidth for memory traffic;
* host cost per eager op :data:`HOST_S` (Python, dispatcher and launch on a current server CPU), ``nn.Module`` call
  :data:`MODULE_CALL_S`, kernel launch latency :data:`LAUNCH_LATENCY_S`.
"""

from __future__ import annotations

import datetime
from typing import Any, Final

import torch

from opmeter.timemodel.kinds import COMPUTE_KINDS, HOST_KINDS, MEMORY_KINDS
from opmeter.timemodel.profile import DEFAULTS, BandwidthPoint, ComputePoint, DeviceProfile

GEMM_EFFICIENCY: Final = 0.70
ATTENTION_EFFICIENCY: Final = 0.50
CONV_EFFICIENCY: Final = 0.50
VECTOR_EFFICIENCY: Final = 0.50
BANDWIDTH_EFFICIENCY: Final = 0.80
RAMP_S: Final = 3e-6
"""Ideal kernel duration at which a kernel reaches half its ceiling (a tiny kernel takes about this long)."""
HOST_S: Final = 8e-6
"""Eager PyTorch per-op host cost on a GPU server (order of magnitude of torch's dispatcher plus launch)."""
VIEW_HOST_S: Final = 3e-6
"""Views launch no kernel; only the Python and dispatcher part of :data:`HOST_S`."""
MODULE_CALL_S: Final = 3e-6
LAUNCH_LATENCY_S: Final = 4e-6

_SIZES: Final = tuple(10.0**e for e in range(3, 14))


def _efficiency(kind: str) -> float:
    return {"sdpa": ATTENTION_EFFICIENCY, "conv": CONV_EFFICIENCY, "vector": VECTOR_EFFICIENCY}.get(
        kind, GEMM_EFFICIENCY)


def default_profile(hw: Any, dtype: str = "bfloat16") -> DeviceProfile:
    """A ``defaults`` profile for a :class:`~opmeter.hardware.HardwareSpec` with known peaks."""
    compute = {}
    for kind in COMPUTE_KINDS:
        peak = (hw.cuda_tflops if kind == "vector" else hw.tensor_tflops) * 1e12
        ceiling = _efficiency(kind) * peak
        compute[kind] = tuple(ComputePoint(flops=f, bytes=f / 100.0, flops_per_s=ceiling * (f / ceiling) / (
            f / ceiling + RAMP_S), label=f"default {kind}") for f in _SIZES)
    bw = BANDWIDTH_EFFICIENCY * hw.bandwidth_gbps * 1e9
    ramp = {kind: RAMP_S / 2 if kind in ("read", "write") else RAMP_S for kind in MEMORY_KINDS}
    bandwidth = {kind: tuple(BandwidthPoint(bytes=b, bytes_per_s=bw * (b / bw) / (b / bw + ramp[kind]),
                                            label=f"default {kind}") for b in _SIZES) for kind in MEMORY_KINDS}
    host = {kind: (VIEW_HOST_S if kind in ("view", "scalar") else HOST_S) for kind in HOST_KINDS}
    return DeviceProfile(
        device="cuda", device_name=hw.name, dtype=dtype, threads=0, torch_version=str(torch.__version__),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), source=DEFAULTS,
        budget="none", host_s=host, module_call_s=MODULE_CALL_S, launch_latency_s=LAUNCH_LATENCY_S,
        compute=compute, bandwidth=bandwidth,
        notes=(f"defaults (no measurement): GEMM {GEMM_EFFICIENCY:.0%} of {hw.tensor_tflops:g} TFLOP/s, bandwidth "
               f"{BANDWIDTH_EFFICIENCY:.0%} of {hw.bandwidth_gbps:g} GB/s, host {HOST_S * 1e6:g} us per op; "
               "see opmeter.timemodel.defaults",),
    )


__all__ = ["ATTENTION_EFFICIENCY", "BANDWIDTH_EFFICIENCY", "CONV_EFFICIENCY", "GEMM_EFFICIENCY", "HOST_S",
           "LAUNCH_LATENCY_S", "MODULE_CALL_S", "RAMP_S", "VECTOR_EFFICIENCY", "VIEW_HOST_S", "default_profile"]
