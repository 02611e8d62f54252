"""CLI subcommands: one module per subcommand.

Each module defines ``NAME`` (the subcommand), ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. :mod:`opmeter.cli` discovers them, so adding a subcommand never touches the CLI itself.
"""
