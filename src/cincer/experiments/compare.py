"""cleanlab side by side with CINCER, for the same noisy data and the same number of annotator questions.

Three ways to spend a budget of ``B`` questions to an (oracle) annotator on one noisy training set:

* ``cleanlab``: out-of-sample predicted probabilities by K-fold cross-validation with the cincer model,
  label quality = self-confidence (``cleanlab.rank.get_label_quality_scores``); ask about the B
  lowest-quality examples (one example per question).
* ``cincer_stream``: CINCER's loop. ``known`` random examples are known at the start, the others arrive
  one by one; each suspicious example is a question, shown with its counter-example: a pair counts as
  ONE question (as in the paper). Stops when B questions are spent or the stream ends.
* ``cincer_audit``: :meth:`cincer.api.Cleaner.audit` with budget B: the model fitted on all the
  (noisy) data ranks the examples by margin; each question shows the example and its counter-example
  (one question per pair), the model being fitted once (answers are applied without retraining).
* ``cleanlab_same_examples``: cleanlab's ranking again, asking about as many examples as the audit
  showed (a pair counted as two): the comparison at equal reading effort rather than equal questions.

Every annotator answer is the clean label (the simulated oracle), so every example shown with a
wrong label gets fixed. Then a fresh model is trained on the whole training set with each method's
labels, and its test F1 is recorded, next to the same model on the noisy labels and on the clean ones.

The ``cleanlab`` inspector (suspicious when the self-confidence label quality ``P(label | x)`` is below
the threshold) lives with the others in :mod:`cincer.inspect`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..api import Cleaner, LabelQuery
from ..config import at_least, one_of, option
from ..data import Dataset, load_dataset
from ..errors import CincerError
from ..inspect import label_quality
from ..learners import TorchLearner
from ..metrics import test_metrics
from ..models import build_model
from .simulate import SimulationConfig, draw_repeat

METHODS = ("cleanlab", "cincer_stream", "cincer_audit", "cleanlab_same_examples")
REFERENCES = ("noisy", "clean")


@dataclass
class CompareConfig(SimulationConfig):
    """Every setting of one comparison; ``train_size``/``test_size`` subsample (``None``: all)."""

    budget: int = option(20, "annotator questions (a CINCER pair is ONE)", check=at_least(1))
    folds: int = option(5, "cross-validation folds for cleanlab's probabilities", check=at_least(2))
    stream_retrain: str = option("answer", "sync: retrain after every stream example (paper); answer: only after "
                                 "each answer", check=one_of("sync", "answer"))
    train_size: int | None = option(None, "random subsample of the training set", check=at_least(2))
    test_size: int | None = option(None, "random subsample of the test set", check=at_least(2))

    def check_fits(self, n_train: int) -> None:
        if self.known >= n_train:
            raise CincerError(f"--known {self.known} leaves no stream in the {n_train} training examples")
        if self.budget > n_train:
            raise CincerError(f"--budget {self.budget} exceeds the {n_train} training examples")


def subsample(data: Dataset, train_size: int | None, test_size: int | None, seed: int) -> Dataset:
    """A random (seeded) subset of the training and test sets; the sizes are recorded in ``meta``."""
    rng = np.random.default_rng(seed)

    def pick(n: int, size: int | None) -> np.ndarray:
        return np.sort(rng.choice(n, size, replace=False)) if size is not None and size < n else np.arange(n)

    tr, te = pick(len(data.y_train), train_size), pick(len(data.y_test), test_size)
    return dataclasses.replace(data, X_train=data.X_train[tr], y_train=data.y_train[tr], X_test=data.X_test[te],
                               y_test=data.y_test[te], texts_train=None, texts_test=None,
                               meta={**data.meta, "train_rows": len(tr), "test_rows": len(te)})


# --------------------------------------------------------------------------- the three methods

def cross_val_probs(config: CompareConfig, X: torch.Tensor, labels: np.ndarray, n_classes: int,
                    seed: int) -> np.ndarray:
    """Out-of-sample ``P(y | x)`` for every example: stratified K-fold, a fresh cincer model per fold."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels, minlength=n_classes)
    folds = min(config.folds, int(counts[counts > 0].min())) if counts[counts > 0].min() >= 2 else 2
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs = np.zeros((len(labels), n_classes))
    for fold, (fit_idx, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        learner = _learner(config, X, n_classes, seed)
        learner.seed = seed + 1000 * (fold + 1)  # the same initial weights, another training order per fold
        learner.fit(X[fit_idx], labels[fit_idx])
        probs[held_out] = learner.predict_proba(X[held_out])
    return probs


def cleanlab_order(config, X, noisy, n_classes, seed) -> np.ndarray:
    """Training indices by increasing cleanlab label quality (out-of-sample probabilities)."""
    probs = cross_val_probs(config, X, noisy, n_classes, seed)
    return np.argsort(label_quality(probs, noisy), kind="stable")


def clean_with_cleanlab(order: np.ndarray, noisy, clean, n_questions: int) -> tuple[np.ndarray, dict]:
    """Ask the oracle about the ``n_questions`` lowest-quality examples."""
    asked = order[:n_questions]
    labels = noisy.copy()
    labels[asked] = clean[asked]
    fixed = int(np.sum(noisy[asked] != clean[asked]))
    return labels, {"questions": len(asked), "inspected": len(asked), "fixed": fixed,
                    "fixed_suspicious": fixed, "fixed_ce": 0, "stream_seen": 0}


def _cleaner(config: CompareConfig, X: torch.Tensor, n_classes: int, seed: int, retrain: str) -> Cleaner:
    model = build_model(config.model, tuple(X.shape[1:]), n_classes, seed=seed, dtype=X.dtype)
    return Cleaner(model, classes=list(range(n_classes)), train_config=config.train, inspector=config.inspector,
                   threshold=config.inspector_params().get("threshold"), selector=config.selector,
                   selector_params=config.selector_params(), retrain=retrain, seed=seed)


def _answer(cleaner: Cleaner, query: LabelQuery, pool_to_data: np.ndarray, clean: np.ndarray, counts: dict) -> None:
    """The oracle's answer to one query (clean labels for the example and its counter-example)."""
    ce = query.counterexample
    changed = cleaner.answer(query, int(clean[pool_to_data[query.index]]),
                             None if ce is None else int(clean[pool_to_data[ce]]))
    counts["questions"] += 1
    counts["inspected"] += 1 + int(ce is not None)
    counts["fixed_suspicious"] += int(query.index in changed)
    counts["fixed_ce"] += int(ce is not None and ce in changed)


def clean_with_stream(config, X, noisy, clean, n_classes, seed, rng) -> tuple[np.ndarray, dict]:
    order = rng.permutation(len(noisy))
    known, stream = order[:config.known], order[config.known:]
    cleaner = _cleaner(config, X, n_classes, seed, "sync" if config.stream_retrain == "sync" else "answer")
    cleaner.fit(X[known].numpy(), noisy[known])
    counts = dict(questions=0, inspected=0, fixed_suspicious=0, fixed_ce=0, stream_seen=0)
    for index in stream:
        if counts["questions"] >= config.budget:
            break
        query = cleaner.observe(X[index].numpy(), int(noisy[index]))
        counts["stream_seen"] += 1
        if query is not None:
            _answer(cleaner, query, order, clean, counts)
    seen = order[:len(cleaner.labels_)]
    labels = noisy.copy()
    labels[seen] = cleaner.labels_
    counts["fixed"] = counts["fixed_suspicious"] + counts["fixed_ce"]
    return labels, counts


def clean_with_audit(config, X, noisy, clean, n_classes, seed) -> tuple[np.ndarray, dict]:
    cleaner = _cleaner(config, X, n_classes, seed, "defer")
    identity = np.arange(len(noisy))
    counts = dict(questions=0, inspected=0, fixed_suspicious=0, fixed_ce=0, stream_seen=0)
    for query in cleaner.audit(X.numpy(), noisy, budget=config.budget):
        _answer(cleaner, query, identity, clean, counts)
    counts["fixed"] = counts["fixed_suspicious"] + counts["fixed_ce"]
    return np.asarray(cleaner.labels_, dtype=np.int64), counts


def _learner(config: CompareConfig, X: torch.Tensor, n_classes: int, seed: int) -> TorchLearner:
    return config.new_learner(tuple(X.shape[1:]), n_classes, seed=seed, dtype=X.dtype)


# --------------------------------------------------------------------------- the experiment

def run_compare_repeat(config: CompareConfig, data: Dataset, repeat: int) -> list[dict]:
    """One repeat: one noisy copy of the labels (seed + repeat), the three methods and the references."""
    draw = draw_repeat(config, data, repeat)  # noise only: every method sees all of the data
    seed, X, X_test, noisy, clean = draw.seed, draw.X, draw.X_test, draw.noisy, data.y_train
    n_noisy = int(np.sum(noisy != clean))
    rows = []
    cache: dict = {}

    def cleanlab_run(n_questions=None):
        if "order" not in cache:
            cache["order"] = cleanlab_order(config, X, noisy, data.n_classes, seed)
        return clean_with_cleanlab(cache["order"], noisy, clean, config.budget if n_questions is None else n_questions)

    def audit_run():
        labels, counts = clean_with_audit(config, X, noisy, clean, data.n_classes, seed)
        cache["audit_inspected"] = counts["inspected"]
        return labels, counts

    runs = {
        "cleanlab": cleanlab_run,
        "cincer_stream": lambda: clean_with_stream(config, X, noisy, clean, data.n_classes, seed,
                                                   np.random.default_rng([seed, 1])),
        "cincer_audit": audit_run,
        # cleanlab asked about as many examples as the audit showed (pairs counted as two): equal reading effort
        "cleanlab_same_examples": lambda: cleanlab_run(cache["audit_inspected"]),
        "noisy": lambda: (noisy.copy(), {}),
        "clean": lambda: (clean.copy(), {}),
    }
    for method, clean_fn in runs.items():
        start = time.perf_counter()
        labels, counts = clean_fn()
        clean_seconds = time.perf_counter() - start  # cleanlab's cross-validation is timed in its first row
        learner = _learner(config, X, data.n_classes, seed)
        learner.fit(X, labels)
        metrics = test_metrics(learner.predict_proba(X_test), data.y_test)
        rows.append({"repeat": repeat, "method": method, "budget": config.budget, "noisy_before": n_noisy,
                     "noisy_after": int(np.sum(labels != clean)),
                     **{k: counts.get(k, 0) for k in ("questions", "inspected", "fixed", "fixed_suspicious",
                                                      "fixed_ce", "stream_seen")},
                     "f1": metrics["f1"], "accuracy": metrics["accuracy"],
                     "clean_seconds": clean_seconds, "seconds": time.perf_counter() - start})
    return rows


def prepare_data(config: CompareConfig) -> Dataset:
    """The data set of ``config``, subsampled to ``train_size``/``test_size`` (seeded by ``config.seed``)."""
    config.validate()
    data = load_dataset(config.dataset, seed=config.seed)
    return subsample(data, config.train_size, config.test_size, config.seed)


def run_compare(config: CompareConfig, *, data: Dataset | None = None, progress=None) -> pd.DataFrame:
    """All repeats; ``data`` defaults to :func:`prepare_data`. One row per repeat and method."""
    config.validate()
    data = data if data is not None else prepare_data(config)
    config.check_fits(len(data.y_train))
    rows: list[dict] = []
    for repeat in range(config.repeats):
        rows += run_compare_repeat(config, data, repeat)
        if progress is not None:
            progress(repeat, rows)
    return pd.DataFrame(rows)


SUMMARY_COLUMNS = ("questions", "inspected", "fixed", "fixed_suspicious", "fixed_ce", "noisy_after", "f1",
                   "clean_seconds")


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation (over repeats) of every column, one row per method."""
    order = [m for m in METHODS + REFERENCES if m in set(results["method"])]
    grouped = results.groupby("method")[list(SUMMARY_COLUMNS)]
    mean, std = grouped.mean().loc[order], grouped.std(ddof=0).loc[order]
    table = pd.DataFrame(index=pd.Index(order, name="method"))
    for col in SUMMARY_COLUMNS:
        table[f"{col}_mean"], table[f"{col}_std"] = mean[col], std[col]
    table["repeats"] = results.groupby("method")["repeat"].nunique().loc[order]
    return table


def format_table(summary: pd.DataFrame, *, noisy_before: float) -> str:
    """A markdown table: mean ± std over repeats."""
    head = ("| method | questions | examples inspected | mislabelled fixed | (suspicious / CE) | "
            "noisy left | test F1 |")
    lines = [head, "|" + "---|" * 7]
    for method, row in summary.iterrows():
        def pm(col: str, fmt: str = ".1f") -> str:
            return f"{row[f'{col}_mean']:{fmt}} ± {row[f'{col}_std']:{fmt}}"
        if method in REFERENCES:
            lines.append(f"| {method} labels (reference) | – | – | – | – | {pm('noisy_after')} | {pm('f1', '.3f')} |")
            continue
        lines.append(f"| {method} | {pm('questions')} | {pm('inspected')} | {pm('fixed')} | "
                     f"{row['fixed_suspicious_mean']:.1f} / {row['fixed_ce_mean']:.1f} | {pm('noisy_after')} | "
                     f"{pm('f1', '.3f')} |")
    lines.append(f"\nMislabelled training examples before cleaning: {noisy_before:.1f} (mean over repeats).")
    return "\n".join(lines)


def write_compare(out: Path, config: CompareConfig, results: pd.DataFrame, data_meta: dict | None = None) -> str:
    """``config.json``, ``results.csv`` (one row per repeat and method), ``summary.csv`` and ``summary.md``."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {"config": dataclasses.asdict(config), "data": data_meta or {},
            "counting": "one question = one annotator query; a CINCER pair (example + counter-example) counts "
                        "as ONE question; 'inspected' counts the examples shown",
            "versions": {"cincer": __version__, "torch": torch.__version__, "numpy": np.__version__}}
    (out / "config.json").write_text(json.dumps(meta, indent=2, default=str))
    results.to_csv(out / "results.csv", index=False)
    summary = summarize(results)
    summary.to_csv(out / "summary.csv")
    table = format_table(summary, noisy_before=float(results["noisy_before"].mean()))
    (out / "summary.md").write_text(table + "\n")
    return table
