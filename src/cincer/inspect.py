"""Inspectors decide whether a labelled example is suspicious, and how suspicious.

An :class:`Inspector` works on rows of predicted probabilities ``P`` (``(n, C)``) and labels
(``(n,)``): ``flag(P, labels, rng)`` says which rows are suspicious and ``suspicion(P, labels)`` scores
them (higher = more suspicious). The stream asks about one example at a time
(``inspector(probs, label, rng) -> bool``); an audit asks about the flagged examples of the known set,
most suspicious first (:func:`audit_order`, the one definition used by the library and the app).
``INSPECTORS`` maps names to factories taking the inspector's parameters; any plain function
``(probs, label, rng) -> bool`` becomes an inspector with :func:`as_inspector` (ordered by margin).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CincerError
from .registry import Registry

Flag = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]
Score = Callable[[np.ndarray, np.ndarray], np.ndarray]
INSPECTORS: Registry[Callable[..., Inspector]] = Registry("inspector", factories=True)


def margin(probs: np.ndarray, label: int) -> float:
    """``P(predicted) - P(annotated)``: 0 when the model agrees with the label."""
    return float(probs.max() - probs[label])


def margins(P: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """:func:`margin` of every row."""
    P = np.asarray(P)
    return P.max(axis=1) - P[np.arange(len(P)), np.asarray(labels, dtype=np.int64)]


@dataclass(frozen=True)
class Inspector:
    """A suspicion test: ``flag`` marks suspicious rows, ``suspicion`` orders them (default: the margin)."""

    flag: Flag
    suspicion: Score = margins

    def __call__(self, probs: np.ndarray, label: int, rng: np.random.Generator) -> bool:
        """Is this one example suspicious?"""
        return bool(self.flag(np.asarray(probs)[None], np.array([label]), rng)[0])


def as_inspector(inspect: Inspector | Callable[..., Any]) -> Inspector:
    """An :class:`Inspector`, or a per-example test ``(probs, label, rng) -> bool`` turned into one."""
    if isinstance(inspect, Inspector):
        return inspect
    if not callable(inspect):
        raise CincerError(f"an inspector must be callable, got {type(inspect).__name__}")

    def flag(P: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.fromiter((bool(inspect(p, int(y), rng)) for p, y in zip(P, labels)), dtype=bool, count=len(P))

    return Inspector(flag)


def audit_order(inspector: Inspector, P: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions of the rows the inspector flags, most suspicious first (ties keep their order)."""
    flagged = np.flatnonzero(inspector.flag(P, labels, rng))
    scores = inspector.suspicion(P[flagged], labels[flagged])
    return flagged[np.argsort(-scores, kind="stable")]


def check_unit(name: str, value: float, *, low_open: bool = True, high_open: bool = True) -> None:
    """``value`` must lie in the unit interval, open or closed at each end as stated."""
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise CincerError(f"{name} must be in {interval}, got {value}")


@INSPECTORS.register("margin")
def margin_inspector(threshold: float = 0.2) -> Inspector:
    """CINCER's test: suspicious when the margin exceeds ``threshold`` (the paper uses 0.2)."""
    check_unit("threshold", threshold)
    return Inspector(lambda P, labels, rng: margins(P, labels) > threshold)


@INSPECTORS.register("always")
def always_inspector() -> Inspector:
    """Every example the model disagrees with is suspicious (a margin threshold of 0)."""
    return Inspector(lambda P, labels, rng: np.asarray(P).argmax(axis=1) != labels)


@INSPECTORS.register("never")
def never_inspector() -> Inspector:
    """No example is ever queried: plain learning on noisy labels."""
    return Inspector(lambda P, labels, rng: np.zeros(len(labels), dtype=bool))


@INSPECTORS.register("random")
def random_inspector(p_query: float = 0.5) -> Inspector:
    """Each example is queried with probability ``p_query``, whatever the model thinks."""
    check_unit("p_query", p_query, low_open=False, high_open=False)
    return Inspector(lambda P, labels, rng: rng.random(len(labels)) < p_query)


def label_quality(P: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """cleanlab's self-confidence label quality ``P(label | x)`` of every row."""
    from cleanlab.rank import get_label_quality_scores

    return get_label_quality_scores(np.asarray(labels, dtype=np.int64), np.asarray(P, dtype=np.float64),
                                    method="self_confidence")


@INSPECTORS.register("cleanlab")
def cleanlab_inspector(threshold: float = 0.5) -> Inspector:
    """cleanlab's test instead of the margin: suspicious when the label quality is below ``threshold``."""
    check_unit("threshold (cleanlab label quality)", threshold, high_open=False)
    try:
        import cleanlab  # noqa: F401  (imported here: only this inspector needs it)
    except ImportError:
        raise CincerError("the cleanlab inspector needs the cleanlab package "
                          "(pip install 'cincer[cleanlab]')") from None
    return Inspector(lambda P, labels, rng: label_quality(P, labels) < threshold,
                     suspicion=lambda P, labels: 1.0 - label_quality(P, labels))
