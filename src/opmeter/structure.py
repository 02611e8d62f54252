"""How a model's module tree splits into named components and request stages (given by its adapter).

The join, the time model and the report read a model only through these two descriptions and the predicted
per-module frame.
"""

from __future__ import annotations

import re

import attrs


@attrs.frozen
class Component:
    """A named component: the modules whose path matches ``pattern`` (and class, when given) and everything below.

    When several components match along a path, the deepest module wins, so components are disjoint.
    """

    name: str
    pattern: str
    class_name: str | None = None

    def matches(self, path: str, class_name: str) -> bool:
        """Whether the module ``path`` of class ``class_name`` is a root of this component."""
        if self.class_name is not None and class_name != self.class_name:
            return False
        return re.search(self.pattern, path) is not None


@attrs.frozen
class StageSpec:
    """Where a model's request stages are, beyond the prefill/decode marks of the root calls.

    Attributes
    ----------
    request_stage
        Name of the stage that holds the encoder or vision work of the request (``vision``, ``encoder``). It is part
        of the time to first token, never ``setup``, even when it runs before the first decoder call.
    request_modules
        Module paths (as the tracer names them) whose calls are that stage. The pipeline marks each call as an
        explicit stage while tracing, so the split is exact whether the call runs inside the prefill or before it.
    request_components
        Component names covering the same modules, for traces recorded without the explicit marks.
    """

    request_stage: str = "encoder"
    request_modules: tuple[str, ...] = ()
    request_components: tuple[str, ...] = ()
    mark: bool = True
    """Mark the request modules' calls as an explicit stage while tracing. ``False`` when they always run inside the
    first decoder call and the join splits them off by component (the trace's own prefill then includes them)."""
