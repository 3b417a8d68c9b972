"""Q2 of a truncated pseudo-inverse of the top-layer FIM, one of the candidates of issue #16.

A study selector registered through the plugin API (:func:`cincer.plugins.register_selector`), not a
product option: the top-layer Fisher kernel with ``F^+`` restricted to the eigendirections whose eigenvalue
is at least ``--keep`` times the mean eigenvalue (the pseudo-inverse with a cut-off relative to the
spectrum's mean rather than its largest value; ``--keep 0`` is the paper's pseudo-inverse up to its
``1e-10`` cut-off). Runs the Q2 protocol of ``cincer experiment q2`` (same draws) and appends one JSON line
per pair to ``--out``.

    .venv/bin/python scripts/truncated_fisher_q2.py --keep 0.01 --pairs breast:fullnet,adult:fullnet \\
        --out docs/results/ranking_study/q2_truncated.jsonl

In the loop (Q3's protocol, ``cincer run``'s defaults), as a plugin:

    PYTHONPATH=scripts CINCER_PLUGINS=truncated_fisher_q2 CINCER_TRUNCATED_KEEP=0.1 \\
        cincer run --dataset breast --model fullnet --selector top_fisher_truncated --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from cincer.experiments.protocols import default_known, run_ranking
from cincer.experiments.simulate import RunConfig
from cincer.fisher import TopLayerFisher, top_layer_kernel, top_layer_scores
from cincer.models import TrainConfig
from cincer.plugins import register_selector
from cincer.select import Ranking, SelectionContext

KEEP = {"value": float(os.environ.get("CINCER_TRUNCATED_KEEP", "0.01"))}  # env: for the loop, via CINCER_PLUGINS
_solved: dict = {}


@register_selector("top_fisher_truncated")
def top_fisher_truncated(ctx: SelectionContext) -> Ranking:
    key = (id(ctx.learner), ctx.version, len(ctx.known))
    if key not in _solved:  # one eigendecomposition per model and known set
        _solved.clear()
        H, P = ctx.features(ctx.known)
        fisher = TopLayerFisher(H.double(), P.double())
        evals, evecs = torch.linalg.eigh(fisher.dense_sub())
        kept = evals >= KEEP["value"] * evals.clamp_min(0).mean()
        kept &= evals > 1e-10 * evals.max()
        _solved[key] = (fisher, evecs, torch.where(kept, 1.0 / torch.where(kept, evals, 1.0), 0.0))
    fisher, evecs, inverse = _solved[key]
    H_t, P_t = ctx.features(np.array([ctx.target]))
    g = top_layer_scores(H_t.double(), P_t.double(), ctx.label_tensor([ctx.target]).cpu())[0]
    w = fisher.project(g.reshape(-1)).reshape(-1)
    v = fisher.lift((evecs @ (inverse * (evecs.T @ w)))[:, None]).reshape(g.shape)
    H_c, P_c = ctx.features(ctx.candidates)
    support = -top_layer_kernel(v, H_c.double(), P_c.double(), ctx.label_tensor(ctx.candidates).cpu())
    return Ranking.from_scores(ctx.candidates, support)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=float, default=0.01)
    parser.add_argument("--pairs", default="breast:fullnet,adult:fullnet,german:fullnet,rotten_tomatoes:fullnet,"
                                           "mnist:fullnet,fashion_mnist:fullnet")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    KEEP["value"] = args.keep
    torch.set_num_threads(1)
    for pair in args.pairs.split(","):
        dataset, model = pair.split(":")
        config = RunConfig(dataset=dataset, model=model, selector="top_fisher_truncated", known=default_known(dataset),
                           rounds=100, repeats=5, train=TrainConfig(epochs=100), bits=32 if model == "convnet" else 64)
        start = time.perf_counter()
        _, summary = run_ranking(config)
        row = {"dataset": dataset, "model": model, "keep": args.keep, "pr5": round(summary["pr5_mean"], 4),
               "pr5_std": round(summary["pr5_std"], 4), "pr10": round(summary["pr10_mean"], 4),
               "pr25": round(summary["pr25_mean"], 4), "queries": summary["queries_mean"],
               "seconds": round(time.perf_counter() - start, 1)}
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
