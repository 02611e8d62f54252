"""The model adapter contract and its registry.

Everything the generic packages (trace, analytic, join, timemodel, report, commands) need to know about one model
comes from a :class:`ModelAdapter`: its presets and workloads, how to build or load it and run one inference, the
analytic prediction of that run, its components, where its stages start and end, and the words a report uses about
it. ``--model NAME[:ARG]`` resolves an adapter through :func:`resolve_adapter`; a model package registers its
adapter factory with :func:`register`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs
import pandas as pd
import torch

from opmeter.errors import OpmeterError
from opmeter.structure import Component, StageSpec


@attrs.frozen
class ModelWords:
    """The words a report uses about the model."""

    name: str
    """Display name, e.g. ``DeepSeek-OCR``."""
    request_parts: str = ""
    """What the request stage runs, e.g. ``SAM + CLIP + projector``."""
    predicted: bool = True
    """False for a measured-only report (no analytic model of this family)."""


class Workload(Protocol):
    """The inputs of one run, as the generic pipeline sees them."""

    @property
    def id(self) -> str: ...

    @property
    def max_new_tokens(self) -> int: ...

    @property
    def decode_steps(self) -> int: ...

    def describe(self) -> dict[str, str]:
        """Header lines of the report (label -> text), e.g. image size, prompt length."""
        ...

    def summary(self) -> dict[str, Any]:
        """JSON-able facts of the workload, stored in the trace's metadata."""
        ...

    def with_new_tokens(self, tokens: int) -> Workload:
        """The same workload with another generation length."""
        ...


@attrs.frozen
class RunRequest:
    """What the user asked for, in the adapter's terms."""

    preset: str | None
    workload: str | None
    device: str
    dtype: torch.dtype | None = None
    decode_tokens: int | None = None
    image: Path | None = None
    weights: bool = True
    """Load the checkpoint's weights when the adapter has one (``False``: random initialisation)."""
    weights_dir: Path | None = None
    """``--weights DIR``: a local checkpoint to load (adapters that build from a config)."""
    scratch: Path = Path(".")
    """A directory the run may write into (removed afterwards)."""


@attrs.frozen
class PreparedRun:
    """A model ready to run one inference."""

    model: torch.nn.Module
    infer: Callable[[], Any]
    workload: Workload
    preset: str
    metadata: dict[str, Any] = attrs.field(factory=dict)
    """Facts recorded in the trace's metadata (merged over the pipeline's own)."""
    context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    """Entered around tracing and execution, outside every tracer (e.g. compatibility patches)."""


@attrs.frozen
class Prediction:
    """The analytic prediction of one run.

    ``modules`` is in :func:`opmeter.analytic.base.layer_frame` layout keyed by the traced module path; ``stages``
    has one row per stage (the request stage, ``prefill``, ``decode[i]``, ``decode``, ``total``) with
    ``flops_tensor``, ``flops_cuda``, ``bytes``, memory columns and ``predicted_time_s``.
    """

    modules: pd.DataFrame
    stages: pd.DataFrame
    headline: dict[str, float]
    label: str = ""
    details: dict[str, Any] = attrs.field(factory=dict)


@runtime_checkable
class ModelAdapter(Protocol):
    """One model family behind a typed interface (see the module docstring)."""

    name: str
    """Registry name (``deepseek-ocr``, ``hf``...)."""
    spec: str
    """The ``--model`` value that selected it, recorded in traces."""
    words: ModelWords
    stage_spec: StageSpec
    default_preset: str | None
    default_workload: str | None

    def presets(self) -> Mapping[str, str]:
        """Preset id -> one-line description."""
        ...

    def workloads(self) -> Mapping[str, str]:
        """Workload id -> one-line description."""
        ...

    def components(self, model: torch.nn.Module | None = None) -> Sequence[Component]:
        """Disjoint named components (path patterns); the model, when given, lets an adapter read its tree."""
        ...

    def prepare(self, request: RunRequest) -> PreparedRun:
        """Build or load the model and its inputs; raise :class:`OpmeterError` with one line on bad input."""
        ...

    def workload_from_trace(self, metadata: Mapping[str, Any], request: RunRequest) -> tuple[Workload, str]:
        """The workload and preset a saved trace ran (``report --trace``), from its metadata and the request."""
        ...

    def parameter_model(self, preset: str, metadata: Mapping[str, Any]) -> torch.nn.Module | None:
        """The model on meta, for the parameter bytes of a saved trace (its metadata given); ``None`` when it
        cannot be built."""
        ...

    def predict(self, trace: Any, workload: Workload, preset: str, hardware: Any) -> Prediction | None:
        """The analytic prediction of the traced run; ``None`` for a measured-only family."""
        ...


