"""The paper's three questions as protocols over the engine.

* Q1, Q3: each compared method is a :class:`~cincer.experiments.simulate.RunConfig` variant run by
  :func:`cincer.experiments.simulate.run` (the cleaning loop with an oracle annotator).
* Q2: ranking quality with the model held fixed (:func:`run_ranking`): the model is trained once per
  repeat on the noisy known set; stream labels are clean; every stream example the model gets wrong
  is a query; its candidates are ranked by each selector and scored by precision@k.

An experiment writes ``DIR/<method>/`` (config.json, trace.csv, summary.json) for each method,
``DIR/experiment.json`` (question, methods, every setting) and ``DIR/summary.csv``. A method whose
``summary.json`` exists is finished and skipped; results are written to a temporary folder and
renamed into place, so an interrupted method leaves nothing that looks finished. A loop method
also keeps each finished repeat in ``DIR/.<method>.partial/``, so an interrupted one resumes at its
next repeat.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config, at_least, option
from ..data import DATASETS, Dataset, load_dataset
from ..errors import CincerError
from ..fisher import DEFAULT_TRUNCATE, resolve_truncate
from ..inspect import INSPECTORS
from ..loop import CleaningLoop
from ..metrics import precision_at_k, test_metrics
from ..models import TrainConfig
from ..select import SELECTORS
from .simulate import (
    PRECISION_KS,
    RunConfig,
    draw_repeat,
    new_learner,
    on_device,
    run,
    run_together,
    write_results,
)

PAPER_FIM_SAMPLES = 30
DAMPED_RELATIVE = 1.0  # top_fisher_damped: the FIM's damping, as a fraction of its mean eigenvalue
TEXT_DATASETS = ("rotten_tomatoes", "20ng")  # the paper used 500 initial examples for 20NG


def default_known(dataset: str) -> int:
    """The paper's initial known-set size: 500 for the text data sets, 100 otherwise."""
    return 500 if dataset in TEXT_DATASETS else 100

# method name -> RunConfig fields that differ from the experiment's base configuration
# (the reproduction's methods pin truncate=0: the paper's pseudo-inverse, whatever the product's default)
METHODS: dict[str, dict] = {
    # the product's default ranking (#16): exact top-layer FIM over all of D, pseudo-inverse truncated at
    # DEFAULT_TRUNCATE unless --set truncate=k (or a damping) says otherwise
    "cincer": {"selector": "top_fisher", "fim_samples": None},
    "top_fisher": {"selector": "top_fisher", "fim_samples": None, "truncate": 0.0},  # exact FIM, pinv
    "top_fisher_paper": {"selector": "top_fisher", "fim_samples": PAPER_FIM_SAMPLES, "truncate": 0.0},  # paper: 30
    # exact FIM damped by its mean eigenvalue times DAMPED_RELATIVE (scale-free; docs/REPRODUCTION.md)
    "top_fisher_damped": {"selector": "top_fisher", "fim_samples": None, "relative_damping": DAMPED_RELATIVE},
    "full_fisher": {"selector": "full_fisher", "fim_samples": None},
    "practical_fisher": {"selector": "practical_fisher"},
    "influence": {"selector": "influence"},
    "nearest": {"selector": "nearest"},
    "random": {"selector": "random"},
    "none": {"selector": "none"},  # the paper's no_ce
    "drop_ce": {"selector": "drop_ce", "fim_samples": None, "truncate": 0.0},  # drops the pinv's counter-example
    # clean-label upper bound: same protocol, no noise, never asks (a fresh draw of known set and stream)
    "upper_bound": {"selector": "none", "inspector": "never", "noise": 0.0},
}

QUESTIONS: dict[str, list[str]] = {
    "q1": ["cincer", "top_fisher", "top_fisher_paper", "none", "drop_ce", "upper_bound"],
    "q2": ["cincer", "top_fisher", "top_fisher_paper", "full_fisher", "practical_fisher", "influence", "nearest",
           "random"],
    "q3": ["cincer", "top_fisher", "top_fisher_paper", "practical_fisher", "nearest", "influence", "random",
           "upper_bound"],
}


