"""Inspectors decide whether a labelled example is suspicious, and how suspicious.

An :class:`Inspector` works on rows of predicted probabilities ``P`` (``(n, C)``) and labels
(``(n,)``): ``flag(P, labels, rng)`` says which rows are suspicious and ``suspicion(P, labels)`` scores
them (higher = more suspicious). The stream asks about one example at a time
(``inspector(probs, label, rng) -> bool``); an audit asks about the flagged examples of the known set,
most suspicious first (:func:`audit_order`, the one definition used by the library and the app).
``INSPECTORS`` maps names to factories taking the inspector's parameters; any plain function
``(probs, label, rng) -> bool`` becomes an inspector with :func:`as_inspector` (ordered by margin).

Some tests need the model itself, not only its probabilities: an inspector with a ``model_score``
scores the rows from a :class:`ModelView` (the learner, the rows and their labels, the known set D),
flags those whose score exceeds its ``threshold`` and orders them by that score. The loop builds a view
only for such inspectors (``gradient``, ``influence``, ``fisher``: the paper's other suspicion tests);
every call above takes it as an optional last argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .errors import CincerError, ModelError
from .fisher import augment, n_parameters, per_class_scores, per_example_scores, residuals
from .influence import InfluenceConfig, inverse_hvp
from .registry import Registry

if TYPE_CHECKING:
    from .learners import Learner

Flag = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]
Score = Callable[[np.ndarray, np.ndarray], np.ndarray]
Features = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]
INSPECTORS: Registry[Callable[..., Inspector]] = Registry("inspector", factories=True)


def margin(probs: np.ndarray, label: int) -> float:
    """``P(predicted) - P(annotated)``: 0 when the model agrees with the label."""
    return float(probs.max() - probs[label])


def margins(P: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """:func:`margin` of every row."""
    P = np.asarray(P)
    return P.max(axis=1) - P[np.arange(len(P)), np.asarray(labels, dtype=np.int64)]


class ModelView:
    """What an inspector that needs the model sees: the learner, the inspected rows and the known set D.

    ``X`` and ``labels`` cover the pool; ``rows`` are the inspected rows (pool indices, in the order of
    the probabilities given alongside; default: all of them) and ``known`` is D, the training set of the
    current model (default: all rows). ``features(idx)`` gives the penultimate features and softmax
    outputs of pool rows ``idx`` (the loop passes its per-model cache; default:
    ``learner.features_and_probs``). Rows are gathered from the pool only when asked for, so a
    view costs nothing an inspector does not use.
    """

    def __init__(self, learner: Learner, X: torch.Tensor, labels: Any, rows: Any = None, known: Any = None,
                 features: Features | None = None) -> None:
        self.learner, self.X = learner, X
        self.labels = np.asarray(labels, dtype=np.int64)
        every = np.arange(len(self.labels))
        self.rows = every if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        self.known = every if known is None else np.asarray(known, dtype=np.int64).reshape(-1)
        self._features = features

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def model(self) -> Any:
        return self.learner.model

    @property
    def has_gradients(self) -> bool:
        """Whether the model is a PyTorch module (gradients over all its parameters by autograd)."""
        return isinstance(self.model, nn.Module)

    def _gather(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        where = torch.as_tensor(idx, device=self.X.device)
        return self.X[where], torch.as_tensor(self.labels[idx], dtype=torch.long, device=self.X.device)

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The inspected rows of ``X`` and their labels (a long tensor on ``X``'s device)."""
        return self._gather(self.rows)

    def known_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of D and their current labels: the training set whose loss the model minimised."""
        return self._gather(self.known)

    def features_and_probs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate features ``h`` and softmax outputs ``p`` of the inspected rows."""
        if self._features is not None:
            return self._features(self.rows)
        return self.learner.features_and_probs(self.data()[0])


ModelScore = Callable[[ModelView], np.ndarray]


