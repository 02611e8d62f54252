"""Which analytic variant matches a trace: the execution path read from the trace itself.

A shape-only (meta) run and a real run of the same model do not execute the same ops: on real tensors the model runs
in the weights' dtype (fp32 on CPU), the vision ``F.scaled_dot_product_attention`` calls reach a fused kernel
(``aten._scaled_dot_product_flash_attention_for_cpu`` on CPU) instead of the math decomposition, the vendor code reads
pixel sums on the host (``.item()``), and the learned MoE gate routes tokens unevenly. :func:`choose_analytic` reads
each of these from the trace (metadata, the attention ops that ran under the vision and decoder modules, the per-expert
calls and tokens per stage group) and returns an :class:`AnalyticChoice` that builds the matching
:class:`~opmeter.models.deepseek_ocr.analytic.DeepseekOCRAnalytic` and says why.

Measured routing. The trace keeps per-module totals per stage *group* (``prefill``, ``decode``), not per decode step,
so each expert's decode work is known as (calls, tokens) summed over the steps. An expert's cost is affine in its
tokens per call (weights read once per call) and the MoE's own ops depend only on the tokens of the step, so any
assignment of those calls to steps gives the exact decode totals; :meth:`AnalyticChoice.decode_step_experts` spreads
them over the steps (each expert at most once per step).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import attrs
import pandas as pd

FUSED_SDPA_OPS = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
    "_flash_attention_forward",
    "_efficient_attention_forward",
)
"""aten ops of a fused SDPA kernel (one op for scores, softmax and the second matmul)."""

VISION_ROOTS = ("model.sam_model", "model.vision_model")
DECODER_ATTENTION = re.compile(r"^model\.layers\.\d+\.self_attn$")
EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)$")


def _span(values: list[int]) -> str:
    """``3`` or ``2-5``."""
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _op_name(op: str) -> str:
    """``aten._softmax.default`` -> ``_softmax``."""
    parts = str(op).split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "aten" else parts[0]


@attrs.frozen
class ExpertCounts:
    """Calls and tokens of every routed expert of one MoE layer, summed over a stage group."""

    calls: tuple[int, ...]
    tokens: tuple[int, ...]


@attrs.frozen
class AnalyticChoice:
    """The analytic variant of a run and the evidence for it (see the module docstring)."""

    variant: str = "normal"
    dtype: int = 2
    dtype_name: str = "bfloat16"
    sdpa: str | None = None
    """Vision (and decoder SDPA) implementation: ``"math"`` / ``"fused"``; ``None``: the variant's default."""
    attn_implementation: str = "eager"
    host_checks: bool = False
    prefill_experts: tuple[tuple[int, ...] | None, ...] | None = None
    """Per decoder layer, tokens per routed expert in the prefill (``None``: dense layer); ``None``: balanced."""
    decode_experts: tuple[ExpertCounts | None, ...] | None = None
    """Per decoder layer, expert calls and tokens summed over the decode steps; ``None``: balanced."""
    reasons: tuple[str, ...] = ()

    @property
    def measured_routing(self) -> bool:
        """Whether measured (not balanced) routing is used."""
        return self.prefill_experts is not None or self.decode_experts is not None

    def analytic(self, config: Any) -> Any:
        """The :class:`~opmeter.models.deepseek_ocr.analytic.DeepseekOCRAnalytic` of this choice."""
        from opmeter.models.deepseek_ocr.analytic import DeepseekOCRAnalytic

        return DeepseekOCRAnalytic(config, variant=self.variant, dtype=self.dtype, host_checks=self.host_checks,
                                   attn_implementation=self.attn_implementation, sdpa=self.sdpa)

    def decode_step_experts(self, steps: int) -> list[tuple[tuple[int, ...] | None, ...]] | None:
        """Per decode step, per layer, tokens per expert reproducing the measured decode totals exactly.

        The calls of all experts of a layer are laid out expert by expert and dealt to the steps in turn (call ``j``
        goes to step ``j mod steps``), so an expert is called at most once per step and every step gets about the
        same number of calls; an expert's tokens are split evenly over its calls.
        """
        if self.decode_experts is None or steps <= 0:
            return None
        per_step: list[list[tuple[int, ...] | None]] = [[] for _ in range(steps)]
        for counts in self.decode_experts:
            if counts is None:
                for s in range(steps):
                    per_step[s].append(None)
                continue
            grid = [[0] * len(counts.calls) for _ in range(steps)]
            j = 0
            for e, (c, t) in enumerate(zip(counts.calls, counts.tokens, strict=True)):
                base, extra = divmod(t, c) if c else (0, 0)
                for k in range(c):
                    grid[j % steps][e] = base + (1 if k < extra else 0)
                    j += 1
            for s in range(steps):
                per_step[s].append(tuple(grid[s]))
        return [tuple(layers) for layers in per_step]

    def label(self) -> str:
        """The constructor call, e.g. ``DeepseekOCRAnalytic(variant="normal", sdpa="fused", dtype=4, ...)``."""
        args = [f'variant="{self.variant}"', f"dtype={self.dtype} ({self.dtype_name})"]
        if self.sdpa is not None:
            args.append(f'sdpa="{self.sdpa}"')
        args.append(f'attn_implementation="{self.attn_implementation}"')
        if self.host_checks:
            args.append("host_checks=True")
        routing = "measured expert routing" if self.measured_routing else "balanced expert routing"
        return f"DeepseekOCRAnalytic({', '.join(args)}) with {routing}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description (for ``joined.json`` metadata)."""
        return {
            "label": self.label(), "variant": self.variant, "dtype_bytes": self.dtype, "dtype": self.dtype_name,
            "sdpa": self.sdpa, "attn_implementation": self.attn_implementation, "host_checks": self.host_checks,
            "routing": "measured" if self.measured_routing else "balanced",
            "prefill_expert_tokens": [list(x) if x is not None else None for x in self.prefill_experts or ()],
            "decode_expert_calls": [list(x.calls) if x is not None else None for x in self.decode_experts or ()],
            "decode_expert_tokens": [list(x.tokens) if x is not None else None for x in self.decode_experts or ()],
            "reasons": list(self.reasons),
        }


