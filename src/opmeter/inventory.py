"""Static inventory of any ``nn.Module``, without running it: classes, instances, parameters, child classes.

What torchinfo's "unique layers" gives, plus parameters per top-level component. Works on meta-device models, so
a full-size model is inventoried without allocating weights.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import attrs
import pandas as pd
from torch import nn

from opmeter.trace.modules import qualified_name

SCHEMA_VERSION = "opmeter.inventory/1"
"""The ``schema_version`` of an inventory JSON file (``opmeter inventory --json``)."""


@attrs.frozen
class ClassInfo:
    """One module class of a model.

    Attributes
    ----------
    name, qualname
        Class name and qualified name.
    instances
        Number of module instances (each counted once, even when shared).
    params_own
        Parameters registered directly on the instances (``recurse=False``), summed.
    params_inclusive
        Parameters of the instances including their sub-modules, each parameter counted once per class (the experts'
        ``ModuleList`` inside the layers' ``ModuleList`` does not count the experts twice), so it never exceeds the
        model's total.
    child_classes
        Names of the classes of direct children, sorted.
    example_path
        Path of the first instance (``""`` for the root).
    """

    name: str
    qualname: str
    instances: int
    params_own: int
    params_inclusive: int
    child_classes: tuple[str, ...]
    example_path: str


@attrs.frozen
class Inventory:
    """Static inventory of a model; query it with :meth:`by_class`, :meth:`by_component`, :meth:`to_dict`."""

    model_class: str
    model_qualname: str
    total_params: int
    total_instances: int
    classes: tuple[ClassInfo, ...]
    components: tuple[tuple[str, int], ...]
    """``(path, parameters)`` for each top-level component (see :func:`build_inventory`)."""

    @property
    def num_classes(self) -> int:
        """Number of distinct module classes."""
        return len(self.classes)

    def instance_counts(self) -> dict[str, int]:
        """Class name -> instance count."""
        return {c.name: c.instances for c in self.classes}

    def by_class(self) -> pd.DataFrame:
        """One row per class (first-seen order)."""
        return pd.DataFrame(
            [
                {
                    "class": c.name,
                    "qualname": c.qualname,
                    "instances": c.instances,
                    "params_own": c.params_own,
                    "params_inclusive": c.params_inclusive,
                    "child_classes": ",".join(c.child_classes),
                    "example_path": c.example_path,
                }
                for c in self.classes
            ]
        )

    def by_component(self) -> pd.DataFrame:
        """One row per top-level component with its parameters and share of the total."""
        total = max(self.total_params, 1)
        return pd.DataFrame(
            [{"component": p, "params": n, "share": n / total} for p, n in self.components]
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-ready)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "model_class": self.model_class,
            "model_qualname": self.model_qualname,
            "total_params": self.total_params,
            "total_instances": self.total_instances,
            "num_classes": self.num_classes,
            "classes": [attrs.asdict(c) for c in self.classes],
            "components": [{"path": p, "params": n} for p, n in self.components],
        }

    def format_text(self) -> str:
        """Human-readable tables."""
        lines = [
            f"{self.model_class} ({self.model_qualname})",
            f"parameters: {self.total_params:,}   module instances: {self.total_instances:,}   "
            f"classes: {self.num_classes}",
            "",
            f"{'component':<40} {'parameters':>16} {'share':>7}",
        ]
        total = max(self.total_params, 1)
        for path, n in self.components:
            lines.append(f"{path:<40} {n:>16,} {100 * n / total:>6.2f}%")
        lines += ["", f"{'class':<28} {'instances':>9} {'params (own)':>16} {'params (incl.)':>16}  children"]
        for c in self.classes:
            lines.append(
                f"{c.name:<28} {c.instances:>9,} {c.params_own:>16,} {c.params_inclusive:>16,}  "
                f"{', '.join(c.child_classes)}"
            )
        return "\n".join(lines)


def _components(model: nn.Module, depth: int) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []

    def numel(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    def walk(module: nn.Module, prefix: str, level: int) -> None:
        children = list(module.named_children())
        if level >= depth or not children or isinstance(module, nn.ModuleList | nn.Sequential | nn.ModuleDict):
            out.append((prefix or "<root>", numel(module)))
            return
        for name, param in module.named_parameters(recurse=False):
            out.append((f"{prefix}.{name}" if prefix else name, param.numel()))
        for name, child in children:
            walk(child, f"{prefix}.{name}" if prefix else name, level + 1)

    walk(model, "", 0)
    return out


def build_inventory(model: nn.Module, component_depth: int = 2) -> Inventory:
    """Inventory of ``model`` (nothing is executed; meta tensors are fine).

    Parameters
    ----------
    component_depth
        Components are the modules ``component_depth`` levels below the root (containers such as ``ModuleList``
        and leaves stop the descent earlier); parameters registered directly on an expanded module are listed as
        their own components. For a ``ForCausalLM`` wrapper depth 2 gives ``model.layers``, ``model.norm``,
        ``lm_head``, ...
    """
    seen: set[int] = set()
    order: list[type] = []
    instances: Counter[type] = Counter()
    own: Counter[type] = Counter()
    inclusive: Counter[type] = Counter()
    counted: defaultdict[type, set[int]] = defaultdict(set)
    children: defaultdict[type, set[str]] = defaultdict(set)
    example: dict[type, str] = {}
    for path, module in model.named_modules():
        if id(module) in seen:
            continue
        seen.add(id(module))
        cls = type(module)
        if cls not in instances:
            order.append(cls)
            example[cls] = path
        instances[cls] += 1
        own[cls] += sum(p.numel() for p in module.parameters(recurse=False))
        fresh = [p for p in module.parameters() if id(p) not in counted[cls]]
        counted[cls].update(id(p) for p in fresh)
        inclusive[cls] += sum(p.numel() for p in fresh)
        for child in module.children():
            children[cls].add(type(child).__name__)
    classes = tuple(
        ClassInfo(
            name=cls.__name__,
            qualname=qualified_name(cls),
            instances=instances[cls],
            params_own=own[cls],
            params_inclusive=inclusive[cls],
            child_classes=tuple(sorted(children[cls])),
            example_path=example[cls],
        )
        for cls in order
    )
    return Inventory(
        model_class=type(model).__name__,
        model_qualname=qualified_name(type(model)),
        total_params=sum(p.numel() for p in model.parameters()),
        total_instances=len(seen),
        classes=classes,
        components=tuple(_components(model, component_depth)),
    )
