"""Label noise injection. The clean labels are kept apart, for the simulated oracle only."""

from __future__ import annotations

import math

import numpy as np

from ..errors import CincerError

# kind -> what it needs besides the labels: "X" (the inputs), "margins" (per-example confidence of a model
# trained on the clean labels, see :func:`probability_margins`)
NOISE_NEEDS: dict[str, tuple[str, ...]] = {
    "random": (),
    "pair": (),
    "max_margin": ("margins",),
    "min_margin": ("margins",),
    "min_max_margin": ("margins",),
    "max_margin_cluster": ("X", "margins"),
    "outlier": ("X",),
}
NOISE_KINDS = tuple(NOISE_NEEDS)
MARGIN_KINDS = tuple(kind for kind, needs in NOISE_NEEDS.items() if "margins" in needs)
MIN_CLUSTER = 10  # max_margin_cluster: the smallest cluster (the original code's)


def probability_margins(probs: np.ndarray) -> np.ndarray:
    """``max_c p_c - min_c p_c`` per row: how sure a model is (the original code's margin for noise)."""
    probs = np.asarray(probs)
    return probs.max(axis=1) - probs.min(axis=1)


def flip_labels(
    y: np.ndarray, rate: float, n_classes: int, *, kind: str = "random", rng: np.random.Generator,
    X: np.ndarray | None = None, margins: np.ndarray | None = None,
) -> np.ndarray:
    """Return a noisy copy of ``y`` where exactly ``k = round(rate * len(y))`` labels are wrong.

    Which examples are flipped, and to what:

    ``random`` (the paper's): ``k`` examples drawn uniformly; each label moves uniformly to another class.
    ``pair``: ``k`` examples drawn uniformly; class ``c`` moves to ``(c + 1) mod n_classes``, a fixed confusion.
    ``max_margin``: the ``k`` examples with the largest ``margins`` (those a model trained on the clean
    labels is surest about); each label moves uniformly to another class.
    ``min_margin``: the ``k`` examples with the smallest ``margins`` (the least sure), likewise.
    ``min_max_margin``: ``round(k / 2)`` (half to even, as the original) of the smallest margins and the
    rest of the largest, likewise.
    ``max_margin_cluster``: whole neighbourhoods. Classes take turns (round robin, in the order of their
    most confident example); a class's turn centres a cluster on its largest-margin example not yet
    flipped and flips that example's ``max(10, ceil(k / n_classes))`` nearest same-class neighbours
    (Euclidean in input space, the centre included, none flipped before) to one wrong label drawn
    uniformly for the whole cluster. The last cluster is cut so that exactly ``k`` are flipped.
    ``outlier``: ``k`` examples drawn without replacement with probability proportional to
    ``exp(d)``, ``d`` the Euclidean distance to the nearest other example in input space (the original
    code's weight: isolated examples first); each label moves uniformly to another class.

    ``margins`` (margin kinds): one number per example, e.g. :func:`probability_margins` of a model
    trained on the clean labels; ties go to the lower index. ``X`` (``max_margin_cluster``, ``outlier``):
    the inputs, one row (of any shape) per example. Both are ignored by the kinds that do not need them, and
    when nothing is flipped (``k == 0``).
    """
    if not 0.0 <= rate < 1.0:
        raise CincerError(f"noise rate must be in [0, 1), got {rate}")
    if kind not in NOISE_KINDS:
        raise CincerError(f"unknown noise kind {kind!r} (choose from: {', '.join(NOISE_KINDS)})")
    if n_classes < 2:
        raise CincerError("label noise needs at least two classes")
    y = np.asarray(y, dtype=np.int64)
    noisy = y.copy()
    if kind in ("random", "pair"):  # the published draws: keep these rng calls exactly as they are
        flip = rng.choice(len(y), size=int(round(rate * len(y))), replace=False)
        if kind == "random":
            # an offset in 1..C-1 lands uniformly on one of the other classes
            offset = rng.integers(1, n_classes, size=len(flip))
        else:
            offset = np.ones(len(flip), dtype=np.int64)
        noisy[flip] = (y[flip] + offset) % n_classes
        return noisy
    n, k = len(y), int(round(rate * len(y)))
    if k == 0:
        return noisy  # nothing to flip: nothing to rank by
    flat = _needed(kind, "X", X, n)
    m = _needed(kind, "margins", margins, n)
    if kind == "max_margin_cluster":
        assert flat is not None and m is not None
        return _flip_clusters(y, noisy, k, n_classes, flat.reshape(n, -1), m, rng)
    if kind == "outlier":
        assert flat is not None
        # Gumbel-top-k: the k largest of d + Gumbel noise are a draw without replacement with p ~ exp(d),
        # computed in log space so that no weight underflows whatever the scale of the distances
        keys = _nearest_distance(flat.reshape(n, -1)) + rng.gumbel(size=n)
        flip = np.argsort(-keys, kind="stable")[:k]
    else:
        assert m is not None
        ascending = np.argsort(m, kind="stable")
        descending = np.argsort(-m, kind="stable")
        if kind == "max_margin":
            flip = descending[:k]
        elif kind == "min_margin":
            flip = ascending[:k]
        else:  # min_max_margin: disjoint as long as k <= n
            low = int(round(k / 2))
            flip = np.concatenate([ascending[:low], descending[:k - low]])
    flip = np.sort(flip)
    noisy[flip] = (y[flip] + rng.integers(1, n_classes, size=len(flip))) % n_classes
    return noisy