def _frame(trace: Any, name: str, **kwargs: Any) -> pd.DataFrame:
    fn = getattr(trace, name, None)
    if fn is None:
        return pd.DataFrame()
    try:
        out = fn(**kwargs)
    except (KeyError, ValueError, TypeError):
        return pd.DataFrame()
    return out if isinstance(out, pd.DataFrame) else pd.DataFrame(out)


def _dtype(meta: Mapping[str, Any], trace: Any) -> tuple[int, str, str]:
    from opmeter.analytic.base import dtype_bytes

    name = str(meta.get("dtype") or "").removeprefix("torch.")
    source = "the trace metadata (model dtype)"
    if not name:
        ops = _frame(trace, "by_operator")
        gemm = ops[ops["category"] == "gemm"] if "category" in ops else ops
        seen = [d for s in gemm.get("dtypes", pd.Series(dtype=object)) for d in str(s or "").split(",") if d]
        name = max(set(seen), key=seen.count) if seen else "bfloat16"
        source = "the output dtype of the traced GEMMs" if seen else "the default (nothing in the trace)"
    try:
        return dtype_bytes(name), name, source
    except ValueError:
        return 2, name, f"unknown dtype {name!r} in the trace; bf16 assumed"


def _attention(trace: Any, meta: Mapping[str, Any]) -> tuple[str, str | None, str, list[str]]:
    """(variant, sdpa, attn_implementation, reasons) from the attention ops that ran."""
    reasons: list[str] = []
    mo = _frame(trace, "by_module_and_operator")
    fused: dict[str, dict[str, int]] = {"vision": {}, "decoder": {}}
    if not mo.empty and {"module", "op", "calls"} <= set(mo.columns):
        for rec in mo[["module", "op", "calls"]].to_dict("records"):
            name = _op_name(rec["op"])
            if name not in FUSED_SDPA_OPS:
                continue
            path = str(rec["module"])
            part = "vision" if path in VISION_ROOTS else "decoder" if DECODER_ATTENTION.match(path) else None
            if part is not None:
                fused[part][name] = fused[part].get(name, 0) + int(rec["calls"])
    attn = str(meta.get("attn_implementation") or "eager")
    variant = "flash" if "flash" in attn else "normal"

    def ops_text(found: Mapping[str, int]) -> str:
        return ", ".join(f"`aten.{op}` x{n}" for op, n in found.items())

    if variant == "flash":
        reasons.append(f"decoder `attn_implementation={attn!r}` (trace metadata): the `flash` variant, fused "
                       "attention everywhere")
        return variant, None, "eager", reasons
    if fused["vision"]:
        sdpa: str | None = "fused"
        reasons.append(f"vision attention ran a fused SDPA kernel ({ops_text(fused['vision'])}): `sdpa=\"fused\"` "
                       "(one op, no score tensor in memory)")
    else:
        sdpa = "math"
        reasons.append("no fused SDPA kernel under the vision modules (the math decomposition: scores and softmax "
                       "as separate ops, as on the meta device): `sdpa=\"math\"`")
    if fused["decoder"]:
        impl = "sdpa"
        reasons.append(f"decoder attention ran {ops_text(fused['decoder'])}: `attn_implementation=\"sdpa\"`")
        if sdpa != "fused":
            sdpa = "fused"
            reasons.append("the analytic model has one SDPA setting: fused, as the decoder ran it (vision bytes may "
                           "differ)")
    elif attn == "sdpa":
        impl = "sdpa"
        reasons.append("decoder `attn_implementation=\"sdpa\"` (trace metadata) without a fused kernel: its math "
                       "decomposition")
    else:
        impl = "eager"
        reasons.append(f"decoder attention: `attn_implementation={attn!r}` (trace metadata), no SDPA op under "
                       "`model.layers.*.self_attn`: two matmuls")
    return variant, sdpa, impl, reasons


