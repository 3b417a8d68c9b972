"""The public Python API: bring your own model and data.

:class:`Cleaner` follows the scikit-learn contract (the constructor only stores its parameters,
``fit`` validates and returns ``self``, learned state ends with ``_``) and wraps

* any PyTorch classifier whose last module is a linear layer producing the logits (named with
  ``head="attr.path"`` or found as the last ``nn.Linear``; the penultimate features are read with a
  forward hook on that layer's input), or
* a scikit-learn ``LogisticRegression`` (its top layer is the whole model: features = X, the
  probabilities come from ``predict_proba``).

Two ways to clean: a stream (``observe`` -> query or ``None``; ``answer`` applies the decision), or an
audit of a whole labelled set (``audit``: the most suspicious examples first). Both reuse the engine:
:class:`~cincer.learner.Learner`, :class:`~cincer.loop.CleaningLoop`, ``INSPECTORS`` and ``SELECTORS``.
"""

from __future__ import annotations

import copy
import importlib
import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .errors import CincerError
from .inspect import INSPECTORS
from .learner import Learner
from .loop import Answer, CleaningLoop, Query
from .models import TrainConfig
from .select import SELECTORS, Ranking, SelectionContext, candidates_for, top_fisher_ranking, with_policy

__all__ = ["Cleaner", "LabelQuery", "InputError", "ModelError", "QueryError", "counterexamples",
           "register_selector", "register_inspector", "load_plugins", "PLUGINS_ENV"]

PLUGINS_ENV = "CINCER_PLUGINS"
TORCH_ONLY_SELECTORS = ("full_fisher", "practical_fisher", "influence")


class InputError(CincerError):
    """Bad data or labels: NaN/inf features, unknown labels, a single class, mismatched lengths."""


class ModelError(CincerError):
    """A model the Cleaner cannot wrap (its last layer is not linear, unsupported type, ...)."""


class QueryError(CincerError):
    """An answer to a query that does not exist, was already answered, or a label it cannot take."""


# --------------------------------------------------------------------------- learners for user models

