"""``cincer compare-cleanlab``: cleanlab's ranking vs CINCER's stream vs CINCER's audit, same budget."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..experiments.compare import CompareConfig, prepare_data, run_compare, write_compare


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare-cleanlab",
                       help="cleanlab vs CINCER (stream and audit) with the same number of annotator questions")
    CompareConfig.add_arguments(p)
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (default: runs/compare)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    config = CompareConfig.from_args(args)
    data = prepare_data(config)
    report = None if args.quiet else (lambda r, rows: print(f"repeat {r + 1}/{config.repeats} done", flush=True))
    results = run_compare(config, data=data, progress=report)
    meta = {"name": data.name, "n_classes": data.n_classes, **{k: v for k, v in data.meta.items()
                                                               if isinstance(v, (int, float, str))}}
    table = write_compare(args.out, config, results, data_meta=meta)
    print(table)
    print(f"results in {args.out}/ (config.json, results.csv, summary.csv, summary.md)")
    return 0