def _expert_table(trace: Any, stage: str, num_layers: int) -> dict[int, dict[int, tuple[int, float]]]:
    """``layer -> expert -> (calls, tensor-core FLOPs)`` for one stage group."""
    df = _frame(trace, "by_module", stage=stage)
    out: dict[int, dict[int, tuple[int, float]]] = {}
    if df.empty or "module" not in df:
        return out
    for rec in df[["module", "calls", "flops_tensor"]].to_dict("records"):
        m = EXPERT.match(str(rec["module"]))
        if m is None:
            continue
        layer, expert = int(m.group(1)), int(m.group(2))
        if layer < num_layers:
            flops = float(rec["flops_tensor"]) if rec["flops_tensor"] == rec["flops_tensor"] else math.nan
            out.setdefault(layer, {})[expert] = (int(rec["calls"] or 0), flops)
    return out


def _routing(
    trace: Any, config: Any, dtype: int, prefill_tokens: int, decode_steps: int
) -> tuple[tuple[tuple[int, ...] | None, ...] | None, tuple[ExpertCounts | None, ...] | None, list[str]]:
    from opmeter.models.deepseek_ocr.analytic import DeepseekV2MLP, balanced_expert_tokens

    d = config.decoder
    n_layers, n_exp, k = d.num_hidden_layers, d.n_routed_experts, d.num_experts_per_tok
    moe_layers = [i for i in range(n_layers) if d.is_moe_layer(i)]
    if not moe_layers:
        return None, None, []
    per_token = DeepseekV2MLP(tokens=1, hidden=d.hidden_size, intermediate=d.moe_intermediate_size,
                              dtype=dtype).tensor_core_flops()

    def counts(stage: str) -> tuple[tuple[ExpertCounts | None, ...] | None, str | None]:
        table = _expert_table(trace, stage, n_layers)
        if not table:
            return None, f"no per-expert rows for stage group `{stage}` in the trace"
        layers: list[ExpertCounts | None] = []
        for i in range(n_layers):
            if i not in moe_layers:
                layers.append(None)
                continue
            rows = table.get(i, {})
            calls, tokens = [], []
            for e in range(n_exp):
                c, f = rows.get(e, (0, 0.0))
                t = f / per_token if per_token else math.nan
                if not math.isfinite(t) or abs(t - round(t)) > 1e-6:
                    return None, (f"expert `model.layers.{i}.mlp.experts.{e}` ran {f:.0f} tensor-core FLOPs in "
                                  f"`{stage}`, not a whole number of tokens at {per_token} FLOPs per token")
                calls.append(c)
                tokens.append(round(t))
            layers.append(ExpertCounts(tuple(calls), tuple(tokens)))
        return tuple(layers), None

    reasons: list[str] = []
    pre, why = counts("prefill")
    prefill: tuple[tuple[int, ...] | None, ...] | None = None
    if pre is None:
        reasons.append(f"routing: {why}; balanced routing assumed")
    else:
        balanced = tuple(balanced_expert_tokens(prefill_tokens, k, n_exp))
        if all(c is None or c.tokens == balanced for c in pre):
            reasons.append("prefill routing in the trace equals the balanced shape-only policy (token t to experts "
                           "(t*k + j) mod E)")
        elif any(c is not None and max(c.calls, default=0) > 1 for c in pre):
            reasons.append("prefill: an expert was called more than once per layer; balanced routing assumed")
        else:
            prefill = tuple(c.tokens if c is not None else None for c in pre)
            active = [sum(1 for t in c.tokens if t) for c in pre if c is not None]
            spread = [max(c.tokens) for c in pre if c is not None]
            reasons.append(f"prefill routing measured from the trace (tokens per expert = expert tensor-core FLOPs / "
                           f"{per_token} per token): {_span(active)} of {n_exp} experts active per MoE "
                           f"layer, at most {max(spread)} of {prefill_tokens * k} token-expert pairs on one expert "
                           f"(balanced: {-(-prefill_tokens * k // n_exp)})")
    decode: tuple[ExpertCounts | None, ...] | None = None
    if decode_steps > 0:
        dec, why = counts("decode")
        if dec is None:
            reasons.append(f"decode routing: {why}; balanced routing assumed")
        else:
            bal_calls = tuple(decode_steps if e < k else 0 for e in range(n_exp))
            if all(c is None or (c.calls == bal_calls and c.tokens == bal_calls) for c in dec):
                reasons.append("decode routing equals the balanced policy (experts 0..k-1 every step)")
            elif any(c is not None and max(c.calls, default=0) > decode_steps for c in dec):
                reasons.append("decode: an expert was called more often than there are steps; balanced routing "
                               "assumed")
            else:
                decode = dec
                used = [sum(1 for x in c.calls if x) for c in dec if c is not None]
                reasons.append(f"decode routing measured from the trace (per-expert calls and tokens over "
                               f"{decode_steps} steps): {_span(used)} of {n_exp} experts used per MoE layer; "
                               "the trace keeps per-stage-group totals, so per-step rows use a synthesised order "
                               "with the same totals")
    return prefill, decode, reasons


