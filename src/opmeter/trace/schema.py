"""Shape check of a saved trace's raw data, before :meth:`Trace.from_dict` builds anything from it.

A trace file is input like any other: a truncated, hand-edited or foreign JSON must give one clear
:class:`~opmeter.errors.OpmeterError` naming the first bad entry, never an ``IndexError`` or ``TypeError`` from deep
inside a query. Each raw table is checked row by row against a small column spec (the layout :meth:`Trace.to_dict`
writes); cross references (context -> module, cell -> group...) are checked afterwards by ``Trace._bad_reference``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from opmeter.errors import OpmeterError


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


_KINDS: Final[dict[str, Callable[[Any], bool]]] = {
    "str": lambda x: isinstance(x, str),
    "str?": lambda x: x is None or isinstance(x, str),
    "int": _is_int,
    "int?": lambda x: x is None or _is_int(x),
    "num": _is_num,
    "num?": lambda x: x is None or _is_num(x),
    "count": lambda x: _is_num(x) and 0 <= x < float("inf"),
    "bool": lambda x: isinstance(x, bool),
    "totals": lambda x: isinstance(x, list) and len(x) == 6 and all(v is None or _is_num(v) for v in x),
}

_ROWS: Final[dict[str, tuple[str, ...]]] = {
    "modules": ("str", "str", "str", "str?", "int"),
    "contexts": ("int", "int"),
    "cells": ("int", "int", "str", "count", "count", "count", "count", "count", "num?"),
    "ctx_stats": ("int", "int", "num", "num?"),
    "stages": ("str", "str", "int", "str", "int?", "int?", "totals", "num?", "int"),
    "spans": ("int", "int", "num", "num", "int"),
    "stage_spans": ("int", "num", "num"),
    "shapes": ("int", "int", "str", "str", "int"),
    "large_calls": ("int", "int", "str", "num", "num", "num", "num", "num"),
}
_REQUIRED: Final = ("modules", "first_call", "contexts", "groups", "cells", "ctx_stats", "stages", "op_info",
                    "complete")


def _check_rows(name: str, rows: Any, kinds: tuple[str, ...]) -> None:
    if not isinstance(rows, list):
        raise OpmeterError(f"malformed opmeter trace: {name} is {type(rows).__name__}, not a list")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(kinds):
            raise OpmeterError(f"malformed opmeter trace: {name}[{i}] is not a list of {len(kinds)} values")
        for j, (value, kind) in enumerate(zip(row, kinds, strict=True)):
            if not _KINDS[kind](value):
                raise OpmeterError(f"malformed opmeter trace: {name}[{i}][{j}] = {value!r:.40} is not {kind}")


def _check_flat(d: dict[str, Any]) -> None:
    if not isinstance(d["first_call"], list) or not all(_is_int(x) for x in d["first_call"]):
        raise OpmeterError("malformed opmeter trace: first_call is not a list of integers")
    if not isinstance(d["groups"], list) or not all(isinstance(x, str) for x in d["groups"]):
        raise OpmeterError("malformed opmeter trace: groups is not a list of names")
    if not isinstance(d["complete"], bool):
        raise OpmeterError("malformed opmeter trace: complete is not true/false")
    info = d["op_info"]
    if not isinstance(info, dict) or not all(
        isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], bool)
        for v in info.values()
    ):
        raise OpmeterError("malformed opmeter trace: op_info is not {op: [category, exact]}")
    for key, value_ok in (("metadata", lambda v: isinstance(v, dict)),
                          ("formula_errors", lambda v: isinstance(v, dict)),
                          ("op_dtypes", lambda v: isinstance(v, dict) and all(
                              isinstance(x, list) and all(isinstance(y, str) for y in x) for x in v.values())),
                          ("error", lambda v: isinstance(v, str))):
        value = d.get(key)
        if value is not None and not value_ok(value):
            raise OpmeterError(f"malformed opmeter trace: {key} has the wrong type ({type(value).__name__})")


def check_raw(d: dict[str, Any]) -> None:
    """Check the raw tables of a saved trace (the layout :meth:`Trace.to_dict` writes).

    Raises
    ------
    OpmeterError
        Naming the first missing table, or the first row of the wrong length or with a value of the wrong type.
    """
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise OpmeterError(f"malformed opmeter trace: missing {', '.join(missing)}")
    _check_flat(d)
    for name, kinds in _ROWS.items():
        if name in d:
            _check_rows(name, d[name], kinds)
    ops = {row[2] for row in d["cells"]}
    unknown = sorted(ops - set(d["op_info"]))
    if unknown:
        raise OpmeterError(f"malformed opmeter trace: op {unknown[0]!r} has cells but no op_info entry")
    twice = [p for p, n in Counter(row[0] for row in d["modules"]).items() if n > 1]
    if twice:
        raise OpmeterError(f"malformed opmeter trace: module {twice[0][:80]!r} has two rows")
    if [row[0] for row in d["modules"][:2]] != ["<outside>", "<root>"]:
        raise OpmeterError("malformed opmeter trace: the module table does not start with <outside>, <root>")
    if d["contexts"][:1] != [[-1, 0]]:
        raise OpmeterError("malformed opmeter trace: context 0 is not the empty call stack [-1, 0]")
