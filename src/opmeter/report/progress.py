"""Progress bars and phase timings of a report run."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch


class Progress:
    """rich progress bars (or nothing): one task per long phase, advanced per forward of the root module."""

    def __init__(self, enabled: bool) -> None:
        self._progress: Any = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                transient=False,
            )

    def __enter__(self) -> Progress:
        if self._progress is not None:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    @contextlib.contextmanager
    def forwards(self, description: str, model: torch.nn.Module, total: int) -> Iterator[None]:
        """A task advanced by every call of ``model.forward``."""
        if self._progress is None:
            yield
            return
        task = self._progress.add_task(description, total=total)
        handle = model.register_forward_hook(lambda *_: self._progress.advance(task))
        try:
            yield
        finally:
            handle.remove()
            self._progress.update(task, completed=total)

    def step(self, description: str, total: int) -> Callable[[int], None]:
        """A task advanced explicitly (the returned callable sets the completed count)."""
        if self._progress is None:
            return lambda _n: None
        task = self._progress.add_task(description, total=total)
        return lambda n: self._progress.update(task, completed=n)


def timed(seconds: dict[str, float], key: str) -> contextlib.AbstractContextManager[None]:
    """Context manager adding the wall time of a block to ``seconds[key]``."""

    @contextlib.contextmanager
    def block() -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start

    return block()
