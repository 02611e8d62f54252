"""Hardware table, device-name detection, environment overrides and the roofline."""

from __future__ import annotations

import math

import pytest

from opmeter.errors import OpmeterError
from opmeter.hardware import HARDWARE, detect_hardware, lookup, match_device_name, mfu, required_tflops, roofline


@pytest.mark.parametrize(
    ("device", "entry"),
    [
        ("NVIDIA H100 80GB HBM3", "H100-SXM"), ("NVIDIA H100 PCIe", "H100-PCIe"), ("NVIDIA H200", "H200"),
        ("NVIDIA B200", "B200"), ("NVIDIA A100-SXM4-40GB", "A100-SXM-40GB"), ("NVIDIA A100-SXM4-80GB", "A100-SXM-80GB"),
        ("NVIDIA A100 80GB PCIe", "A100-PCIe-80GB"), ("NVIDIA L40S", "L40S"), ("NVIDIA L4", "L4"),
        ("NVIDIA A10G", "A10G"), ("NVIDIA GeForce RTX 4090", "RTX-4090"), ("NVIDIA GeForce RTX 5090", "RTX-5090"),
    ],
)
def test_device_names(device: str, entry: str) -> None:
    spec = match_device_name(device)
    assert spec is not None and spec.name == entry and spec.device_name == device


def test_table_is_dense_and_sourced() -> None:
    assert HARDWARE["H100-SXM"].tensor_tflops == pytest.approx(989.4)
    assert HARDWARE["A100-SXM-80GB"].tensor_tflops == 312.0
    for spec in HARDWARE.values():
        assert spec.source and spec.tensor_tflops > 0 and spec.bandwidth_gbps > 0 and spec.cuda_tflops > 0


def test_cpu_is_unknown_unless_overridden() -> None:
    cpu = detect_hardware("cpu", env={})
    assert not cpu.known and math.isnan(cpu.tensor_tflops)
    spec = detect_hardware("cpu", env={"OPMETER_PEAK_TFLOPS": "2", "OPMETER_BW_GBPS": "50"})
    assert spec.known and spec.tensor_tflops == 2 and spec.bandwidth_gbps == 50
    named = detect_hardware("cpu", env={"OPMETER_HARDWARE": "l4"})
    assert named.name == "L4"
    with pytest.raises(OpmeterError):
        detect_hardware("cpu", env={"OPMETER_PEAK_TFLOPS": "fast"})
    with pytest.raises(OpmeterError):
        detect_hardware("cpu", env={"OPMETER_BW_GBPS": "inf"})
    with pytest.raises(OpmeterError):
        lookup("TPU v5")


def test_roofline() -> None:
    hw = HARDWARE["H100-SXM"]
    t = roofline(989.4e12, 0.0, 1.0, hw)
    assert t.time_s == pytest.approx(1.0) and t.bound == "compute"
    m = roofline(0.0, 0.0, 3350e9, hw)
    assert m.time_s == pytest.approx(1.0) and m.bound == "memory"
    no_bw = detect_hardware("cpu", env={"OPMETER_PEAK_TFLOPS": "2"})  # bandwidth unknown
    assert math.isnan(roofline(1e12, 0.0, 1e9, no_bw).time_s)  # not the compute time alone
    assert required_tflops(1e12, 0.5) == 2.0
    assert mfu(989.4e12, 2.0, hw) == pytest.approx(0.5)
