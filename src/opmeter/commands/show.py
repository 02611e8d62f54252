"""``opmeter show``: print the tables of a saved trace."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "show"
HELP = "print the stage, module, operator, category and unclassified tables of a saved trace.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``opmeter show``."""
    parser.add_argument("trace", type=Path, help="trace JSON written by OpTracer / trace.save()")
    parser.add_argument("--stage", default=None, help="restrict to one stage group (prefill, decode, ...)")
    parser.add_argument("--depth", type=int, default=3, help="module tree depth shown (3)")
    parser.add_argument("--top", type=int, default=15, help="operators shown (15)")


def run(args: argparse.Namespace) -> int:
    """Load the trace and print its tables."""
    from opmeter.errors import OpmeterError
    from opmeter.trace import load_trace
    from opmeter.trace.render import print_trace, terminal

    if args.depth < 0 or args.top < 1:  # head(-1) would silently drop the last operator instead
        raise OpmeterError(f"--depth must be >= 0 and --top >= 1, got {args.depth} and {args.top}")
    trace = load_trace(args.trace)
    print_trace(trace, terminal(), top=args.top, max_depth=args.depth, stage=args.stage)
    return 0