@dataclass
class ExperimentConfig(Config):
    """One question on one (data set, model) pair; defaults are the paper's protocol."""

    question: str = option("q1", "the paper's question: q1 | q2 | q3", cli=False)
    dataset: str = option("breast", "data set (cincer data list)")
    model: str = option("fullnet", "model: logreg | fullnet | convnet")
    methods: list[str] | None = option(None, "methods compared (default: the question's)", cli=False)
    repeats: int = option(5, "repeats per method", check=at_least(1))
    rounds: int = option(100, "stream examples, one per round", check=at_least(0))
    known: int | None = option(None, "initially known examples (default 100; 500 for text data)", check=at_least(1))
    noise: float = option(0.2, "fraction of training labels flipped")
    threshold: float = option(0.2, "margin threshold tau")
    epochs: int = option(100, "training epochs of each (re)fit", check=at_least(1))
    seed: int = option(0, "random seed")
    bits: int = option(64, "float precision: 32 | 64")
    overrides: dict = option(default_factory=dict, help="any other RunConfig field, e.g. "
                             "{'train': {'batch_size': 64}}", cli=False)

    def resolved(self) -> ExperimentConfig:
        """Validated copy with ``methods`` and ``known`` filled in."""
        self.validate()
        if self.question not in QUESTIONS:
            raise CincerError(f"unknown question {self.question!r} (choose from: {', '.join(QUESTIONS)})")
        methods = list(self.methods) if self.methods else list(QUESTIONS[self.question])
        for m in methods:
            if m not in METHODS:
                raise CincerError(f"unknown method {m!r} (choose from: {', '.join(METHODS)})")
        if len(set(methods)) != len(methods):
            raise CincerError(f"duplicate methods in {methods}")
        DATASETS[self.dataset]  # unknown names raise, before anything is written
        out = dataclasses.replace(self, methods=methods, known=self.initial_known)
        for m in methods:
            method_config(out, m).validate()
        return out

    @property
    def initial_known(self) -> int:
        """The initial known-set size: the one given, or the paper's for this data set."""
        return self.known if self.known is not None else default_known(self.dataset)

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.model}/{self.question}"


def method_config(exp: ExperimentConfig, method: str) -> RunConfig:
    """The RunConfig of ``method`` in experiment ``exp``."""
    base = dataclasses.asdict(RunConfig(dataset=exp.dataset, model=exp.model, threshold=exp.threshold,
                                        noise=exp.noise, known=exp.initial_known,
                                        rounds=exp.rounds, repeats=exp.repeats, seed=exp.seed, bits=exp.bits,
                                        train=TrainConfig(epochs=exp.epochs)))
    for key, value in exp.overrides.items():
        if key not in base:
            raise CincerError(f"unknown RunConfig field {key!r} in overrides")
        if key in METHODS[method] and METHODS[method][key] != value:  # never a silent no-op
            raise CincerError(f"method {method} fixes {key}={METHODS[method][key]!r}; --set {key} applies to "
                              "methods that do not: choose them with --methods")
        base[key] = {**base[key], **value} if isinstance(base[key], dict) else value
    base.update(METHODS[method])
    try:
        config = RunConfig.from_dict(base).without_unused()  # an option applies to the methods that take it
    except TypeError as err:
        raise CincerError(f"bad overrides: {err}") from None
    if config.truncate is None and SELECTORS.accepts(config.selector, "truncate"):  # record the value used
        config.truncate = resolve_truncate(None, config.damping, config.relative_damping)
    return config


# --------------------------------------------------------------------------- Q2: fixed-model ranking

def run_ranking(config: RunConfig, *, data: Dataset | None = None,
                device: str | None = None) -> tuple[pd.DataFrame, dict]:
    """Q2 with one selector: one row per query (stream example the fixed model gets wrong)."""
    config.validate()
    data = data or load_dataset(config.dataset, seed=config.seed)
    config.check_fits(data)
    start = time.perf_counter()
    rows: list[dict] = []
    repeat_metrics = []
    for repeat in range(config.repeats):
        repeat_rows, metrics = _ranking_repeat(config, data, repeat, device)
        rows += repeat_rows
        repeat_metrics.append(metrics)
    trace = pd.DataFrame(rows, columns=_RANKING_COLUMNS)
    return trace, summarize_ranking(trace, repeat_metrics, config.repeats, seconds=time.perf_counter() - start)


_RANKING_COLUMNS = ["repeat", "query_index", "label", "prediction", "n_candidates", "noisy_candidates",
                    "chance"] + [f"pr{k}" for k in PRECISION_KS] + ["select_seconds"]


