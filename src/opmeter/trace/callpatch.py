"""The module stack mechanism: one shared wrapper around ``nn.Module.__call__`` while any tracer is active.

Why not global forward hooks: with a global hook installed, every module call takes ``_call_impl``'s slow path
(closure, hook dict iteration, exception bookkeeping), which cost more than the whole dispatch-mode work per op on
small modules; and ``always_call`` hooks do not run on ``KeyboardInterrupt``. A ``try/finally`` around the call is
cheaper and pops the stack on any exception.

Robustness: a single wrapper is installed when the first tracer activates and removed when the last one exits, in
any order (nested tracers that exit out of order cannot leave a stale wrapper behind); it only tracks calls on the
thread that entered each tracer (dispatch modes are thread-local too). If something else replaced
``nn.Module.__call__`` after us, we leave it alone and our wrapper, still in its chain, passes calls through.
A module class that overrides ``__call__`` without calling ``super().__call__`` is transparent (its ops go to the
nearest traced caller).
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from torch import nn


class CallTarget(Protocol):
    thread: int

    def enter(self, mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None: ...

    def exit(self, mod: Any) -> None: ...


_lock = threading.Lock()
_get_ident = threading.get_ident
_targets: list[CallTarget] = []
_original: Any = None


def _traced_call(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    targets = _targets
    if len(targets) == 1:
        t = targets[0]
        if t.thread == _get_ident():
            t.enter(self, args, kwargs)
            try:
                return _original(self, *args, **kwargs)
            finally:
                t.exit(self)
        return _original(self, *args, **kwargs)
    if not targets:
        return _original(self, *args, **kwargs)
    ident = _get_ident()
    active = [t for t in targets if t.thread == ident]
    for t in active:
        t.enter(self, args, kwargs)
    try:
        return _original(self, *args, **kwargs)
    finally:
        for t in reversed(active):
            t.exit(self)


def install(target: CallTarget) -> None:
    """Start reporting module calls to ``target``."""
    global _original
    with _lock:
        if nn.Module.__call__ is not _traced_call:
            _original = nn.Module.__call__
            nn.Module.__call__ = _traced_call  # type: ignore[method-assign]
        _targets.append(target)


def uninstall(target: CallTarget) -> None:
    """Stop reporting to ``target``; restore ``nn.Module.__call__`` when no tracer is left."""
    with _lock:
        if target in _targets:
            _targets.remove(target)
        if not _targets and nn.Module.__call__ is _traced_call:
            nn.Module.__call__ = _original  # type: ignore[method-assign]


def is_installed() -> bool:
    """Whether the wrapper is currently in place (tests check nothing is left behind)."""
    return nn.Module.__call__ is _traced_call
