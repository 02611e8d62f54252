"""Step 4 of a report, predict: the hardware the times are for, the adapter's analytic prediction, the time model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

from opmeter.hardware import HARDWARE, HardwareSpec, detect_hardware, lookup
from opmeter.join import Joined
from opmeter.models.base import ModelAdapter, Prediction, Workload
from opmeter.structure import StageSpec
from opmeter.timemodel.profile import DeviceProfile
from opmeter.trace import Trace

DEFAULT_HARDWARE = "H100-SXM"
"""HardwareSpec entry for predicted times when no GPU is detected and ``--hardware`` is not given."""


@attrs.frozen
class HardwareChoice:
    """The hardware entry predicted times are for, the one MFU is measured against, and whether predicted and
    measured times are for the same machine."""

    predict: HardwareSpec
    mfu: HardwareSpec
    comparable: bool

    def as_dict(self) -> dict[str, Any]:
        """The entry recorded in the joined output."""
        hw = self.predict
        return {"name": hw.name, "tensor_tflops": hw.tensor_tflops, "cuda_tflops": hw.cuda_tflops,
                "bandwidth_gbps": hw.bandwidth_gbps, "source": hw.source}


def choose_hardware(requested: str | None, device: str) -> HardwareChoice:
    """``--hardware`` when given, else the detected device when the table knows it, else :data:`DEFAULT_HARDWARE`.

    Predicted and measured times are comparable when the predicted-for entry is the detected device (or the CPU
    given peaks through the environment), or when ``--hardware`` names the GPU measured on.
    """
    detected = detect_hardware(None if device == "cuda" else "cpu")
    if requested:
        predict = lookup(requested)
        comparable = device == "cuda" and (not detected.known or detected.name == predict.name)
    else:
        predict = detected if detected.known else HARDWARE[DEFAULT_HARDWARE]
        comparable = detected.known and detected.name == predict.name
    mfu = predict if (device == "cuda" and requested) else detected
    return HardwareChoice(predict, mfu, comparable)


def predict(adapter: ModelAdapter, trace: Trace, workload: Workload, preset: str,
            hardware: HardwareChoice) -> Prediction | None:
    """The adapter's analytic prediction of the traced run (``None``: a measured-only family)."""
    if not adapter.words.predicted:
        return None
    return adapter.predict(trace, workload, preset, hardware.predict)


def time_model(trace: Trace, joined: Joined, decode_steps: int, request: StageSpec, device: str,
               executed: bool, profile: Any, hardware: HardwareChoice, recalibrate: bool = False
               ) -> tuple[dict[str, Any], DeviceProfile | None]:
    """The time model's assessment (:mod:`opmeter.timemodel.assess`) as a dict for ``joined.metadata``, and the
    device profile it predicted with (the report saves it)."""
    from opmeter.timemodel.assess import assess, choose_profile

    choice = choose_profile(profile, device if executed else "meta", joined.metadata.get("dtype"),
                            hardware.predict, torch.get_num_threads(), recalibrate)
    mods = joined.by_module()
    component_of: Mapping[str, str] = (dict(zip(mods["module"], mods["component"], strict=True))
                                       if "component" in mods else {})
    bound_hw = hardware.predict if (not executed or hardware.comparable) else None  # else the profile's own peaks
    result = assess(trace, choice, joined.runtime if executed else None, decode_steps, request.request_modules,
                    bound_hw, joined.by_component(), component_of, request.request_stage)
    return result.to_dict(), choice.profile