def _ranking_repeat(config: RunConfig, data: Dataset, repeat: int, device: str | None) -> tuple[list[dict], dict]:
    draw = on_device(draw_repeat(config, data, repeat), device)  # the same draws as simulate.run_repeat
    seed, X, noisy, known, stream, clean = draw.seed, draw.X, draw.noisy, draw.known, draw.stream, data.y_train
    learner = new_learner(config, data, draw).fit(X[known], noisy[known])
    labels = noisy.copy()
    labels[stream] = clean[stream]  # stream labels are clean: the query is the model's mistake
    is_noisy = labels != clean
    # every mistake is a query ('always'); D stays the initial known set: the model is fixed
    loop = CleaningLoop(learner, X, labels, known, inspect=INSPECTORS.create("always"),
                        select=config.make_selector(), rng=np.random.default_rng([seed, 2]))
    rows = []
    for index, probs in zip(stream, learner.predict_proba(X[stream])):
        t0 = time.perf_counter()
        query = loop.query(int(index), probs)
        if query is None:
            continue
        ranked = query.ranking.indices
        row = {"repeat": repeat, "query_index": int(index), "label": int(clean[index]),
               "prediction": query.prediction, "n_candidates": len(ranked),
               "noisy_candidates": int(is_noisy[ranked].sum()),
               "chance": float(is_noisy[ranked].mean()) if len(ranked) else float("nan"),
               "select_seconds": time.perf_counter() - t0}
        for k in PRECISION_KS:
            row[f"pr{k}"] = precision_at_k(ranked, is_noisy, k)
        rows.append(row)
    return rows, test_metrics(learner.predict_proba(draw.X_test), data.y_test)


def summarize_ranking(trace: pd.DataFrame, repeat_metrics: list[dict], repeats: int, *, seconds: float) -> dict:
    """precision@k averaged over the queries of a repeat, then mean and std over repeats."""
    summary: dict = {"status": "ok", "repeats": repeats, "queries_mean": len(trace) / repeats}
    per_repeat = trace.groupby("repeat")
    for col in [f"pr{k}" for k in PRECISION_KS] + ["chance"]:
        values = per_repeat[col].mean() if len(trace) else pd.Series(dtype=float)
        summary[f"{col}_mean"] = float(values.mean()) if len(values) else float("nan")
        summary[f"{col}_std"] = float(values.std(ddof=0)) if len(values) else float("nan")
    summary["f1_model_mean"] = float(np.mean([m["f1"] for m in repeat_metrics]))
    summary["select_seconds_mean"] = float(trace["select_seconds"].mean()) if len(trace) else float("nan")
    summary["seconds"] = seconds
    return summary


# --------------------------------------------------------------------------- running methods

def method_done(out: Path, method: str) -> bool:
    return (Path(out) / method / "summary.json").is_file()


def partial_folder(out: Path, method: str) -> Path:
    """Where a loop method keeps its finished repeats until all are done (resume after a crash)."""
    return Path(out) / f".{method}.partial"


def run_method(exp: ExperimentConfig, method: str, out: Path, *, force: bool = False,
               data: Dataset | None = None, device: str | None = None) -> str:
    """Run one method of an experiment into ``out/method`` unless finished; returns its status
    (``skipped``, ``ok`` or ``infeasible``). ``device`` (e.g. ``"cuda"``): where the models train."""
    out = Path(out)
    if method_done(out, method) and not force:
        return "skipped"
    if force:  # redo everything, saved repeats included
        shutil.rmtree(partial_folder(out, method), ignore_errors=True)
    config = method_config(exp, method)
    if exp.question == "q2":
        try:
            trace, summary = run_ranking(config, data=data, device=device)
        except CincerError as err:  # full_fisher above its size limit
            if config.selector != "full_fisher":
                raise
            trace, summary = pd.DataFrame(columns=_RANKING_COLUMNS), {"status": "infeasible", "reason": str(err)}
    else:
        trace, summary = run(config, progress=False, data=data, checkpoint=partial_folder(out, method),
                             device=device)
        summary = {"status": "ok", **summary}
    return _finish_method(exp, method, out, config, trace, summary)


def run_methods_together(exp: ExperimentConfig, methods: list[str], out: Path, *, force: bool = False,
                         data: Dataset | None = None, device: str | None = None) -> dict[str, str]:
    """Several loop methods of ``exp`` (Q1, Q3) with every repeat of every method in one lockstep, their
    models trained as one batched model (:func:`cincer.experiments.simulate.run_together`; their
    configurations must be ``batched``); each method's results as :func:`run_method` writes them."""
    out = Path(out)
    todo = [m for m in methods if force or not method_done(out, m)]
    for method in todo if force else []:
        shutil.rmtree(partial_folder(out, method), ignore_errors=True)
    configs = [method_config(exp, m) for m in todo]
    results = run_together(configs, progress=False, data=data, checkpoints=[partial_folder(out, m) for m in todo],
                           device=device) if todo else []
    status = dict.fromkeys(methods, "skipped")
    for method, config, (trace, summary) in zip(todo, configs, results):
        status[method] = _finish_method(exp, method, out, config, trace, {"status": "ok", **summary})
    return status


