"""CINCER's round: add -> inspect -> select -> ask -> update.

The loop knows nothing about clean labels, files or plots: an :class:`Annotator` answers queries
(a person in the app, :class:`OracleAnnotator` in simulations) and the caller decides when to retrain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from .inspect import Inspector, margin
from .learner import Learner
from .select import Ranking, SelectionContext, Selector, candidates_for


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
    """The annotator's labels; ``None`` leaves that example's label as it is."""

    suspicious_label: int | None
    counter_label: int | None = None


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
    """What applying an answer changed."""

    relabelled: dict[int, tuple[int, int]] = field(default_factory=dict)  # index -> (old, new)
    dropped: list[int] = field(default_factory=list)


class CleaningLoop:
    """Holds the pool, the current labels and the known set D; runs CINCER's round on stream examples."""

    def __init__(self, learner: Learner, X: torch.Tensor, labels: np.ndarray, known: list[int] | np.ndarray, *,
                 inspect: Inspector, select: Selector, rng: np.random.Generator) -> None:
        self.learner, self.X = learner, X
        self.labels = np.array(labels, dtype=np.int64)  # a copy: the caller's labels are never touched
        self.known = [int(i) for i in known]
        self.inspect, self.select, self.rng = inspect, select, rng
        self.policy = getattr(select, "ce_policy", "ask")

    def retrain(self) -> None:
        idx = np.asarray(self.known)
        self.learner.fit(self.X[idx], self.labels[idx])

    def observe(self, index: int) -> Query | None:
        """Add example ``index`` to D; return a query if it looks suspicious, else ``None``."""
        self.known.append(int(index))
        probs = self.learner.predict_proba(self.X[[index]])[0]
        label, prediction = int(self.labels[index]), int(np.argmax(probs))
        if not self.inspect(probs, label, self.rng):
            return None
        ranking = Ranking.empty()
        if self.policy != "none" and prediction != label:
            known = np.asarray(self.known)
            candidates = candidates_for(self.labels, known, index, prediction)
            if len(candidates):
                ranking = self.select(SelectionContext(self.learner, self.X, self.labels, known, index,
                                                       candidates, self.rng))
        return Query(int(index), label, prediction, probs, ranking, self.policy)

    def apply(self, query: Query, answer: Answer) -> Update:
        """Write the annotator's labels into D (or drop the counter-example under the ``drop`` policy)."""
        update = Update()
        self._relabel(query.index, answer.suspicious_label, update)
        ce = query.counterexample
        if ce is not None and query.policy == "ask":
            self._relabel(ce, answer.counter_label, update)
        elif ce is not None and query.policy == "drop" and answer.suspicious_label in (None, query.label):
            self.known.remove(ce)
            update.dropped.append(ce)
        return update

    def _relabel(self, index: int, new: int | None, update: Update) -> None:
        if new is not None and new != self.labels[index]:
            update.relabelled[index] = (int(self.labels[index]), int(new))
            self.labels[index] = new