class TorchLearner(Learner):
    """A :class:`Learner` over any ``nn.Module`` whose last linear layer ``head`` produces the logits.

    Features come from a forward hook on ``head``'s input (returned in float64, so the Fisher algebra
    is done in double precision even for a float32 model). Training uses ``train_fn(model, X, y)`` when
    given (after resetting to the initial weights unless ``config.warm_start``), else
    :func:`cincer.models.train` with ``config``.
    """

    def __init__(self, model: nn.Module, head: nn.Linear, config: TrainConfig | None = None, *,
                 train_fn: Callable | None = None, seed: int = 0) -> None:
        super().__init__(model, config, seed=seed)
        self.head, self.train_fn = head, train_fn

    def fit(self, X: torch.Tensor, y) -> "TorchLearner":
        if self.train_fn is None:
            return super().fit(X, y)
        if not (self.config.warm_start and self.n_fits_ > 0):
            self.model.load_state_dict(self.initial_state)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + self.n_fits_)
            self.model.train()
            self.train_fn(self.model, X, torch.as_tensor(y, dtype=torch.long))
        self.model.eval()
        self.n_fits_ += 1
        return self

    @torch.no_grad()
    def features_and_probs(self, X: torch.Tensor, *, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        H, logits = [], []
        seen: list[torch.Tensor] = []
        handle = self.head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
        try:
            for i in range(0, len(X), chunk):
                seen.clear()
                out = self.model(X[i:i + chunk])
                if len(seen) != 1:
                    raise ModelError(f"the head layer ran {len(seen)} times in one forward pass (expected once)")
                H.append(seen[0].reshape(len(out), -1))
                logits.append(out)
        finally:
            handle.remove()
        Hc = torch.cat(H) if H else X.new_zeros(0, self.head.in_features)
        Z = torch.cat(logits) if logits else X.new_zeros(0, self.head.out_features)
        # float64 whatever the model's dtype: the Fisher pseudo-inverse (eigh) of a float32 FIM can fail
        return Hc.double(), torch.softmax(Z.double(), dim=1)


class SklearnLearner:
    """The Learner interface over a scikit-learn ``LogisticRegression``: the top layer is the whole model.

    Features are ``X`` (flattened), probabilities come from ``predict_proba`` (expanded to all
    ``n_classes`` columns). A binary model has one coefficient row ``w``; its equivalent 2-class softmax
    layer is ``W = [[0], [w]]``, ``b = [0, b]`` (:meth:`top_layer`).
    """

    def __init__(self, estimator, n_classes: int) -> None:
        self.estimator, self.n_classes = estimator, n_classes
        self.model = estimator
        self.n_fits_ = 0

    dtype = torch.float64

    def fit(self, X: torch.Tensor, y) -> "SklearnLearner":
        from sklearn.base import clone

        y = np.asarray(y, dtype=np.int64)
        if len(np.unique(y)) < 2:
            raise InputError("LogisticRegression needs examples of at least two classes to fit")
        self.model = clone(self.estimator).fit(_flat_numpy(X), y)
        self.n_fits_ += 1
        return self

    def predict_proba(self, X: torch.Tensor) -> np.ndarray:
        proba = self.model.predict_proba(_flat_numpy(X))
        out = np.zeros((len(proba), self.n_classes))
        out[:, np.asarray(self.model.classes_, dtype=np.int64)] = proba
        return out

    def features_and_probs(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.as_tensor(_flat_numpy(X), dtype=torch.float64),
                torch.as_tensor(self.predict_proba(X), dtype=torch.float64))

    def top_layer(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` of the softmax layer equivalent to the fitted model, ``W`` of shape ``(C, d)``."""
        coef, intercept = self.model.coef_, self.model.intercept_
        cls = np.asarray(self.model.classes_, dtype=np.int64)
        W, b = np.zeros((self.n_classes, coef.shape[1])), np.zeros(self.n_classes)
        if len(cls) == 2 and coef.shape[0] == 1:  # sigmoid(w x + b) == softmax([0, w x + b])[1]
            W[cls[1]], b[cls[1]] = coef[0], intercept[0]
        else:
            W[cls], b[cls] = coef, intercept
        return W, b


def _flat_numpy(X) -> np.ndarray:
    X = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    return X.reshape(len(X), -1)


def _one_row(x) -> np.ndarray:
    """One example (array, tensor, pandas Series) -> a batch of one."""
    if hasattr(x, "to_numpy"):
        x = x.to_numpy()
    elif isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)[None]


def _is_sklearn(model) -> bool:
    return not isinstance(model, nn.Module) and hasattr(model, "get_params")


def _check_sklearn(model) -> None:
    from sklearn.linear_model import LogisticRegression

    if not isinstance(model, LogisticRegression):
        raise ModelError(f"unsupported scikit-learn model {type(model).__name__}: CINCER needs a linear top "
                         "layer (use LogisticRegression, or a PyTorch model ending in nn.Linear)")


def find_head(model: nn.Module, head: str | None = None) -> nn.Linear:
    """The last linear layer: ``model.get_submodule(head)`` when named, else the last ``nn.Linear``."""
    if head is not None:
        try:
            layer = model.get_submodule(head)
        except AttributeError as err:
            raise ModelError(f"head={head!r}: no such submodule in {type(model).__name__} ({err})") from None
        if not isinstance(layer, nn.Linear):
            raise ModelError(f"head={head!r} is a {type(layer).__name__}, not an nn.Linear")
        return layer
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"{type(model).__name__} has no nn.Linear layer: CINCER needs a linear last layer "
                         "producing the logits")
    return linears[-1]


def check_head(learner: TorchLearner, X: torch.Tensor, n_classes: int) -> None:
    """The model's output must be its head's output (no layer after it) with one logit per class."""
    model, head = learner.model, learner.head
    model.eval()
    seen: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda mod, inp, out: seen.append(out))
    try:
        with torch.no_grad():
            out = model(X[:4])
    except Exception as err:  # the user's forward failed on their own data: report it on one line
        raise ModelError(f"the model's forward pass failed on the data: {type(err).__name__}: {err}") from None
    finally:
        handle.remove()
    if len(seen) != 1:
        raise ModelError(f"the head layer ran {len(seen)} times in a forward pass; name the last linear layer "
                         "with head='attr.path'")
    if not isinstance(out, torch.Tensor) or out.shape != seen[0].shape or not torch.equal(out, seen[0]):
        raise ModelError("the model's last layer is not linear: its output is not the output of the head "
                         f"{type(head).__name__}({head.in_features}, {head.out_features}) (remove any softmax or "
                         "activation after it, or name the right layer with head='attr.path')")
    if out.dim() != 2 or out.shape[1] != n_classes:
        raise ModelError(f"the model outputs {tuple(out.shape[1:])} logits per example, expected {n_classes} "
                         "(one per class)")


# --------------------------------------------------------------------------- data validation

def as_features(X, *, name: str = "X") -> np.ndarray:
    """numpy / pandas / torch tensor -> a finite float array (rows = examples)."""
    if hasattr(X, "to_numpy"):  # pandas
        try:
            X = X.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise InputError(f"{name}: every column must be numeric ({err})") from None
    elif isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    try:
        X = np.asarray(X, dtype=np.float64 if np.asarray(X).dtype.kind not in "f" else None)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name}: not a numeric array ({err})") from None
    if X.ndim < 2:
        raise InputError(f"{name} must have one row per example (2 or more dimensions), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        bad = np.flatnonzero(~np.isfinite(X.reshape(len(X), -1)).all(axis=1))
        raise InputError(f"{name} has NaN or infinite values in {len(bad)} rows (first: row {bad[0]})")
    return X


def split_dataset(data) -> tuple[np.ndarray, np.ndarray]:
    """A torch ``Dataset`` of ``(x, y)`` pairs -> ``(X, y)`` arrays."""
    items = [data[i] for i in range(len(data))]
    if not items or not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
        raise InputError("a torch Dataset must yield (x, y) pairs (and hold at least one)")
    X = np.stack([np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x) for x, _ in items])
    y = np.asarray([int(v) if isinstance(v, torch.Tensor) else v for _, v in items])
    return X, y


def encode_labels(y, classes: np.ndarray, *, name: str = "y") -> np.ndarray:
    """Labels -> class indices; every label must be one of ``classes``."""
    y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
    if isinstance(y, np.ndarray) and y.ndim != 1:
        raise InputError(f"{name} must be one label per example (1-D), got shape {y.shape}")
    lookup = {c.item() if hasattr(c, "item") else c: i for i, c in enumerate(classes)}
    out = np.empty(len(y), dtype=np.int64)
    for i, v in enumerate(y):
        key = v.item() if hasattr(v, "item") else v
        if key not in lookup:
            raise InputError(f"{name}[{i}] = {key!r} is not one of the declared classes {list(lookup)}")
        out[i] = lookup[key]
    return out


# --------------------------------------------------------------------------- queries

@dataclass
class LabelQuery:
    """A suspicious example and the evidence for the suspicion.

    ``index`` is the example's position in the cleaner's pool (``fit`` data first, then observed
    examples); ``counterexamples`` are pool indices, best first, with their Fisher-kernel ``scores``
    (support: how much each one pushes the model towards ``predicted``).
    """

    id: int
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


def _show(value) -> Any:
    return value.item() if hasattr(value, "item") else value


def _reason(classes, q: Query, ranking: Ranking) -> str:
    label, pred = _show(classes[q.label]), _show(classes[q.prediction])
    text = (f"the model predicts {pred!r} (p={q.probs[q.prediction]:.2f}) but the label is {label!r} "
            f"(p={q.probs[q.label]:.2f}; margin {q.margin:.2f})")
    if q.shown_counterexample is not None:
        text += (f"; example #{q.shown_counterexample}, labelled {pred!r}, supports that prediction the most "
                 f"(Fisher support {ranking.scores[0]:.3g})")
    return text


# --------------------------------------------------------------------------- the estimator

class Cleaner:
    """Interactive label cleaning (CINCER) around your own classifier.

    Parameters
    ----------
    model : a PyTorch ``nn.Module`` ending in a linear layer that outputs the logits, or a scikit-learn
        ``LogisticRegression``.
    classes : the label values, in class-index order (default: the sorted labels seen by ``fit``).
    head : dotted path of the last linear layer (``model.get_submodule(head)``); default: the last
        ``nn.Linear`` among the modules.
    train_fn : ``train_fn(model, X, y)`` trains a torch model in place on tensors (``y`` long); default:
        :func:`cincer.models.train` with ``train_config``.
    train_config : :class:`~cincer.models.TrainConfig` of the built-in trainer.
    inspector, threshold : suspicion test (``INSPECTORS`` name) and its threshold.
    selector, selector_params : counter-example selector (``SELECTORS`` name) and its parameters.
    k : number of counter-examples kept in a query.
    retrain : ``"sync"`` retrain after every observed example and every answer (the paper), ``"answer"``
        only after answers, ``"defer"`` never by itself (call :meth:`refit`).
    seed : seeds the training and the selector's random choices.
    """

    def __init__(self, model, *, classes: Sequence | None = None, head: str | None = None,
                 train_fn: Callable | None = None, train_config: TrainConfig | None = None,
                 inspector: str = "margin", threshold: float = 0.2, selector: str = "top_fisher",
                 selector_params: dict | None = None, k: int = 5, retrain: str = "sync", seed: int = 0) -> None:
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
        self.seed = seed

    _PARAMS = ("model", "classes", "head", "train_fn", "train_config", "inspector", "threshold", "selector",
               "selector_params", "k", "retrain", "seed")

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's parameters (scikit-learn convention)."""
        return {name: getattr(self, name) for name in self._PARAMS}

    def set_params(self, **params) -> "Cleaner":
        for name, value in params.items():
            if name not in self._PARAMS:
                raise CincerError(f"unknown parameter {name!r} of Cleaner (choose from: {', '.join(self._PARAMS)})")
            setattr(self, name, value)
        return self

    # ----------------------------------------------------------------- fit

    def fit(self, X, y=None) -> "Cleaner":
        """Validate the data, fit the model on it; ``X`` may be an array, a DataFrame or a torch Dataset."""
        if self.retrain not in ("sync", "answer", "defer"):
            raise CincerError(f"retrain must be 'sync', 'answer' or 'defer', got {self.retrain!r}")
        if self.k < 1:
            raise CincerError(f"k must be at least 1, got {self.k}")
        X, y = self._validate_xy(X, y)
        if self.classes is not None:
            classes = np.asarray(list(self.classes))
            if len(set(classes.tolist())) != len(classes):
                raise InputError(f"classes has duplicates: {list(classes)}")
        else:
            classes = np.unique(y)
        if len(classes) < 2:
            raise InputError(f"the labels hold a single class ({_show(classes[0])!r}): need at least two classes")
        labels = encode_labels(y, classes)
        if len(np.unique(labels)) < 2:
            raise InputError(f"the labels hold a single class ({_show(classes[labels[0]])!r}) of the declared "
                             f"{len(classes)}: need examples of at least two classes")
        inspect = INSPECTORS[self.inspector](threshold=self.threshold)
        select = SELECTORS[self.selector](**(self.selector_params or {}))
        learner = self._make_learner(len(classes))
        self.X_ = torch.tensor(X, dtype=learner.dtype)  # a copy: the caller's array is never shared
        if isinstance(learner, TorchLearner):
            check_head(learner, self.X_, len(classes))
        self.classes_ = classes
        self.learner_ = learner
        self.rng_ = np.random.default_rng(self.seed)
        self.loop_ = CleaningLoop(learner, self.X_, labels, np.arange(len(labels)), inspect=inspect,
                                  select=select, rng=self.rng_)
        self.pending_: dict[int, LabelQuery] = {}
        self.history_: list[dict] = []
        self.n_queries_ = 0
        self._ids = itertools.count()
        self.loop_.retrain()
        self.stale_ = False
        return self

    def _make_learner(self, n_classes: int):
        if _is_sklearn(self.model):
            _check_sklearn(self.model)
            if self.selector in TORCH_ONLY_SELECTORS:
                raise ModelError(f"selector {self.selector!r} needs a PyTorch model; use top_fisher with "
                                 "scikit-learn")
            if self.train_fn is not None:
                raise ModelError("train_fn applies to PyTorch models; a scikit-learn model is trained with fit")
            return SklearnLearner(self.model, n_classes)
        if not isinstance(self.model, nn.Module):
            raise ModelError(f"unsupported model type {type(self.model).__name__}: pass a torch nn.Module or a "
                             "scikit-learn LogisticRegression")
        if not any(True for _ in self.model.parameters()):
            raise ModelError("the model has no parameters")
        head = find_head(self.model, self.head)
        # every fit starts from the weights the model had when first given to this cleaner
        if getattr(self, "_initial_for", None) is not self.model:
            self._initial_for, self._initial_state = self.model, copy.deepcopy(self.model.state_dict())
        else:
            self.model.load_state_dict(self._initial_state)
        return TorchLearner(self.model, head, self.train_config, train_fn=self.train_fn, seed=self.seed)

    @staticmethod
    def _validate_xy(X, y) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(X, torch.utils.data.Dataset) and not isinstance(X, torch.Tensor):
            if y is not None:
                raise InputError("pass either a torch Dataset of (x, y) pairs or X and y, not both")
            X, y = split_dataset(X)
        if y is None:
            raise InputError("labels y are missing")
        X = as_features(X)
        if len(X) != len(y):
            raise InputError(f"X has {len(X)} rows but y has {len(y)} labels")
        if len(X) < 2:
            raise InputError("need at least two examples")
        return X, y

    def _check_fitted(self) -> None:
        if not hasattr(self, "loop_"):
            raise CincerError("this Cleaner is not fitted yet: call fit(X, y) first")

    # ----------------------------------------------------------------- state

    @property
    def labels_(self) -> np.ndarray:
        """The current labels of the pool (after the corrections), as class values."""
        self._check_fitted()
        return self.classes_[self.loop_.labels]

    @property
    def model_(self):
        """The fitted model (the wrapped torch module, or the last fitted scikit-learn estimator)."""
        self._check_fitted()
        return self.learner_.model

    def predict_proba(self, X) -> np.ndarray:
        self._check_fitted()
        X = as_features(X)
        return self.learner_.predict_proba(torch.as_tensor(X, dtype=self.learner_.dtype))

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def refit(self) -> "Cleaner":
        """Retrain on the current labels of every example in D (what ``retrain='defer'`` postpones)."""
        self._check_fitted()
        self.loop_.retrain()
        self.stale_ = False
        return self

    # ----------------------------------------------------------------- stream

    def observe(self, x, y) -> LabelQuery | None:
        """Add one labelled example; return a :class:`LabelQuery` when it looks mislabelled, else ``None``."""
        self._check_fitted()
        x = as_features(_one_row(x), name="x")
        if x.shape[1:] != tuple(self.X_.shape[1:]):
            raise InputError(f"x has shape {x.shape[1:]}, the examples have shape {tuple(self.X_.shape[1:])}")
        label = encode_labels([y], self.classes_, name="y")[0]
        index = len(self.X_)
        X_before, labels_before, known_before = self.X_, self.loop_.labels, list(self.loop_.known)
        self.X_ = torch.cat([self.X_, torch.as_tensor(x, dtype=self.X_.dtype)])
        self.loop_.X = self.X_
        self.loop_.labels = np.append(self.loop_.labels, label)
        try:
            query = self.loop_.observe(index)
        except Exception:  # e.g. a user selector failing: leave the cleaner as it was
            self.X_ = self.loop_.X = X_before
            self.loop_.labels, self.loop_.known = labels_before, known_before
            raise
        if query is None:
            self._maybe_retrain(self.retrain == "sync")
            return None
        return self._register(query)

    def _register(self, query: Query) -> LabelQuery:
        ranking = Ranking(query.ranking.indices[:self.k], query.ranking.scores[:self.k])
        lq = LabelQuery(next(self._ids), query.index, self.X_[query.index].numpy().copy(),
                        _show(self.classes_[query.label]), _show(self.classes_[query.prediction]), query.margin,
                        ranking.indices.copy(), ranking.scores.copy(),
                        [_show(self.classes_[self.loop_.labels[i]]) for i in ranking.indices],
                        _reason(self.classes_, query, ranking), query)
        self.pending_[lq.id] = lq
        self.n_queries_ += 1
        return lq

    def answer(self, query: LabelQuery, suspicious_label=None, counter_label=None, *,
               retrain: bool | None = None) -> dict:
        """Apply the annotator's labels (``None`` keeps a label) and retrain (unless deferred).

        Returns ``{pool index: (old label, new label)}`` for every label that changed.
        """
        self._check_fitted()
        qid = getattr(query, "id", None)
        if qid not in self.pending_ or self.pending_[qid] is not query:
            if isinstance(query, LabelQuery) and any(h["query"] == qid for h in self.history_):
                raise QueryError(f"query {qid} was already answered")
            what = f"query {qid}" if isinstance(query, LabelQuery) else f"a {type(query).__name__}"
            raise QueryError(f"unknown query ({what}): answer a LabelQuery returned by this cleaner's "
                             "observe() or audit()")
        new_s = None if suspicious_label is None else int(encode_labels([suspicious_label], self.classes_,
                                                                         name="suspicious_label")[0])
        new_c = None
        if counter_label is not None:
            if query.counterexample is None:
                raise QueryError(f"query {qid} has no counter-example to relabel")
            new_c = int(encode_labels([counter_label], self.classes_, name="counter_label")[0])
        update = self.loop_.apply(query.raw, Answer(new_s, new_c))
        del self.pending_[qid]
        changed = {i: (_show(self.classes_[a]), _show(self.classes_[b])) for i, (a, b) in update.relabelled.items()}
        self.history_.append({"query": qid, "index": query.index, "counterexample": query.counterexample,
                              "changed": changed, "dropped": list(update.dropped)})
        self._maybe_retrain(self.retrain != "defer" if retrain is None else retrain)
        return changed

    def _maybe_retrain(self, now: bool) -> None:
        if now:
            self.refit()
        else:
            self.stale_ = True

    # ----------------------------------------------------------------- audit

    def audit(self, X=None, y=None, *, budget: int) -> Iterator[LabelQuery]:
        """The ``budget`` most suspicious examples of the whole set, most suspicious first.

        With ``X, y`` the cleaner is first fitted on them; without, the fitted pool is audited. The
        order is the margin of the model fitted on all the data; each query is built when it is
        reached (with the model and labels current then), and skipped if its label already agrees
        with the model (e.g. it was fixed as an earlier counter-example). Answer each with
        :meth:`answer`; ``retrain='defer'`` keeps one fit for the whole audit.
        """
        if not isinstance(budget, (int, np.integer)) or budget < 1:
            raise CincerError(f"budget must be a positive integer, got {budget!r}")
        if X is not None:
            self.fit(X, y)
        elif y is not None:
            raise InputError("audit: labels given without X")
        self._check_fitted()
        known = np.asarray(self.loop_.known)
        probs = self.learner_.predict_proba(self.X_[known])
        labels = self.loop_.labels[known]
        margins = probs.max(axis=1) - probs[np.arange(len(known)), labels]
        order = known[np.argsort(-margins, kind="stable")]
        order = order[np.sort(margins)[::-1] > 0]
        return self._audit(order, int(budget))

    def _audit(self, order: np.ndarray, budget: int) -> Iterator[LabelQuery]:
        asked = 0
        for index in order:
            if asked >= budget:
                return
            query = self._query_for(int(index))
            if query is None:
                continue
            asked += 1
            yield self._register(query)

    def _query_for(self, index: int) -> Query | None:
        """CINCER's query for an example already in D (``None`` when the model agrees with its label)."""
        probs = self.learner_.predict_proba(self.X_[[index]])[0]
        label, prediction = int(self.loop_.labels[index]), int(np.argmax(probs))
        if prediction == label:
            return None
        ranking, policy = Ranking.empty(), self.loop_.policy
        known = np.asarray(self.loop_.known)
        if policy != "none":
            candidates = candidates_for(self.loop_.labels, known, index, prediction)
            if len(candidates):
                ranking = self.loop_.select(SelectionContext(self.learner_, self.X_, self.loop_.labels, known,
                                                             index, candidates, self.rng_))
        return Query(index, label, prediction, probs, ranking, policy)


# --------------------------------------------------------------------------- functional API

def counterexamples(model, X_train, y_train, x, y, k: int = 5, *, head: str | None = None,
                    fim_samples: int | None = None, damping: float = 0.0,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CINCER's counter-examples of ``(x, y)`` among ``(X_train, y_train)`` for an already trained model.

    Candidates are the training examples labelled with the model's prediction for ``x``; they are
    ranked by the top-layer Fisher-kernel support ``-g_x^T F^+ g_k`` (:func:`cincer.select.top_fisher_ranking`,
    FIM over ``fim_samples`` random training examples, default all). ``y_train`` and ``y`` are class
    indices (``0..C-1``; for scikit-learn, values of ``model.classes_``). Returns the top ``k`` training
    indices and their scores, best first (empty arrays when no example carries the predicted label).
    """
    if k < 1:
        raise CincerError(f"k must be at least 1, got {k}")
    X_train = as_features(X_train, name="X_train")
    x = as_features(_one_row(x), name="x")
    if x.shape[1:] != X_train.shape[1:]:
        raise InputError(f"x has shape {x.shape[1:]}, X_train rows have shape {X_train.shape[1:]}")
    if len(X_train) != len(y_train):
        raise InputError(f"X_train has {len(X_train)} rows but y_train has {len(y_train)} labels")
    if _is_sklearn(model):
        _check_sklearn(model)
        if not hasattr(model, "classes_"):
            raise ModelError("the LogisticRegression is not fitted")
        classes = np.asarray(model.classes_)
        learner = SklearnLearner(model, len(classes))
        learner.model = model
        labels = encode_labels(y_train, classes, name="y_train")
        target = encode_labels([y], classes, name="y")[0]
    elif isinstance(model, nn.Module):
        learner = TorchLearner(model, find_head(model, head), seed=seed)
        n_classes = learner.head.out_features
        classes = np.arange(n_classes)
        labels = encode_labels(y_train, classes, name="y_train")
        target = encode_labels([y], classes, name="y")[0]
    else:
        raise ModelError(f"unsupported model type {type(model).__name__}")
    X = torch.as_tensor(np.concatenate([X_train, x]), dtype=learner.dtype)
    if isinstance(learner, TorchLearner):
        check_head(learner, X, len(classes))
    all_labels = np.append(labels, target)
    t = len(X_train)
    prediction = int(np.argmax(learner.predict_proba(X[[t]])[0]))
    cands = candidates_for(all_labels, np.arange(t + 1), t, prediction)
    if not len(cands):
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    rng = np.random.default_rng(seed)
    fim = np.arange(t) if fim_samples is None or fim_samples >= t else rng.choice(t, fim_samples, replace=False)
    ranking = top_fisher_ranking(learner, X, all_labels, t, cands, fim, damping=damping)
    return ranking.indices[:k].astype(np.int64), np.asarray(ranking.scores[:k], dtype=np.float64)


# --------------------------------------------------------------------------- extension points

def register_selector(name: str, *, policy: str = "ask", factory: bool = False) -> Callable:
    """Register a counter-example selector under ``name`` (usable by ``Cleaner(selector=name)`` and
    ``cincer run --selector name``).

    By default the decorated function is the selector itself: ``fn(ctx: SelectionContext)`` returning
    a :class:`~cincer.select.Ranking` or one score per ``ctx.candidates`` (higher = better
    counter-example). With ``factory=True`` it is a factory ``fn(**params) -> selector``, like the
    built-in ones. ``policy`` is ``ask`` (show the pair), ``drop`` or ``none`` (see cincer.select).
    """
    if policy not in ("ask", "drop", "none"):
        raise CincerError(f"policy must be ask, drop or none, got {policy!r}")

    def add(fn: Callable) -> Callable:
        if factory:
            SELECTORS.register(name)(fn)
            return fn

        def select(ctx: SelectionContext) -> Ranking:
            out = fn(ctx)
            if isinstance(out, Ranking):
                return out
            scores = np.asarray(out, dtype=np.float64).reshape(-1)
            if len(scores) != len(ctx.candidates):
                raise CincerError(f"selector {name!r} returned {len(scores)} scores for {len(ctx.candidates)} "
                                  "candidates")
            return Ranking.from_scores(ctx.candidates, scores)

        SELECTORS.register(name)(lambda **_: with_policy(select, policy))
        return fn

    return add


def register_inspector(name: str, *, factory: bool = False) -> Callable:
    """Register a suspicion test ``fn(probs, label, rng) -> bool`` under ``name`` (or, with
    ``factory=True``, a factory ``fn(threshold=..., **params) -> inspector``)."""
    def add(fn: Callable) -> Callable:
        INSPECTORS.register(name)(fn if factory else (lambda **_: fn))
        return fn

    return add


def load_plugins(modules: str | Sequence[str] | None = None) -> list[str]:
    """Import the user's modules that register selectors/inspectors: ``modules``, or the comma-separated
    list in ``$CINCER_PLUGINS``. Returns the names imported."""
    if modules is None:
        modules = os.environ.get(PLUGINS_ENV, "")
    if isinstance(modules, str):
        modules = [m.strip() for m in modules.split(",")]
    names = [m for m in modules if m]
    for module in names:
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - any failure of the user's module is reported on one line
            raise CincerError(f"{PLUGINS_ENV}: cannot import {module!r}: {type(err).__name__}: {err}") from None
    return names

