"""``opmeter inventory``: static inventory of the reference DeepSeek-OCR (any preset, on meta) or a vendor model."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson

from opmeter.errors import OpmeterError

NAME = "inventory"
HELP = (
    "List module classes (qualified name, instances, parameters, child classes) and parameters per top-level "
    "component, without running the model: the reference DeepSeek-OCR at a preset, or a local vendor checkpoint."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``opmeter inventory``."""
    from opmeter.models.deepseek_ocr.config import FULL_SIZE, PRESETS

    parser.add_argument(
        "--preset", default=FULL_SIZE, help=f"reference preset: {', '.join(sorted(PRESETS))} (default: %(default)s)"
    )
    parser.add_argument(
        "--vendor", metavar="PATH", help="inventory the vendor remote code from this local checkpoint directory "
        "(built from config.json on meta; needs transformers 4.46.x)",
    )
    parser.add_argument("--depth", type=int, default=2, help="component depth below the root (default: %(default)s)")
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="also write the inventory as JSON")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="stdout format")


def run(args: argparse.Namespace) -> int:
    """Build the model on meta, print (and optionally save) its inventory."""
    from opmeter.inventory import build_inventory
    from opmeter.io import atomic_write_bytes

    if args.depth < 0:
        raise OpmeterError(f"--depth must be >= 0, got {args.depth}")
    if args.vendor:
        from opmeter.models.deepseek_ocr.vendor import load_vendor

        model = load_vendor(args.vendor, weights=False, device="meta")
    else:
        from opmeter.models.deepseek_ocr.model import build_reference

        model = build_reference(args.preset, device="meta")
    inv = build_inventory(model, component_depth=args.depth)
    data = orjson.dumps(inv.to_dict(), option=orjson.OPT_INDENT_2)
    if args.json_path:
        atomic_write_bytes(Path(args.json_path), data)
    print(data.decode() if args.format == "json" else inv.format_text())
    return 0
