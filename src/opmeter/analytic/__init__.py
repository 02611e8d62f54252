"""Analytic layer library: predict from shapes alone what the tracer measures (generic part).

Model-specific layers live with their model, under :mod:`opmeter.models`. This package never
imports the tracer.
"""

from __future__ import annotations

from opmeter.analytic.base import ROOT, Composite, Layer, Op, dtype_bytes, layer_frame, op_frame
from opmeter.analytic.primitives import (
    Activation,
    AttentionCore,
    Conv2d,
    Elementwise,
    Embedding,
    LayerNorm,
    Linear,
    RMSNorm,
    copy,
    gemm,
    pointwise,
    reduction,
    sdpa_ops,
    softmax_op,
)
from opmeter.analytic.stage_cost import ParameterFootprint, StageCost

__all__ = [
    "ROOT",
    "Activation",
    "AttentionCore",
    "Composite",
    "Conv2d",
    "Elementwise",
    "Embedding",
    "Layer",
    "LayerNorm",
    "Linear",
    "Op",
    "ParameterFootprint",
    "RMSNorm",
    "StageCost",
    "copy",
    "dtype_bytes",
    "gemm",
    "layer_frame",
    "op_frame",
    "pointwise",
    "reduction",
    "sdpa_ops",
    "softmax_op",
]
