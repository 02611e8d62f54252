"""opmeter: where a PyTorch model spends its work.

The tracer (:class:`OpTracer`) records every aten op with its module-stack attribution; the analytic library
predicts the same quantities from shapes; the join and the report put both side by side.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
