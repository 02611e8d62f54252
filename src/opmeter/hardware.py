"""GPU peak table, device detection and the roofline time model.

Every entry gives **dense** (no 2:4 sparsity) peaks: ``tensor_tflops`` for bf16/fp16 tensor-core GEMMs with fp32
accumulation, ``cuda_tflops`` for non-tensor fp32 (CUDA-core) work, ``bandwidth_gbps`` for DRAM/HBM bandwidth in GB/s
(1e9 bytes per second). Vendor datasheets usually print sparse tensor numbers; those are halved here, and the source
is named beside each entry.

Detection order (:func:`detect_hardware`):

1. ``OPMETER_HARDWARE=<entry name>`` selects an entry (``opmeter`` lists names in errors);
2. otherwise the CUDA device name from ``torch.cuda.get_device_name()`` or NVML is matched against the table;
3. a CPU or an unknown GPU gives an entry with unknown (``nan``) peaks;
4. ``OPMETER_PEAK_TFLOPS`` (tensor-core), ``OPMETER_CUDA_TFLOPS`` (CUDA-core) and ``OPMETER_BW_GBPS`` override the
   individual numbers of whatever was selected (that is how to give a CPU or an unlisted GPU a peak).

Roofline (:func:`roofline`): compute time = tensor FLOPs / tensor peak + CUDA-core FLOPs / CUDA-core peak (the two
kinds of work are assumed not to overlap); memory time = bytes / bandwidth; predicted time = the larger of the two.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

import attrs

from opmeter.errors import OpmeterError

ENV_HARDWARE = "OPMETER_HARDWARE"
ENV_PEAK_TFLOPS = "OPMETER_PEAK_TFLOPS"
ENV_CUDA_TFLOPS = "OPMETER_CUDA_TFLOPS"
ENV_BW_GBPS = "OPMETER_BW_GBPS"

NAN = float("nan")


@attrs.frozen
class HardwareSpec:
    """Peaks of one device.

    Attributes
    ----------
    name
        Table key (``"H100-SXM"``) or ``"unknown"`` / ``"cpu"``.
    tensor_tflops
        Dense bf16/fp16 tensor-core peak, TFLOP/s (``nan`` when unknown).
    cuda_tflops
        fp32 CUDA-core (non-tensor) peak, TFLOP/s.
    bandwidth_gbps
        Memory bandwidth, GB/s.
    memory_gb
        Device memory, GB.
    source
        Where the numbers come from.
    device_name
        The detected device name, if any.
    """

    name: str
    tensor_tflops: float
    cuda_tflops: float
    bandwidth_gbps: float
    memory_gb: float = NAN
    source: str = ""
    device_name: str = ""

    @property
    def known(self) -> bool:
        """Whether the tensor-core peak and the bandwidth are known."""
        return not (math.isnan(self.tensor_tflops) or math.isnan(self.bandwidth_gbps))

    @property
    def ridge_flops_per_byte(self) -> float:
        """Roofline ridge point: tensor-core FLOPs per byte at which compute and memory time are equal."""
        return self.tensor_tflops * 1e12 / (self.bandwidth_gbps * 1e9)


def _hw(name: str, tensor: float, cuda: float, bw: float, mem: float, source: str) -> HardwareSpec:
    return HardwareSpec(name, tensor, cuda, bw, mem, source)


HARDWARE: dict[str, HardwareSpec] = {
    # NVIDIA H100 Tensor Core GPU datasheet (2023): SXM BF16 1,979 TFLOPS with sparsity -> 989.4 dense;
    # FP32 67 TFLOPS; HBM3 3.35 TB/s; 80 GB.
    "H100-SXM": _hw("H100-SXM", 989.4, 66.9, 3350, 80, "NVIDIA H100 datasheet, SXM5 (BF16 1979 sparse / 2)"),
    # Same datasheet, PCIe: BF16 1,513 sparse -> 756.5 dense; FP32 51 TFLOPS; HBM2e 2.0 TB/s; 80 GB.
    "H100-PCIe": _hw("H100-PCIe", 756.5, 51.2, 2000, 80, "NVIDIA H100 datasheet, PCIe (BF16 1513 sparse / 2)"),
    # Same datasheet, H100 NVL (per GPU): BF16 1,671 sparse -> 835.5 dense; FP32 60 TFLOPS; 3.9 TB/s; 94 GB.
    "H100-NVL": _hw("H100-NVL", 835.5, 60.0, 3900, 94, "NVIDIA H100 datasheet, NVL (BF16 1671 sparse / 2)"),
    # NVIDIA H200 Tensor Core GPU datasheet (2024): SXM BF16 1,979 sparse -> 989.4 dense; FP32 67; HBM3e 4.8 TB/s.
    "H200": _hw("H200", 989.4, 66.9, 4800, 141, "NVIDIA H200 datasheet, SXM (BF16 1979 sparse / 2)"),
    # NVIDIA GH200 Grace Hopper datasheet: same Hopper GPU; 96 GB HBM3 at 4.0 TB/s.
    "GH200": _hw("GH200", 989.4, 66.9, 4000, 96, "NVIDIA GH200 datasheet (96 GB HBM3 variant)"),
    # NVIDIA HGX B200 spec (2024): 8 GPUs, FP16/BF16 36 PFLOPS with sparsity -> 4.5 PF sparse, 2.25 PF dense per
    # GPU; FP32 600 TFLOPS for 8 -> 75 per GPU; HBM3e 64 TB/s for 8 -> 8 TB/s per GPU; 1.44 TB -> 180 GB per GPU.
    "B200": _hw("B200", 2250.0, 75.0, 8000, 180, "NVIDIA HGX B200 spec page (36 PF sparse BF16 / 8 GPUs / 2)"),
    # NVIDIA A100 datasheet (2021): BF16 312 TFLOPS dense (624 sparse); FP32 19.5 TFLOPS.
    # SXM 80 GB HBM2e 2,039 GB/s; SXM 40 GB 1,555 GB/s; PCIe 80 GB 1,935 GB/s; PCIe 40 GB 1,555 GB/s.
    "A100-SXM-80GB": _hw("A100-SXM-80GB", 312.0, 19.5, 2039, 80, "NVIDIA A100 datasheet, SXM4 80GB"),
    "A100-SXM-40GB": _hw("A100-SXM-40GB", 312.0, 19.5, 1555, 40, "NVIDIA A100 datasheet, SXM4 40GB"),
    "A100-PCIe-80GB": _hw("A100-PCIe-80GB", 312.0, 19.5, 1935, 80, "NVIDIA A100 datasheet, PCIe 80GB"),
    "A100-PCIe-40GB": _hw("A100-PCIe-40GB", 312.0, 19.5, 1555, 40, "NVIDIA A100 datasheet, PCIe 40GB"),
    # NVIDIA L40S datasheet: BF16 733 TFLOPS with sparsity -> 366 dense (362.05 in the product brief); FP32 91.6;
    # GDDR6 864 GB/s; 48 GB.
    "L40S": _hw("L40S", 362.05, 91.6, 864, 48, "NVIDIA L40S datasheet (BF16 733 sparse; 362 dense)"),
    # NVIDIA L40 datasheet: BF16 362 sparse -> 181 dense; FP32 90.5; 864 GB/s; 48 GB.
    "L40": _hw("L40", 181.0, 90.5, 864, 48, "NVIDIA L40 datasheet (BF16 362 sparse / 2)"),
    # NVIDIA L4 datasheet: BF16 242 TFLOPS with sparsity -> 121 dense; FP32 30.3; GDDR6 300 GB/s; 24 GB.
    "L4": _hw("L4", 121.0, 30.3, 300, 24, "NVIDIA L4 datasheet (BF16 242 sparse / 2)"),
    # NVIDIA A10 datasheet: BF16 250 sparse -> 125 dense; FP32 31.2; GDDR6 600 GB/s; 24 GB.
    "A10": _hw("A10", 125.0, 31.2, 600, 24, "NVIDIA A10 datasheet (BF16 250 sparse / 2)"),
    # A10G (AWS g5): NVIDIA publishes no datasheet. AWS/TechPowerUp: 80 SMs, FP32 31.5 TFLOPS, 600 GB/s, 24 GB;
    # tensor peak commonly measured/quoted at ~70 TFLOPS dense BF16 (GeForce-class half-rate fp32 accumulate).
    "A10G": _hw("A10G", 70.0, 31.5, 600, 24, "AWS g5 / TechPowerUp A10G (tensor peak approximate)"),
    # NVIDIA RTX 6000 Ada datasheet: BF16 (fp32 acc) 728.5 sparse -> 364.2 dense; FP32 91.1; 960 GB/s; 48 GB.
    "RTX-6000-Ada": _hw("RTX-6000-Ada", 364.2, 91.1, 960, 48, "NVIDIA RTX 6000 Ada datasheet (728.5 sparse / 2)"),
    # NVIDIA Ada Lovelace architecture whitepaper, RTX 4090: FP16/BF16 tensor with FP32 accumulate 165.2 dense
    # (330.3 sparse); FP32 82.6; GDDR6X 1,008 GB/s; 24 GB.
    "RTX-4090": _hw("RTX-4090", 165.2, 82.6, 1008, 24, "NVIDIA Ada whitepaper, RTX 4090 (FP32-accumulate)"),
    # NVIDIA RTX Blackwell GPU architecture whitepaper, RTX 5090: FP16/BF16 tensor with FP32 accumulate 209.5 dense
    # (419 sparse); FP32 104.8; GDDR7 1,792 GB/s; 32 GB.
    "RTX-5090": _hw("RTX-5090", 209.5, 104.8, 1792, 32, "NVIDIA RTX Blackwell whitepaper, RTX 5090 (FP32-accum.)"),
    # NVIDIA Ampere GA102 whitepaper, RTX 3090: BF16 tensor with FP32 accumulate 71 dense (142 sparse); FP32 35.6;
    # 936 GB/s; 24 GB.
    "RTX-3090": _hw("RTX-3090", 71.0, 35.6, 936, 24, "NVIDIA GA102 whitepaper, RTX 3090 (FP32-accumulate)"),
    # NVIDIA V100 datasheet (SXM2): FP16 tensor 125 TFLOPS (no BF16); FP32 15.7; HBM2 900 GB/s; 32 GB.
    "V100-SXM": _hw("V100-SXM", 125.0, 15.7, 900, 32, "NVIDIA V100 datasheet, SXM2 (FP16; no BF16)"),
    # NVIDIA T4 datasheet: FP16 tensor 65 TFLOPS (no BF16); FP32 8.1; GDDR6 320 GB/s; 16 GB.
    "T4": _hw("T4", 65.0, 8.1, 320, 16, "NVIDIA T4 datasheet (FP16; no BF16)"),
}
"""The peak table, keyed by entry name (what ``OPMETER_HARDWARE`` accepts)."""

# Device-name patterns (torch.cuda.get_device_name / NVML), most specific first. Matched case-insensitively.
_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"gh200", "GH200"),
    (r"h200", "H200"),
    (r"h100.*nvl", "H100-NVL"),
    (r"h100.*pcie", "H100-PCIe"),
    (r"h100", "H100-SXM"),
    (r"b200", "B200"),
    (r"a100.*pcie.*40|a100-pcie-40", "A100-PCIe-40GB"),
    (r"a100.*pcie", "A100-PCIe-80GB"),
    (r"a100.*40", "A100-SXM-40GB"),
    (r"a100", "A100-SXM-80GB"),
    (r"l40s", "L40S"),
    (r"\bl40\b", "L40"),
    (r"\bl4\b", "L4"),
    (r"a10g", "A10G"),
    (r"\ba10\b", "A10"),
    (r"rtx 6000 ada", "RTX-6000-Ada"),
    (r"4090", "RTX-4090"),
    (r"5090", "RTX-5090"),
    (r"3090", "RTX-3090"),
    (r"v100", "V100-SXM"),
    (r"\bt4\b", "T4"),
)


def match_device_name(device_name: str) -> HardwareSpec | None:
    """Table entry for a device name such as ``"NVIDIA H100 80GB HBM3"`` (``None`` when nothing matches)."""
    low = device_name.lower()
    for pattern, key in _PATTERNS:
        if re.search(pattern, low):
            return attrs.evolve(HARDWARE[key], device_name=device_name)
    return None


def lookup(name: str) -> HardwareSpec:
    """Table entry by name (case-insensitive); a device name is matched too.

    Raises
    ------
    OpmeterError
        For a name that is neither an entry nor a recognised device name.
    """
    for key, spec in HARDWARE.items():
        if key.lower() == name.strip().lower():
            return spec
    found = match_device_name(name)
    if found is None:
        raise OpmeterError(f"unknown hardware {name!r}; known entries: {', '.join(HARDWARE)}")
    return found


def current_device_name() -> str | None:
    """Name of CUDA device 0 from torch, else from NVML, else ``None`` (CPU-only machine)."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:  # pragma: no cover - torch without CUDA support
        pass
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            raw = pynvml.nvmlDeviceGetName(handle)
            return raw.decode() if isinstance(raw, bytes) else str(raw)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def _env_float(env: Mapping[str, str], key: str) -> float | None:
    raw = env.get(key, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise OpmeterError(f"{key} must be a number, got {raw!r}") from None
    if not 0 < value < math.inf:
        raise OpmeterError(f"{key} must be a positive finite number, got {raw!r}")
    return value


def detect_hardware(device_name: str | None = None, env: Mapping[str, str] | None = None) -> HardwareSpec:
    """The hardware to use for MFU and roofline predictions (see the module docstring for the order).

    Parameters
    ----------
    device_name
        A device name to match instead of asking torch / NVML (``"cpu"`` for none).
    env
        Environment mapping (default ``os.environ``).
    """
    env = os.environ if env is None else env
    chosen = env.get(ENV_HARDWARE, "").strip()
    if chosen:
        spec = lookup(chosen)
    else:
        name = current_device_name() if device_name is None else device_name
        if name is None or name.lower() == "cpu":
            spec = HardwareSpec("cpu", NAN, NAN, NAN, source="CPU: no peak known; set OPMETER_PEAK_TFLOPS/BW_GBPS")
        else:
            spec = match_device_name(name) or HardwareSpec(
                "unknown", NAN, NAN, NAN, source=f"{name!r} is not in the table", device_name=name
            )
    peak, cuda, bw = (_env_float(env, k) for k in (ENV_PEAK_TFLOPS, ENV_CUDA_TFLOPS, ENV_BW_GBPS))
    if peak is not None or cuda is not None or bw is not None:
        spec = attrs.evolve(
            spec,
            tensor_tflops=spec.tensor_tflops if peak is None else peak,
            cuda_tflops=spec.cuda_tflops if cuda is None else cuda,
            bandwidth_gbps=spec.bandwidth_gbps if bw is None else bw,
            source=f"{spec.source}; overridden by environment".lstrip("; "),
        )
    if math.isnan(spec.cuda_tflops) and not math.isnan(spec.tensor_tflops):
        # A user-given tensor peak without a CUDA-core one: assume CUDA-core work at the same rate (stated).
        spec = attrs.evolve(spec, cuda_tflops=spec.tensor_tflops, source=f"{spec.source}; CUDA-core peak = tensor")
    return spec


@attrs.frozen
class RooflineTime:
    """Predicted time of some work on some hardware (seconds).

    Attributes
    ----------
    tensor_s, cuda_s
        Tensor-core FLOPs over the tensor peak; CUDA-core FLOPs over the CUDA-core peak.
    memory_s
        Bytes over the bandwidth.
    """

    tensor_s: float
    cuda_s: float
    memory_s: float

    @property
    def compute_s(self) -> float:
        """Compute time: tensor-core plus CUDA-core time."""
        return self.tensor_s + self.cuda_s

    @property
    def time_s(self) -> float:
        """Predicted time: ``max(compute, memory)``; ``nan`` when either is unknown."""
        compute, memory = self.compute_s, self.memory_s
        if math.isnan(compute) or math.isnan(memory):  # max() would silently keep the known one
            return NAN
        return max(compute, memory)

    @property
    def bound(self) -> str:
        """``"compute"`` or ``"memory"``."""
        return "compute" if self.compute_s >= self.memory_s else "memory"


def roofline(tensor_flops: float, cuda_flops: float, io_bytes: float, hw: HardwareSpec) -> RooflineTime:
    """Roofline time of work with the given tensor-core FLOPs, CUDA-core FLOPs and bytes on ``hw``.

    Unknown peaks give ``nan`` times.
    """
    return RooflineTime(
        tensor_s=tensor_flops / (hw.tensor_tflops * 1e12),
        cuda_s=cuda_flops / (hw.cuda_tflops * 1e12),
        memory_s=io_bytes / (hw.bandwidth_gbps * 1e9),
    )


def required_tflops(flops: float, budget_s: float) -> float:
    """TFLOP/s needed to do ``flops`` in ``budget_s`` seconds (pure compute, 100% utilisation)."""
    return flops / budget_s / 1e12


def mfu(flops: float, seconds: float, hw: HardwareSpec) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the tensor-core peak (``nan`` when unknown)."""
    if seconds <= 0:
        return NAN
    return flops / seconds / (hw.tensor_tflops * 1e12)