def choose_analytic(trace: Any, config: Any, prefill_tokens: int, decode_steps: int) -> AnalyticChoice:
    """The analytic variant matching the execution path recorded in ``trace``.

    Parameters
    ----------
    trace
        A :class:`opmeter.trace.Trace` of ``model.infer()`` (or anything with its query methods and ``metadata``).
    config
        The model's :class:`~opmeter.models.deepseek_ocr.config.DeepseekOCRConfig`.
    prefill_tokens, decode_steps
        Positions of the prefill and number of decode steps of the workload (for the balanced reference).

    Returns
    -------
    AnalyticChoice
        Variant, dtype, SDPA path, decoder attention, host-side checks, routing, and one reason per decision.
    """
    meta = dict(getattr(trace, "metadata", None) or {})
    device = str(meta.get("device") or "meta")
    real = device != "meta" and meta.get("execution", "real") != "shape-only"
    reasons: list[str] = []
    dtype, dtype_name, source = _dtype(meta, trace)
    reasons.append(f"device `{device}`: " + ("real tensors" if real else "shape-only (meta tensors)") +
                   f"; dtype {dtype_name} ({dtype} bytes) from {source}")
    variant, sdpa, impl, attn_reasons = _attention(trace, meta)
    reasons += attn_reasons
    host_checks = real
    if real:
        mo = _frame(trace, "by_module_and_operator")
        n = 0
        if not mo.empty and "op" in mo:
            rows = mo[(mo["module"] == "model") & mo["op"].astype(str).str.contains("_local_scalar_dense")]
            n = int(rows["self_calls"].sum()) if "self_calls" in rows else int(rows["calls"].sum())
        reasons.append(f"real tensors: the vendor's host-side pixel sums (`.item()`: `aten._local_scalar_dense` x{n} "
                       "in `model`) are modelled (`host_checks=True`)")
    prefill, decode, routing_reasons = _routing(trace, config, dtype, prefill_tokens, decode_steps)
    reasons += routing_reasons
    return AnalyticChoice(variant=variant, dtype=dtype, dtype_name=dtype_name, sdpa=sdpa, attn_implementation=impl,
                          host_checks=host_checks, prefill_experts=prefill, decode_experts=decode,
                          reasons=tuple(reasons))


__all__ = ["FUSED_SDPA_OPS", "AnalyticChoice", "ExpertCounts", "choose_analytic"]
