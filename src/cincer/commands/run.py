"""``cincer run``: a simulated cleaning run with an oracle annotator."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..experiments.simulate import RunConfig, run, write_results


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="simulate CINCER with an oracle annotator (paper protocol by default)")
    RunConfig.add_arguments(p)
    p.add_argument("--out", type=Path, default=Path("runs/latest"), help="output folder (default: runs/latest)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


SUMMARY_ROWS = [("F1 initial", "f1_initial"), ("F1 final", "f1_final"), ("cleaned", "cleaned_final"),
                ("  suspicious", "cleaned_suspicious_final"), ("  counter-examples", "cleaned_ce_final"),
                ("queries", "queries_final"), ("dropped", "dropped_final"), ("noisy left in D", "noisy_known_final")]


def format_summary(summary: dict) -> str:
    lines = [f"{'':<20}{'mean':>10}{'std':>10}"]
    for title, key in SUMMARY_ROWS:
        std = summary.get(f"{key}_std", float("nan"))
        lines.append(f"{title:<20}{summary[f'{key}_mean']:>10.3f}{std:>10.3f}")
    lines.append(f"{'seconds':<20}{summary['seconds']:>10.1f}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    config = RunConfig.from_args(args)
    trace, summary = run(config, progress=not args.quiet)
    write_results(args.out, config, trace, summary)
    print(format_summary(summary))
    print(f"results in {args.out}/ (config.json, trace.csv, summary.json)")
    return 0
