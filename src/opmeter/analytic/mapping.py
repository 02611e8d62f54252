"""Declarative mapping tables: implementation classes -> analytic layers, with no model in them.

A model's table is a tuple of :class:`MappingEntry`; :class:`MappingTable` answers which entry applies to a module
(by qualified class name and path) and builds the analytic layer of one traced call. Each field of an entry is a
small function ``(m, x, ctx) -> value`` of:

* ``m`` — the module instance (constructor parameters are read from it);
* ``x`` — the input shapes of the call, a list of int tuples (``x[0]`` is the first tensor argument);
* ``ctx`` — what a shape cannot tell, given by the caller (``dt``: activation element size, default 2; ``sdpa``:
  ``"math"`` or ``"fused"``, default ``"math"``; ``past``: cached positions; model-specific keys).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from opmeter.analytic.base import Layer
from opmeter.errors import OpmeterError
from opmeter.trace.modules import qualified_name as _qualified

LAYER = "layer"
CONTAINER = "container"
"""Kind of an entry: an analytic layer, or a container that is never called and not modelled."""

Shapes = list[tuple[int, ...]]
Context = Mapping[str, Any]
FieldFn = Callable[[Any, Shapes, Context], Any]
"""How one constructor field of an analytic layer is read from a call: ``(module, input shapes, context)``."""


@attrs.frozen
class MappingEntry:
    """One row of a mapping table.

    Attributes
    ----------
    name
        Analytic layer name (usually the implementation's class name).
    implementations
        Qualified class-name patterns (``fnmatch``) of modules this layer models.
    analytic
        The analytic layer class (``None`` for containers).
    fields
        Analytic constructor field -> :data:`FieldFn`.
    kind
        :data:`LAYER` or :data:`CONTAINER`.
    paths
        Module-path patterns this entry is restricted to (``("lm_head",)``); empty: any path.
    note
        What a reader should know (approximations, inlined calls).
    """

    name: str
    implementations: tuple[str, ...]
    analytic: type[Layer] | None
    fields: Mapping[str, FieldFn] = attrs.field(factory=dict)
    kind: str = LAYER
    paths: tuple[str, ...] = ()
    note: str = ""

    def matches(self, qualified: str, path: str | None = None) -> bool:
        """Whether this entry applies to a module of class ``qualified`` at ``path``."""
        if self.paths and (path is None or not any(fnmatch.fnmatchcase(path, p) for p in self.paths)):
            return False
        return any(fnmatch.fnmatchcase(qualified, pat) for pat in self.implementations)


def attr(obj: Any, dotted: str, default: Any = None) -> Any:
    """``obj.a.b.0.c`` (digits index sequences), or ``default`` when any step is missing."""
    for part in dotted.split("."):
        if part.isdigit() and hasattr(obj, "__getitem__"):
            try:
                obj = obj[int(part)]
                continue
            except (IndexError, KeyError, TypeError):
                return default
        if not hasattr(obj, part):
            return default
        obj = getattr(obj, part)
    return obj


def prod(xs: Sequence[int]) -> int:
    """Product of a shape's dimensions."""
    return math.prod(int(v) for v in xs)


def qualified_name(module_or_class: Any) -> str:
    """``module.qualname`` of a module instance or class (``torch.nn.modules.linear.Linear``)."""
    return _qualified(module_or_class if isinstance(module_or_class, type) else type(module_or_class))


@attrs.frozen
class MappingTable:
    """An ordered table of entries, most specific first (path-restricted entries before generic ones)."""

    entries: tuple[MappingEntry, ...]

    def entry_for(self, qualified: str, path: str | None = None) -> MappingEntry | None:
        """The first entry that applies to a class (and module path), or ``None``."""
        for entry in self.entries:
            if entry.matches(qualified, path):
                return entry
        return None

    def layer_for(self, module: Any, inputs: Sequence[Sequence[int]], *, path: str | None = None,
                  entry: MappingEntry | None = None, **ctx: Any) -> Layer:
        """Build the analytic layer of one call of ``module`` with input shapes ``inputs``.

        Parameters
        ----------
        module
            The module instance.
        inputs
            Shapes of the call's tensor arguments in order.
        path
            Module path (selects path-restricted entries).
        entry
            Use this entry instead of looking one up.
        **ctx
            The context the fields read (see the module docstring).

        Raises
        ------
        OpmeterError
            When the class has no analytic layer (unknown or a container) or a field cannot be read.
        """
        qual = qualified_name(module)
        found = entry or self.entry_for(qual, path)
        if found is None or found.analytic is None:
            what = "a container (not modelled)" if found is not None else "not in the mapping table"
            raise OpmeterError(f"{qual} is {what}")
        context = {"dt": 2, "sdpa": "math", **ctx}
        shapes = [tuple(int(v) for v in s) for s in inputs]
        kwargs: dict[str, Any] = {}
        for field, read in found.fields.items():
            try:
                kwargs[field] = read(module, shapes, context)
            except Exception as exc:
                raise OpmeterError(f"mapping {found.name}.{field} failed for {qual}: {type(exc).__name__}: "
                                   f"{exc}") from exc
        return found.analytic(**kwargs)

    def frame(self) -> Any:
        """The table as a DataFrame: ``name, kind, analytic, implementations, paths, fields, note``."""
        import pandas as pd

        return pd.DataFrame([
            {
                "name": e.name,
                "kind": e.kind,
                "analytic": e.analytic.__qualname__ if e.analytic is not None else "",
                "implementations": ", ".join(e.implementations),
                "paths": ", ".join(e.paths),
                "fields": ", ".join(e.fields),
                "note": e.note,
            }
            for e in self.entries
        ])
