"""Why the exact pseudo-inverse of the top-layer FIM ranks counter-examples worse than a damped one.

For each pair and repeat, the Q2 setting (the model trained once on the noisy known set, every stream
example it gets wrong a query) with the same draws as ``cincer experiment q2``: the top-layer FIM over D,
its spectrum (dimension of the subspace that holds its range, rank bound n(C-1), the eigenvalues relative to
their mean), and for each query the top-5 candidates of the pseudo-inverse and of ``relative_damping`` r:
how many are wrong labels, their own margin P(label) under the model, the norm of their score vector, and
the share of the query's ``F^+ g_t`` that lies in the eigendirections below 1% of the mean eigenvalue.
Prints one JSON line per pair and writes them to ``--out``.

    .venv/bin/python scripts/fim_spectrum.py --pairs breast:fullnet,mnist:fullnet --out spectrum.jsonl
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from cincer.data import load_dataset
from cincer.experiments.protocols import default_known
from cincer.experiments.simulate import RunConfig, draw_repeat, new_learner
from cincer.fisher import TopLayerFisher, top_layer_scores
from cincer.models import TrainConfig
from cincer.select import top_fisher_ranking


def analyse(dataset: str, model: str, repeats: int, dampings: list[float]) -> dict:
    config = RunConfig(dataset=dataset, model=model, known=default_known(dataset),
                       rounds=100, repeats=repeats, train=TrainConfig(epochs=100))
    data = load_dataset(dataset, seed=config.seed)
    out: dict = {"dataset": dataset, "model": model, "repeats": repeats, "spectrum": [], "rankings": {}}
    per: dict[str, dict[str, list[float]]] = {}
    for repeat in range(repeats):
        draw = draw_repeat(config, data, repeat)
        X, noisy, known, stream, clean = draw.X, draw.noisy, draw.known, draw.stream, data.y_train
        learner = new_learner(config, data, draw).fit(X[known], noisy[known])
        labels = noisy.copy()
        labels[stream] = clean[stream]
        wrong = labels != clean
        with torch.no_grad():
            H, P = learner.features_and_probs(X[known])
        fisher = TopLayerFisher(H.double(), P.double())
        S = fisher.dense_sub()
        eig = torch.linalg.eigvalsh(S).clamp_min(0).numpy()
        mean = eig.mean()
        out["spectrum"].append({"sub_dim": int(len(S)), "rank_bound": int(len(known) * (P.shape[1] - 1)),
                                "numerical_rank": int((eig > 1e-10 * eig.max()).sum()),
                                "below_1pct_of_mean": int((eig < 0.01 * mean).sum()),
                                "below_1e-4_of_mean": int((eig < 1e-4 * mean).sum()),
                                "condition_kept_by_pinv": float(eig.max() / eig[eig > 1e-10 * eig.max()].min())})
        evals, evecs = torch.linalg.eigh(S)
        small = evals < 0.01 * mean
        kept = evals > 1e-10 * evals.max()
        inverse = torch.where(kept, 1.0 / torch.where(kept, evals, 1.0), 0.0)
        probs = learner.predict_proba(X)
        for index in stream:
            prediction = int(probs[index].argmax())
            if prediction == labels[index]:
                continue
            candidates = known[labels[known] == prediction]
            if not len(candidates):
                continue
            with torch.no_grad():
                Ht, Pt = learner.features_and_probs(X[[index]])
                g = top_layer_scores(Ht.double(), Pt.double(), torch.tensor([labels[index]]))[0]
            g_sub = fisher.project(g.reshape(-1)).reshape(-1)
            for name, damping in [("pinv", 0.0)] + [(f"rd{r:g}", r) for r in dampings]:
                ranking = top_fisher_ranking(learner, X, labels, int(index), candidates, known,
                                             relative_damping=damping)
                top = ranking.indices[:5]
                with torch.no_grad():
                    Hc, Pc = learner.features_and_probs(X[top])
                    norms = top_layer_scores(Hc.double(), Pc.double(), torch.as_tensor(labels[top])).flatten(1)
                stats = per.setdefault(name, {"pr5": [], "margin": [], "norm": [], "small_share": []})
                stats["pr5"].append(float(wrong[top].mean()))
                stats["margin"].append(float(probs[top, labels[top]].mean()))
                stats["norm"].append(float(norms.norm(dim=1).mean()))
                if name == "pinv" and small.any():  # F^+ g_t in the eigenbasis of F
                    coords = inverse * (evecs.T @ g_sub)
                    stats["small_share"].append(float(coords[small].norm() ** 2 / max(coords.norm() ** 2, 1e-300)))
    out["rankings"] = {name: {k: (float(np.mean(v)) if v else None) for k, v in stats.items()}
                       for name, stats in per.items()}
    out["queries"] = len(per.get("pinv", {}).get("pr5", []))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="breast:fullnet,adult:fullnet,mnist:fullnet,fashion_mnist:fullnet")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dampings", default="0.1,1,10")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dampings = [float(v) for v in args.dampings.split(",")]
    for pair in args.pairs.split(","):
        dataset, model = pair.split(":")
        row = analyse(dataset, model, args.repeats, dampings)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
