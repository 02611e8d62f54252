"""opmeter: where a PyTorch model spends its work.

The tracer (:class:`OpTracer`) records every aten op with its module-stack attribution; the analytic library
predicts the same quantities from shapes; the join and the report put both side by side.

``from opmeter import OpTracer, Trace, load_trace`` imports torch lazily, so the CLI starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opmeter.version import __version__

if TYPE_CHECKING:
    from opmeter.trace import OpTracer, Trace, load_trace

__all__ = ["OpTracer", "Trace", "__version__", "load_trace"]

_LAZY = {"OpTracer", "Trace", "load_trace"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from opmeter import trace

        return getattr(trace, name)
    raise AttributeError(f"module 'opmeter' has no attribute {name!r}")
