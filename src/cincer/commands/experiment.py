"""``cincer experiment q1|q2|q3``: every method a question of the paper compares, paper settings by default."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..device import DEVICE_HELP, resolve_device
from ..errors import CincerError
from ..experiments import METHODS, QUESTIONS, ExperimentConfig, run_experiment


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="run one question of the paper (Q1, Q2 or Q3) on a data set and model",
                       description=f"Q1: {', '.join(QUESTIONS['q1'])}. "
                                   "Q2: precision@k of counter-example rankings with the model fixed. "
                                   f"Q3: {', '.join(QUESTIONS['q3'])}. cincer is the product's default ranking; "
                                   "top_fisher and top_fisher_paper the paper's pseudo-inverse. "
                                   "Finished methods are skipped unless --force.")
    p.add_argument("question", choices=sorted(QUESTIONS))
    add_experiment_options(p, methods=None, methods_help="comma-separated subset (default: the question's)")
    p.set_defaults(func=main)


def add_experiment_options(p: argparse.ArgumentParser, *, methods: str | None, methods_help: str) -> None:
    """The options of an experiment (its configuration, methods, overrides, jobs, device, force, out)."""
    ExperimentConfig.add_arguments(p)
    p.add_argument("--methods", default=methods, help=f"{methods_help}; known: {', '.join(METHODS)}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=JSON",
                   help='any other RunConfig field, e.g. --set relative_damping=1 --set retrain=head '
                        '--set \'train={"batch_size": 64}\'')
    p.add_argument("--jobs", type=int, default=1, help="methods run in parallel (local processes; default 1)")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--force", action="store_true", help="rerun finished methods")
    p.add_argument("--out", type=Path, required=True, help="experiment folder")


def experiment_from_args(args: argparse.Namespace, question: str) -> ExperimentConfig:
    """The experiment the options describe, checked before anything is written."""
    if args.jobs < 1:
        raise CincerError(f"--jobs must be at least 1, got {args.jobs}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    exp = ExperimentConfig.from_args(args, ExperimentConfig(question=question, methods=methods,
                                                            overrides=parse_overrides(args.overrides)))
    resolve_device(args.device)  # a bad name fails before anything is written
    return exp


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CincerError(f"--set expects FIELD=JSON, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(args: argparse.Namespace) -> int:
    exp = experiment_from_args(args, args.question)
    frame = run_experiment(exp, args.out, force=args.force, jobs=args.jobs, threads=args.threads,
                           device=args.device)
    cols = [c for c in ("method", "status", "f1_final_mean", "f1_final_std", "cleaned_final_mean",
                        "queries_final_mean", "pr5_mean", "pr10_mean", "pr25_mean", "seconds") if c in frame]
    if len(frame):
        print(frame[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"results in {args.out}/ (experiment.json, summary.csv, <method>/)")
    return 0
