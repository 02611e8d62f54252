"""``opmeter inventory``: static inventory of a model (any preset, built on meta)."""

from __future__ import annotations

import argparse
from pathlib import Path

from opmeter.errors import OpmeterError

NAME = "inventory"
HELP = (
    "List module classes (qualified name, instances, parameters, child classes) and parameters per top-level "
    "component, without running the model (built on meta from its preset or checkpoint config)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``opmeter inventory``."""
    from opmeter.models.base import DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL, help="model adapter NAME[:ARG] (default: %(default)s)")
    parser.add_argument("--preset", default=None, help="preset (default: the model's full size)")
    parser.add_argument(
        "--vendor", metavar="PATH", help="shorthand for --model vendor:PATH (a local checkpoint of the default model, "
        "built from config.json on meta)",
    )
    parser.add_argument("--depth", type=int, default=2, help="component depth below the root (default: %(default)s)")
    parser.add_argument("--json", dest="json_path", metavar="FILE",
                        help="also write the inventory as JSON (an existing file only when it is an inventory)")
    parser.add_argument("--force", action="store_true", help="replace --json FILE even when it is not an inventory")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="stdout format")


def run(args: argparse.Namespace) -> int:
    """Build the model on meta, print (and optionally save) its inventory."""
    from opmeter.inventory import SCHEMA_VERSION, build_inventory
    from opmeter.io import atomic_write_bytes, check_output_file, json_bytes

    if args.depth < 0:
        raise OpmeterError(f"--depth must be >= 0, got {args.depth}")
    if args.json_path:
        check_output_file(args.json_path, SCHEMA_VERSION, args.force)
    from opmeter.models.base import RunRequest, SupportsInventory, resolve_adapter

    adapter = resolve_adapter(f"vendor:{args.vendor}" if args.vendor else args.model)
    if isinstance(adapter, SupportsInventory):
        model = adapter.inventory_model(args.preset)
    else:
        model = adapter.prepare(RunRequest(preset=args.preset, workload=None, device="meta")).model
    inv = build_inventory(model, component_depth=args.depth)
    data = json_bytes(inv.to_dict(), indent=True)
    if args.json_path:
        atomic_write_bytes(Path(args.json_path), data)
    print(data.decode() if args.format == "json" else inv.format_text())
    return 0
