"""The op tracer: every aten op, attributed to its module stack, with FLOPs, bytes, categories and call graph.

Public names: :class:`OpTracer`, :class:`Trace`, :func:`load_trace`, :func:`stage`, :data:`ROOT`,
:data:`OUTSIDE`, :data:`SCHEMA_VERSION`, :class:`UncountedOpWarning`, and :func:`op_cost` (the formula registry lives in
:mod:`opmeter.trace.formulas`, categories in :mod:`opmeter.trace.categories`).
"""

from __future__ import annotations

from opmeter.trace.categories import UNCLASSIFIED
from opmeter.trace.formulas import OpCost, op_cost
from opmeter.trace.modules import OUTSIDE, ROOT
from opmeter.trace.recorder import UncountedOpWarning
from opmeter.trace.stages import stage
from opmeter.trace.trace import SCHEMA_VERSION, Trace, load_trace
from opmeter.trace.tracer import OpTracer

__all__ = [
    "OUTSIDE",
    "ROOT",
    "SCHEMA_VERSION",
    "UNCLASSIFIED",
    "OpCost",
    "OpTracer",
    "Trace",
    "UncountedOpWarning",
    "load_trace",
    "op_cost",
    "stage",
]
