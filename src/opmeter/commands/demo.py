"""``opmeter demo``: trace a small built-in transformer's ``generate()`` and write the trace and its tables."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opmeter.report.outdir import FORCE_HELP

NAME = "demo"
HELP = "trace a small built-in demo transformer (prefill + decode) and write trace.json, CSV tables, call graph"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``opmeter demo``."""
    parser.add_argument("--out", type=Path, default=Path("reports/demo"), help="output directory (reports/demo)")
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)
    parser.add_argument("--prompt-tokens", type=int, default=16, help="prompt length (16)")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens to generate (8)")
    parser.add_argument("--timing", action="store_true", help="also time modules, stages and ops (spans.json)")
    parser.add_argument("--seed", type=_seed, default=0, help="random seed, 0 to 2**63 - 1 (0)")


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < 1 << 63:
        raise argparse.ArgumentTypeError(f"{text} is outside 0 to 2**63 - 1")
    return value


def run(args: argparse.Namespace) -> int:
    """Trace the demo model's ``generate()``, write the files and print the tables."""
    from opmeter.errors import OpmeterError

    if args.prompt_tokens < 2 or args.new_tokens < 1:
        raise OpmeterError("--prompt-tokens must be >= 2 and --new-tokens >= 1")
    import torch

    from opmeter.report.exporters import write_all
    from opmeter.report.outdir import check_output_dir, staged_output
    from opmeter.trace import OpTracer
    from opmeter.trace.demo import DemoConfig, DemoTransformer
    from opmeter.trace.render import print_trace, terminal

    cfg = DemoConfig()
    if args.prompt_tokens + args.new_tokens > cfg.max_seq:
        raise OpmeterError(f"--prompt-tokens + --new-tokens must be <= {cfg.max_seq}")
    torch.manual_seed(args.seed)
    out = check_output_dir(args.out, args.force)  # fail now, not after the run
    model = DemoTransformer(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, args.prompt_tokens))
    meta = {"workload": {"id": "opmeter-demo", "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens}}
    with OpTracer(model, timing=args.timing, metadata=meta) as trace:
        model.generate(ids, max_new_tokens=args.new_tokens)
    with staged_output(out, force=args.force, command="demo") as staging:
        files, _ = write_all(_exporters(), trace, staging)  # every demo file is required
    console = terminal()
    print_trace(trace, console)
    console.print(f"wrote {args.out}/: {', '.join(files)}")
    return 0



def _text(name: str, render: Callable[[Any], str]) -> Callable[[Any, Path], list[Path]]:
    def write(trace: Any, out: Path) -> list[Path]:
        from opmeter.io import atomic_write_text

        return [atomic_write_text(out / name, render(trace))]
    return write


def _csv_of(method: str) -> Callable[[Any], str]:
    def render(trace: Any) -> str:
        return str(getattr(trace, method)().to_csv(index=False))
    return render


def _trace_json(trace: Any, out: Path) -> list[Path]:
    return [trace.save(out / "trace.json")]


def _spans(trace: Any, out: Path) -> list[Path]:
    return [trace.to_chrome_trace(out / "spans.json")] if trace.timing else []


def _exporters() -> tuple[Any, ...]:
    """The demo's files: the trace, its tables and its call graph (the report's exporter registry)."""
    from opmeter.report.exporters import Exporter

    tables = (("modules.csv", "by_module"), ("operators.csv", "by_operator"),
              ("module_operators.csv", "by_module_and_operator"), ("stages.csv", "stages"), ("edges.csv", "edges"))
    return (
        Exporter("trace JSON", _trace_json),
        *(Exporter(name, _text(name, _csv_of(method))) for name, method in tables),
        Exporter("call graph (DOT)", _text("callgraph.dot", lambda t: t.to_dot())),
        Exporter("call graph (Mermaid)", _text("callgraph.mmd", lambda t: t.to_mermaid())),
        Exporter("module spans (Chrome trace)", _spans),
    )
