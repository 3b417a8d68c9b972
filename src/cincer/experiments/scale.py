"""The scale benchmark (``cincer bench --sections scale``): the product paths at a user's data size.

Each case trains a model once, then measures what a person waiting for questions sees: the time
``Cleaner.fit`` spends preparing the queries (features and FIM of the known set), the latency of the
first question after ``fit`` returns and of the later ones, and the process's peak resident memory
during the case. The "uncached" figure is one query computed the way every query was before the
per-model cache (features of the known set and the FIM rebuilt each time), timed in the same run.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..api import Cleaner, counterexamples
from ..data import flip_labels, load_dataset
from ..fisher import DEFAULT_TRUNCATE
from ..models import TrainConfig
from ..select import top_fisher_ranking


@dataclass
class ScaleConfig:
    """Sizes of the scale cases; ``quick()`` is a smoke-test size."""

    n_images: int = 60_000
    n_rows: int = 1_000_000
    epochs: int = 1
    queries: int = 20
    logreg_max_iter: int = 50
    seed: int = 0

    @classmethod
    def quick(cls) -> ScaleConfig:
        return cls(n_images=1500, n_rows=20_000, epochs=5, queries=4, logreg_max_iter=20)


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: ``/proc/self/clear_refs``); False where it cannot.
    torch tensors bypass ``tracemalloc``, so memory is read from the kernel's counters."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_kib(field_name: str) -> int | None:
    """``VmRSS``, ``VmHWM``, ... of this process in KiB (``None`` where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _peak_rss_bytes() -> int | None:
    peak = rss_kib("VmHWM")
    return None if peak is None else peak * 1024


def _audit_latency(cleaner: Cleaner, budget: int) -> dict:
    """First question after ``fit`` (the audit's ordering included) and the median of the next ones."""
    times = []
    start = time.perf_counter()
    for _ in cleaner.audit(budget=budget):
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
    return {"queries": len(times), "first_s": times[0] if times else float("nan"),
            "later_median_s": statistics.median(times[1:]) if len(times) > 1 else float("nan")}


def _uncached_query(cleaner: Cleaner) -> float:
    """One query the pre-cache way: features of the target, candidates and all of D, then the FIM."""
    loop = cleaner.loop_
    order = loop.audit_order()
    index = int(order[0] if len(order) else loop.known[0])
    prediction = int(np.argmax(cleaner.learner_.predict_proba(loop.X[[index]])[0]))
    candidates = loop.context(index, prediction).candidates
    start = time.perf_counter()
    top_fisher_ranking(cleaner.learner_, loop.X, loop.labels, index, candidates, np.asarray(loop.known),
                       truncate=DEFAULT_TRUNCATE)  # as the cleaner's default
    return time.perf_counter() - start


def _prepare_seconds(cleaner: Cleaner) -> float:
    """What ``fit`` spent preparing the queries: the same preparation redone on an emptied cache."""
    loop = cleaner.loop_
    loop.learner = loop.learner  # a new model version: nothing cached
    start = time.perf_counter()
    loop.prepare()
    return time.perf_counter() - start


def _cleaner_case(name: str, make_data: Callable[[], tuple[np.ndarray, np.ndarray]], model: Any,
                  cfg: ScaleConfig, targets: dict) -> dict:
    X, y = make_data()
    noisy = flip_labels(y, 0.2, int(y.max()) + 1, rng=np.random.default_rng(cfg.seed))
    reset_peak()
    start = time.perf_counter()
    cleaner = Cleaner(model, train_config=TrainConfig(epochs=cfg.epochs, batch_size=128), retrain="defer",
                      seed=cfg.seed).fit(X, noisy)
    fit_s = time.perf_counter() - start
    row = {"section": 7, "case": name, "rows": len(X), "fit_s": fit_s, **_audit_latency(cleaner, cfg.queries + 1),
           "fisher": cleaner.fisher_method_, "peak_rss_bytes": _peak_rss_bytes()}
    row["prepare_s"] = _prepare_seconds(cleaner)
    row["uncached_query_s"] = _uncached_query(cleaner)
    row["speedup"] = row["uncached_query_s"] / row["later_median_s"]
    row["targets"] = targets
    return row


def case_head_answers(cfg: ScaleConfig) -> dict:
    """``retrain="head"`` on MNIST: the time from an answer to the next question (the head refit on the
    cached features included), with the oracle's labels as answers."""
    X, y = _images("mnist", cfg.n_images)()
    noisy = flip_labels(y, 0.2, 10, rng=np.random.default_rng(cfg.seed))
    cleaner = Cleaner(_seeded(_cnn, cfg.seed), train_config=TrainConfig(epochs=cfg.epochs, batch_size=128),
                      retrain="head", refit_every=10**9, seed=cfg.seed).fit(X, noisy)
    times = []
    queries = cleaner.audit(budget=cfg.queries + 1)
    query = next(queries)
    for _ in range(cfg.queries):
        start = time.perf_counter()
        ce = query.counterexample
        cleaner.answer(query, int(y[query.index]), None if ce is None else int(y[ce]))
        nxt = next(queries, None)
        if nxt is None:
            break
        times.append(time.perf_counter() - start)
        query = nxt
    return {"section": 7, "case": f"mnist {cfg.n_images} CNN, retrain=head: answer -> next question",
            "rows": len(X), "first_s": statistics.median(times), "answers": len(times),
            "targets": {"first_s": 0.2}}


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 5, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 5, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


def _mlp256() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


def _images(name: str, n: int) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        data = load_dataset(name)
        return data.X_train[:n], data.y_train[:n]
    return load


def case_counterexamples(cfg: ScaleConfig) -> dict:
    """``counterexamples`` over ``n_rows`` tabular candidates, the FIM over all of them (a trained
    50-64-2 network: 64-wide layer before the head)."""
    g = np.random.default_rng(cfg.seed)
    X = g.normal(size=(cfg.n_rows, 50)).astype(np.float64)
    w = g.normal(size=50)
    y = (X @ w + 0.5 * g.normal(size=cfg.n_rows) > 0).astype(np.int64)
    torch.manual_seed(cfg.seed)
    model = nn.Sequential(nn.Linear(50, 64), nn.ReLU(), nn.Linear(64, 2)).double()
    model = Cleaner(model, train_config=TrainConfig(epochs=3, batch_size=128), retrain="defer").fit(
        X[:10_000], y[:10_000]).model_  # the Cleaner trains a copy
    x, target = X[0] + 0.5, int(1 - y[0])
    reset_peak()
    base = _peak_rss_bytes() or 0
    start = time.perf_counter()
    counterexamples(model, X, y, x, target, k=5)
    seconds = time.perf_counter() - start
    peak = _peak_rss_bytes()
    return {"section": 7, "case": f"counterexamples {cfg.n_rows:.0e} tabular rows, FIM over all", "rows": cfg.n_rows,
            "first_s": seconds, "peak_rss_bytes": peak, "extra_bytes": None if peak is None else peak - base,
            "feature_bytes": X.nbytes, "targets": {"first_s": 3.0, "extra_over_features": 2.0}}


def section_scale(cfg: ScaleConfig | None = None) -> list[dict]:
    """Every case of the scale benchmark (section 7)."""
    cfg = cfg or ScaleConfig()
    torch.manual_seed(cfg.seed)
    n = cfg.n_images
    rows = [
        _cleaner_case(f"mnist {n} CNN (64 before head)", _images("mnist", n), _seeded(_cnn, cfg.seed), cfg,
                      {"first_s": 1.0, "later_median_s": 0.05, "peak_rss_bytes": 1.5 * 2**30}),
        _cleaner_case(f"fashion_mnist {n} MLP (256 before head)", _images("fashion_mnist", n),
                      _seeded(_mlp256, cfg.seed), cfg,
                      {"first_s": 2.0, "later_median_s": 0.05, "peak_rss_bytes": 2 * 2**30}),
        _logreg_case(cfg),
        case_counterexamples(cfg),
        case_head_answers(cfg),
    ]
    return rows


def _seeded(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return make()


def _logreg_case(cfg: ScaleConfig) -> dict:
    from sklearn.linear_model import LogisticRegression

    return _cleaner_case(f"mnist {cfg.n_images} pixels, LogisticRegression", _images("mnist", cfg.n_images),
                         LogisticRegression(max_iter=cfg.logreg_max_iter), cfg,
                         {"first_s": 30.0, "later_median_s": 0.2, "peak_rss_bytes": 3 * 2**30})


def audit_recall(dataset: str, *, n: int = 60_000, epochs: int = 30, budgets: tuple[int, ...] = (50, 200, 1000),
                 cv: int | None = None, noise: float = 0.2, seed: int = 0) -> dict:
    """How many wrong labels an audit reaches at each budget (questions answered by the oracle; a wrong
    counter-example counts as found), with a 784-256-C MLP trained ``epochs`` epochs on the noisy labels,
    long enough to memorise many of them; ``cv`` cross-fits the audit."""
    X, y = _images(dataset, n)()
    noisy = flip_labels(y, noise, int(y.max()) + 1, rng=np.random.default_rng(seed))
    cleaner = Cleaner(_seeded(_mlp256, seed), train_config=TrainConfig(epochs=epochs, batch_size=128),
                      retrain="defer", seed=seed)
    start = time.perf_counter()
    found = shown = asked = 0
    reached = {}
    for query in cleaner.audit(X, noisy, budget=max(budgets), cv=cv):
        ce = query.counterexample
        for index in (query.index, ce):
            if index is not None:
                shown += 1
                found += int(cleaner.loop_.labels[index] != y[index])
        cleaner.answer(query, int(y[query.index]), None if ce is None else int(y[ce]))
        asked += 1
        if asked in budgets:
            reached[asked] = {"found": found, "shown": shown}
    train_acc = float(np.mean(cleaner.predict(X) == noisy))
    return {"dataset": dataset, "n": n, "epochs": epochs, "cv": cv, "wrong": int(np.sum(noisy != y)),
            "questions": asked, "reached": reached, "train_accuracy_on_noisy": train_acc,
            "seconds": time.perf_counter() - start}


def curvature_agreement(cleaner: Cleaner, *, queries: int = 30,
                        curvatures: tuple[str, ...] = ("ekfac", "kfac")) -> dict:
    """How close the Kronecker-factored rankings are to the exact one, over the first ``queries`` of an
    audit of a fitted cleaner: mean top-5 overlap, mean and worst Spearman correlation of the candidates'
    scores, and how often the best candidate is the same."""
    from scipy.stats import spearmanr

    loop = cleaner.loop_
    known = loop.known
    stats: dict[str, list[tuple[float, float, bool]]] = {c: [] for c in curvatures}
    for index in loop.audit_order()[:queries]:
        prediction = int(np.argmax(cleaner.learner_.predict_proba(loop.X[[index]])[0]))
        candidates = loop.context(int(index), prediction).candidates
        if len(candidates) < 5:
            continue
        def rank(curvature: str) -> tuple[np.ndarray, np.ndarray]:
            r = top_fisher_ranking(cleaner.learner_, loop.X, loop.labels, int(index), candidates, known,
                                   curvature=curvature)
            order = np.argsort(r.indices)
            return r.indices, r.scores[order]
        exact_top, exact_scores = rank("exact")
        for curvature in curvatures:
            top, scores = rank(curvature)
            stats[curvature].append((len(set(exact_top[:5]) & set(top[:5])) / 5,
                                     float(spearmanr(exact_scores, scores).statistic), exact_top[0] == top[0]))
    out = {}
    for curvature, rows in stats.items():
        values = np.array(rows, dtype=float)
        out[curvature] = {"queries": len(rows), "top5_overlap": float(values[:, 0].mean()),
                          "spearman_mean": float(values[:, 1].mean()), "spearman_min": float(values[:, 1].min()),
                          "same_best": float(values[:, 2].mean())}
    return out
