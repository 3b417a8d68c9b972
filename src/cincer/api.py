"""The public Python API: bring your own model and data.

:class:`Cleaner` is a scikit-learn estimator (``BaseEstimator``: the constructor only stores its
parameters, ``get_params``/``set_params``/``clone`` work, ``fit`` validates and returns ``self``, learned
state ends with ``_``) around a :class:`~cincer.loop.CleaningLoop`, with a learner from
:func:`~cincer.learners.make_learner`:

* any PyTorch classifier whose last module is a linear layer producing the logits (named with
  ``head="attr.path"`` or found as the last ``nn.Linear``), or
* a scikit-learn linear classifier with ``predict_proba`` (``LogisticRegression``,
  ``SGDClassifier(loss="log_loss")``), alone or as the last step of a ``Pipeline``.

The model given is never changed: ``fit`` trains a copy (``model_``). Two ways to clean: a stream
(``observe`` -> query or ``None``; ``answer`` applies the decision), or an audit of a whole labelled set
(``audit``, ``next_queries``: the examples the inspector flags, most suspicious first; ``label_issues``:
the same as a table). Every public method either completes or leaves the cleaner as it was
(:meth:`Cleaner._transaction`). ``save`` / ``load`` keep a session in open formats.
:func:`counterexamples` ranks the counter-examples of one example for an already trained model.
"""

from __future__ import annotations

import copy
import inspect as pyinspect
import numbers
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn

from . import progress
from .checkpoint import read_checkpoint, write_checkpoint
from .device import resolve_device
from .errors import CincerError, InputError, ModelError, QueryError, one_line
from .inspect import INSPECTORS, Inspector, audit_order
from .learners import Learner, SklearnLearner, TorchLearner, check_model, find_head, make_learner
from .loop import Answer, CleaningLoop, LoopState, Query, check_stages
from .models import TrainConfig
from .select import SELECTORS, Ranking, Selector, check_counterexample_order, weigh_by_suspicion
from .validation import as_features, check_labels, encode_label, encode_labels, one_row, split_dataset

__all__ = ["Cleaner", "LabelQuery", "counterexamples"]
RETRAIN = ("sync", "answer", "head", "defer")
STAGES = ("inspector", "threshold", "selector", "selector_params")  # take effect at once on a fitted cleaner
QUERY_ID = re.compile(r"^([0-9a-f]{8}):(\d+)$")


# --------------------------------------------------------------------------- queries

@dataclass
class LabelQuery:
    """A suspicious example and the evidence for the suspicion.

    ``id`` is stable and serialisable (``"<cleaner>:<n>"``): ``answer`` takes the query or its id, and
    a saved cleaner keeps its pending queries' ids. ``index`` is the example's position in the cleaner's
    pool (``fit`` data first, then observed examples); ``counterexamples`` are pool indices, best first,
    with their Fisher-kernel ``scores`` (support: how much each one pushes the model towards ``predicted``).
    """

    id: str
    index: int
    x: np.ndarray
    label: Any
    predicted: Any
    margin: float
    counterexamples: np.ndarray
    scores: np.ndarray
    counter_labels: list
    reason: str
    raw: Query = field(repr=False)

    @property
    def counterexample(self) -> int | None:
        """The counter-example shown with the query (``None`` when there is none)."""
        shown = self.raw.shown_counterexample
        return None if shown is None else int(shown)

    def to_dict(self) -> dict:
        """The query as plain JSON values (without ``x`` and the raw query)."""
        return {"id": self.id, "index": self.index, "label": self.label, "predicted": self.predicted,
                "margin": self.margin, "counterexample": self.counterexample,
                "counterexamples": [int(i) for i in self.counterexamples],
                "scores": [float(s) for s in self.scores], "counter_labels": list(self.counter_labels),
                "reason": self.reason}


@dataclass
class Issues:
    """The label issues of a fitted cleaner (:meth:`Cleaner.label_issues`), most suspicious first: pool
    indices, their current labels and the model's predictions (class indices), the suspicion scores, each
    one's counter-examples (at most ``k``, best first, with their scores), whether the probabilities were
    out of fold, and the share of D whose prediction disagrees with its label (an estimate of the noise)."""

    order: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray
    scores: np.ndarray
    rankings: list[Ranking]
    out_of_fold: bool
    disagreement: float


