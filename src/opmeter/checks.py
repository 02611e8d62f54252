"""Checks of values read from artifacts a user may have been handed (traces, joined files, profiles, sidecars):
a number that drives work or allocations is a whole number within stated bounds, or one clear error."""

from __future__ import annotations

from typing import Any

from opmeter.errors import OpmeterError


def whole_number(value: Any, what: str, low: int = 0, high: int = 1 << 40) -> int:
    """``value`` as an ``int`` in ``[low, high]``: an ``int`` (not a ``bool``), or a float with no fraction.

    Raises
    ------
    OpmeterError
        Naming ``what`` and the value (shortened) otherwise.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OpmeterError(f"{what} is {str(value)[:40]!r}; expected a whole number from {low:,} to {high:,}")
    return value


def optional_whole_number(value: Any, what: str, low: int = 0, high: int = 1 << 40) -> int | None:
    """:func:`whole_number`, with ``None`` (absent) passed through."""
    return None if value is None else whole_number(value, what, low, high)


_SCALARS = (str, int, float, bool, type(None))


def mapping(value: Any, what: str) -> dict[str, Any]:
    """``value`` when it is a JSON object (a ``dict``); one clear error otherwise."""
    if not isinstance(value, dict):
        raise OpmeterError(f"{what} is a {type(value).__name__}, not a JSON object")
    return value


def records(value: Any, what: str) -> list[dict[str, Any]]:
    """``value`` when it is a table in records form: a list of objects whose cells are scalars (``None``: empty).

    Raises
    ------
    OpmeterError
        Naming ``what`` and the first bad row or cell.
    """
    if value is None:
        return []
    if not isinstance(value, list):
        raise OpmeterError(f"{what} is a {type(value).__name__}, not a table (a list of rows)")
    for i, row in enumerate(value):
        if not isinstance(row, dict):
            raise OpmeterError(f"{what}: row {i} is a {type(row).__name__}, not an object")
        for key, cell in row.items():
            if not isinstance(cell, _SCALARS):
                raise OpmeterError(f"{what}: row {i}, column {str(key)[:40]!r} holds a {type(cell).__name__}")
    return value


def nesting_depth_at_most(value: Any, limit: int, what: str) -> None:
    """Refuse JSON nested deeper than ``limit`` (checked without recursion, before anything walks it)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise OpmeterError(f"{what} is nested more than {limit} levels deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
