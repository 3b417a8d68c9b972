"""CINCER's round: add -> inspect -> select -> ask -> update, owned by :class:`CleaningLoop`.

The loop holds the pool ``X``, its current labels and the known set D. Examples enter D with
:meth:`~CleaningLoop.add` (a new example) or :meth:`~CleaningLoop.observe` (a pool example arriving
in the stream); :meth:`~CleaningLoop.query` inspects one and, if suspicious, ranks its
counter-examples; :meth:`~CleaningLoop.audit_order` lists the suspicious examples of D, most
suspicious first. Labels change only through :meth:`~CleaningLoop.apply` (and back through
:meth:`~CleaningLoop.undo`). The loop knows nothing about clean labels, files or plots: an
:class:`Annotator` answers queries (a person in the app, :class:`OracleAnnotator` in simulations)
and the caller decides when to retrain.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from .errors import CincerError, ModelError, QueryError
from .inspect import Inspector, ModelView, as_inspector, audit_order, margin
from .learners import Learner
from .select import ModelCache, Ranking, SelectionContext, Selector, as_selector, candidates_for


@dataclass
class Query:
    """A suspicious example, the model's view of it, and the ranked counter-examples."""

    index: int
    label: int
    prediction: int
    probs: np.ndarray
    ranking: Ranking
    policy: str = "ask"  # ask | drop | none (see cincer.select)

    @property
    def margin(self) -> float:
        return margin(self.probs, self.label)

    @property
    def counterexample(self) -> int | None:
        """The best candidate (shown to the annotator only under the ``ask`` policy)."""
        return None if self.policy == "none" else self.ranking.best

    @property
    def shown_counterexample(self) -> int | None:
        return self.counterexample if self.policy == "ask" else None


@dataclass
class Answer:
    """The annotator's labels; ``None`` leaves that example's label as it is. ``counterexample`` names
    the candidate that was shown when it was not the best one (e.g. the annotator asked for another)."""

    suspicious_label: int | None
    counter_label: int | None = None
    counterexample: int | None = None


class Annotator(Protocol):
    def __call__(self, query: Query) -> Answer: ...


class OracleAnnotator:
    """Simulated annotator holding the clean labels: every example it is shown gets its true label."""

    def __init__(self, clean_labels: np.ndarray) -> None:
        self.clean_labels = np.asarray(clean_labels)

    def __call__(self, query: Query) -> Answer:
        ce = query.shown_counterexample
        return Answer(int(self.clean_labels[query.index]),
                      None if ce is None else int(self.clean_labels[ce]))


@dataclass
class Update:
    """What applying an answer changed (and what :meth:`CleaningLoop.undo` reverts)."""

    relabelled: dict[int, tuple[int, int]] = field(default_factory=dict)  # index -> (old, new)
    dropped: list[int] = field(default_factory=list)
    checked: list[int] = field(default_factory=list)  # examples a person has now checked (see CleaningLoop)


def check_stages(has_gradients: bool, inspect: Inspector, select: Selector) -> None:
    """An inspector or selector that differentiates the model needs a PyTorch model (``has_gradients``)."""
    if select.needs_gradients and not has_gradients:
        raise ModelError("this selector ranks by gradients over all the parameters and needs a PyTorch model "
                         "(use top_fisher with a scikit-learn model)")
    if inspect.needs_gradients and not has_gradients:
        raise ModelError("this inspector needs gradients over all the parameters, i.e. a PyTorch model "
                         "(the gradient and fisher inspectors also work with a scikit-learn model)")


@dataclass
class LoopState:
    """The loop's state at one moment (:meth:`CleaningLoop.snapshot`): the pool's size, the labels, the
    checked examples, D in arrival order, the random state and the model's version counters; with
    ``learner_state`` the model's weights too (the learner's own ``snapshot``); ``cache``: what the loop had
    cached for the model of then (``None``: nothing, e.g. a state read from a checkpoint)."""

    n: int
    labels: np.ndarray
    checked: np.ndarray
    known: np.ndarray
    rng: dict
    model_epoch: int
    head_fits: int
    learner: Any = None
    learner_state: Any = None
    cache: Any = None


