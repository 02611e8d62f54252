"""``opmeter compare A B``: two report directories side by side (figures, B / A, a plot)."""

from __future__ import annotations

import argparse

from opmeter.report.outdir import FORCE_HELP

NAME = "compare"
HELP = (
    "Compare two report directories (e.g. two models on the same pages): parameters, image tokens, KV cache, FLOPs "
    "and bytes per stage, predicted and measured TTFT / TPOT, each with B / A; writes compare.md and compare.svg."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``opmeter compare``."""
    parser.add_argument("report_a", metavar="REPORT_DIR_A", help="the baseline report directory")
    parser.add_argument("report_b", metavar="REPORT_DIR_B", help="the report compared with it")
    parser.add_argument("--out", default="reports/compare", help="output directory (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


def run(args: argparse.Namespace) -> int:
    """Write the comparison and print where it went."""
    from opmeter.report.compare import compare_reports

    files = compare_reports(args.report_a, args.report_b, args.out, args.force)
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0
