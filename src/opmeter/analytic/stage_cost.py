"""``StageCost``: the cost of one stage (vision, prefill, decode step...) in the units planners use.

Units (decimal prefixes throughout):

* ``flops_tflops`` = ``flops_tensor_tflops`` + ``flops_cuda_tflops``, in TFLOPs (1e12 FLOPs);
* ``io_tb`` — bytes read plus written by all ops, in **terabits** (1e12 bits = bytes * 8 / 1e12);
* ``arithmetic_intensity`` — FLOPs per **bit** of I/O (FLOPs per byte = 8 x FLOPs per bit);
* ``activations_gb`` — estimated peak live activation memory, GB (1e9 bytes);
* ``kv_gb`` — KV cache held at the end of the stage, GB.

The parameter footprint belongs to the model, not to a stage, and is reported once (:class:`ParameterFootprint`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from opmeter.analytic.base import Layer
from opmeter.conventions import BITS_PER_BYTE

TERA = 1e12
GIGA = 1e9


@attrs.frozen
class StageCost:
    """Cost of one stage.

    Attributes
    ----------
    stage
        Stage name (``"vision"``, ``"prefill"``, ``"decode"``, ``"decode_total"``, ...).
    flops_tensor_tflops, flops_cuda_tflops
        Tensor-core and CUDA-core TFLOPs.
    io_tb
        Terabits read plus written.
    activations_gb
        Estimated peak activation memory in GB.
    kv_gb
        KV cache at the end of the stage in GB.
    steps
        Forward calls this cost covers (1, or K for a sum of K decode steps).
    """

    stage: str
    flops_tensor_tflops: float
    flops_cuda_tflops: float
    io_tb: float
    activations_gb: float
    kv_gb: float = 0.0
    steps: int = 1

    @property
    def flops_tflops(self) -> float:
        """All TFLOPs (tensor-core plus CUDA-core)."""
        return self.flops_tensor_tflops + self.flops_cuda_tflops

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per bit of I/O (0 without I/O)."""
        return self.flops_tflops / self.io_tb if self.io_tb else 0.0

    @classmethod
    def from_layer(cls, stage: str, layer: Layer, *, kv_bytes: int | None = None, steps: int = 1) -> StageCost:
        """Cost of a layer (or composite) call; ``kv_bytes`` defaults to the layer's KV cache."""
        kv = layer.kv_cache_bytes() if kv_bytes is None else kv_bytes
        return cls(
            stage=stage,
            flops_tensor_tflops=layer.tensor_core_flops() / TERA,
            flops_cuda_tflops=layer.cuda_core_flops() / TERA,
            io_tb=layer.io_bytes() * BITS_PER_BYTE / TERA,
            activations_gb=layer.activation_bytes() / GIGA,
            kv_gb=kv / GIGA,
            steps=steps,
        )

    @classmethod
    def total(cls, stage: str, costs: Iterable[StageCost]) -> StageCost:
        """Sum of sequential stages: FLOPs, I/O and steps add; activation peak is the max; KV is the last one's."""
        items = list(costs)
        return cls(
            stage=stage,
            flops_tensor_tflops=sum(c.flops_tensor_tflops for c in items),
            flops_cuda_tflops=sum(c.flops_cuda_tflops for c in items),
            io_tb=sum(c.io_tb for c in items),
            activations_gb=max((c.activations_gb for c in items), default=0.0),
            kv_gb=items[-1].kv_gb if items else 0.0,
            steps=sum(c.steps for c in items),
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain record with every field and derived property."""
        return {
            "stage": self.stage,
            "flops_tflops": self.flops_tflops,
            "flops_tensor_tflops": self.flops_tensor_tflops,
            "flops_cuda_tflops": self.flops_cuda_tflops,
            "io_tb": self.io_tb,
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
        Parameter count per top-level component (``sam_model``, ``vision_model``, ...).
    """

    parameters: int
    bytes: int
    by_component: dict[str, int] = attrs.field(factory=dict)

    @property
    def gb(self) -> float:
        """Parameter memory in GB (1e9 bytes)."""
        return self.bytes / GIGA
