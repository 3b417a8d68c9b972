"""Simulated cleaning runs: the paper's protocol with an oracle annotator, traced round by round."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..cleaning import CleaningConfig
from ..config import at_least, in_interval, one_of, option, registered
from ..data import DATASETS, NOISE_KINDS, Dataset, flip_labels, load_dataset
from ..data.noise import MARGIN_KINDS, NOISE_NEEDS, probability_margins
from ..errors import CincerError
from ..learners import Learner
from ..loop import OracleAnnotator
from ..metrics import precision_at_k, test_metrics
from ..models.batched import Lockstep
from ..progress import Progress

PRECISION_KS = (5, 10, 25)
NAN = float("nan")
# per-query columns, so every trace has the same columns whether or not anything was queried
NO_QUERY = {"query_index": -1, "margin": NAN, "counterexample": -1, "label_ok": NAN, "prediction_ok": NAN,
            "ce_ok": NAN, "n_candidates": 0, "select_seconds": NAN, "case": "",
            **{f"pr{k}": NAN for k in PRECISION_KS}}


@dataclass
class SimulationConfig(CleaningConfig):
    """A cleaning round simulated on a data set with injected label noise, over several repeats."""

    dataset: str = option("breast", "data set (cincer data list)", check=registered(DATASETS))
    noise: float = option(0.2, "fraction of training labels flipped", check=in_interval(0, 1, closed="[)"))
    noise_kind: str = option("random", "which labels are flipped: random (the paper) | pair | max_margin | "
                             "min_margin | min_max_margin | max_margin_cluster | outlier (margins: of the model "
                             "trained 10 epochs on the clean labels; see cincer.flip_labels)",
                             check=one_of(*NOISE_KINDS))
    known: int = option(100, "initially known examples", check=at_least(1))
    repeats: int = option(5, "repeats (each with its own noise, known set and stream)", check=at_least(1))
    bits: int = option(64, "float precision of the models and data: 32 | 64", check=one_of(32, 64))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64 if self.bits == 64 else torch.float32


@dataclass
class RunConfig(SimulationConfig):
    """Every setting of a simulated run; the defaults are the paper's protocol (CINCER.md)."""

    rounds: int = option(100, "stream examples, one per round", check=at_least(0))
    retrain: str = option("full", "after each round: full (retrain the model, the paper) or head (refit only the "
                          "last layer on cached features; a full retrain every --full-every rounds)",
                          check=one_of("full", "head"))
    full_every: int = option(10, "with --retrain head: rounds between full retrains", check=at_least(1))
    batched: bool = option(False, "train the repeats (in cincer experiment: and the methods) together as one "
                           "batched model: the same draws, batch orders and dropout masks, results equal to float "
                           "tolerance, several times faster for small networks; timing columns then cover them all")

    def validate(self) -> None:
        super().validate()
        if self.batched and self.train.warm_start:
            raise CincerError("--batched retrains from the initial weights: it excludes --warm-start")

    def check_fits(self, data: Dataset) -> None:
        if self.known + self.rounds > len(data.y_train):
            raise CincerError(f"--known {self.known} + --rounds {self.rounds} exceeds the {len(data.y_train)} "
                              f"training examples of {data.name}")


@dataclass
class Draw:
    """One repeat's data and random draws: noisy labels, then the initial known set and the stream."""

    seed: int
    rng: np.random.Generator
    X: torch.Tensor
    X_test: torch.Tensor
    noisy: np.ndarray
    known: np.ndarray
    stream: np.ndarray


Pool = tuple[torch.Tensor, torch.Tensor]


def pool_tensors(data: Dataset, dtype: torch.dtype) -> Pool:
    """The data set's train and test arrays as tensors of ``dtype`` (a copy when the arrays' type differs:
    376 MB for 60k MNIST images in float64, so repeats that run side by side share one)."""
    return torch.as_tensor(data.X_train, dtype=dtype), torch.as_tensor(data.X_test, dtype=dtype)


