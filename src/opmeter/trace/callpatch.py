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

import logging
import threading
from typing import Any, Protocol

import torch
from torch import nn


class CallTarget(Protocol):
    """What the wrapper reports module calls to (a tracer's :class:`~opmeter.trace.recorder.Recorder`)."""

    thread: int
    """Identifier of the only thread whose calls are reported."""

    def enter(self, mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """``mod`` is called with ``args`` / ``kwargs``."""
        ...

    def exit(self, mod: Any) -> None:
        """The call of ``mod`` ended, normally or by an exception."""
        ...

    def after_call(self, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """The call returned ``out`` with grad enabled (before :meth:`exit`): backward attribution hooks."""
        ...


log = logging.getLogger(__name__)
_lock = threading.Lock()
_get_ident = threading.get_ident
_grad_enabled = torch.is_grad_enabled
_targets: list[CallTarget] = []
_original: Any = None
# True while another wrapper installed over ours keeps ours in its chain (we could not restore ``__call__``)
_chained = False


def _traced_call(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    targets = _targets
    if len(targets) == 1:
        t = targets[0]
        if t.thread == _get_ident():
            t.enter(self, args, kwargs)
            try:
                out = _original(self, *args, **kwargs)
                if _grad_enabled():  # before exit: the call's context is still on the stack
                    t.after_call(args, kwargs, out)
                return out
            finally:
                t.exit(self)
        return _original(self, *args, **kwargs)
    if not targets:
        if nn.Module.__call__ is _traced_call:  # stranded: put back by another wrapper after our last tracer left
            _heal()
        return _original(self, *args, **kwargs)
    ident = _get_ident()
    active = [t for t in targets if t.thread == ident]
    for t in active:
        t.enter(self, args, kwargs)
    try:
        out = _original(self, *args, **kwargs)
        if _grad_enabled():
            for t in active:
                t.after_call(args, kwargs, out)
        return out
    finally:
        for t in reversed(active):
            t.exit(self)


def _heal() -> None:
    """Remove our wrapper found in place with no tracer active (another tool restored it after we left)."""
    global _chained
    with _lock:
        if not _targets and nn.Module.__call__ is _traced_call:
            log.info("opmeter: removing its nn.Module.__call__ wrapper, put back by another tool after the last "
                     "tracer exited")
            nn.Module.__call__ = _original  # type: ignore[method-assign]
            _chained = False


class _Probe(nn.Module):
    pass


def _reaches_us(call: Any) -> bool:
    """Whether calling ``call`` on a module goes through :func:`_traced_call` (run with ``_lock`` held)."""
    global _original
    saved = _original
    probe = _Probe()
    reached = False

    def sentinel(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        nonlocal reached
        if self is probe:
            reached = True
            return None
        return saved(self, *args, **kwargs)  # another thread's call meanwhile

    _original = sentinel
    try:
        call(probe)
    except Exception:
        pass  # the chain ended in nn.Module's own __call__: _Probe has no forward
    finally:
        _original = saved
    return reached


def install(target: CallTarget) -> None:
    """Start reporting module calls to ``target``.

    Installs the wrapper unless it is already in place, or still reachable through another wrapper that replaced it
    while a tracer was active (wrapping that one again would make the two call each other forever).
    """
    global _original, _chained
    with _lock:
        current = nn.Module.__call__
        if current is _traced_call:
            _chained = False
        elif not (_chained and _reaches_us(current)):
            _chained = False
            _original = current
            nn.Module.__call__ = _traced_call  # type: ignore[method-assign]
        _targets.append(target)


def uninstall(target: CallTarget) -> str | None:
    """Stop reporting to ``target``; restore ``nn.Module.__call__`` when no tracer is left.

    Returns
    -------
    str or None
        Why module calls stopped reaching ``target`` before now (another tool replaced ``nn.Module.__call__``
        and dropped our wrapper from the chain while the tracer was active), or ``None`` when they never did.
    """
    global _chained
    with _lock:
        if target in _targets:
            _targets.remove(target)
        current = nn.Module.__call__
        if current is _traced_call:
            lost = None
            if not _targets:
                nn.Module.__call__ = _original  # type: ignore[method-assign]
                _chained = False
        elif _reaches_us(current):  # wrapped over us: ours stays in that chain, passing calls through
            lost = None
            _chained = not _targets
        else:
            _chained = False
            lost = (f"nn.Module.__call__ was replaced during the trace by {getattr(current, '__qualname__', current)!r}"
                    ", which does not call opmeter's wrapper: module calls after that were not attributed")
    return lost


def stranded() -> bool:
    """Whether our wrapper is in place with no tracer active (it removes itself at the next module call)."""
    return not _targets and nn.Module.__call__ is _traced_call


def is_installed() -> bool:
    """Whether the wrapper is currently in place (tests check nothing is left behind)."""
    return nn.Module.__call__ is _traced_call
