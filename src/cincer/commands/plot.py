"""``cincer plot DIR...``: the paper's figures (PNG and PDF), a Markdown table and the CSV result tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..experiments.plots import write_all


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="figures (PNG, PDF), results.md, q1_q3.csv and q2.csv from experiment folders",
                       description="DIR is an experiment folder (with experiment.json) or any folder above "
                                   "experiment folders (e.g. a sweep's root).")
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    p.add_argument("--out", type=Path, default=Path("docs/results"), help="output folder")
    p.add_argument("--panels", default="f1,cleaned,queries",
                   help="curves of the Q1/Q3 figures, a comma-separated subset of f1, cleaned, queries "
                        "(default: all three)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    panels = tuple(p.strip() for p in args.panels.split(",") if p.strip())
    written = write_all(args.dirs, args.out, panels=panels)
    for path in written["figures"] + written["tables"]:
        print(path)
    return 0