def draw_repeat(config: SimulationConfig, data: Dataset, repeat: int, pool: Pool | None = None) -> Draw:
    """Everything random in a repeat, from ``config.seed + repeat``: the noisy labels (the margin kinds rank
    the examples by :func:`clean_margins`, a model trained from the same seed), then (when the configuration
    has ``known`` or ``rounds``) the initial known set and the stream. ``pool``: the data's tensors
    (:func:`pool_tensors`), when several repeats share one copy."""
    seed = config.seed + repeat
    rng = np.random.default_rng(seed)
    dtype = config.dtype
    kind = config.noise_kind
    margins = clean_margins(config, data, seed) if kind in MARGIN_KINDS and config.noise > 0 else None
    X = data.X_train if "X" in NOISE_NEEDS[kind] else None
    noisy = flip_labels(data.y_train, config.noise, data.n_classes, kind=kind, rng=rng, X=X, margins=margins)
    known, rounds = getattr(config, "known", 0), getattr(config, "rounds", 0)
    order = rng.permutation(len(noisy)) if known or rounds else np.arange(len(noisy))
    X_train, X_test = pool or pool_tensors(data, dtype)
    return Draw(seed, rng, X_train, X_test, noisy, order[:known], order[known:known + rounds])


MARGIN_EPOCHS = 10  # the original code's: the margin noise kinds rank by a model trained this long


def clean_margins(config: SimulationConfig, data: Dataset, seed: int) -> np.ndarray:
    """How sure ``config.model``, trained ``MARGIN_EPOCHS`` epochs on the clean training labels from ``seed``,
    is of each training example (:func:`probability_margins`). On the CPU, so the draws do not depend on the
    device; the global random state is left as it was (the model's initialisation and training fork it)."""
    train = dataclasses.replace(config.train, epochs=MARGIN_EPOCHS, warm_start=False, warm_epochs=None)
    learner = dataclasses.replace(config, train=train).new_learner(data.X_train.shape[1:], data.n_classes,
                                                                   seed=seed, dtype=config.dtype)
    X = torch.as_tensor(data.X_train, dtype=config.dtype)
    learner.fit(X, data.y_train)
    return probability_margins(learner.predict_proba(X))


def on_device(draw: Draw, device: str | torch.device | None) -> Draw:
    """The repeat's pool and test set where the model computes; the draws themselves never move."""
    if device is None:
        return draw
    return dataclasses.replace(draw, X=draw.X.to(device), X_test=draw.X_test.to(device))


def new_learner(config: CleaningConfig, data: Dataset, draw: Draw, train_fn: Callable | None = None) -> Learner:
    """A fresh model of ``config.model`` for this repeat (same seed, same initial weights, any device)."""
    return config.new_learner(data.X_train.shape[1:], data.n_classes, seed=draw.seed, dtype=draw.X.dtype,
                              device=draw.X.device, train_fn=train_fn)


def run_repeat(config: RunConfig, data: Dataset, repeat: int, *, progress: Progress | None = None,
               device: str | torch.device | None = None, train_fn: Callable | None = None,
               pool: Pool | None = None) -> list[dict]:
    """One repeat: noise, initial known set and stream drawn from ``seed + repeat``; one row per round.
    ``device`` (e.g. ``"cuda"``) is where the model trains and the pool lives; the draws do not depend on it.
    ``train_fn``: how the model trains (default :func:`cincer.models.train`; see :func:`run_together`);
    ``pool``: as :func:`draw_repeat` takes it."""
    draw = on_device(draw_repeat(config, data, repeat, pool), device)
    X, X_test, noisy, clean = draw.X, draw.X_test, draw.noisy, data.y_train
    learner = new_learner(config, data, draw, train_fn)
    loop = config.new_loop(learner, X, noisy, draw.known, draw.rng)
    oracle = OracleAnnotator(clean)
    start = time.perf_counter()
    loop.retrain()
    totals = dict(queries=0, cleaned_suspicious=0, cleaned_ce=0, dropped=0, dropped_noisy=0,
                  noisy_seen=0, disagreements=0)
    rows = [_row(repeat, 0, loop, clean, learner, X_test, data.y_test, totals,
                 {**NO_QUERY, "train_seconds": NAN}, start)]
    for t, index in enumerate(draw.stream, start=1):
        # mistakes seen: arrivals whose label the current model disagrees with, queried or not
        totals["disagreements"] += int(learner.predict_proba(X[[index]])[0].argmax() != noisy[index])
        totals["noisy_seen"] += int(noisy[index] != clean[index])
        round_start = time.perf_counter()
        query = loop.observe(int(index))
        extra = dict(NO_QUERY)
        if query is not None:
            totals["queries"] += 1
            extra = _query_record(query, clean, loop.labels, time.perf_counter() - round_start)
            update = loop.apply(query, oracle(query))
            ce = query.counterexample
            totals["cleaned_suspicious"] += int(query.index in update.relabelled)
            totals["cleaned_ce"] += int(ce in update.relabelled)
            totals["dropped"] += len(update.dropped)
            totals["dropped_noisy"] += sum(int(loop.labels[i] != clean[i]) for i in update.dropped)
        fit_start = time.perf_counter()
        if config.retrain == "head" and t % config.full_every:
            loop.retrain_head()
        else:
            loop.retrain()
        extra["train_seconds"] = time.perf_counter() - fit_start
        rows.append(_row(repeat, t, loop, clean, learner, X_test, data.y_test, totals, extra, start))
        if progress is not None:
            progress.update(1)
    return rows


