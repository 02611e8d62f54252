"""The ``opmeter`` console script: one command, subcommands discovered from :mod:`opmeter.commands`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pkgutil
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import NoReturn

from opmeter import commands
from opmeter.errors import OpmeterError
from opmeter.version import __version__


class UsageError(Exception):
    """A command line argparse rejects (unknown option, bad value): one line and exit 1, as every user error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _command_modules() -> list[ModuleType]:
    found = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        found.append(importlib.import_module(f"{commands.__name__}.{info.name}"))
    return found


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every discovered subcommand."""
    parser = _Parser(
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


def one_line(text: str, limit: int = 2000) -> str:
    """An error's text as one line (a library's multi-line message joined with "; "), at most ``limit`` characters."""
    joined = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def _on_terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt("terminated")


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C (tracer restored, partial trace saved, no half-written report)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    try:
        parser = build_parser()  # imports every command: Ctrl-C may come here too
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("opmeter: interrupted", file=sys.stderr)
        return 130
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    try:
        with _terminate_as_interrupt():
            return int(args._run(args))
    except OpmeterError as exc:
        print(f"opmeter {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        said = f" ({exc})" if str(exc) else ""
        print(f"opmeter {args.command}: interrupted{said}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
