"""Inspectors decide whether a newly labelled example is suspicious.

An inspector is any callable ``(probs, label, rng) -> bool`` where ``probs`` is the model's predictive
distribution for the example and ``label`` its annotated class. ``INSPECTORS`` maps names to
factories taking the inspector's parameters.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import CincerError
from .registry import Registry

Inspector = Callable[[np.ndarray, int, np.random.Generator], bool]
INSPECTORS: Registry[Callable[..., Inspector]] = Registry("inspector")


def margin(probs: np.ndarray, label: int) -> float:
    """``P(predicted) - P(annotated)``: 0 when the model agrees with the label."""
    return float(probs.max() - probs[label])


@INSPECTORS.register("margin")
def margin_inspector(threshold: float = 0.2, **_) -> Inspector:
    """CINCER's test: suspicious when the margin exceeds ``threshold`` (the paper uses 0.2)."""
    if not 0.0 < threshold < 1.0:
        raise CincerError(f"the margin threshold must be in (0, 1), got {threshold}")
    return lambda probs, label, rng: margin(probs, label) > threshold


@INSPECTORS.register("always")
def always_inspector(**_) -> Inspector:
    """Every example the model disagrees with is suspicious (a margin threshold of 0)."""
    return lambda probs, label, rng: int(np.argmax(probs)) != label


@INSPECTORS.register("never")
def never_inspector(**_) -> Inspector:
    """No example is ever queried: plain learning on noisy labels."""
    return lambda probs, label, rng: False


@INSPECTORS.register("random")
def random_inspector(p_query: float = 0.5, **_) -> Inspector:
    """Each example is queried with probability ``p_query``, whatever the model thinks."""
    if not 0.0 <= p_query <= 1.0:
        raise CincerError(f"p_query must be in [0, 1], got {p_query}")
    return lambda probs, label, rng: bool(rng.random() < p_query)