@runtime_checkable
class SupportsVerify(Protocol):
    """An adapter with per-layer verification cases (``opmeter verify``, ``report --verify``)."""

    fast_preset: str
    """``opmeter verify --fast``: the preset that verifies in seconds."""

    def verify_cases(self, preset: str, device: str = "meta", grid: tuple[int, int] | None = None,
                     attn: str = "eager") -> list[Any]:
        """The cases of every analytic layer at ``preset`` (:mod:`opmeter.verify`)."""
        ...

    def verify_context(self) -> contextlib.AbstractContextManager[Any]:
        """What the cases run inside (shape-only switches, for example)."""
        ...


@runtime_checkable
class SupportsSweep(Protocol):
    """An adapter with analytic sweeps (``opmeter sweep``)."""

    def sweep(self, args: Any) -> list[str]:
        """Run the sweeps ``args`` names into ``args.out``; one line per sweep written."""
        ...


@runtime_checkable
class SupportsPages(Protocol):
    """An adapter with reports over a set of pages (``--images``, document-set workloads)."""

    def page_planner(self, workload: str | None, images: str | None, preset: str | None) -> Any:
        """The planner of the set (:class:`opmeter.report.pageset.PagePlanner`); ``None``: a single-page run."""
        ...


@runtime_checkable
class SupportsInventory(Protocol):
    """An adapter that builds its model for ``opmeter inventory`` itself (others: ``prepare`` on meta)."""

    def inventory_model(self, preset: str | None) -> torch.nn.Module:
        """The model of ``preset`` on meta."""
        ...


def verifiable(adapter: ModelAdapter, what: str = "verification cases") -> SupportsVerify:
    """``adapter`` as :class:`SupportsVerify`; one clear line otherwise.

    Raises
    ------
    OpmeterError
        When the adapter has no verification cases.
    """
    if not isinstance(adapter, SupportsVerify):
        raise OpmeterError(f"{adapter.words.name} has no {what}")
    return adapter


def sweepable(adapter: ModelAdapter) -> SupportsSweep:
    """``adapter`` as :class:`SupportsSweep`; one clear line otherwise.

    Raises
    ------
    OpmeterError
        When the adapter has no sweeps.
    """
    if not isinstance(adapter, SupportsSweep):
        raise OpmeterError(f"{adapter.words.name} has no sweeps")
    return adapter


DEFAULT_MODEL = "deepseek-ocr"
"""The adapter of the commands without ``--model``: the project's flagship model."""

_REGISTRY: dict[str, Callable[[str | None, str], ModelAdapter]] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, factory: Callable[[str | None, str], ModelAdapter], *aliases: str) -> None:
    """Register ``factory(arg, spec) -> adapter`` under ``name`` (and aliases)."""
    _REGISTRY[name] = factory
    for alias in aliases:
        _ALIASES[alias] = name


def _load_builtin() -> None:
    """Import the packages that register the built-in adapters (once)."""
    import importlib

    for module in BUILTIN_PACKAGES:
        importlib.import_module(module)


BUILTIN_PACKAGES: tuple[str, ...] = (
    "opmeter.models.deepseek_ocr.adapter", "opmeter.models.deepseek_ocr2.adapter", "opmeter.models.hf.adapter",
)
"""Modules whose import registers an adapter."""


def adapter_names() -> list[str]:
    """Registered adapter names, aliases included."""
    _load_builtin()
    return sorted([*_REGISTRY, *_ALIASES])


def resolve_adapter(spec: str) -> ModelAdapter:
    """The adapter selected by ``--model NAME[:ARG]``.

    Raises
    ------
    OpmeterError
        For an unknown name (one line listing the known ones) or an argument the adapter refuses.
    """
    _load_builtin()
    name, _, arg = str(spec).partition(":")
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise OpmeterError(f"unknown --model {spec!r}; known: {', '.join(adapter_names())} (NAME or NAME:ARG)")
    return _REGISTRY[key](arg or None, spec)


@contextlib.contextmanager
def marked_stages(model: torch.nn.Module, spec: StageSpec) -> Iterator[None]:
    """Mark every call of ``spec.request_modules`` as the explicit stage ``spec.request_stage`` on the active tracers.

    Hooks are removed on exit, also when the run fails. Paths missing from ``model`` are skipped (logged).
    """
    import logging

    from opmeter.trace.stages import stage

    log = logging.getLogger(__name__)
    handles: list[Any] = []
    open_stages: dict[int, list[contextlib.AbstractContextManager[None]]] = {}

    def enter(module: torch.nn.Module, *_: Any) -> None:
        cm = stage(spec.request_stage)
        cm.__enter__()
        open_stages.setdefault(id(module), []).append(cm)

    def leave(module: torch.nn.Module, *_: Any) -> None:
        stack = open_stages.get(id(module))
        if stack:
            stack.pop().__exit__(None, None, None)

    for path in spec.request_modules:
        try:
            sub = model.get_submodule(path)
        except AttributeError:
            log.info("request-stage module %s is not in this model; not marked", path)
            continue
        handles.append(sub.register_forward_pre_hook(enter))
        handles.append(sub.register_forward_hook(leave, always_call=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for stack in open_stages.values():
            while stack:
                stack.pop().__exit__(None, None, None)
