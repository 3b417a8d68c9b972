"""The public Python API: bring your own model and data.

:class:`Cleaner` follows the scikit-learn contract (the constructor only stores its parameters,
``fit`` validates and returns ``self``, learned state ends with ``_``) around a
:class:`~cincer.loop.CleaningLoop`, with a learner from :func:`~cincer.learners.make_learner`:

* any PyTorch classifier whose last module is a linear layer producing the logits (named with
  ``head="attr.path"`` or found as the last ``nn.Linear``), or
* a scikit-learn ``LogisticRegression`` (its top layer is the whole model).

Two ways to clean: a stream (``observe`` -> query or ``None``; ``answer`` applies the decision), or an
audit of a whole labelled set (``audit``: the examples the inspector flags, most suspicious first).
:func:`counterexamples` ranks the counter-examples of one example for an already trained model.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import progress
from .errors import CincerError, InputError, QueryError
from .inspect import INSPECTORS, audit_order
from .learners import Learner, SklearnLearner, TorchLearner, make_learner
from .loop import Answer, CleaningLoop, Query
from .models import TrainConfig
from .select import SELECTORS, Ranking
from .validation import as_features, encode_labels, one_row, split_dataset

__all__ = ["Cleaner", "LabelQuery", "counterexamples"]
RETRAIN = ("sync", "answer", "head", "defer")


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
    """

    def __init__(self, model, *, classes: Sequence | None = None, head: str | None = None,
                 train_fn: Callable | None = None, train_config: TrainConfig | None = None,
                 inspector: str = "margin", threshold: float | None = None, selector: str = "top_fisher",
                 selector_params: dict | None = None, k: int = 5, retrain: str = "sync", refit_every: int = 20,
                 seed: int = 0) -> None:
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

    _PARAMS = ("model", "classes", "head", "train_fn", "train_config", "inspector", "threshold", "selector",
               "selector_params", "k", "retrain", "refit_every", "seed")

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's parameters (scikit-learn convention)."""
        return {name: getattr(self, name) for name in self._PARAMS}

    def set_params(self, **params) -> Cleaner:
        for name, value in params.items():
            if name not in self._PARAMS:
                raise CincerError(f"unknown parameter {name!r} of Cleaner (choose from: {', '.join(self._PARAMS)})")
            setattr(self, name, value)
        return self

    # ----------------------------------------------------------------- fit

    def fit(self, X: Any, y: Any = None) -> Cleaner:
        """Validate the data, fit the model on it; ``X`` may be an array, a DataFrame or a torch Dataset."""
        if self.retrain not in RETRAIN:
            raise CincerError(f"retrain must be one of {', '.join(RETRAIN)}, got {self.retrain!r}")
        if isinstance(self.refit_every, bool) or not isinstance(self.refit_every, (int, np.integer)) \
                or self.refit_every < 1:
            raise CincerError(f"refit_every must be a positive integer, got {self.refit_every!r}")
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
        inspect = INSPECTORS.create(self.inspector, **({} if self.threshold is None else {"threshold": self.threshold}))
        select = SELECTORS.create(self.selector, **(self.selector_params or {}))
        learner = self._make_learner(len(classes))
        X_pool = torch.tensor(X, dtype=learner.dtype)  # a copy: the caller's array is never shared
        if isinstance(learner, TorchLearner):
            learner.check(X_pool, len(classes))
        self.classes_ = classes
        self.learner_ = learner
        self.rng_ = np.random.default_rng(self.seed)
        self.loop_ = CleaningLoop(learner, X_pool, labels, np.arange(len(labels)), inspect=inspect,
                                  select=select, rng=self.rng_, skip_checked=True)
        self.folds_: list[CleaningLoop] = []
        self.pending_: dict[int, LabelQuery] = {}
        self.history_: list[dict] = []
        self.n_queries_ = 0
        self._ids = itertools.count()
        self._train()
        return self

    def _make_learner(self, n_classes: int) -> Learner:
        if isinstance(self.model, torch.nn.Module):
            # every fit starts from the weights the model had when first given to this cleaner
            # annotated, or the ``is`` test below would narrow self.model to getattr's ``Any | None``
            initial_for: torch.nn.Module | None = getattr(self, "_initial_for", None)
            if initial_for is not self.model:
                self._initial_for, self._initial_state = self.model, copy.deepcopy(self.model.state_dict())
            else:
                self.model.load_state_dict(self._initial_state)
        return make_learner(self.model, n_classes=n_classes, config=self.train_config, train_fn=self.train_fn,
                            head=self.head, seed=self.seed, feature_dtype=torch.float64)

    @staticmethod
    def _validate_xy(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
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
        """The fitted model (the wrapped torch module, or the last fitted scikit-learn estimator)."""
        self._check_fitted()
        return self.learner_.model

    def predict_proba(self, X: Any) -> np.ndarray:
        self._check_fitted()
        X = as_features(X)
        return self.learner_.predict_proba(torch.as_tensor(X, dtype=self.learner_.dtype))

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def refit(self) -> Cleaner:
        """Retrain on the current labels of every example in D (what ``retrain='defer'`` postpones)."""
        self._check_fitted()
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
        x = as_features(one_row(x), name="x")
        if x.shape[1:] != tuple(self.X_.shape[1:]):
            raise InputError(f"x has shape {x.shape[1:]}, the examples have shape {tuple(self.X_.shape[1:])}")
        label = encode_labels([y], self.classes_, name="y")[0]
        self.folds_ = []  # a cross-fitted audit covers the examples it started with
        with self.loop_.transaction():  # e.g. a user selector failing leaves the cleaner as it was
            index = self.loop_.add(torch.as_tensor(x[0], dtype=self.X_.dtype), label)
            query = self.loop_.query(index)
        if query is None:
            self._maybe_retrain(self.retrain == "sync")
            return None
        return self._register(query)

    def _register(self, query: Query) -> LabelQuery:
        ranking = Ranking(query.ranking.indices[:self.k], query.ranking.scores[:self.k])
        lq = LabelQuery(next(self._ids), query.index, self.X_[query.index].cpu().numpy().copy(),
                        _show(self.classes_[query.label]), _show(self.classes_[query.prediction]), query.margin,
                        ranking.indices.copy(), ranking.scores.copy(),
                        [_show(self.classes_[self.loop_.labels[i]]) for i in ranking.indices],
                        _reason(self.classes_, query, ranking), query)
        self.pending_[lq.id] = lq
        self.n_queries_ += 1
        return lq

    def answer(self, query: LabelQuery, suspicious_label: Any = None, counter_label: Any = None, *,
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
        answer = Answer(new_s, new_c)
        update = self.loop_.apply(query.raw, answer)
        for fold in self.folds_:  # the fold models of a cross-fitted audit see the same labels
            fold.apply(query.raw, answer)
        del self.pending_[qid]
        changed = {i: (_show(self.classes_[a]), _show(self.classes_[b])) for i, (a, b) in update.relabelled.items()}
        self.history_.append({"query": qid, "index": query.index, "counterexample": query.counterexample,
                              "changed": changed, "dropped": list(update.dropped)})
        if retrain is None and self.retrain == "head" and self._head_refits + 1 < self.refit_every:
            self.loop_.retrain_head()
            self._head_refits += 1
        else:
            self._maybe_retrain(self.retrain != "defer" if retrain is None else retrain)
        return changed

    def _maybe_retrain(self, now: bool) -> None:
        if now:
            self.refit()
        else:
            self.stale_ = True

    # ----------------------------------------------------------------- audit

    def audit(self, X: Any = None, y: Any = None, *, budget: int, cv: int | None = None) -> Iterator[LabelQuery]:
        """At most ``budget`` queries about the examples the inspector flags, most suspicious first.

        With ``X, y`` the cleaner is first fitted on them; without, the fitted pool is audited. The
        order is the inspector's suspicion (for the margin inspector: the margin) under the model
        fitted on all the data (:meth:`cincer.loop.CleaningLoop.audit_order`); each query is built when
        it is reached (with the model and labels current then), and skipped if the example is no longer
        suspicious (e.g. it was fixed as an earlier counter-example). Answer each with :meth:`answer`;
        ``retrain='defer'`` keeps one fit for the whole audit.

        ``cv=K`` does not trust a model that memorised its training labels (the practice of confident
        learning): K models are trained, each without one stratified fold; the order comes from each
        example's out-of-fold probabilities, and its counter-examples from the fold model that did not
        train on it (candidates: that model's training examples). The fold models are trained once, at
        the start of the audit.
        """
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
            raise CincerError(f"budget must be a positive integer, got {budget!r}")
        if cv is not None and (isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2):
            raise CincerError(f"cv must be an integer of at least 2 (the number of folds), got {cv!r}")
        if X is not None:
            self.fit(X, y)
        elif y is not None:
            raise InputError("audit: labels given without X")
        self._check_fitted()
        if cv is None:
            self.folds_ = []
            return self._audit(self.loop_.audit_order(), int(budget), lambda index: self.loop_, None)
        if self.loop_.inspect.needs_model:
            raise CincerError(f"cv={cv}: a cross-fitted audit orders by out-of-fold probabilities, and the "
                              f"inspector {self.inspector!r} scores with the model itself (use cv=None)")
        fold_of, probs = self._cross_fit(int(cv))
        known = self.loop_.known
        order = known[audit_order(self.loop_.inspect, probs[known], self.loop_.labels[known], self.rng_)]
        return self._audit(order, int(budget), lambda index: self.folds_[fold_of[index]], probs)

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
        for k, (train, held) in enumerate(progress.track(splitter.split(known, labels[known]), total=cv,
                                                         desc="cross-fitting", unit="fold")):
            loop = CleaningLoop(self._fold_learner(k), self.X_, labels, known[train], inspect=self.loop_.inspect,
                                select=self.loop_.select, rng=np.random.default_rng([self.seed, k]),
                                skip_checked=True, checked=self.loop_.checked)
            loop.retrain()
            loop.prepare()
            fold_of[known[held]] = k
            probs[known[held]] = loop.learner.predict_proba(self.X_[known[held]])
            self.folds_.append(loop)
        return fold_of, probs

    def _fold_learner(self, fold: int) -> Learner:
        model = self.model
        if isinstance(model, torch.nn.Module):  # a copy of the model as it was given, for each fold
            model = copy.deepcopy(model)
            model.load_state_dict(self._initial_state)
        return make_learner(model, n_classes=len(self.classes_), config=self.train_config, train_fn=self.train_fn,
                            head=self.head, seed=self.seed + 1000 * (fold + 1), feature_dtype=torch.float64)

    def _audit(self, order: np.ndarray, budget: int, loop_of: Callable[[int], CleaningLoop],
               probs: np.ndarray | None) -> Iterator[LabelQuery]:
        asked = 0
        for index in order:
            if asked >= budget:
                return
            query = loop_of(int(index)).query(int(index), None if probs is None else probs[index])
            if query is None:
                continue
            asked += 1
            yield self._register(query)


# --------------------------------------------------------------------------- functional API

def counterexamples(model: Any, X_train: Any, y_train: Any, x: Any, y: Any, k: int = 5, *, head: str | None = None,
                    fim_samples: int | None = None, damping: float = 0.0,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CINCER's counter-examples of ``(x, y)`` among ``(X_train, y_train)`` for an already trained model.

    Candidates are the training examples labelled with the model's prediction for ``x``; they are
    ranked by the top-layer Fisher-kernel support ``-g_x^T F^+ g_k`` (the ``top_fisher`` selector, FIM
    over ``fim_samples`` random training examples, default all). ``y_train`` and ``y`` are class
    indices (``0..C-1``; for scikit-learn, values of ``model.classes_``). Returns the top ``k`` training
    indices and their scores, best first (empty arrays when no example carries the predicted label).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise CincerError(f"k must be a positive integer, got {k!r}")
    select = SELECTORS.create("top_fisher", fim_samples=fim_samples, damping=damping)
    X_train = as_features(X_train, name="X_train")
    x = as_features(one_row(x), name="x")
    if x.shape[1:] != X_train.shape[1:]:
        raise InputError(f"x has shape {x.shape[1:]}, X_train rows have shape {X_train.shape[1:]}")
    if len(X_train) != len(y_train):
        raise InputError(f"X_train has {len(X_train)} rows but y_train has {len(y_train)} labels")
    learner = make_learner(model, head=head, seed=seed, feature_dtype=torch.float64)
    if isinstance(learner, SklearnLearner):
        classes = np.asarray(learner.model.classes_)
    else:
        classes = np.arange(learner.head.out_features)
    labels = encode_labels(y_train, classes, name="y_train")
    target = encode_labels([y], classes, name="y")[0]
    X = torch.as_tensor(np.concatenate([X_train, x]), dtype=learner.dtype)
    if isinstance(learner, TorchLearner):
        learner.check(X, len(classes))
    t = len(X_train)
    loop = CleaningLoop(learner, X, np.append(labels, target), np.arange(t), inspect=INSPECTORS.create("always"),
                        select=select, rng=np.random.default_rng(seed))
    prediction = int(np.argmax(learner.predict_proba(X[[t]])[0]))
    ranking = loop.rank(t, prediction)
    return ranking.indices[:k].astype(np.int64), np.asarray(ranking.scores[:k], dtype=np.float64)