def _query_record(query, clean: np.ndarray, labels: np.ndarray, select_seconds: float) -> dict:
    """Per-query columns, judged on the labels at query time: the outcome case and the precision
    of the counter-example ranking."""
    ce = query.counterexample
    record = {
        "query_index": query.index, "margin": query.margin, "counterexample": -1 if ce is None else ce,
        "label_ok": float(query.label == clean[query.index]),
        "prediction_ok": float(query.prediction == clean[query.index]),
        "ce_ok": NAN if ce is None else float(labels[ce] == clean[ce]),
        "n_candidates": len(query.ranking), "select_seconds": select_seconds,
    }
    record["case"] = ",".join(f"{k}={'-' if v != v else ('right' if v else 'wrong')}"
                              for k, v in (("label", record["label_ok"]), ("pred", record["prediction_ok"]),
                                           ("ce", record["ce_ok"])))
    is_noisy = labels != clean
    for k in PRECISION_KS:
        record[f"pr{k}"] = precision_at_k(query.ranking.indices, is_noisy, k)
    return record


def _row(repeat, t, loop, clean, learner, X_test, y_test, totals, extra, start) -> dict:
    known = np.asarray(loop.known)
    row = {"repeat": repeat, "round": t, **totals,
           "cleaned": totals["cleaned_suspicious"] + totals["cleaned_ce"],
           "n_known": len(known), "noisy_known": int(np.sum(loop.labels[known] != clean[known])),
           **test_metrics(learner.predict_proba(X_test), y_test), **extra,
           "elapsed_seconds": time.perf_counter() - start}
    return row


def run(config: RunConfig, *, progress: bool = True, data: Dataset | None = None,
        checkpoint: Path | None = None, device: str | torch.device | None = None) -> tuple[pd.DataFrame, dict]:
    """All repeats of a run; returns the per-round trace and the summary.

    With ``checkpoint`` (a folder), each finished repeat is saved there and a later call with the
    same configuration resumes after the last one: a repeat depends only on ``seed + repeat``, so
    the resumed trace equals an uninterrupted one (timing columns aside). ``seconds`` in the
    summary counts the compute of every repeat, resumed or not. ``device``: see :func:`run_repeat`."""
    return run_together([config], progress=progress, data=data, checkpoints=[checkpoint], device=device)[0]


def run_together(configs: list[RunConfig], *, progress: bool = True, data: Dataset | None = None,
                 checkpoints: list[Path | None] | None = None,
                 device: str | torch.device | None = None) -> list[tuple[pd.DataFrame, dict]]:
    """Several runs on one data set (e.g. the methods of an experiment), each as :func:`run` would give it.
    When every configuration is ``batched``, all their unfinished repeats advance in lockstep and the models
    train together (:class:`cincer.models.batched.Lockstep`), each repeat credited an equal share of the
    time; otherwise the runs go one after another."""
    checkpoints = checkpoints or [None] * len(configs)
    for config in configs:
        config.validate()
    data = data or load_dataset(configs[0].dataset, seed=configs[0].seed)
    if any((c.dataset, c.seed) != (configs[0].dataset, configs[0].seed) for c in configs):
        raise CincerError("runs together must share the data set and seed (one split of the data)")
    for config in configs:
        config.check_fits(data)
    label = "/".join(dict.fromkeys(c.selector for c in configs))
    with Progress(sum(c.repeats * c.rounds for c in configs), f"{data.name}/{configs[0].model}/{label}",
                  unit="round", disable=not progress, delay=0) as bar:
        saved: list[dict[int, dict]] = []
        for config, checkpoint in zip(configs, checkpoints):
            resumed = {r: load_repeat(checkpoint, config, r) if checkpoint is not None else None
                       for r in range(config.repeats)}
            saved.append({r: s for r, s in resumed.items() if s is not None})
            bar.update(config.rounds * len(saved[-1]))
        todo = [(k, r) for k, config in enumerate(configs) for r in range(config.repeats) if r not in saved[k]]

        def job(k: int, repeat: int, checkpoint: Path | None, pool: Pool | None = None) -> Callable[..., dict]:
            return lambda train_fn: compute_repeat(configs[k], data, repeat, progress=bar, device=device,
                                                   checkpoint=checkpoint, train_fn=train_fn, pool=pool)
        if len(todo) > 1 and all(c.batched for c in configs):
            if any((c.model, c.train, c.bits) != (configs[0].model, configs[0].train, configs[0].bits)
                   for c in configs):
                raise CincerError("batched runs together must share the model, its training and --bits")
            # the repeats run side by side: one copy of the data's tensors (on the device) serves them all
            X_train, X_test = pool_tensors(data, configs[0].dtype)
            pool = (X_train, X_test) if device is None else (X_train.to(device), X_test.to(device))
            start = time.perf_counter()
            # each repeat is saved as it finishes (with its own wall time), then again with its share
            done = Lockstep(configs[0].train).run([job(k, r, checkpoints[k], pool) for k, r in todo])
            share = (time.perf_counter() - start) / len(todo)
            for (k, repeat), result in zip(todo, done):
                result["seconds"] = share
                if checkpoints[k] is not None:
                    save_repeat(checkpoints[k], configs[k], repeat, result)  # type: ignore[arg-type]
                saved[k][repeat] = result
        else:
            for k, repeat in todo:
                saved[k][repeat] = job(k, repeat, checkpoints[k])(None)
    results = []
    for config, repeats in zip(configs, saved):
        trace = pd.DataFrame([row for r in range(config.repeats) for row in repeats[r]["rows"]])
        results.append((trace, summarize(trace, seconds=sum(s["seconds"] for s in repeats.values()))))
    return results


