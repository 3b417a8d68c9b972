"""Real label errors, not planted ones: a cross-fitted audit of the *original* MNIST / Fashion-MNIST training
labels with a small CNN, and a gallery of its first questions, each suspicious image next to the
counter-example CINCER would show with it.

Two steps, so that the judgements are made by a person looking at the images:

    .venv/bin/python scripts/label_error_gallery.py audit mnist        # trains, audits, writes the gallery
    # look at docs/images/label_errors_mnist.png, write docs/results/label_errors/mnist_judgements.json:
    #   {"<pool index>": "wrong label" | "ambiguous" | "model wrong", ...}
    .venv/bin/python scripts/label_error_gallery.py render mnist       # the gallery with the judgements

``audit`` writes docs/results/label_errors/<dataset>.json (configuration, timings and the questions);
``render`` only reads it and the judgements.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cincer import Cleaner
from cincer.data import load_dataset
from cincer.models import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "label_errors"
IMAGES = ROOT / "docs" / "images"


def cnn(n_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 5, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 5, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, n_classes))


def audit(dataset: str, *, questions: int, epochs: int, cv: int, seed: int) -> dict:
    data = load_dataset(dataset)
    X, y = data.X_train, data.y_train
    torch.manual_seed(seed)
    cleaner = Cleaner(cnn(len(data.class_names)), train_config=TrainConfig(epochs=epochs, batch_size=128),
                      retrain="defer", seed=seed)
    start = time.perf_counter()
    found = []
    for query in cleaner.audit(X, y, budget=questions, cv=cv):
        # the question as a person would see it; a confirmation keeps both labels and marks them checked
        found.append({"index": query.index, "label": int(query.label), "predicted": int(query.predicted),
                      "margin": float(query.margin), "counterexample": query.counterexample,
                      "counter_label": None if query.counterexample is None else int(y[query.counterexample])})
        cleaner.answer(query)
    seconds = time.perf_counter() - start
    return {"config": {"dataset": dataset, "rows": int(len(X)), "model": "2-conv CNN, 64 before the head",
                       "epochs": epochs, "batch_size": 128, "cv": cv, "questions": questions, "seed": seed,
                       "selector": "top_fisher", "inspector": "margin", "labels": "the original training labels"},
            "classes": list(data.class_names), "seconds": seconds, "issues": found}


def render(dataset: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record = json.loads((RESULTS / f"{dataset}.json").read_text())
    judged = RESULTS / f"{dataset}_judgements.json"
    judgements = json.loads(judged.read_text()) if judged.exists() else {}
    X = load_dataset(dataset).X_train
    names = record["classes"]
    issues = record["issues"]
    cols = 4  # pairs per row
    rows = -(-len(issues) // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * 1.45, rows * 1.75))
    for ax in np.ravel(axes):
        ax.axis("off")
    for n, issue in enumerate(issues):
        r, c = divmod(n, cols)
        left, right = axes[r, 2 * c], axes[r, 2 * c + 1]
        left.imshow(X[issue["index"]].reshape(28, 28), cmap="gray_r")
        verdict = judgements.get(str(issue["index"]), "")
        left.set_title(f"#{issue['index']} '{names[issue['label']]}'\nmodel: {names[issue['predicted']]}"
                       + (f"\n{verdict}" if verdict else ""), fontsize=7,
                       color={"wrong label": "tab:red", "ambiguous": "tab:orange"}.get(verdict, "black"))
        if issue["counterexample"] is not None:
            right.imshow(X[issue["counterexample"]].reshape(28, 28), cmap="Blues")
            right.set_title(f"CE #{issue['counterexample']}\n'{names[issue['counter_label']]}'", fontsize=7)
    fig.suptitle(f"{dataset}: the first {len(issues)} questions of a cross-fitted audit of the original labels "
                 f"(grey: the suspicious image and its label; blue: the counter-example)", fontsize=8)
    fig.tight_layout()
    out = IMAGES / f"label_errors_{dataset}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["audit", "render"])
    parser.add_argument("dataset", choices=["mnist", "fashion_mnist"])
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--cv", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.step == "audit":
        RESULTS.mkdir(parents=True, exist_ok=True)
        record = audit(args.dataset, questions=args.questions, epochs=args.epochs, cv=args.cv, seed=args.seed)
        (RESULTS / f"{args.dataset}.json").write_text(json.dumps(record, indent=1))
        print(f"{args.dataset}: {len(record['issues'])} questions in {record['seconds']:.0f} s")
    print(render(args.dataset))


if __name__ == "__main__":
    main()
