"""``torch.compile`` wrappers in the module tree: an ``OptimizedModule`` stands for the module it compiled.

``torch.compile(model)`` returns an ``OptimizedModule`` whose only child is the user's module, registered as
``_orig_mod``; calling the wrapper runs ``_orig_mod``'s ``__call__`` through a method bound at compile time, so the
traced ``nn.Module.__call__`` sees the wrapper's call but not the inner one. Under a dispatch mode dynamo does not run
compiled code (it falls back to eager), so every op is seen; only the names need mapping:

* tracing a compiled model (``OpTracer(torch.compile(model))``): the wrapper is the module at its path (the root),
  named and classed as the user's module; ``_orig_mod`` is transparent and drops out of every path
  (``_orig_mod.layers.0`` is ``layers.0``), so the tree is ``model.named_modules()``'s;
* calling a compiled wrapper of a traced module (``OpTracer(model)`` then ``compiled(x)``): the wrapper's call is
  the call of the module it compiled (the root opens a stage as usual).
"""

from __future__ import annotations

import sys
from typing import Any

ORIG = "_orig_mod"


def is_compiled_wrapper(mod: Any) -> bool:
    """Whether ``mod`` is a ``torch.compile`` ``OptimizedModule`` (without importing dynamo when it is not loaded)."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    cls = getattr(eval_frame, "OptimizedModule", None) if eval_frame is not None else None
    return cls is not None and isinstance(mod, cls)


def original(mod: Any) -> Any:
    """The user's module behind any number of compile wrappers (``mod`` itself when it is not one)."""
    while is_compiled_wrapper(mod):
        mod = getattr(mod, ORIG)
    return mod


def user_path(name: str, wrappers: set[str]) -> str | None:
    """``name`` from ``named_modules()`` with the ``_orig_mod`` step of every wrapper in ``wrappers`` removed;
    ``None`` for a wrapper's ``_orig_mod`` itself (it is the wrapper's module)."""
    parts = name.split(".") if name else []
    out: list[str] = []
    prefix = ""
    for i, part in enumerate(parts):
        if part == ORIG and prefix in wrappers:
            if i == len(parts) - 1:
                return None
        else:
            out.append(part)
        prefix = f"{prefix}.{part}" if prefix else part
    return ".".join(out)
