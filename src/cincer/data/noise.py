"""Label noise injection. The clean labels are kept apart, for the simulated oracle only."""

from __future__ import annotations

import numpy as np

from ..errors import CincerError

NOISE_KINDS = ("random", "pair")


def flip_labels(
    y: np.ndarray, rate: float, n_classes: int, *, kind: str = "random", rng: np.random.Generator
) -> np.ndarray:
    """Return a noisy copy of ``y`` where exactly ``round(rate * len(y))`` labels are wrong.

    ``random`` (the paper's): each chosen label moves uniformly to another class.
    ``pair``: class ``c`` moves to ``(c + 1) mod n_classes``, a fixed confusion.
    """
    if not 0.0 <= rate < 1.0:
        raise CincerError(f"noise rate must be in [0, 1), got {rate}")
    if kind not in NOISE_KINDS:
        raise CincerError(f"unknown noise kind {kind!r} (choose from: {', '.join(NOISE_KINDS)})")
    if n_classes < 2:
        raise CincerError("label noise needs at least two classes")
    y = np.asarray(y, dtype=np.int64)
    noisy = y.copy()
    flip = rng.choice(len(y), size=int(round(rate * len(y))), replace=False)
    if kind == "random":
        # an offset in 1..C-1 lands uniformly on one of the other classes
        offset = rng.integers(1, n_classes, size=len(flip))
    else:
        offset = np.ones(len(flip), dtype=np.int64)
    noisy[flip] = (y[flip] + offset) % n_classes
    return noisy
