"""The module table: every module of the traced tree, named as ``model.named_modules()`` names it.

Index 0 is the pseudo-module :data:`OUTSIDE` (ops run inside the tracer block but outside every module of the
tree), index 1 the root :data:`ROOT`, then the other modules in ``named_modules()`` order (a module registered
under two names keeps its first name).
"""

from __future__ import annotations

from typing import Final

import attrs
import torch

ROOT: Final = "<root>"
"""Name of the root module (``named_modules()`` calls it ``""``)."""
OUTSIDE: Final = "<outside>"
"""Pseudo-module of ops executed inside the tracer block but outside every module of the tree."""

OUTSIDE_INDEX: Final = 0
ROOT_INDEX: Final = 1


@attrs.frozen
class ModuleRecord:
    """One module of the tree."""

    path: str
    """Path as ``named_modules()`` gives it; :data:`ROOT` for the root, :data:`OUTSIDE` for the pseudo-module."""
    class_name: str
    qualified_class: str
    parent: str | None
    """Path of the parent in the tree (``None`` for the root and the pseudo-module)."""
    depth: int
    """0 for the root and the pseudo-module, 1 for the root's children..."""


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def module_table(model: torch.nn.Module) -> tuple[list[ModuleRecord], dict[int, int], list[torch.nn.Module]]:
    """Build the module table of ``model``.

    Returns
    -------
    records
        :class:`ModuleRecord` per index (0 = outside, 1 = root, ...).
    index
        ``id(module) -> index`` for the live module objects.
    objects
        The module objects by index (``objects[0]`` is the root too, as a placeholder for the outside).
    """
    from opmeter.trace.compiled import is_compiled_wrapper, original, user_path

    records = [ModuleRecord(OUTSIDE, OUTSIDE, OUTSIDE, None, 0)]
    index: dict[int, int] = {}
    objects: list[torch.nn.Module] = [model]
    wrappers: set[str] = set()
    for full_name, mod in model.named_modules():
        if is_compiled_wrapper(mod):
            wrappers.add(full_name)
        name = user_path(full_name, wrappers)
        if id(mod) in index or name is None:  # a torch.compile wrapper's _orig_mod: the wrapper stands for it
            continue
        cls = type(original(mod))
        if name == "":
            rec = ModuleRecord(ROOT, cls.__name__, qualified_name(cls), None, 0)
        else:
            parent = name.rpartition(".")[0] or ROOT
            rec = ModuleRecord(name, cls.__name__, qualified_name(cls), parent, name.count(".") + 1)
        index[id(mod)] = len(records)
        records.append(rec)
        objects.append(mod)
    return records, index, objects
