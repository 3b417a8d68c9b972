"""`cincer audit` against cleanlab's `find_label_issues` on the same table, at equal reading budgets.

For each data set and noise kind (20%, seeded), the same model (StandardScaler + LogisticRegression) is
used three ways: CINCER's audit in-sample, CINCER's audit out of fold (`cv=5`), and cleanlab's
`find_label_issues` on out-of-fold probabilities (5 stratified folds, ranked by self-confidence). A
reader of CINCER's table looks at each issue and its first counter-example (two examples per question);
a reader of cleanlab's looks at one example per issue. Counted: distinct wrong labels among the first R
examples read, R = 50, 200, 1000, and how many of them were counter-examples.

Usage: .venv/bin/python scripts/audit_vs_cleanlab.py OUT.jsonl [--n 10000] [--datasets adult,rotten_tomatoes,...]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import torch

from cincer import find_label_issues, flip_labels, load_dataset

READS = (50, 200, 1000)


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
    args = parser.parse_args()
    torch.set_num_threads(1)
    with open(args.out, "a") as out:
        for dataset in args.datasets.split(","):
            for noise in args.noise.split(","):
                frame, wrong = table_of(dataset, args.n, noise, args.seed)
                row: dict = {"dataset": dataset, "noise": noise, "rate": 0.2, "rows": len(frame),
                             "wrong": int(wrong.sum()), "seed": args.seed, "model": "StandardScaler+LogisticRegression"}
                for name, cv in (("cincer", None), ("cincer_cv5", 5)):
                    start = time.perf_counter()
                    issues = find_label_issues(frame, labels="label", cv=cv, budget=1000, k=1, seed=args.seed)
                    row[name] = {"issues": len(issues), "seconds": time.perf_counter() - start,
                                 "reached": found(reading_order_cincer(issues), wrong)}
                order, seconds = cleanlab_order(frame, args.seed)
                row["cleanlab"] = {"issues": len(order), "seconds": seconds,
                                   "reached": found([(i, "issue") for i in order], wrong)}
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
