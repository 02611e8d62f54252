"""Components and stages of any transformers model, inferred from its module tree by class name and attribute name.

No per-model path table: each module is classified by the rules of :func:`classify` (first match wins), a module
below a classified one is not classified again (its work belongs to that component) except below a decoder layer or
an MoE block, whose own work is the residual adds and the dispatch/combine. Paths are generalised over layer
indices (``model.layers.7.mlp`` -> ``^model\\.layers\\.\\d+\\.mlp$``), so the patterns stay few at any depth. The
encoder of an encoder-decoder model and the vision tower and projector of a vision-language model are one component
each, and they are the request stage (:func:`stage_spec`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import torch

from opmeter.join import Component
from opmeter.models.base import StageSpec

LAYERS = "layers (residual adds)"
MOE = "MoE dispatch/combine"
OPEN = frozenset({LAYERS, MOE})
"""Components whose descendants are classified on their own."""

VISION_NAMES = ("vision_tower", "vision_model", "visual", "vision_encoder")
PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "projector", "aligner")


def _leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _in_list(path: str) -> bool:
    return bool(re.search(r"\.\d+(\.|$)", path))


def classify(path: str, module: torch.nn.Module, parent: torch.nn.Module | None) -> str | None:
    """Component name of one module by class and attribute name, ``None`` when it is not a component root."""
    cls, leaf = type(module).__name__, _leaf(path)
    low = cls.lower()
    rules: list[tuple[bool, str]] = [
        (leaf in ("shared_expert", "shared_experts"), "shared experts"),
        (leaf in ("gate", "router", "shared_expert_gate") or "router" in low, "MoE router"),
        (leaf == "experts" or low.endswith("experts"), "routed experts"),
        (any(n == "experts" for n, _ in module.named_children()), MOE),
        ("rotary" in low, "rotary embedding"),
        (isinstance(module, torch.nn.Embedding) or low.endswith("embeddings"), "embeddings"),
        ("attention" in low, "attention"),
        ("mlp" in low or "feedforward" in low or low.endswith("ff") or leaf in ("mlp", "ffn", "feed_forward"),
         "MLP"),
        ("norm" in low, "norms" if _in_list(path) else "final norm"),
        (isinstance(parent, torch.nn.ModuleList) and ("layer" in low or "block" in low), LAYERS),
    ]
    return next((name for hit, name in rules if hit), None)


def generalise(path: str) -> str:
    """The regex of a module path with every layer index generalised."""
    return "^" + re.sub(r"\\\.\d+(?=\\\.|$)", r"\\.\\d+", re.escape(path)) + "$"


def _path_of(model: torch.nn.Module, target: torch.nn.Module | None) -> str | None:
    if target is None:
        return None
    return next((p for p, m in model.named_modules() if m is target), None)


def request_paths(model: torch.nn.Module) -> tuple[str, tuple[str, ...]]:
    """``(stage name, module paths)`` of the request stage: the encoder, or the vision tower and projector."""
    encoder = None
    get_encoder: Any = getattr(model, "get_encoder", None)
    if getattr(model.config, "is_encoder_decoder", False) and get_encoder is not None:
        encoder = _path_of(model, get_encoder())
    if encoder:
        return "encoder", (encoder,)
    found = [p for p, _ in model.named_modules() if _leaf(p) in (*VISION_NAMES, *PROJECTOR_NAMES)]
    tops = tuple(p for p in found if not any(p.startswith(q + ".") for q in found if q != p))
    return ("vision", tops) if tops else ("encoder", ())


def _walk(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module, torch.nn.Module | None]]:
    parents: dict[str, torch.nn.Module] = {}
    for path, module in model.named_modules():
        if path:
            parent = parents.get(path.rsplit(".", 1)[0] if "." in path else "", model)
            yield path, module, parent
        parents[path] = module


def infer_components(model: torch.nn.Module) -> tuple[Component, ...]:
    """Disjoint components of ``model`` (see the module docstring), in first-appearance order."""
    stage, request = request_paths(model)
    get_head: Any = getattr(model, "get_output_embeddings", None)
    head = _path_of(model, get_head()) if get_head is not None else None
    closed: list[str] = []
    out: dict[tuple[str, str, str], Component] = {}

    def add(name: str, path: str, cls: str) -> None:
        pattern = generalise(path)
        out.setdefault((name, pattern, cls), Component(name, pattern, cls))

    for path, module, parent in _walk(model):
        if any(path.startswith(c + ".") for c in closed):
            continue
        if path in request:
            name = "encoder" if stage == "encoder" else ("projector" if _leaf(path) in PROJECTOR_NAMES
                                                         else "vision tower")
        elif path == head:
            name = "LM head"
        else:
            found = classify(path, module, parent)
            if found is None:
                continue
            name = found
        add(name, path, type(module).__name__)
        if name not in OPEN:
            closed.append(path)
    return tuple(out.values())


def stage_spec(model: torch.nn.Module) -> StageSpec:
    """The request stage: the encoder (encoder-decoder families) or the vision tower and projector (VLMs)."""
    stage, paths = request_paths(model)
    if not paths:
        return StageSpec()
    components = ("encoder",) if stage == "encoder" else ("vision tower", "projector")
    return StageSpec(request_stage=stage, request_modules=paths, request_components=components)
