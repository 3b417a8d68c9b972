"""`cincer audit` against cleanlab's `find_label_issues` on the same table, at equal reading budgets.

For each data set and noise kind (20%, seeded), the same model (StandardScaler + LogisticRegression) is
used five ways: CINCER's audit in sample and out of fold (`cv=5`), each with the counter-examples that most
support the suggested label (`cincer`, `cincer_cv5`) and with that support weighed by the counter-example's
own probability of being mislabelled (`counterexamples="suspect"`: `cincer_suspect`, `cincer_cv5_suspect`),
and cleanlab's `find_label_issues` on out-of-fold probabilities (5 stratified folds, ranked by
self-confidence). A reader of CINCER's table looks at each issue and its first counter-example (two
examples per question); a reader of cleanlab's looks at one example per issue. Counted: distinct wrong
labels among the first R examples read, R = 50, 200, 1000, and how many of them were counter-examples.

Usage: .venv/bin/python scripts/audit_vs_cleanlab.py OUT.jsonl [--n 10000] [--datasets adult,rotten_tomatoes,...]
       [--variants cincer_suspect,cincer_cv5_suspect]   (computes those alone, merged into OUT's rows)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cincer import find_label_issues, flip_labels, load_dataset

READS = (50, 200, 1000)
# variant -> find_label_issues options
CINCER = {"cincer": {}, "cincer_cv5": {"cv": 5}, "cincer_suspect": {"counterexamples": "suspect"},
          "cincer_cv5_suspect": {"cv": 5, "counterexamples": "suspect"}}
VARIANTS = (*CINCER, "cleanlab")


def table_of(dataset: str, n: int | None, noise: str, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    data = load_dataset(dataset)
    X, y = data.X_train.reshape(len(data.X_train), -1), data.y_train
    if n is not None and n < len(X):
        keep = np.random.default_rng(seed).choice(len(X), n, replace=False)
        X, y = X[keep], y[keep]
    noisy = flip_labels(y, 0.2, data.n_classes, kind=noise, rng=np.random.default_rng(seed))
    frame = pd.DataFrame(X.astype(np.float64), columns=[f"f{j}" for j in range(X.shape[1])])
    frame["label"] = noisy
    return frame, noisy != y


def reading_order_cincer(issues: pd.DataFrame) -> list[tuple[int, str]]:
    """(example, role) in the order a reader meets them: each issue, then its first counter-example."""
    order = []
    for key, ce in zip(issues["key"], issues["counterexample_1_key"]):
        order.append((int(key), "issue"))
        if pd.notna(ce):
            order.append((int(ce), "counterexample"))
    return order


def found(order: list[tuple[int, str]], wrong: np.ndarray) -> dict:
    """Distinct wrong labels among the first R distinct examples read (an example read twice counts once,
    in the role it was first read in)."""
    first_role: dict[int, str] = {}
    for index, role in order:
        first_role.setdefault(index, role)
    read = list(first_role.items())
    out = {}
    for reads in READS:
        hits = [role for index, role in read[:reads] if wrong[index]]
        out[reads] = {"found": len(hits), "via_counterexample": hits.count("counterexample"),
                      "read": min(reads, len(read))}
    return out


def cleanlab_order(frame: pd.DataFrame, seed: int) -> tuple[list[int], float]:
    from cleanlab.filter import find_label_issues as cleanlab_find
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    X, y = frame.drop(columns="label").to_numpy(), frame["label"].to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probs = cross_val_predict(model, X, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed),
                              method="predict_proba")
    ranked = cleanlab_find(labels=y, pred_probs=probs, return_indices_ranked_by="self_confidence")
    return [int(i) for i in ranked], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--n", type=int, default=10_000, help="rows drawn from each training set (default 10000)")
    parser.add_argument("--datasets", default="mnist,fashion_mnist,adult,rotten_tomatoes")
    parser.add_argument("--noise", default="random,pair")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of " + ", ".join(VARIANTS))
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}")
    torch.set_num_threads(1)
    path = Path(args.out)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    for dataset in args.datasets.split(","):
        for noise in args.noise.split(","):
            frame, wrong = table_of(dataset, args.n, noise, args.seed)
            key = {"dataset": dataset, "noise": noise, "rate": 0.2, "rows": len(frame), "seed": args.seed}
            row = next((r for r in rows if all(r.get(k) == v for k, v in key.items())), None)
            if row is None:
                row = {**key, "wrong": int(wrong.sum()), "model": "StandardScaler+LogisticRegression"}
                rows.append(row)
            for name in variants:
                start = time.perf_counter()
                if name == "cleanlab":
                    order, seconds = cleanlab_order(frame, args.seed)
                    row[name] = {"issues": len(order), "seconds": seconds,
                                 "reached": found([(i, "issue") for i in order], wrong)}
                    continue
                issues = find_label_issues(frame, labels="label", budget=1000, k=1, seed=args.seed, **CINCER[name])
                row[name] = {"issues": len(issues), "seconds": time.perf_counter() - start,
                             "reached": found(reading_order_cincer(issues), wrong)}
            print(json.dumps(row), flush=True)
            partial = path.with_name(path.name + ".partial")   # a row at a time, never half a file
            partial.write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.replace(partial, path)


if __name__ == "__main__":
    main()
