"""``cincer run``: a simulated cleaning run with an oracle annotator."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..influence import InfluenceConfig
from ..models import TrainConfig
from ..simulate import RunConfig, run, write_results


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="simulate CINCER with an oracle annotator (paper protocol by default)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_arguments(p)
    p.add_argument("--out", type=Path, default=Path("runs/latest"), help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    d, t, i = RunConfig(), TrainConfig(), InfluenceConfig()
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--model", default=d.model, help="logreg | fullnet | convnet")
    p.add_argument("--inspector", default=d.inspector, help="margin | always | never | random")
    p.add_argument("--threshold", type=float, default=d.threshold, help="margin threshold tau")
    p.add_argument("--selector", default=d.selector, help="top_fisher | full_fisher | practical_fisher | "
                   "influence | nearest | random | none | drop_ce")
    p.add_argument("--noise", type=float, default=d.noise, help="fraction of training labels flipped")
    p.add_argument("--noise-kind", default=d.noise_kind, help="random | pair")
    p.add_argument("--known", type=int, default=d.known, help="initially known examples")
    p.add_argument("--rounds", type=int, default=d.rounds, help="stream examples, one per round")
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--bits", type=int, default=d.bits, help="32 | 64")
    p.add_argument("--epochs", type=int, default=t.epochs)
    p.add_argument("--batch-size", type=int, default=t.batch_size)
    p.add_argument("--lr", type=float, default=t.lr)
    p.add_argument("--warm-start", action="store_true", help="retrain from the last model (fast mode)")
    p.add_argument("--warm-epochs", type=int, default=None, help="epochs of a warm-started retrain")
    p.add_argument("--fim-samples", type=int, default=None, help="known examples in the FIM (paper: 30; default all)")
    p.add_argument("--damping", type=float, default=d.damping, help="FIM damping; 0 = pseudo-inverse")
    p.add_argument("--full-fisher-max-params", type=int, default=d.full_fisher_max_params)
    p.add_argument("--if-solver", default=i.solver, help="lissa | cg | exact")
    p.add_argument("--if-damping", type=float, default=i.damping)
    p.add_argument("--lissa-depth", type=int, default=i.depth)
    p.add_argument("--lissa-samples", type=int, default=i.samples)
    p.add_argument("--lissa-scale", type=float, default=i.scale)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        dataset=args.dataset, model=args.model, inspector=args.inspector, threshold=args.threshold,
        selector=args.selector, noise=args.noise, noise_kind=args.noise_kind, known=args.known,
        rounds=args.rounds, repeats=args.repeats, seed=args.seed, bits=args.bits,
        train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          warm_start=args.warm_start, warm_epochs=args.warm_epochs),
        fim_samples=args.fim_samples, damping=args.damping, full_fisher_max_params=args.full_fisher_max_params,
        influence=InfluenceConfig(solver=args.if_solver, damping=args.if_damping, depth=args.lissa_depth,
                                  samples=args.lissa_samples, scale=args.lissa_scale))


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
    config = config_from_args(args)
    trace, summary = run(config, progress=not args.quiet)
    write_results(args.out, config, trace, summary)
    print(format_summary(summary))
    print(f"results in {args.out}/ (config.json, trace.csv, summary.json)")
    return 0
