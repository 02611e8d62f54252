"""The ``opmeter`` console script: one command, subcommands discovered from :mod:`opmeter.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from opmeter import __version__, commands
from opmeter.errors import OpmeterError


def _command_modules() -> list[ModuleType]:
    found = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        found.append(importlib.import_module(f"{commands.__name__}.{info.name}"))
    return found


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every discovered subcommand."""
    parser = argparse.ArgumentParser(
        prog="opmeter",
        description="Trace every aten op of a PyTorch model, join it with analytic predictions, report.",
    )
    parser.add_argument("--version", action="version", version=f"opmeter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    try:
        return int(args._run(args))
    except OpmeterError as exc:
        print(f"opmeter {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"opmeter {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