def compute_repeat(config: RunConfig, data: Dataset, repeat: int, *, progress: Progress | None = None,
                   device: str | torch.device | None = None, checkpoint: Path | None = None,
                   train_fn: Callable | None = None, pool: Pool | None = None) -> dict:
    """One repeat timed (``rows``, ``seconds``, ``device``), saved to ``checkpoint`` when given."""
    start = time.perf_counter()
    rows = run_repeat(config, data, repeat, progress=progress, device=device, train_fn=train_fn, pool=pool)
    saved = {"rows": rows, "seconds": time.perf_counter() - start, "device": str(device or "cpu")}
    if checkpoint is not None:
        save_repeat(checkpoint, config, repeat, saved)
    return saved


def _repeat_file(folder: Path, repeat: int) -> Path:
    return Path(folder) / f"repeat-{repeat}.json"


def save_repeat(folder: Path, config: RunConfig, repeat: int, saved: dict) -> None:
    """One finished repeat as JSON (with the configuration it belongs to), written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = _repeat_file(folder, repeat)
    tmp = target.with_suffix(f".tmp-{os.getpid()}")
    record = {"config": _config_record(config), "repeat": repeat, **saved}
    tmp.write_text(json.dumps(record, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    os.replace(tmp, target)


def _config_record(config: RunConfig) -> dict:
    """The configuration as it reads back from JSON, so a saved repeat compares equal to it."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def load_repeat(folder: Path, config: RunConfig, repeat: int) -> dict | None:
    """A saved repeat of exactly this configuration, or None (missing, unreadable or other settings)."""
    path = _repeat_file(folder, repeat)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("config") == _config_record(config) and record.get("repeat") == repeat else None


def summarize(trace: pd.DataFrame, *, seconds: float) -> dict:
    """Means and standard deviations over repeats of the first and last rounds."""
    first = trace[trace["round"] == 0]
    last = trace[trace["round"] == trace["round"].max()]
    summary = {"repeats": int(trace["repeat"].nunique()), "rounds": int(trace["round"].max()),
               "f1_initial_mean": first["f1"].mean(), "f1_initial_std": first["f1"].std(ddof=0)}
    for col in ("f1", "precision", "recall", "ece", "cleaned", "cleaned_suspicious", "cleaned_ce",
                "queries", "dropped", "noisy_known"):
        summary[f"{col}_final_mean"] = last[col].mean()
        summary[f"{col}_final_std"] = last[col].std(ddof=0)
    for k in PRECISION_KS:
        col = f"pr{k}"
        summary[f"{col}_mean"] = trace[col].mean() if col in trace else float("nan")
    summary["seconds"] = seconds
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in summary.items()}


def write_results(out: Path, config: RunConfig, trace: pd.DataFrame, summary: dict) -> None:
    """``config.json`` (every setting and versions), ``trace.csv`` and ``summary.json``."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {"config": dataclasses.asdict(config),
            "versions": {"cincer": __version__, "torch": torch.__version__, "numpy": np.__version__}}
    (out / "config.json").write_text(json.dumps(meta, indent=2, default=str))
    trace.to_csv(out / "trace.csv", index=False)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True))