class CleaningLoop:
    """Holds the pool, the current labels and the known set D; runs CINCER's round.

    An example is *checked* once a person gave or confirmed its label (a non-``None`` label in an
    :class:`Answer`). With ``skip_checked`` (what a person expects; the paper's simulations keep it
    off) a checked example is never asked about again nor shown again as a counter-example: the next
    best candidate is. ``checked`` restores that state (e.g. from the app's store).
    """

    def __init__(self, learner: Learner, X: torch.Tensor, labels: np.ndarray, known: list[int] | np.ndarray, *,
                 inspect: Inspector | Callable[..., Any], select: Selector | Callable[..., Ranking],
                 rng: np.random.Generator, skip_checked: bool = False, checked: Any = ()) -> None:
        self._learner, self._model_epoch, self._head_fits = learner, 0, 0
        self._cache = ModelCache()
        self._X, self._labels = X, np.array(labels, dtype=np.int64)  # a copy: the caller's labels stay as given
        self._n = len(self._labels)
        self.skip_checked = skip_checked
        self._checked = np.zeros(self._n, dtype=bool)
        self._checked[np.asarray(list(checked), dtype=np.int64)] = True
        self._known = np.array(known, dtype=np.int64).reshape(-1)  # D, in arrival order (grows geometrically)
        self._n_known = len(self._known)
        self.inspect, self.select, self.rng = as_inspector(inspect), as_selector(select), rng
        check_stages(isinstance(getattr(learner, "model", None), torch.nn.Module), self.inspect, self.select)

    # ----------------------------------------------------------------- state
    @property
    def learner(self) -> Learner:
        return self._learner

    @learner.setter
    def learner(self, learner: Learner) -> None:  # e.g. the app swapping in a model trained elsewhere
        self._learner, self._model_epoch = learner, self._model_epoch + 1

    @property
    def model_version(self) -> tuple[int, int, int]:
        """Changes whenever the model may have: a retrain here, a new learner, a fit done elsewhere, or a
        refit of the last layer alone."""
        return self._model_epoch, getattr(self._learner, "n_fits_", 0), self._head_fits

    @property
    def known(self) -> np.ndarray:
        """D: the pool indices of the known examples, in arrival order (a copy: D changes through the loop)."""
        return self._known[:self._n_known].copy()

    def _admit(self, index: int) -> None:
        if self._n_known == len(self._known):
            self._known = np.concatenate([self._known, np.zeros(max(16, self._n_known), np.int64)])
        self._known[self._n_known] = index
        self._n_known += 1

    @property
    def fisher_method(self) -> str | None:
        """How the last FIM of the current model was built: dense, gram (exact), ekfac or kfac."""
        return self._cache.method if self._cache.version == self.model_version else None

    @property
    def X(self) -> torch.Tensor:
        """The pool (every example, in D or not)."""
        return self._X[:self._n]

    @property
    def labels(self) -> np.ndarray:
        """Current labels of the pool (read-only: labels change through :meth:`apply`)."""
        view = self._labels[:self._n]
        view.flags.writeable = False
        return view

    @property
    def checked(self) -> np.ndarray:
        """Pool indices of the checked examples."""
        return np.flatnonzero(self._checked[:self._n])

    @property
    def policy(self) -> str:
        return self.select.policy

    def retrain(self) -> None:
        idx = self.known
        self._model_epoch += 1
        self.learner.fit(self.X[idx], self.labels[idx])

    def retrain_head(self) -> None:
        """Refit only the last layer on the cached features of D with the current labels (the learner's
        ``fit_head``): milliseconds where a full retrain takes seconds. The features and the FIM of the
        last full fit are kept, the probabilities recomputed; :meth:`retrain` refreshes everything."""
        idx = self.known
        H, _ = self._cache.features(self.learner, self.X, idx, self.model_version)
        self.learner.fit_head(H, self.labels[idx])
        self._head_fits += 1
        self._cache.refresh_probs(self.learner.head_probs, self.model_version)

    # ----------------------------------------------------------------- examples in
    def add(self, x: torch.Tensor, label: int) -> int:
        """Append one example (``x`` of the pool's row shape) to the pool and to D; returns its index."""
        if self._n == len(self._labels):  # grow geometrically: a stream of adds stays linear
            capacity = max(16, 2 * self._n)
            self._X = torch.cat([self._X[:self._n], self._X.new_empty((capacity - self._n, *self._X.shape[1:]))])
            self._labels = np.concatenate([self._labels[:self._n], np.zeros(capacity - self._n, np.int64)])
            self._checked = np.concatenate([self._checked[:self._n], np.zeros(capacity - self._n, bool)])
        self._X[self._n] = x
        self._labels[self._n] = label
        self._n += 1
        self._admit(self._n - 1)
        return self._n - 1

    def observe(self, index: int) -> Query | None:
        """Pool example ``index`` arrives: add it to D; return a query if it looks suspicious, else ``None``."""
        self._admit(int(index))
        return self.query(index)

    # ----------------------------------------------------------------- the round
    def query(self, index: int, probs: np.ndarray | None = None) -> Query | None:
        """Inspect example ``index`` with the current model and labels (``probs``: its predicted
        probabilities, when already computed); if suspicious, rank its counter-examples."""
        if self.skip_checked and self._checked[index]:
            return None
        if probs is None:
            probs = self._cache.probs(index, self.model_version)  # as the audit order saw it
        if probs is None:
            probs = self.learner.predict_proba(self.X[[index]])[0]
        label, prediction = int(self.labels[index]), int(np.argmax(probs))
        if not self.inspect(probs, label, self.rng, self.model_view([index])):
            return None
        ranking = Ranking.empty()
        if self.policy != "none" and prediction != label:
            ranking = self.rank(index, prediction)
        return Query(int(index), label, prediction, probs, ranking, self.policy)

    def context(self, target: int, prediction: int) -> SelectionContext:
        """What the selector sees for ``target``: candidates are the examples of D labelled ``prediction``."""
        known = self.known
        candidates = candidates_for(self.labels, known, target, prediction)
        if self.skip_checked:
            candidates = candidates[~self._checked[candidates]]
        return SelectionContext(self.learner, self.X, self.labels, known, int(target), candidates, self.rng,
                                cache=self._cache, version=self.model_version)

    def rank(self, target: int, prediction: int) -> Ranking:
        """The counter-examples of ``target``, best first (empty when no example carries ``prediction``)."""
        ctx = self.context(target, prediction)
        return self.select(ctx) if len(ctx.candidates) else Ranking.empty()

    def audit_order(self) -> np.ndarray:
        """The examples of D the inspector flags, most suspicious first (the model and labels of now)."""
        known = self.known
        if not len(known):
            return known
        # one forward pass gives the probabilities and the features every query of this model reuses
        _, probs = self._cache.features(self.learner, self.X, known, self.model_version)
        return known[audit_order(self.inspect, probs.cpu().numpy(), self.labels[known], self.rng,
                                 self.model_view(known))]

    def suspicious(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`audit_order` with each example's suspicion score (the inspector's; for the margin
        inspector, the margin) and, for convenience, nothing else changed."""
        order = self.audit_order()
        if not len(order):
            return order, np.zeros(0)
        _, probs = self._cache.features(self.learner, self.X, order, self.model_version)
        scores = self.inspect.scores(probs.cpu().numpy(), self.labels[order], self.model_view(order))
        return order, np.asarray(scores, dtype=np.float64)

    def model_view(self, rows: Any) -> ModelView | None:
        """What an inspector that scores with the model sees of pool rows ``rows`` (the current model, labels
        and D; features from this model's cache); ``None`` for an inspector of probabilities alone."""
        if not self.inspect.needs_model:
            return None
        return ModelView(self.learner, self.X, self.labels, rows, self.known,
                         features=lambda idx: self._cache.features(self.learner, self.X, idx, self.model_version))

    def prepare(self) -> None:
        """Compute ahead what every query of the current model reuses: the features and probabilities of
        D, and what the selector prepares (the FIM over D for ``top_fisher``)."""
        known = self.known
        if len(known):
            self._cache.features(self.learner, self.X, known, self.model_version)
            if self.select.prepare is not None:
                self.select.prepare(self.context(-1, -1))  # no target, no candidates

    # ----------------------------------------------------------------- labels out
    def apply(self, query: Query, answer: Answer) -> Update:
        """Write the annotator's labels into D (or drop the counter-example under the ``drop`` policy)."""
        ce = query.counterexample
        if answer.counterexample is not None:
            if query.policy != "ask" or int(answer.counterexample) not in query.ranking.indices:
                raise QueryError(f"example {answer.counterexample} is not one of the counter-examples of the "
                                 f"query about example {query.index}")
            ce = int(answer.counterexample)
        update = Update()
        for index, new in ((query.index, answer.suspicious_label),
                           (ce if query.policy == "ask" else None, answer.counter_label)):
            if index is not None and new is not None and new != self._labels[index]:
                update.relabelled[int(index)] = (int(self._labels[index]), int(new))
        if ce is not None and query.policy == "drop" and answer.suspicious_label in (None, query.label):
            update.dropped.append(ce)
        for index, new in ((query.index, answer.suspicious_label),
                           (ce if query.policy == "ask" else None, answer.counter_label)):
            if index is not None and new is not None and not self._checked[index]:
                update.checked.append(int(index))
        self._write(update, forward=True)
        return update

    def undo(self, update: Update) -> None:
        """Revert an applied update; refused if a later change touched the same examples."""
        moved = [i for i, (_, new) in update.relabelled.items() if self._labels[i] != new]
        if moved or np.isin(update.dropped, self.known).any():
            raise CincerError(f"cannot undo: example(s) {moved or update.dropped} changed since")
        self._write(update, forward=False)

    def _write(self, update: Update, *, forward: bool) -> None:
        for index, (old, new) in update.relabelled.items():
            self._labels[index] = new if forward else old
        self._checked[update.checked] = forward
        for index in update.dropped:
            if forward:
                keep = self.known != index
                self._n_known = int(keep.sum())
                self._known[:self._n_known] = self._known[:len(keep)][keep]
            else:
                self._admit(index)

    def snapshot(self, *, model: bool = False) -> LoopState:
        """The state :meth:`restore` puts back; ``model=True`` includes the model's weights (a learner
        without ``snapshot`` keeps whatever its model became)."""
        n = self._n
        state = LoopState(n, self._labels[:n].copy(), self._checked[:n].copy(), self.known,
                          dict(self.rng.bit_generator.state), self._model_epoch, self._head_fits, self._learner,
                          cache=(self._cache.version, _copy_cache(self._cache)))
        if model and hasattr(self._learner, "snapshot"):
            state.learner_state = self._learner.snapshot()
        return state

    def restore(self, state: LoopState) -> None:
        """Back to ``state`` (of this loop): pool size, labels, checked examples, D, random state, model
        counters, and the weights when the snapshot has them. What was cached for the model of then is kept
        when that model is still the current one, else the cache starts empty."""
        n = state.n
        self._n = n
        self._labels[:n], self._checked[:n] = state.labels, state.checked
        self._known, self._n_known = state.known.copy(), len(state.known)
        self.rng.bit_generator.state = state.rng
        self._learner, self._model_epoch, self._head_fits = state.learner, state.model_epoch, state.head_fits
        if state.learner_state is not None:
            state.learner.restore(state.learner_state)
        # a cache of the same model version only gained rows or FIMs (dropped with the copy's bookkeeping);
        # a newer one may have rewritten probabilities in place (a head refit): start afresh
        version, cache = state.cache if state.cache is not None else (None, None)
        self._cache = cache if cache is not None and self._cache.version == version else ModelCache()

    @contextmanager
    def transaction(self, *, model: bool = False) -> Iterator[None]:
        """Everything inside happens, or nothing: on an exception the pool, labels, checked examples, D and
        the random state are restored, and with ``model=True`` the model's weights (else the model is the
        caller's to restore)."""
        state = self.snapshot(model=model)
        try:
            yield
        except BaseException:
            self.restore(state)
            raise


def _copy_cache(cache: ModelCache) -> ModelCache:
    """A copy of the cache's bookkeeping (which rows and FIMs it has) sharing its tensors: what the cache
    later adds is not in the copy's books, so the copy is the cache as it was."""
    saved = copy.copy(cache)
    for name, value in vars(cache).items():
        if isinstance(value, (np.ndarray, dict, list, set)):
            setattr(saved, name, copy.copy(value))
    return saved
