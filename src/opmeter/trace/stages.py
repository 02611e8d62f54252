"""Stages: prefill / decode marks from root-level forward calls, explicit stages, NVTX ranges.

Rules (documented in the README):

* Each root-level forward call (a call of the traced model that is not nested in another call of it) is a stage.
  The first whose input (``input_ids`` / ``inputs_embeds`` / ``decoder_input_ids`` keyword, else the first tensor
  argument) has a sequence length is ``prefill``, whatever that length (an encoder-decoder's decoder starts from one
  token); later calls with sequence length 1 are ``decode[0]``, ``decode[1]``...; any other call is ``forward[i]``.
  Groups: ``prefill``, ``decode`` (every decode step), ``other`` (``forward[i]``).
* Sequence length: integer tensors (token ids) use their last dimension; floating tensors of rank 3
  (``[batch, seq, hidden]`` embeddings) their second; anything else has no sequence length (``forward[i]``).
* Ops outside every root call (e.g. ``generate()``'s sampling and stopping criteria between steps) belong to a
  *glue* stage named after the surrounding context: ``setup`` before the first root call, then
  ``<group>.glue`` after a root call of ``<group>`` (``prefill.glue``, ``decode.glue``, ``other.glue``). Each glue
  stage is one stage (all the gaps after decode steps add up in ``decode.glue``).
* ``with trace.stage("vision"):`` (or :func:`stage`, which marks every active tracer and needs no handle on it,
  handy inside model code) opens an explicit stage: ops inside belong to it (group ``vision``), it nests inside
  or around automatic stages and overrides them; re-entering the same name gives ``vision[1]``, ``vision[2]``...
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, Protocol

import torch

log = logging.getLogger(__name__)

PREFILL: Final = "prefill"
DECODE: Final = "decode"
OTHER: Final = "other"
SETUP: Final = "setup"
GLUE_SUFFIX: Final = ".glue"

AUTO: Final = "auto"
EXPLICIT: Final = "explicit"
GLUE: Final = "glue"


def glue_group(group: str) -> str:
    """Name of the glue stage (and group) that follows a root call of ``group``."""
    return f"{group}{GLUE_SUFFIX}"


def _seq_of(t: Any) -> tuple[int, int] | None:
    if not isinstance(t, torch.Tensor) or t.dim() == 0:
        return None
    if t.is_nested:
        from opmeter.trace.refusals import refuse_nested_input

        refuse_nested_input(t)
    if not (t.dtype.is_floating_point or t.dtype.is_complex):
        return int(t.shape[-1]), int(t.shape[0]) if t.dim() > 1 else 1
    if t.dim() == 3:
        return int(t.shape[1]), int(t.shape[0])
    return None


def sequence_length(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int] | None:
    """``(seq_len, batch)`` of a root call's input, or ``None`` when it has none (see module docstring)."""
    for key in ("input_ids", "inputs_embeds", "decoder_input_ids", "decoder_inputs_embeds"):
        t = kwargs.get(key)
        if isinstance(t, torch.Tensor):
            return _seq_of(t)
    for a in args:
        if isinstance(a, torch.Tensor):
            return _seq_of(a)
    for a in kwargs.values():
        if isinstance(a, torch.Tensor):
            return _seq_of(a)
    return None


class Nvtx:
    """NVTX ranges (domain ``opmeter``) when the ``nvtx`` package imports; no-ops otherwise (harmless on CPU).

    The one place opmeter pushes NVTX ranges (stages, module calls, the runtime's prefill/decode ranges). A push that
    fails switches NVTX off for the process, and says so in the log.
    """

    DOMAIN: Final = "opmeter"

    def __init__(self) -> None:
        self._push: Any = None
        self._pop: Any = None
        try:
            import nvtx

            self._push, self._pop = nvtx.push_range, nvtx.pop_range
        except Exception as exc:  # pragma: no cover - depends on the environment
            log.info("NVTX ranges off: the nvtx package does not import (%s)", type(exc).__name__)

    @property
    def available(self) -> bool:
        return self._push is not None

    def push(self, name: str) -> None:
        if self._push is not None:
            try:
                self._push(name, domain=self.DOMAIN)
            except Exception as exc:
                log.warning("NVTX ranges switched off for this process: push_range failed (%s: %s)",
                            type(exc).__name__, exc)
                self._push = None
                self._pop = None

    def pop(self) -> None:
        if self._pop is not None:
            with contextlib.suppress(Exception):  # a pop without its push (switched off in between) is harmless
                self._pop(domain=self.DOMAIN)


NVTX = Nvtx()


class _StageTarget(Protocol):
    thread: int

    def enter_stage(self, name: str) -> int: ...

    def exit_stage(self, token: int) -> None: ...


ACTIVE: list[_StageTarget] = []
"""Recorders of the tracers currently inside their ``with`` block (outermost first)."""


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Mark an explicit stage on every active tracer of this thread (and as an NVTX range), e.g. inside model code.

    Tracers entered on other threads are left alone: they trace their own thread only.

    Parameters
    ----------
    name
        Stage name; also its group for ``Trace.by_module(stage=name)``.
    """
    ident = threading.get_ident()
    targets = [t for t in ACTIVE if t.thread == ident]
    tokens = [t.enter_stage(name) for t in targets]
    if not targets:
        NVTX.push(name)
    try:
        yield
    finally:
        for t, tok in zip(reversed(targets), reversed(tokens), strict=True):
            t.exit_stage(tok)
        if not targets:
            NVTX.pop()