@dataclass(frozen=True)
class Inspector:
    """A suspicion test. Either on probabilities: ``flag`` marks suspicious rows, ``suspicion`` orders them
    (default: the margin); or from the model: ``model_score(view)`` scores the rows of a
    :class:`ModelView`, a row is suspicious when its score exceeds ``threshold``, and the score orders
    them. ``needs_gradients``: the score needs all-parameter gradients, i.e. a PyTorch model (checked
    when a :class:`~cincer.loop.CleaningLoop` is built, like :attr:`cincer.select.Selector.needs_gradients`).
    """

    flag: Flag | None = None
    suspicion: Score = margins
    model_score: ModelScore | None = None
    threshold: float = 0.0
    needs_gradients: bool = False

    def __post_init__(self) -> None:
        if (self.flag is None) == (self.model_score is None):
            raise CincerError("an Inspector takes either flag (a test on the probabilities) or model_score "
                              "(a score computed from the model), exactly one of them")

    @property
    def needs_model(self) -> bool:
        """Whether this inspector scores with the model (and so needs a :class:`ModelView`)."""
        return self.model_score is not None

    def scores(self, P: np.ndarray, labels: np.ndarray, view: ModelView | None = None) -> np.ndarray:
        """How suspicious each row is (higher = more): ``model_score(view)``, or ``suspicion(P, labels)``."""
        if self.model_score is None:
            return self.suspicion(P, labels)
        if view is None:
            raise CincerError("this inspector scores examples with the model: it needs a ModelView of them "
                              "(a CleaningLoop builds one), not only their probabilities")
        scores = np.asarray(self.model_score(view), dtype=np.float64).reshape(-1)
        if len(scores) != len(view):
            raise CincerError(f"the inspector's model score gave {len(scores)} values for {len(view)} rows")
        return scores

    def flags(self, P: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
              view: ModelView | None = None) -> np.ndarray:
        """Which rows are suspicious: ``flag(P, labels, rng)``, or model score above ``threshold``."""
        if self.flag is not None:
            return self.flag(P, labels, rng)
        return self.scores(P, labels, view) > self.threshold

    def __call__(self, probs: np.ndarray, label: int, rng: np.random.Generator,
                 view: ModelView | None = None) -> bool:
        """Is this one example suspicious? (``view``: of that one row, for an inspector that needs the model)"""
        return bool(self.flags(np.asarray(probs)[None], np.array([label]), rng, view)[0])