def _finish_method(exp: ExperimentConfig, method: str, out: Path, config: RunConfig, trace: pd.DataFrame,
                   summary: dict) -> str:
    summary = {"method": method, "question": exp.question, **summary}
    write_atomically(out, method, config, trace, summary)
    shutil.rmtree(partial_folder(out, method), ignore_errors=True)
    return summary["status"]


def write_atomically(out: Path, method: str, config: RunConfig, trace: pd.DataFrame, summary: dict) -> None:
    """Write into a hidden temporary folder, then rename it to ``out/method``."""
    tmp = temporary_folder(out, method)
    write_results(tmp, config, trace, summary)
    replace_folder(tmp, out / method)


def temporary_folder(out: Path, method: str) -> Path:
    """A hidden, unique sibling of ``out/method``: never mistaken for a finished method."""
    return out / f".{method}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def replace_folder(tmp: Path, target: Path) -> None:
    """Move a fully written folder into place, replacing an older one."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def write_experiment(out: Path, exp: ExperimentConfig, *, force: bool = False) -> ExperimentConfig:
    """``experiment.json``: the question, the methods and every setting (each method's RunConfig).

    A folder already holding the same experiment keeps its methods (new ones are appended), so
    methods can be run a few at a time; one holding other settings is refused unless ``force``."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "experiment.json").is_file():
        old = read_experiment(out)
        if dataclasses.replace(old, methods=None) == dataclasses.replace(exp, methods=None):
            union = list(dict.fromkeys((old.methods or []) + (exp.methods or [])))
            canon = QUESTIONS[exp.question]  # the question's order first, then any extra method
            ordered = sorted(union, key=lambda m: (canon.index(m) if m in canon else len(canon), union.index(m)))
            exp = dataclasses.replace(exp, methods=ordered)
        elif not force:
            diff = [f"{f.name}: {getattr(old, f.name)!r} -> {getattr(exp, f.name)!r}"
                    for f in dataclasses.fields(exp)
                    if f.name != "methods" and getattr(old, f.name) != getattr(exp, f.name)]
            raise CincerError(f"{out} holds an experiment with other settings ({'; '.join(diff)}); "
                              "use another folder, or --force to replace it")
    meta = {"experiment": dataclasses.asdict(exp),
            "methods": {m: dataclasses.asdict(method_config(exp, m)) for m in exp.methods or []},
            "notes": {"upper_bound": "same protocol with noise 0 and the 'never' inspector (clean labels, "
                                     "no queries); its known set and stream are drawn afresh from the same seed",
                      "cincer": f"the product's default: top-layer FIM over all known examples (exact), "
                                f"pseudo-inverse without the eigendirections below {DEFAULT_TRUNCATE:g} x its "
                                "mean eigenvalue",
                      "top_fisher": "top-layer FIM over all known examples (exact), pseudo-inverse",
                      "top_fisher_paper": f"top-layer FIM over {PAPER_FIM_SAMPLES} random known examples, "
                                          "pseudo-inverse (the paper's reference code)",
                      "top_fisher_damped": f"top-layer FIM over all known examples plus {DAMPED_RELATIVE:g} x its "
                                           "mean eigenvalue times I",
                      "drop_ce": "CINCER's counter-example from the exact top-layer FIM, pseudo-inverse",
                      "q2": "model trained once per repeat on the noisy known set; stream labels clean; "
                            "queries = stream examples the model gets wrong"}}
    tmp = out / f".experiment.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, out / "experiment.json")
    return exp


def read_experiment(out: Path) -> ExperimentConfig:
    path = Path(out) / "experiment.json"
    if not path.is_file():
        raise CincerError(f"{out} is not an experiment folder (no experiment.json)")
    return ExperimentConfig.from_dict(json.loads(path.read_text())["experiment"])


def collect_summary(out: Path, exp: ExperimentConfig) -> pd.DataFrame:
    """One row per finished method; written to ``out/summary.csv``."""
    rows = []
    for method in exp.methods or []:
        path = Path(out) / method / "summary.json"
        if path.is_file():
            rows.append({"dataset": exp.dataset, "model": exp.model, "question": exp.question,
                         **json.loads(path.read_text()), "method": method})
    frame = pd.DataFrame(rows)
    if rows:
        front = ["dataset", "model", "question", "method", "status"]
        frame = frame[front + [c for c in frame.columns if c not in front]]
    tmp = Path(out) / f".summary.csv.tmp-{os.getpid()}"
    frame.to_csv(tmp, index=False)
    os.replace(tmp, Path(out) / "summary.csv")
    return frame