def _needed(kind: str, name: str, value: np.ndarray | None, n: int) -> np.ndarray | None:
    """``value`` as an array if ``kind`` needs it (refused when missing or of the wrong length), else None."""
    if name not in NOISE_NEEDS[kind]:
        return None
    if value is None:
        what = "the inputs X" if name == "X" else "the margins of a model trained on the clean labels"
        raise CincerError(f"noise kind {kind!r} needs {what}: flip_labels(..., {name}=...)")
    array = np.asarray(value) if name == "X" else np.asarray(value, dtype=np.float64).reshape(-1)
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)  # integer pixels: distances without overflow
    if len(array) != n:
        raise CincerError(f"noise kind {kind!r}: {name} has {len(array)} rows for {n} labels")
    return array


def _flip_clusters(y: np.ndarray, noisy: np.ndarray, k: int, n_classes: int, X: np.ndarray, margins: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    size = max(MIN_CLUSTER, math.ceil(k / n_classes))
    by_confidence = np.argsort(-margins, kind="stable")
    classes = list(dict.fromkeys(int(c) for c in y[by_confidence]))  # in the order of their surest example
    members = {c: np.flatnonzero(y == c) for c in classes}
    flipped = np.zeros(len(y), dtype=bool)
    count = 0
    while count < k:  # each turn flips at least one example, and k <= len(y)
        for c in classes:
            free = members[c][~flipped[members[c]]]
            if count == k or not len(free):
                continue
            centre = int(np.argmax(margins[free]))  # first of equal margins: the lower index
            # distances from the centre only (n_c x d, never n x n); the centre itself comes first
            diff = X[free] - X[free[centre]]
            dist = np.einsum("ij,ij->i", diff, diff)
            dist[centre] = -1.0
            take = free[np.argsort(dist, kind="stable")[:min(size, k - count)]]
            noisy[take] = (c + rng.integers(1, n_classes)) % n_classes  # one wrong label for the cluster
            flipped[take] = True
            count += len(take)
    return noisy


def _nearest_distance(X: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row to its nearest other row (a tree or chunked search: no n x n matrix)."""
    from sklearn.neighbors import NearestNeighbors

    if len(X) < 2:
        return np.zeros(len(X))
    dist, _ = NearestNeighbors(n_neighbors=1).fit(X).kneighbors()  # without X: a point is not its own neighbour
    return dist[:, 0]
