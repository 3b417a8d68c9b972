"""``cincer compare-cleanlab``: cleanlab's ranking vs CINCER's stream vs CINCER's audit, same budget."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..compare import CompareConfig, prepare_data, run_compare, write_compare
from ..models import TrainConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    d, t = CompareConfig(), TrainConfig()
    p = sub.add_parser("compare-cleanlab", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="cleanlab vs CINCER (stream and audit) with the same number of annotator questions")
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--model", default=d.model, help="logreg | fullnet | convnet")
    p.add_argument("--budget", type=int, default=d.budget, help="annotator questions (a CINCER pair is ONE)")
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--noise", type=float, default=d.noise, help="fraction of training labels flipped")
    p.add_argument("--noise-kind", default=d.noise_kind, help="random | pair")
    p.add_argument("--known", type=int, default=d.known, help="examples known before the CINCER stream")
    p.add_argument("--folds", type=int, default=d.folds, help="cross-validation folds for cleanlab's probabilities")
    p.add_argument("--threshold", type=float, default=d.threshold, help="CINCER's margin threshold")
    p.add_argument("--selector", default=d.selector, help="CINCER's counter-example selector")
    p.add_argument("--stream-retrain", default=d.stream_retrain,
                   help="sync: retrain after every stream example (paper); answer: only after each answer")
    p.add_argument("--train-size", type=int, default=None, help="random subsample of the training set")
    p.add_argument("--test-size", type=int, default=None, help="random subsample of the test set")
    p.add_argument("--bits", type=int, default=d.bits, help="32 | 64")
    p.add_argument("--epochs", type=int, default=t.epochs)
    p.add_argument("--batch-size", type=int, default=t.batch_size)
    p.add_argument("--lr", type=float, default=t.lr)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (small models: 1 is fastest)")
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=main)


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    return CompareConfig(
        dataset=args.dataset, model=args.model, budget=args.budget, repeats=args.repeats, seed=args.seed,
        noise=args.noise, noise_kind=args.noise_kind, known=args.known, folds=args.folds,
        threshold=args.threshold, selector=args.selector, stream_retrain=args.stream_retrain,
        train_size=args.train_size, test_size=args.test_size, bits=args.bits,
        train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr))


def main(args: argparse.Namespace) -> int:
    from ..errors import CincerError

    if args.threads < 1:
        raise CincerError(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    config = config_from_args(args)
    data = prepare_data(config)
    report = None if args.quiet else (lambda r, rows: print(f"repeat {r + 1}/{config.repeats} done", flush=True))
    results = run_compare(config, data=data, progress=report)
    meta = {"name": data.name, "n_classes": data.n_classes, **{k: v for k, v in data.meta.items()
                                                               if isinstance(v, (int, float, str))}}
    table = write_compare(args.out, config, results, data_meta=meta)
    print(table)
    print(f"results in {args.out}/ (config.json, results.csv, summary.csv, summary.md)")
    return 0