def as_inspector(inspect: Inspector | Callable[..., Any]) -> Inspector:
    """An :class:`Inspector`, or a per-example test ``(probs, label, rng) -> bool`` turned into one."""
    if isinstance(inspect, Inspector):
        return inspect
    if not callable(inspect):
        raise CincerError(f"an inspector must be callable, got {type(inspect).__name__}")

    def flag(P: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.fromiter((bool(inspect(p, int(y), rng)) for p, y in zip(P, labels)), dtype=bool, count=len(P))

    return Inspector(flag)


def audit_order(inspector: Inspector, P: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                view: ModelView | None = None) -> np.ndarray:
    """Positions of the rows the inspector flags, most suspicious first (ties keep their order).

    ``view`` (of the same rows) is needed by an inspector that scores with the model; its score is
    computed once for every row and serves as both the test and the order."""
    if not inspector.needs_model:
        flagged = np.flatnonzero(inspector.flags(P, labels, rng))
        scores = inspector.scores(P[flagged], labels[flagged])
    else:
        every = inspector.scores(P, labels, view)
        flagged = np.flatnonzero(every > inspector.threshold)
        scores = every[flagged]
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


# --------------------------------------------------------------------------- inspectors that need the model

# Default thresholds. The scores are unbounded and scale with the inputs and the network, so each default
# is the paper code's ``find-threshold`` rule (the value above which about half as many arrivals are flagged
# as are mislabelled) on the paper's protocol (fullnet, 100 epochs, float64, 20% random noise, 100 known
# examples, up to 100 rounds, retrained each round), and the median of that value over seven data sets:
#
#   data set     adult  breast  digits  german  iris   synthetic  wine    (margin's is 0.54 - 1.0)
#   gradient     262    32      76      398     14.5   16.6       21.7    -> 30
#   fisher       987    51      192     2060    21.5   33         39      -> 50
#   influence    2e14   1.2e11  3.3e6   4.5e9   5.4e7  6.4e5      2.9e7   -> 5e7
#
# Tune them per data set. The paper's LiSSA settings (damping 1, depth 10, scale 1) converge only when the
# Hessian's eigenvalues lie in (-1, 1); on these trained networks the largest is 3.6 to 5.9 (iris,
# synthetic, breast), so the recursion grows ``||H^10 g||``-like terms, hence the influence scores' range.
# A converging solve (cg or exact, or a LiSSA scale above the largest eigenvalue) gives other values.
GRADIENT_THRESHOLD = 30.0
FISHER_THRESHOLD = 50.0
INFLUENCE_THRESHOLD = 5e7
SCORE_BUDGET = 2**21  # parameters x rows of per-example gradients held at once (x classes for the EGL)


def _chunk_rows(model: nn.Module) -> int:
    return max(1, min(1024, SCORE_BUDGET // max(1, n_parameters(model))))


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


def expected_gradient_lengths(view: ModelView) -> np.ndarray:
    """``EGL(x) = sum_y p(y|x) ||grad_theta log p(y|x)||^2`` of every inspected row (its label is not used).

    The squared norm, as in the paper's code (after Huang et al. 2016, "Active learning for speech
    recognition: the power of gradients"): it is the trace of the example's Fisher information
    ``E_y[g_y g_y^T]``, the same quantity as the ``fisher`` score with the label drawn from the model
    instead of the annotated one, and it has a closed form on the top layer (the norm has none).
    PyTorch model: all parameters, per-class scores by ``vmap`` (:func:`cincer.fisher.per_class_scores`).
    Otherwise (scikit-learn) the top layer, i.e. the equivalent softmax layer ``z = W h + b`` (a binary
    model's has the two rows of :meth:`cincer.learners.SklearnLearner.top_layer`, as the Fisher
    kernel): with ``g_y = (e_y - p) (x) [h; 1]``, ``EGL = (1 - ||p||^2) (||h||^2 + 1)``, the Gini impurity
    of the prediction times the squared length of the augmented features.
    """
    if not len(view):
        return np.zeros(0)
    if view.has_gradients:
        X, _ = view.data()
        step = _chunk_rows(view.model)
        out = []
        for s in range(0, len(X), step):
            scores, P = per_class_scores(view.model, X[s:s + step])
            out.append((P * scores.pow(2).sum(-1)).sum(1))
        return _numpy(torch.cat(out))
    H, P = view.features_and_probs()
    return _numpy((1.0 - (P * P).sum(1)) * augment(H).pow(2).sum(1))


def fisher_score_norms(view: ModelView) -> np.ndarray:
    """``g^T g`` with ``g = grad_theta log p(label | x)``: the squared length of each row's score vector.

    PyTorch model: all parameters (:func:`cincer.fisher.per_example_scores`); otherwise the top layer in
    closed form, ``||e_y - p||^2 (||h||^2 + 1)``."""
    if not len(view):
        return np.zeros(0)
    X, y = view.data()
    if view.has_gradients:
        step = _chunk_rows(view.model)
        return _numpy(torch.cat([per_example_scores(view.model, X[s:s + step], y[s:s + step]).pow(2).sum(1)
                                 for s in range(0, len(X), step)]))
    H, P = view.features_and_probs()
    return _numpy(residuals(P, y.to(P.device)).pow(2).sum(1) * augment(H).pow(2).sum(1))


def influence_norms(view: ModelView, config: InfluenceConfig) -> np.ndarray:
    """``||H^{-1} g||`` with ``g = grad_theta log p(label | x)`` over all parameters and ``H`` the Hessian of
    the mean training loss over D (:func:`cincer.influence.inverse_hvp` with ``config``): the norm of the
    example's influence on the parameters (Koh & Liang's ``I_up,params``). The paper's code divided it
    by ``|D|`` (the change from adding one example to ``|D|``); undivided, a fixed threshold means the same
    as D grows. PyTorch models only."""
    if not view.has_gradients:
        raise ModelError("the influence inspector needs a PyTorch model (the Hessian of its training loss)")
    if not len(view):
        return np.zeros(0)
    X, y = view.data()
    X_known, y_known = view.known_data()
    step = _chunk_rows(view.model)
    out = []
    for s in range(0, len(X), step):
        for g in per_example_scores(view.model, X[s:s + step], y[s:s + step]):
            norm = float(torch.linalg.vector_norm(inverse_hvp(view.model, X_known, y_known, g, config)))
            if not math.isfinite(norm):
                raise CincerError(f"the influence of an example is {norm}: the {config.solver} solve diverged "
                                  "(use a larger damping or scale, or float64)")
            out.append(norm)
    return np.asarray(out)


def check_threshold(value: float) -> None:
    if not (isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value) and value >= 0):
        raise CincerError(f"threshold must be a finite number >= 0, got {value!r}")


@INSPECTORS.register("gradient")
def gradient_inspector(threshold: float = GRADIENT_THRESHOLD) -> Inspector:
    """Suspicious when the expected gradient length (:func:`expected_gradient_lengths`) exceeds ``threshold``.

    Scores are unbounded: the default (30) is the median over seven data sets of the value that, on the
    paper's protocol (fullnet, 20% noise), flags about half as many arrivals as are mislabelled (the paper
    code's ``find-threshold``; see :data:`GRADIENT_THRESHOLD`). The score ignores the label: it measures
    how much the model would change whatever the answer, not how wrong the label looks."""
    check_threshold(threshold)
    return Inspector(model_score=expected_gradient_lengths, threshold=threshold)


@INSPECTORS.register("fisher")
def fisher_inspector(threshold: float = FISHER_THRESHOLD) -> Inspector:
    """Suspicious when the squared norm of the score vector (:func:`fisher_score_norms`) exceeds ``threshold``.

    Scores are unbounded: the default (50) is chosen as for ``gradient`` (see :data:`GRADIENT_THRESHOLD`)."""
    check_threshold(threshold)
    return Inspector(model_score=fisher_score_norms, threshold=threshold)


@INSPECTORS.register("influence")
def influence_inspector(threshold: float = INFLUENCE_THRESHOLD, config: InfluenceConfig | None = None) -> Inspector:
    """Suspicious when the influence on the parameters (:func:`influence_norms`) exceeds ``threshold``;
    ``config``: the inverse-Hessian solver (default: LiSSA with the paper's settings, as the ``influence``
    selector). The default threshold (5e7) is chosen as for ``gradient`` with that solver (see
    :data:`GRADIENT_THRESHOLD`: its scores span orders of magnitude across data sets). PyTorch models only."""
    check_threshold(threshold)
    config = config or InfluenceConfig()
    config.validate()
    return Inspector(model_score=lambda view: influence_norms(view, config), threshold=threshold,
                     needs_gradients=True)