def _show(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _reason(classes: np.ndarray, q: Query, ranking: Ranking) -> str:
    label, pred = _show(classes[q.label]), _show(classes[q.prediction])
    text = (f"the model predicts {pred!r} (p={q.probs[q.prediction]:.2f}) but the label is {label!r} "
            f"(p={q.probs[q.label]:.2f}; margin {q.margin:.2f})")
    if q.shown_counterexample is not None:
        text += (f"; example #{q.shown_counterexample}, labelled {pred!r}, supports that prediction the most "
                 f"(Fisher support {ranking.scores[0]:.3g})")
    return text


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise CincerError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_cv(cv: Any) -> int | None:
    if cv is not None and (isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2):
        raise CincerError(f"cv must be an integer of at least 2 (the number of folds), got {cv!r}")
    return None if cv is None else int(cv)


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2**31:
        raise CincerError(f"seed must be an integer in [0, 2**31), got {value!r}")
    return int(value)


def _check_stage_values(selector: str, params: dict[str, Any], within: str = "selector_params") -> None:
    """What the selector's own checks let through: an infinite number (an infinite damping ranks nothing), or
    a bool for a parameter annotated as a number (``fim_samples=True`` is not one example)."""
    signature = pyinspect.signature(SELECTORS[selector]).parameters
    for key, value in params.items():
        name = f"{within}[{key!r}]" if within else key
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and not np.isfinite(float(value)):
            raise CincerError(f"{name} must be finite, got {value!r}")
        annotation = signature[key].annotation if key in signature else pyinspect.Parameter.empty
        if isinstance(value, (bool, np.bool_)) and annotation is not pyinspect.Parameter.empty \
                and "bool" not in str(annotation):
            raise CincerError(f"{name} must be {annotation}, got {value!r}")


def _short(value: Any) -> str:
    """A one-line repr: a torch module by its class and size, a function by its name."""
    if isinstance(value, nn.Module):
        return f"{type(value).__name__}(<{sum(p.numel() for p in value.parameters())} parameters>)"
    if callable(value) and hasattr(value, "__name__") and not isinstance(value, type):
        return value.__name__
    return " ".join(repr(value).split())


# --------------------------------------------------------------------------- the estimator

class Cleaner(BaseEstimator):
    """Interactive label cleaning (CINCER) around your own classifier.

    Parameters
    ----------
    model : a PyTorch ``nn.Module`` ending in a linear layer that outputs the logits, or a scikit-learn
        linear classifier with ``predict_proba`` (``LogisticRegression``, ``SGDClassifier(loss="log_loss")``),
        alone or as the last step of a ``Pipeline`` (the features are then the pipeline's transform of X).
        Never changed: ``fit`` trains a copy (``model_``).
    classes : the label values, in class-index order (default: the sorted labels seen by ``fit``).
    head : dotted path of the last linear layer (``model.get_submodule(head)``); default: the last
        ``nn.Linear`` among the modules. PyTorch models only.
    train_fn : ``train_fn(model, X, y)`` trains a torch model in place on tensors (``y`` long); default:
        :func:`cincer.models.train` with ``train_config``.
    train_config : :class:`~cincer.models.TrainConfig` of the built-in trainer.
    inspector, threshold : suspicion test (``INSPECTORS`` name) and its threshold (default: the
        inspector's own, 0.2 for the margin); it decides what ``observe`` and ``audit`` ask about.
    selector, selector_params : counter-example selector (``SELECTORS`` name) and its parameters.
    k : number of counter-examples kept in a query.
    retrain : ``"sync"`` retrain after every observed example and every answer (the paper), ``"answer"``
        only after answers, ``"head"`` after each answer refit only the last layer on the cached features
        (milliseconds; a full retrain every ``refit_every`` answers refreshes features and curvature),
        ``"defer"`` never by itself (call :meth:`refit`).
    refit_every : with ``retrain="head"``, the number of answers between full retrains.
    seed : seeds the training and the selector's random choices.
    device : where a PyTorch model and the pool live: ``"cpu"`` (default), ``"cuda"`` (``"cuda:1"``, ...)
        or ``"auto"`` (a GPU when there is one). A scikit-learn model runs on the CPU.

    ``set_params`` checks the values at once. On a fitted cleaner, ``k``, ``retrain``, ``refit_every``
    and the stage parameters (``inspector``, ``threshold``, ``selector``, ``selector_params``) apply from
    the next query or answer; the others at the next ``fit``.
    """

    def __init__(self, model: Any, *, classes: Sequence | None = None, head: str | None = None,
                 train_fn: Callable | None = None, train_config: TrainConfig | None = None,
                 inspector: str = "margin", threshold: float | None = None, selector: str = "top_fisher",
                 selector_params: dict | None = None, k: int = 5, retrain: str = "sync", refit_every: int = 20,
                 seed: int = 0, device: str = "cpu") -> None:
        self.model = model
        self.classes = classes
        self.head = head
        self.train_fn = train_fn
        self.train_config = train_config
        self.inspector = inspector
        self.threshold = threshold
        self.selector = selector
        self.selector_params = selector_params
        self.k = k
        self.retrain = retrain
        self.refit_every = refit_every
        self.seed = seed
        self.device = device

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:  # scikit-learn's signature
        defaults = {name: p.default for name, p in pyinspect.signature(type(self).__init__).parameters.items()}
        parts = [_short(self.model)]
        for name in self._get_param_names():
            value = getattr(self, name)
            if name == "model" or value is defaults.get(name):
                continue
            try:
                if bool(value == defaults.get(name)):
                    continue
            except (TypeError, ValueError):  # e.g. an array of classes
                pass
            parts.append(f"{name}={_short(value)}")
        text = f"{type(self).__name__}({', '.join(parts)})"
        return text if len(text) <= N_CHAR_MAX else text[:N_CHAR_MAX - 4] + "...)"

    def __sklearn_is_fitted__(self) -> bool:
        return "loop_" in vars(self)

    # ----------------------------------------------------------------- parameters

    def set_params(self, **params: Any) -> Cleaner:
        """Set parameters (``model__C`` reaches a scikit-learn model's own), checked before anything
        changes: an unknown name or a bad value is a :class:`CincerError` and nothing is set."""
        from sklearn.base import clone

        valid = self._get_param_names()
        plain: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, sep, sub = key.partition("__")
            if name not in valid or (sep and not sub):
                raise CincerError(f"unknown parameter {key!r} of Cleaner (choose from: {', '.join(valid)})")
            if sep:
                nested.setdefault(name, {})[sub] = value
            else:
                plain[name] = value
        candidate = {**self.get_params(deep=False), **plain}
        for name, inner in nested.items():
            target = candidate[name]
            if not hasattr(target, "set_params") or isinstance(target, type):
                raise CincerError(f"{name} ({type(target).__name__}) has no parameters to set: "
                                  f"{', '.join(name + '__' + s for s in inner)}")
            try:  # on a copy first: the model given is changed only when every value is valid
                trial = clone(target).set_params(**inner)
                for part in (trial, *trial.get_params(deep=True).values()):  # a pipeline's steps too
                    if hasattr(part, "_validate_params") and not isinstance(part, type):
                        part._validate_params()
            except CincerError:
                raise
            except (TypeError, ValueError) as err:
                raise CincerError(f"{name}: {one_line(err)}") from None
        inspect, select, _ = self._check_params(candidate)
        with self._transaction():
            for name, inner in nested.items():
                candidate[name].set_params(**inner)
            for name, value in plain.items():
                setattr(self, name, value)
            if self.__sklearn_is_fitted__() and any(name in plain for name in STAGES):
                for loop in (self.loop_, *self.folds_):
                    loop.inspect, loop.select = inspect, select
        return self

    def _check_params(self, p: dict[str, Any]) -> tuple[Inspector, Selector, torch.device | None]:
        """Every parameter's value, checked; returns the stages they make and the device."""
        model = p["model"]
        if p["train_fn"] is not None and not callable(p["train_fn"]):
            raise CincerError(f"train_fn must be a function train_fn(model, X, y), got {type(p['train_fn']).__name__}")
        check_model(model, train_fn=p["train_fn"])
        is_torch = isinstance(model, nn.Module)
        if p["classes"] is not None:
            _check_classes(p["classes"])
        if p["head"] is not None:
            if not isinstance(p["head"], str):
                raise CincerError(f"head must be the dotted name of a layer, e.g. 'classifier.fc', got {p['head']!r}")
            if not is_torch:
                raise ModelError("head= names a layer of a PyTorch model; a scikit-learn model's top layer is "
                                 "its last step")
            find_head(model, p["head"])
        config = p["train_config"]
        if config is not None:
            if not isinstance(config, TrainConfig):
                raise CincerError(f"train_config must be a cincer.models.TrainConfig, got {type(config).__name__}")
            try:
                config.validate()
            except TypeError as err:
                raise CincerError(f"train_config: {one_line(err)}") from None
        _positive_int("k", p["k"])
        if not isinstance(p["retrain"], str) or p["retrain"] not in RETRAIN:
            raise CincerError(f"retrain must be one of {', '.join(RETRAIN)}, got {p['retrain']!r}")
        _positive_int("refit_every", p["refit_every"])
        _seed(p["seed"])
        threshold = p["threshold"]
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
                                      or not np.isfinite(float(threshold))):
            raise CincerError(f"threshold must be a number (or None: the inspector's own), got {threshold!r}")
        params = p["selector_params"]
        if params is not None and (not isinstance(params, dict) or not all(isinstance(key, str) for key in params)):
            raise CincerError(f"selector_params must be a dict of parameter names to values, got {params!r}")
        if isinstance(p["selector"], str) and p["selector"] in SELECTORS:
            _check_stage_values(p["selector"], params or {})
        for kind, name in (("inspector", p["inspector"]), ("selector", p["selector"])):
            if not isinstance(name, str):
                raise CincerError(f"{kind} must be a registered name, got {type(name).__name__}")
        try:
            inspect = INSPECTORS.create(p["inspector"], **({} if threshold is None else {"threshold": threshold}))
            select = SELECTORS.create(p["selector"], **(params or {}))
        except CincerError:
            raise
        except (TypeError, ValueError) as err:  # a value of the wrong type for a stage's own check
            raise CincerError(f"{p['selector']}/{p['inspector']}: {one_line(err)}") from None
        check_stages(is_torch, inspect, select)
        device = resolve_device(p["device"])
        if device is not None and device.type != "cpu" and not is_torch:
            raise ModelError(f"device={p['device']!r} applies to PyTorch models: a scikit-learn model runs on the CPU")
        return inspect, select, device

    # ----------------------------------------------------------------- transactions

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Everything inside happens, or nothing: on an exception the cleaner is put back as it was, its
        attributes (parameters and learned state: pending queries, history, counters, ...), its loops'
        pools, labels, D, checked examples and random states, and the models' weights."""
        saved = dict(vars(self))
        contents = {name: copy.copy(saved[name]) for name in ("pending_", "history_", "folds_") if name in saved}
        loops: list[CleaningLoop] = [saved["loop_"], *saved.get("folds_", [])] if "loop_" in saved else []
        states = [loop.snapshot(model=True) for loop in loops]
        try:
            yield
        except BaseException:
            for loop, state in zip(loops, states):
                loop.restore(state)
            self.__dict__.clear()
            self.__dict__.update(saved)
            for name, content in contents.items():  # the same objects, with their contents of before
                target = saved[name]
                if isinstance(target, dict):
                    target.clear()
                    target.update(content)
                else:
                    target[:] = content
            raise

    # ----------------------------------------------------------------- fit

    def fit(self, X: Any, y: Any = None) -> Cleaner:
        """Validate the data, fit a copy of the model on it; ``X`` may be an array, a DataFrame or a torch
        Dataset of ``(x, y)`` pairs. A failure leaves the cleaner as it was (fitted or not)."""
        with self._transaction():
            self._fit(X, y)
        return self

    def _fit(self, X: Any, y: Any) -> None:
        inspect, select, device = self._check_params(self.get_params(deep=False))
        X, y = self._validate_xy(X, y)
        classes = np.unique(y) if self.classes is None else np.asarray(list(self.classes))
        if len(classes) < 2:
            raise InputError(f"the labels hold a single class ({_show(classes[0])!r}): need at least two classes")
        labels = encode_labels(y, classes)
        if len(np.unique(labels)) < 2:
            raise InputError(f"the labels hold a single class ({_show(classes[labels[0]])!r}) of the declared "
                             f"{len(classes)}: need examples of at least two classes")
        learner = self._new_learner(len(classes), device)
        X_pool = torch.tensor(X, dtype=learner.dtype, device=device)  # a copy: the caller's array is never shared
        if isinstance(learner, TorchLearner):
            learner.check(X_pool, len(classes))
        self.classes_ = classes
        self.learner_ = learner
        self.rng_ = np.random.default_rng(self.seed)
        self.loop_ = CleaningLoop(learner, X_pool, labels, np.arange(len(labels)), inspect=inspect,
                                  select=select, rng=self.rng_, skip_checked=True)
        self.folds_: list[CleaningLoop] = []
        self.pending_: dict[str, LabelQuery] = {}
        self.history_: list[dict] = []
        self.n_queries_ = 0
        self.uid_ = uuid.uuid4().hex[:8]  # names this fit's queries: one from elsewhere is refused
        self._train()

    def _new_learner(self, n_classes: int, device: torch.device | None, fold: int | None = None) -> Learner:
        """A learner around a copy of the model as given (on ``device``); fold ``k`` of a cross-fitted audit
        gets its own seed."""
        model = self.model
        if isinstance(model, nn.Module):
            model = copy.deepcopy(model)
            if device is not None:
                model = model.to(device)
        seed = self.seed if fold is None else self.seed + 1000 * (fold + 1)
        return make_learner(model, n_classes=n_classes, config=self.train_config, train_fn=self.train_fn,
                            head=self.head, seed=seed, feature_dtype=torch.float64)

    def _validate_xy(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(X, torch.utils.data.DataLoader):
            raise InputError("X is a torch DataLoader: pass its dataset, fit(loader.dataset) (a Dataset of (x, y) "
                             "pairs), or arrays X and y")
        if isinstance(X, torch.utils.data.Dataset) and not isinstance(X, torch.Tensor):
            if y is not None:
                raise InputError("pass either a torch Dataset of (x, y) pairs or X and y, not both")
            X, y = split_dataset(X)
        if y is None:
            raise InputError("labels y are missing: fit(X, y), or fit(dataset) with a torch Dataset of (x, y) pairs")
        X = as_features(X)
        y = check_labels(y, classes_given=self.classes is not None)
        if len(X) != len(y):
            raise InputError(f"X has {len(X)} rows but y has {len(y)} labels")
        if len(X) < 2:
            raise InputError("need at least two examples")
        return X, y

    def _check_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise CincerError("this Cleaner is not fitted yet: call fit(X, y) first")

    # ----------------------------------------------------------------- state

    @property
    def X_(self) -> torch.Tensor:
        """The pool: the ``fit`` data followed by the observed examples."""
        self._check_fitted()
        return self.loop_.X

    @property
    def labels_(self) -> np.ndarray:
        """The current labels of the pool (after the corrections), as class values."""
        self._check_fitted()
        return self.classes_[self.loop_.labels]

    @property
    def fisher_method_(self) -> str | None:
        """How the FIM of the current model was built: ``dense`` or ``gram`` (exact), ``ekfac`` or ``kfac``
        (a Kronecker-factored approximation, chosen when the exact one is too costly; see
        :func:`cincer.fisher.top_layer_solver`), ``None`` before the first one."""
        self._check_fitted()
        return self.loop_.fisher_method

    @property
    def model_(self) -> Any:
        """The fitted model: a trained copy of ``model`` (the torch module, or the scikit-learn estimator)."""
        self._check_fitted()
        return self.learner_.model

    def _rows(self, X: Any, name: str = "X") -> torch.Tensor:
        """Examples shaped like the pool's, as a tensor on the pool's device."""
        X = as_features(X, name=name)
        shape, pool = X.shape[1:], tuple(self.loop_.X.shape[1:])
        if shape != pool:
            raise InputError(f"{name} has examples of shape {shape}, the cleaner was fitted on shape {pool}")
        return torch.as_tensor(X, dtype=self.loop_.X.dtype, device=self.loop_.X.device)

    def predict_proba(self, X: Any) -> np.ndarray:
        self._check_fitted()
        return self.learner_.predict_proba(self._rows(X))

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def refit(self) -> Cleaner:
        """Retrain on the current labels of every example in D (what ``retrain='defer'`` postpones)."""
        self._check_fitted()
        with self._transaction():
            self._train()
        return self

    def _train(self) -> None:
        self.loop_.retrain()
        self.stale_ = False
        self._head_refits = 0
        if self.retrain != "sync":  # several queries will share this model: compute what they reuse now
            self.loop_.prepare()

    # ----------------------------------------------------------------- stream

    def observe(self, x: Any, y: Any) -> LabelQuery | None:
        """Add one labelled example; return a :class:`LabelQuery` when it looks mislabelled, else ``None``."""
        self._check_fitted()
        row = self._rows(one_row(x), name="x")
        label = encode_label(y, self.classes_, name="y")
        with self._transaction():  # e.g. a user selector or a retrain failing leaves the cleaner as it was
            self.folds_ = []  # a cross-fitted audit covers the examples it started with
            index = self.loop_.add(row[0], label)
            query = self.loop_.query(index)
            if query is None:
                self._maybe_retrain(self.retrain == "sync")
                return None
            return self._register(query)

    def next_queries(self, n: int = 1) -> list[LabelQuery]:
        """The ``n`` most suspicious examples of the pool (D: the ``fit`` data and the observed examples)
        that are neither pending nor checked, as queries built with the current model and labels (fewer
        when fewer are flagged). Like modAL's ``query(n_instances=n)``; answer them in any order."""
        n = _positive_int("n", n)
        self._check_fitted()
        with self._transaction():
            pending = {q.index for q in self.pending_.values()}
            found: list[LabelQuery] = []
            for index in self.loop_.audit_order():
                if len(found) == n:
                    break
                if int(index) in pending:
                    continue
                query = self.loop_.query(int(index))
                if query is not None:
                    found.append(self._register(query))
            return found

    def _register(self, query: Query) -> LabelQuery:
        ranking = Ranking(query.ranking.indices[:self.k], query.ranking.scores[:self.k])
        lq = LabelQuery(f"{self.uid_}:{self.n_queries_}", query.index,
                        self.X_[query.index].cpu().numpy().copy(), _show(self.classes_[query.label]),
                        _show(self.classes_[query.prediction]), query.margin, ranking.indices.copy(),
                        ranking.scores.copy(), [_show(self.classes_[self.loop_.labels[i]]) for i in ranking.indices],
                        _reason(self.classes_, query, ranking), query)
        self.pending_[lq.id] = lq
        self.n_queries_ += 1
        return lq

    def _pending(self, query: Any) -> LabelQuery:
        """The pending query that ``query`` (a :class:`LabelQuery` or its id) names, else a QueryError saying why."""
        if isinstance(query, LabelQuery):
            qid = query.id
        elif isinstance(query, str):
            qid = query
        else:
            raise QueryError(f"unknown query (a {type(query).__name__}): answer a LabelQuery returned by this "
                             "cleaner's observe(), next_queries() or audit(), or its id")
        match = QUERY_ID.match(qid) if isinstance(qid, str) else None
        if match is None:
            raise QueryError(f"unknown query {qid!r}: not a query id (ids look like '{self.uid_}:0')")
        if match.group(1) != self.uid_:
            raise QueryError(f"query {qid!r} comes from another cleaner (or from before this one was fitted again): "
                             "answer it with the cleaner that asked it")
        if qid in self.pending_:
            return self.pending_[qid]
        if any(h["query"] == qid for h in self.history_):
            raise QueryError(f"query {qid!r} was already answered")
        raise QueryError(f"unknown query {qid!r}: this cleaner asked no such query")

    def answer(self, query: LabelQuery | str, suspicious_label: Any = None, counter_label: Any = None, *,
               retrain: bool | None = None) -> dict:
        """Apply the annotator's labels (``None`` keeps a label) and retrain (unless deferred).

        ``query`` is a pending :class:`LabelQuery` or its id. Returns ``{pool index: (old label, new
        label)}`` for every label that changed.
        """
        self._check_fitted()
        pending = self._pending(query)
        if retrain is not None and not isinstance(retrain, (bool, np.bool_)):
            raise CincerError(f"retrain must be True, False or None (the cleaner's setting), got {retrain!r}")
        qid = pending.id
        new_s = None if suspicious_label is None else encode_label(suspicious_label, self.classes_,
                                                                   name="suspicious_label")
        new_c = None
        if counter_label is not None:
            if pending.counterexample is None:
                raise QueryError(f"query {qid!r} has no counter-example to relabel")
            new_c = encode_label(counter_label, self.classes_, name="counter_label")
        answer = Answer(new_s, new_c)
        with self._transaction():
            update = self.loop_.apply(pending.raw, answer)
            for fold in self.folds_:  # the fold models of a cross-fitted audit see the same labels
                fold.apply(pending.raw, answer)
            del self.pending_[qid]
            changed = {i: (_show(self.classes_[a]), _show(self.classes_[b])) for i, (a, b) in update.relabelled.items()}
            self.history_.append({"query": qid, "index": pending.index, "counterexample": pending.counterexample,
                                  "changed": changed, "dropped": list(update.dropped)})
            if retrain is None and self.retrain == "head" and self._head_refits + 1 < self.refit_every:
                self.loop_.retrain_head()
                self._head_refits += 1
            else:
                self._maybe_retrain(self.retrain != "defer" if retrain is None else bool(retrain))
        return changed

    def _maybe_retrain(self, now: bool) -> None:
        if now:
            self._train()
        else:
            self.stale_ = True

    # ----------------------------------------------------------------- audit

    def audit(self, X: Any = None, y: Any = None, *, budget: int, cv: int | None = None,
              batch: int | None = None) -> Iterator[Any]:
        """At most ``budget`` queries about the examples the inspector flags, most suspicious first.

        With ``X, y`` the cleaner is first fitted on them; without, the fitted pool is audited. The
        order is the inspector's suspicion (for the margin inspector: the margin) under the model
        fitted on all the data (:meth:`cincer.loop.CleaningLoop.audit_order`); each query is built when
        it is reached (with the model and labels current then), and skipped if the example is no longer
        suspicious (e.g. it was fixed as an earlier counter-example). Answer each with :meth:`answer`;
        ``retrain='defer'`` keeps one fit for the whole audit. ``batch=n`` yields lists of up to ``n``
        queries built together (modAL's ``n_instances``); ``budget`` still counts queries.

        ``cv=K`` does not trust a model that memorised its training labels (the practice of confident
        learning): K models are trained, each without one stratified fold; the order comes from each
        example's out-of-fold probabilities, and its counter-examples from the fold model that did not
        train on it (candidates: that model's training examples). The fold models are trained once, at
        the start of the audit; the audit ends if an example is observed meanwhile.
        """
        budget = _positive_int("budget", budget)
        cv = _check_cv(cv)
        if batch is not None:
            batch = _positive_int("batch", batch)
        if X is None and y is not None:
            raise InputError("audit: labels given without X")
        with self._transaction():
            if X is not None:
                self._fit(X, y)
            self._check_fitted()
            if cv is None:
                self.folds_ = []
                order, probs = self.loop_.audit_order(), None
                fold_of = None
            else:
                if self.loop_.inspect.needs_model:
                    raise CincerError(f"cv={cv}: a cross-fitted audit orders by out-of-fold probabilities, and the "
                                      f"inspector {self.inspector!r} scores with the model itself (use cv=None)")
                fold_of, probs = self._cross_fit(int(cv))
                known = self.loop_.known
                order = known[audit_order(self.loop_.inspect, probs[known], self.loop_.labels[known], self.rng_)]
        return self._audit(order, budget, fold_of, probs, batch)

    def _cross_fit(self, cv: int) -> tuple[np.ndarray, np.ndarray]:
        """Train the fold models (``folds_``); returns each example's fold and out-of-fold probabilities."""
        from sklearn.model_selection import StratifiedKFold

        known, labels = self.loop_.known, self.loop_.labels
        counts = np.bincount(labels[known], minlength=len(self.classes_))
        if counts[counts > 0].min() < cv:
            raise InputError(f"cv={cv}: a class has only {counts[counts > 0].min()} examples, fewer than the folds")
        fold_of = np.full(len(labels), -1)
        probs = np.zeros((len(labels), len(self.classes_)))
        self.folds_ = []
        splitter = StratifiedKFold(n_splits=cv, shuffle=True, random_state=self.seed)
        device = self.loop_.X.device
        for k, (train, held) in enumerate(progress.track(splitter.split(known, labels[known]), total=cv,
                                                         desc="cross-fitting", unit="fold")):
            loop = CleaningLoop(self._new_learner(len(self.classes_), device, fold=k), self.X_, labels, known[train],
                                inspect=self.loop_.inspect, select=self.loop_.select,
                                rng=np.random.default_rng([self.seed, k]), skip_checked=True,
                                checked=self.loop_.checked)
            loop.retrain()
            loop.prepare()
            fold_of[known[held]] = k
            probs[known[held]] = loop.learner.predict_proba(self.X_[known[held]])
            self.folds_.append(loop)
        return fold_of, probs

    def _audit(self, order: np.ndarray, budget: int, fold_of: np.ndarray | None, probs: np.ndarray | None,
               batch: int | None) -> Iterator[Any]:
        uid, folds = self.uid_, self.folds_
        asked = position = 0
        while asked < budget and position < len(order):
            if self.uid_ != uid:
                raise CincerError("this audit is over: the cleaner was fitted again since it started")
            if fold_of is not None and self.folds_ is not folds:
                raise CincerError("this cross-fitted audit is over: an example was observed since it started (its "
                                  "fold models cover the examples it started with); start a new audit")
            want = 1 if batch is None else min(batch, budget - asked)
            found: list[LabelQuery] = []
            with self._transaction():
                while len(found) < want and position < len(order):
                    index = int(order[position])
                    position += 1
                    loop = self.loop_ if fold_of is None else self.folds_[fold_of[index]]
                    query = loop.query(index, None if probs is None else probs[index])
                    if query is not None:
                        found.append(self._register(query))
            if not found:
                return
            asked += len(found)
            yield found[0] if batch is None else found

    # ----------------------------------------------------------------- review

    def label_issues(self, max_issues: int | None = None, *, cv: int | None = None,
                     counterexamples: str = "support") -> Any:
        """The examples the inspector flags, most suspicious first, as a pandas DataFrame (like cleanlab's
        ``find_label_issues(..., return_indices_ranked_by=...)``), for a review in a notebook.

        Index: the pool index (``index``); columns: ``given_label`` (the current label), ``suggested_label``
        (the model's prediction), ``suspicion`` (the inspector's score; for the margin inspector, the
        margin) and ``counterexamples`` (up to ``k`` pool indices, best first). Examples a person has
        checked are left out. Nothing changes: no query is registered and the random state is kept.

        ``cv=K``: out of fold, as :meth:`audit` with ``cv=K``: K fold models are trained (each without one
        stratified fold), each example is judged by the probabilities of the model that did not train on
        it and its counter-examples come from that model's training examples. The fold models are not kept.
        :func:`cincer.find_label_issues` is the same table for a file or a DataFrame (its counter-examples
        ordered by ``"suspect"`` unless told otherwise).

        ``counterexamples``: ``"support"`` (default: CINCER's ranking, the one the queries of :meth:`audit`
        and :meth:`observe` show) or ``"suspect"`` (that support times the candidate's own probability of
        being mislabelled, out of fold with ``cv``: supporters that are themselves likely wrong first, which
        finds more wrong labels per example read, docs/SCALE.md; :func:`cincer.find_label_issues`' default).
        """
        import pandas as pd

        found = self._issues(max_issues, cv, counterexamples)
        return pd.DataFrame({"given_label": [_show(c) for c in self.classes_[found.labels]],
                             "suggested_label": [_show(c) for c in self.classes_[found.predicted]],
                             "suspicion": found.scores,
                             "counterexamples": [[int(i) for i in r.indices] for r in found.rankings]},
                            index=pd.Index(found.order, name="index"))

    def _issues(self, max_issues: int | None, cv: int | None, counterexamples: str = "support") -> Issues:
        """What :meth:`label_issues` shows, with the counter-examples' scores and the share of D whose
        (out-of-fold, with ``cv``) prediction disagrees with its label; changes nothing."""
        self._check_fitted()
        limit = None if max_issues is None else _positive_int("max_issues", max_issues)
        cv = _check_cv(cv)
        check_counterexample_order(counterexamples)
        loop = self.loop_
        rng_state, folds = loop.rng.bit_generator.state, self.folds_
        try:
            known = loop.known
            if cv is None:
                order, scores = loop.suspicious()
                probs = np.zeros((len(loop.labels), len(self.classes_)))
                if len(known):
                    probs[known] = self.learner_.predict_proba(loop.X[known])
                rankers = [loop] * len(order)
            else:
                if loop.inspect.needs_model:
                    raise CincerError(f"cv={cv}: out-of-fold issues are ordered by out-of-fold probabilities, and "
                                      f"the inspector {self.inspector!r} scores with the model (use cv=None)")
                fold_of, probs = self._cross_fit(cv)
                order = known[audit_order(loop.inspect, probs[known], loop.labels[known], loop.rng)]
                scores = loop.inspect.scores(probs[order], loop.labels[order])
                rankers = [self.folds_[fold_of[i]] for i in order]
            keep = ~np.isin(order, loop.checked)
            order = np.asarray(order, dtype=np.int64)[keep][:limit]
            scores = np.asarray(scores, dtype=np.float64)[keep][:limit]
            rankers = [r for r, kept in zip(rankers, keep) if kept][:limit]
            predicted = probs[order].argmax(axis=1) if len(order) else np.zeros(0, np.int64)
            rankings = [r.rank(int(i), int(p)) if p != loop.labels[i] else Ranking.empty()
                        for r, i, p in progress.track(zip(rankers, order, predicted), total=len(order),
                                                      desc="counter-examples", unit="issue")]
            if counterexamples == "suspect":  # probs: in-sample, or out of fold with cv
                rankings = [weigh_by_suspicion(r, probs[r.indices, loop.labels[r.indices]]) for r in rankings]
            rankings = [Ranking(r.indices[:self.k].astype(np.int64), np.asarray(r.scores[:self.k], np.float64))
                        for r in rankings]
            disagree = float(np.mean(probs[known].argmax(axis=1) != loop.labels[known])) if len(known) else 0.0
            return Issues(order, np.asarray(loop.labels[order], dtype=np.int64), predicted.astype(np.int64), scores,
                          rankings, cv is not None, disagree)
        finally:
            loop.rng.bit_generator.state = rng_state
            self.folds_ = folds

    # ----------------------------------------------------------------- checkpoints

    def save(self, path: str | os.PathLike) -> str:
        """Save the session to folder ``path`` in open formats (never pickle): the model's weights in
        safetensors (a scikit-learn model's fitted arrays in NPZ), the pool, labels, D, checked examples and
        random state in NPZ/JSON, with the parameters, pending queries, history and counters.
        :meth:`load` continues it exactly where it stopped (an audit in progress is not kept: its pending
        queries are; ask for more with :meth:`next_queries` or a new :meth:`audit`)."""
        self._check_fitted()
        params = self.get_params(deep=False)
        del params["model"]
        params["train_fn"] = self.train_fn is not None
        params["train_config"] = None if self.train_config is None else self.train_config.to_dict()
        params["device"] = None if self.device is None else str(self.device)  # e.g. torch.device("cpu")
        if params["classes"] is not None:
            params["classes"] = [_show(c) for c in params["classes"]]
        loop = self.loop_
        snap = loop.snapshot()
        learner_meta, tensors, learner_arrays = self.learner_.export_state()  # type: ignore[attr-defined]
        arrays: dict[str, np.ndarray] = {"classes": np.asarray(self.classes_), "pool": loop.X.cpu().numpy(),
                                         "labels": snap.labels, "known": snap.known,
                                         "checked": np.flatnonzero(snap.checked), **learner_arrays}
        pending = []
        for i, q in enumerate(self.pending_.values()):
            raw = q.raw
            arrays.update({f"pending.{i}.probs": np.asarray(raw.probs, dtype=np.float64),
                           f"pending.{i}.ranking_indices": np.asarray(raw.ranking.indices, dtype=np.int64),
                           f"pending.{i}.ranking_scores": np.asarray(raw.ranking.scores, dtype=np.float64)})
            pending.append({"id": q.id, "index": raw.index, "label": raw.label, "prediction": raw.prediction,
                            "policy": raw.policy, "counter_labels": [encode_label(c, self.classes_) for c in
                                                                     q.counter_labels]})
        history = [{**h, "changed": [[i, encode_label(a, self.classes_), encode_label(b, self.classes_)]
                                     for i, (a, b) in h["changed"].items()]} for h in self.history_]
        state = {"params": params, "uid": self.uid_, "n_queries": self.n_queries_, "stale": self.stale_,
                 "head_refits": self._head_refits, "rng": snap.rng, "model_epoch": snap.model_epoch,
                 "head_fits": snap.head_fits, "learner": learner_meta, "pending": pending, "history": history}
        return str(write_checkpoint(path, state, arrays, tensors))

    @classmethod
    def load(cls, path: str | os.PathLike, model: Any, **params: Any) -> Cleaner:
        """A cleaner saved with :meth:`save`, around ``model`` (the same architecture: its weights are
        replaced by the saved ones; for scikit-learn, an estimator with the same steps). ``params`` override
        saved parameters, e.g. ``train_fn=`` (a function is not saved) or ``device="cpu"``."""
        state, arrays, tensors = read_checkpoint(path)
        try:
            return cls._from_checkpoint(state, arrays, tensors, model, params)
        except CincerError:
            raise
        except (KeyError, IndexError, TypeError, ValueError) as err:  # a file edited by hand, or truncated
            raise CincerError(f"{str(path)!r} is not a readable cincer checkpoint: {one_line(err)}") from None

    @classmethod
    def _from_checkpoint(cls, state: dict, arrays: dict[str, np.ndarray], tensors: dict[str, torch.Tensor],
                         model: Any, params: dict[str, Any]) -> Cleaner:
        saved = dict(state["params"])
        had_train_fn = saved.pop("train_fn")
        if had_train_fn and params.get("train_fn") is None:
            raise CincerError("this cleaner was saved with a train_fn, which a checkpoint cannot hold: pass it "
                              "again, Cleaner.load(path, model, train_fn=...)")
        if saved["train_config"] is not None:
            saved["train_config"] = TrainConfig.from_dict(saved["train_config"])
        cleaner = cls(model, **saved)
        if params:
            cleaner.set_params(**params)
        inspect, select, device = cleaner._check_params(cleaner.get_params(deep=False))
        classes = arrays["classes"]
        learner = cleaner._new_learner(len(classes), device)
        learner.import_state(state["learner"], tensors, arrays)  # type: ignore[attr-defined]
        pool = torch.as_tensor(arrays["pool"], dtype=learner.dtype, device=device)
        checked = np.zeros(len(pool), dtype=bool)
        checked[arrays["checked"]] = True
        rng = np.random.default_rng()
        loop = CleaningLoop(learner, pool, arrays["labels"], arrays["known"], inspect=inspect, select=select, rng=rng,
                            skip_checked=True)
        loop.restore(LoopState(len(pool), arrays["labels"], checked, arrays["known"], state["rng"],
                               state["model_epoch"], state["head_fits"], learner))
        cleaner.classes_, cleaner.learner_, cleaner.rng_, cleaner.loop_ = classes, learner, rng, loop
        cleaner.folds_, cleaner.pending_ = [], {}
        cleaner.uid_, cleaner.n_queries_ = state["uid"], state["n_queries"]
        cleaner.stale_, cleaner._head_refits = state["stale"], state["head_refits"]
        cleaner.history_ = [{**h, "changed": {int(i): (_show(classes[a]), _show(classes[b]))
                                              for i, a, b in h["changed"]}} for h in state["history"]]
        for i, q in enumerate(state["pending"]):
            raw = Query(q["index"], q["label"], q["prediction"], arrays[f"pending.{i}.probs"],
                        Ranking(arrays[f"pending.{i}.ranking_indices"], arrays[f"pending.{i}.ranking_scores"]),
                        q["policy"])
            ranking = Ranking(raw.ranking.indices[:cleaner.k], raw.ranking.scores[:cleaner.k])
            cleaner.pending_[q["id"]] = LabelQuery(
                q["id"], raw.index, pool[raw.index].cpu().numpy().copy(), _show(classes[raw.label]),
                _show(classes[raw.prediction]), raw.margin, ranking.indices.copy(), ranking.scores.copy(),
                [_show(classes[c]) for c in q["counter_labels"]], _reason(classes, raw, ranking), raw)
        if cleaner.retrain != "sync":  # what fit prepared for the queries of this model
            loop.prepare()
        return cleaner


def _check_classes(classes: Any) -> None:
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise CincerError(f"classes must be a list of the label values, got {type(classes).__name__}")
    values = check_labels(list(classes), name="classes", classes_given=True)
    if len(set(values.tolist())) != len(values):
        raise InputError(f"classes has duplicates: {values.tolist()}")
    if len(values) < 2:
        raise InputError(f"classes must list at least two classes, got {values.tolist()}")


# --------------------------------------------------------------------------- functional API

def counterexamples(model: Any, X_train: Any, y_train: Any, x: Any, y: Any, k: int = 5, *, head: str | None = None,
                    fim_samples: int | None = None, damping: float = 0.0, truncate: float | None = None,
                    seed: int = 0, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """CINCER's counter-examples of ``(x, y)`` among ``(X_train, y_train)`` for an already trained model.

    Candidates are the training examples labelled with the model's prediction for ``x``; they are
    ranked by the top-layer Fisher-kernel support ``-g_x^T F^+ g_k`` (the ``top_fisher`` selector, FIM
    over ``fim_samples`` random training examples, default all; ``F^+`` without the eigendirections below
    ``truncate`` times its mean eigenvalue, default :data:`cincer.fisher.DEFAULT_TRUNCATE`; 0: the paper's).
    ``y_train`` and ``y`` are class indices (``0..C-1``; for scikit-learn, values of ``model.classes_``).
    ``device``: where a PyTorch model computes (``"cpu"``, ``"cuda"``, ``"auto"``; a copy is moved: the model
    given is not changed).
    Returns the top ``k`` training indices and their scores, best first (empty arrays when no example
    carries the predicted label).
    """
    k = _positive_int("k", k)
    seed = _seed(seed)
    _check_stage_values("top_fisher", {"fim_samples": fim_samples, "damping": damping, "truncate": truncate},
                        within="")
    try:
        select = SELECTORS.create("top_fisher", fim_samples=fim_samples, damping=damping, truncate=truncate)
    except CincerError:
        raise
    except (TypeError, ValueError) as err:
        raise CincerError(f"top_fisher: {one_line(err)}") from None
    X_train = as_features(X_train, name="X_train")
    x = as_features(one_row(x), name="x")
    if x.shape[1:] != X_train.shape[1:]:
        raise InputError(f"x has shape {x.shape[1:]}, X_train rows have shape {X_train.shape[1:]}")
    y_train = check_labels(y_train, name="y_train", classes_given=True)
    if len(X_train) != len(y_train):
        raise InputError(f"X_train has {len(X_train)} rows but y_train has {len(y_train)} labels")
    dev = resolve_device(device)
    check_model(model)
    if isinstance(model, nn.Module):
        model = copy.deepcopy(model)  # put in eval mode and maybe moved: the caller's model stays as it is
        if dev is not None:
            model = model.to(dev)
    elif dev is not None and dev.type != "cpu":
        raise ModelError(f"device={device!r} applies to PyTorch models: a scikit-learn model runs on the CPU")
    learner = make_learner(model, head=head, seed=seed, feature_dtype=torch.float64)
    if isinstance(learner, SklearnLearner):
        classes = np.asarray(learner.top.classes_)
        expected = getattr(learner.model, "n_features_in_", None)
        width = int(np.prod(X_train.shape[1:]))
        if expected is not None and expected != width:
            raise InputError(f"X_train has {width} features per example, the model was fitted on {expected}")
    else:
        classes = np.arange(learner.head.out_features)
    labels = encode_labels(y_train, classes, name="y_train")
    target = encode_label(y, classes, name="y")
    X = torch.as_tensor(np.concatenate([X_train, x]), dtype=learner.dtype, device=dev)
    if isinstance(learner, TorchLearner):
        learner.check(X, len(classes))
    t = len(X_train)
    loop = CleaningLoop(learner, X, np.append(labels, target), np.arange(t), inspect=INSPECTORS.create("always"),
                        select=select, rng=np.random.default_rng(seed))
    prediction = int(np.argmax(learner.predict_proba(X[[t]])[0]))
    ranking = loop.rank(t, prediction)
    return ranking.indices[:k].astype(np.int64), np.asarray(ranking.scores[:k], dtype=np.float64)
