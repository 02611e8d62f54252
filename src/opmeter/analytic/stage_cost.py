"""``StageCost``: the cost of one stage (vision, prefill, decode step...) in the units planners use.

Units (decimal prefixes throughout):

* ``flops_tflops`` = ``flops_tensor_tflops`` + ``flops_cuda_tflops``, in TFLOPs (1e12 FLOPs);
* ``io_tb`` — bytes read plus written by all ops, in **terabits** (1e12 bits = bytes * 8 / 1e12);
* ``arithmetic_intensity`` — FLOPs per **bit** of I/O (FLOPs per byte = 8 x FLOPs per bit);
* ``activations_gb`` — estimated peak live activation memory, GB (1e9 bytes);
* ``kv_gb`` — KV cache held at the end of the stage, GB.

The cost is held in plain FLOPs and bytes (``flops_tensor``, ``flops_cuda``, ``io_bytes``, ``activation_bytes``,
``kv_bytes``); the units above are derived properties (conversions live in :mod:`opmeter.units`).

The parameter footprint belongs to the model, not to a stage, and is reported once (:class:`ParameterFootprint`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from opmeter.analytic.base import Layer
from opmeter.units import GIGA, gigabytes, terabits, tflops
from opmeter.units import flops_per_bit as _flops_per_bit


@attrs.frozen
class StageCost:
    """Cost of one stage, held in plain FLOPs and bytes; the planner units are derived properties.

    Attributes
    ----------
    stage
        Stage name (``"vision"``, ``"prefill"``, ``"decode"``, ``"decode_total"``, ...).
    flops_tensor, flops_cuda
        Tensor-core and CUDA-core FLOPs.
    io_bytes
        Bytes read plus written by all ops.
    activation_bytes
        Estimated peak activation memory.
    kv_bytes
        KV cache at the end of the stage.
    steps
        Forward calls this cost covers (1, or K for a sum of K decode steps).
    """

    stage: str
    flops_tensor: float
    flops_cuda: float
    io_bytes: float
    activation_bytes: float
    kv_bytes: float = 0.0
    steps: int = 1

    @property
    def flops(self) -> float:
        """All FLOPs (tensor-core plus CUDA-core)."""
        return self.flops_tensor + self.flops_cuda

    @property
    def flops_tflops(self) -> float:
        """All TFLOPs."""
        return tflops(self.flops)

    @property
    def flops_tensor_tflops(self) -> float:
        """Tensor-core TFLOPs."""
        return tflops(self.flops_tensor)

    @property
    def flops_cuda_tflops(self) -> float:
        """CUDA-core TFLOPs."""
        return tflops(self.flops_cuda)

    @property
    def io_tb(self) -> float:
        """I/O in terabits."""
        return terabits(self.io_bytes)

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per bit of I/O (0 without I/O)."""
        return _flops_per_bit(self.flops, self.io_bytes)

    @property
    def activations_gb(self) -> float:
        """Peak activation memory in GB."""
        return gigabytes(self.activation_bytes)

    @property
    def kv_gb(self) -> float:
        """KV cache in GB."""
        return gigabytes(self.kv_bytes)

    @classmethod
    def from_layer(cls, stage: str, layer: Layer, *, kv_bytes: int | None = None, steps: int = 1) -> StageCost:
        """Cost of a layer (or composite) call; ``kv_bytes`` defaults to the layer's KV cache."""
        kv = layer.kv_cache_bytes() if kv_bytes is None else kv_bytes
        return cls(stage=stage, flops_tensor=layer.tensor_core_flops(), flops_cuda=layer.cuda_core_flops(),
                   io_bytes=layer.io_bytes(), activation_bytes=layer.activation_bytes(), kv_bytes=kv, steps=steps)

    @classmethod
    def total(cls, stage: str, costs: Iterable[StageCost]) -> StageCost:
        """Sum of sequential stages: FLOPs, I/O and steps add; activation peak is the max; KV is the last one's."""
        items = list(costs)
        return cls(
            stage=stage,
            flops_tensor=sum(c.flops_tensor for c in items),
            flops_cuda=sum(c.flops_cuda for c in items),
            io_bytes=sum(c.io_bytes for c in items),
            activation_bytes=max((c.activation_bytes for c in items), default=0.0),
            kv_bytes=items[-1].kv_bytes if items else 0.0,
            steps=sum(c.steps for c in items),
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain record in the planner units (TFLOPs, terabits, FLOPs per bit, GB), plus the I/O in bytes."""
        return {
            "stage": self.stage,
            "flops_tflops": self.flops_tflops,
            "flops_tensor_tflops": self.flops_tensor_tflops,
            "flops_cuda_tflops": self.flops_cuda_tflops,
            "io_tb": self.io_tb,
            "io_bytes": self.io_bytes,
            "arithmetic_intensity": self.arithmetic_intensity,
            "activations_gb": self.activations_gb,
            "kv_gb": self.kv_gb,
            "steps": self.steps,
        }


@attrs.frozen
class ParameterFootprint:
    """Parameter memory of a model, reported once (not per stage).

    Attributes
    ----------
    parameters
        Parameter count.
    bytes
        Parameter bytes at the model dtype.
    by_component
        Parameter count per top-level component (e.g. the first-level modules of the model).
    """

    parameters: int
    bytes: int
    by_component: dict[str, int] = attrs.field(factory=dict)

    @property
    def gb(self) -> float:
        """Parameter memory in GB (1e9 bytes)."""
        return self.bytes / GIGA
