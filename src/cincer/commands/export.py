"""``cincer export``: cleaned labels and the audit log of a project."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a project's cleaned labels and audit log (CSV, JSON or Parquet), "
                                      "keyed to join back to the input file",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="labels: every labelled row of the input file (held-out ones marked) with its "
                                   "key, the original and the final label; audit: every decision, with keys.")
    p.add_argument("dir", type=Path, help="project folder")
    p.add_argument("--format", default="csv", choices=("csv", "json", "parquet"))
    p.add_argument("--out", type=Path, default=None, help="output folder (default: DIR/export)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..app.export import write_export

    for path in write_export(args.dir, fmt=args.format, out=args.out):
        print(path)
    return 0
