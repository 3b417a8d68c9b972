"""Counter-example selectors.

A :class:`Selector` ranks the candidates (known examples other than the suspicious one, labelled with
the predicted class) by how much they support the model's suspicion, best first, with their scores,
from a :class:`SelectionContext` that only :class:`cincer.loop.CleaningLoop` builds. It declares what it
needs and how its answer is used: ``policy`` is ``"ask"`` (default, show the pair), ``"drop"`` (ask about
the suspicious example alone; drop the counter-example if that label was right) or ``"none"`` (no
counter-example at all); ``needs_gradients`` marks rankings over all the parameters, which need a
PyTorch model. ``SELECTORS`` maps names to factories taking the selector's parameters; any plain
function ``(context) -> Ranking`` becomes a selector with :func:`as_selector`.

Sign. With ``g = grad log P(label | x)`` and a positive-definite curvature ``C`` (the Fisher, the
training-loss Hessian, or I), removing candidate k changes ``log P(label_t | x_t)`` by about
``+g_t^T C^{-1} g_k / n``. The counter-example is the candidate whose removal most *reduces* the
suspicion, i.e. most raises ``P(label_t | x_t)``: the score is ``support = -g_t^T C^{-1} g_k`` and the
ranking is by decreasing support. (CINCER.md writes ``argmax g_t^T H^{-1} g_k`` with H the Hessian of
the log-likelihood, which is negative definite: the same choice.) On breast/fullnet, precision@5 of
the practical Fisher ranking is 0.88 with this sign and 0.00 with the opposite one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import CincerError
from .fisher import (
    CURVATURES,
    BlockFisherSolver,
    DiagonalFisherSolver,
    FisherSolver,
    KroneckerFisherSolver,
    check_damping,
    fisher_blocks,
    fisher_diagonal,
    full_fisher,
    layer_blocks,
    n_parameters,
    per_example_scores,
    resolve_truncate,
    scores_dot,
    top_layer_kernel,
    top_layer_scores,
    top_layer_solver,
)
from .influence import InfluenceConfig, inverse_hvp
from .learners import Learner
from .registry import Registry


@dataclass
class Ranking:
    """Candidates (pool indices) sorted by decreasing score."""

    indices: np.ndarray
    scores: np.ndarray

    @classmethod
    def from_scores(cls, candidates: np.ndarray, scores: np.ndarray | torch.Tensor) -> Ranking:
        scores = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
        order = np.argsort(-scores, kind="stable")  # ties keep candidate order: deterministic
        return cls(np.asarray(candidates)[order], scores[order])

    @classmethod
    def empty(cls) -> Ranking:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0))

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def best(self) -> int | None:
        return int(self.indices[0]) if len(self.indices) else None


# how an audit orders each issue's counter-examples (see weigh_by_suspicion)
COUNTEREXAMPLE_ORDERS = ("support", "suspect")


def check_counterexample_order(value: Any) -> None:
    if value not in COUNTEREXAMPLE_ORDERS:
        raise CincerError(f"counterexamples must be one of {', '.join(COUNTEREXAMPLE_ORDERS)}, got {value!r}")


def weigh_by_suspicion(ranking: Ranking, own_label_probs: np.ndarray) -> Ranking:
    """``ranking`` reordered by support x the candidate's own probability of being mislabelled, ``1 - P(its
    label)`` (``own_label_probs``, one per ranked candidate, out of fold where the audit is): of the examples
    that support the model's doubt, those that are themselves likely wrong first, so a reader who checks the
    issue and its counter-example meets more wrong labels per example read (docs/SCALE.md)."""
    return Ranking.from_scores(ranking.indices, ranking.scores * (1.0 - np.asarray(own_label_probs, np.float64)))


Solver = FisherSolver | KroneckerFisherSolver | DiagonalFisherSolver | BlockFisherSolver
SAME_BATCH_MAX = 4096  # requests up to this many rows are computed exactly as an uncached call would
KERNEL_CHUNK = 65_536  # candidates scored per gather of their cached features


class ModelCache:
    """What the selectors reuse while the model stays the same (one ``version``): the penultimate
    features and softmax outputs of the pool examples asked for, each computed once, and the factorised
    FIMs of the example sets asked for. A new version (a retrain) empties it.

    Rows are stored compactly, in the order they were first asked for (``_slot`` maps a pool index to its
    row), so a model with a huge penultimate layer caches only the examples it is asked about.
    """

    def __init__(self, max_solvers: int = 4) -> None:
        self.version: Hashable = None
        self.max_solvers = max_solvers
        self._H: torch.Tensor | None = None
        self._P: torch.Tensor | None = None
        self._slot = np.zeros(0, dtype=np.int64)  # pool index -> row of _H/_P, -1 when not cached
        self._used = 0
        self._solvers: dict[Hashable, Solver] = {}
        self.method: str | None = None  # how the last FIM was built (dense, gram, ekfac, kfac)

    def _check(self, version: Hashable, n_pool: int) -> None:
        if version != self.version:
            self.version, self._H, self._P, self._solvers, self._used = version, None, None, {}, 0
            self._slot = np.full(n_pool, -1, dtype=np.int64)
        elif len(self._slot) < n_pool:  # the pool grew
            self._slot = np.concatenate([self._slot, np.full(n_pool - len(self._slot), -1, dtype=np.int64)])

    def ensure(self, learner: Learner, X: torch.Tensor, idx: np.ndarray, version: Hashable) -> None:
        """Compute the features of the rows of ``idx`` not cached yet, in one forward pass."""
        self._check(version, len(X))
        idx = np.asarray(idx, dtype=np.int64)
        missing = idx[self._slot[idx] < 0]
        if not len(missing):
            return
        # a small request seen for the first time is computed as the very batch an uncached call would
        # compute (the same numbers to the last bit); a large one row by row once, without duplicates
        if len(missing) == len(idx) and len(idx) <= SAME_BATCH_MAX:
            todo = idx
        else:
            need = np.zeros(len(X), dtype=bool)
            need[missing] = True
            todo = np.flatnonzero(need)
        H, P = learner.features_and_probs(X[_rows(todo)])
        if self._H is None and len(todo) == len(X) and np.array_equal(todo, np.arange(len(X))):
            self._H, self._P, self._used = H, P, len(X)  # the whole pool in order: keep the result, no copy
            self._slot = np.arange(len(X), dtype=np.int64)
            return
        fresh = np.flatnonzero(self._slot[todo] < 0)  # duplicates within todo are written once
        _, first = np.unique(todo[fresh], return_index=True)
        fresh = fresh[first]
        end = self._used + len(fresh)
        if self._H is None or end > len(self._H):
            capacity = min(len(X), max(end, 2 * (0 if self._H is None else len(self._H))))
            self._H, self._P = _grown(self._H, H, capacity, self._used), _grown(self._P, P, capacity, self._used)
        assert self._H is not None and self._P is not None
        rows = torch.as_tensor(fresh, device=H.device)
        self._H[self._used:end], self._P[self._used:end] = H[rows], P[rows]
        self._slot[todo[fresh]] = np.arange(self._used, end)
        self._used = end

    def features(self, learner: Learner, X: torch.Tensor, idx: np.ndarray,
                 version: Hashable) -> tuple[torch.Tensor, torch.Tensor]:
        """``learner.features_and_probs(X[idx])``, each pool row computed once per version (rows cached
        contiguously come back as a view of the cache, no copy)."""
        self.ensure(learner, X, idx, version)
        assert self._H is not None and self._P is not None
        rows = _rows(self._slot[np.asarray(idx, dtype=np.int64)], self._H.device)
        return self._H[rows], self._P[rows]

    def refresh_probs(self, head_probs: Callable[[torch.Tensor], torch.Tensor], version: Hashable) -> None:
        """After a refit of the last layer alone: the features stay, the probabilities are recomputed from
        them, and the cache moves to ``version``. The FIMs stay too: the curvature of the last full fit."""
        if self._H is not None:
            assert self._P is not None
            self._P[:self._used] = head_probs(self._H[:self._used]).to(self._P.dtype)
        self.version = version

    def probs(self, index: int, version: Hashable) -> np.ndarray | None:
        """The cached softmax output of pool example ``index`` under ``version``, if there is one."""
        if version != self.version or index >= len(self._slot) or self._slot[index] < 0:
            return None
        assert self._P is not None
        return self._P[self._slot[index]].cpu().numpy()

    def solver(self, version: Hashable, key: Hashable, build: Callable[[], Solver]) -> Solver:
        """The factorised FIM under ``key`` (its example set and options), built once per version."""
        if version != self.version:
            self._check(version, len(self._slot))
        if key not in self._solvers:
            if len(self._solvers) >= self.max_solvers:
                self._solvers.pop(next(iter(self._solvers)))  # oldest first
            self._solvers[key] = build()
        self.method = self._solvers[key].method
        return self._solvers[key]


def _rows(idx: np.ndarray, device: torch.device | None = None) -> slice | torch.Tensor:
    """Index ``idx`` as a slice when it is a contiguous ascending range (indexing then makes a view)."""
    if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and (len(idx) == 1 or bool(np.all(np.diff(idx) == 1))):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return torch.as_tensor(idx, device=device)


def _grown(old: torch.Tensor | None, like: torch.Tensor, n: int, used: int) -> torch.Tensor:
    """A buffer of ``n`` rows shaped like ``like``, holding the first ``used`` rows of ``old``."""
    out = like.new_empty((n, *like.shape[1:]))
    if old is not None:
        out[:used] = old[:used]
    return out


@dataclass
class SelectionContext:
    """What a selector may look at. ``X`` and ``labels`` cover the whole pool; ``known`` is D. Features
    and FIMs come through :meth:`features` and :meth:`fisher_solver`, cached per model version."""

    learner: Learner
    X: torch.Tensor
    labels: np.ndarray
    known: np.ndarray
    target: int
    candidates: np.ndarray
    rng: np.random.Generator
    cache: ModelCache | None = None
    version: Hashable = None

    @property
    def model(self) -> Any:
        return self.learner.model

    def label_tensor(self, idx: np.ndarray | list[int]) -> torch.Tensor:
        return torch.as_tensor(self.labels[np.asarray(idx)], dtype=torch.long, device=self.X.device)

    def features(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate features and softmax outputs of pool examples ``idx``."""
        if self.cache is None:
            return self.learner.features_and_probs(self.X[idx])
        return self.cache.features(self.learner, self.X, idx, self.version)

    def prefetch(self, idx: np.ndarray) -> None:
        """Compute (and cache) the features of the rows of ``idx`` this model has not seen, in one pass."""
        if self.cache is not None:
            self.cache.ensure(self.learner, self.X, idx, self.version)

    def fisher_solver(self, fim_examples: np.ndarray, *, damping: float = 0.0, factorization: str = "auto",
                      curvature: str = "auto", relative_damping: float = 0.0, truncate: float = 0.0) -> Solver:
        """The factorised top-layer FIM over ``fim_examples`` (see :func:`cincer.fisher.top_layer_solver`)."""
        def build() -> Solver:
            return top_layer_solver(*self.features(fim_examples), damping=damping, factorization=factorization,
                                    curvature=curvature, relative_damping=relative_damping, truncate=truncate)
        if self.cache is None:
            return build()
        key = (hashlib.sha1(np.ascontiguousarray(fim_examples, dtype=np.int64).tobytes()).hexdigest(), damping,
               factorization, curvature, relative_damping, truncate)
        return self.cache.solver(self.version, key, build)


POLICIES = ("ask", "drop", "none")


@dataclass(frozen=True)
class Selector:
    """A counter-example ranking and what it declares: how its best candidate is used (``policy``),
    whether it needs all-parameter gradients, i.e. a PyTorch model (``needs_gradients``), and what it
    can compute ahead of the first query of a model (``prepare``, e.g. the FIM over D)."""

    rank: Callable[[SelectionContext], Ranking]
    policy: str = "ask"
    needs_gradients: bool = False
    prepare: Callable[[SelectionContext], None] | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise CincerError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")

    def __call__(self, ctx: SelectionContext) -> Ranking:
        return self.rank(ctx)


def as_selector(select: Selector | Callable[[SelectionContext], Ranking]) -> Selector:
    """A :class:`Selector`, or a plain ranking function turned into one (``ask`` policy)."""
    if isinstance(select, Selector):
        return select
    if not callable(select):
        raise CincerError(f"a selector must be callable, got {type(select).__name__}")
    return Selector(select)


SELECTORS: Registry[Callable[..., Selector]] = Registry("selector", factories=True)


def candidates_for(labels: np.ndarray, known: np.ndarray, target: int, predicted: int) -> np.ndarray:
    """``{k in D, k != t : label_k == predicted}``."""
    known = np.asarray(known)
    return known[(known != target) & (labels[known] == predicted)]


def sample_indices(known: np.ndarray, n_samples: int | None, rng: np.random.Generator) -> np.ndarray:
    if n_samples is None or n_samples >= len(known):
        return known
    return rng.choice(known, size=n_samples, replace=False)


def check_fim_options(fim_samples: int | None, damping: float, relative_damping: float = 0.0,
                      truncate: float = 0.0) -> None:
    if fim_samples is not None and (not isinstance(fim_samples, (int, np.integer)) or fim_samples < 1):
        raise CincerError(f"fim_samples must be a positive integer or None (all known examples), got {fim_samples!r}")
    check_damping(damping, relative_damping, truncate)


# --------------------------------------------------------------------------- Fisher kernels

def top_fisher_ranking(learner: Learner, X: torch.Tensor, labels: np.ndarray, target: int,
                       candidates: np.ndarray, fim_examples: np.ndarray, *, damping: float = 0.0,
                       factorization: str = "auto", curvature: str = "auto", relative_damping: float = 0.0,
                       truncate: float = 0.0) -> Ranking:
    """CINCER: rank candidates by ``-g_t^T F^{-1} g_k`` over the top layer, in closed form (``truncate``:
    see :class:`cincer.fisher.FisherSolver`; 0 here, the paper's pseudo-inverse)."""
    return _top_fisher(lambda idx: learner.features_and_probs(X[idx]), None, labels, target,
                       np.asarray(candidates), np.asarray(fim_examples), damping=damping, factorization=factorization,
                       curvature=curvature, relative_damping=relative_damping, truncate=truncate)


def _top_fisher(features: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]],
                solver_of: Callable[[np.ndarray], Solver] | None, labels: np.ndarray, target: int,
                candidates: np.ndarray, fim_examples: np.ndarray, *, damping: float, factorization: str,
                curvature: str, relative_damping: float = 0.0, truncate: float = 0.0,
                prefetch: Callable[[np.ndarray], None] | None = None) -> Ranking:
    """:func:`top_fisher_ranking` from a source of features and, when they are cached, of factorised FIMs
    (then the candidates are scored a chunk of cached features at a time)."""
    idx = np.concatenate([[target], candidates, fim_examples]).astype(np.int64)
    n_cand = len(candidates)
    y = torch.as_tensor(labels[idx[:1 + n_cand]], dtype=torch.long)
    if solver_of is None:  # the FIM from the features just computed: one forward pass in all
        H, P = features(idx)
        solver: Solver = top_layer_solver(H[1 + n_cand:], P[1 + n_cand:], damping=damping,
                                          factorization=factorization, curvature=curvature,
                                          relative_damping=relative_damping, truncate=truncate)
        y = y.to(H.device)
        chunks: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = [(H[1:1 + n_cand], P[1:1 + n_cand], y[1:])]
    else:
        if prefetch is not None:
            prefetch(idx)  # whatever this model has not seen, in one forward pass
        solver = solver_of(fim_examples)
        H, P = features(idx[:1])
        y = y.to(H.device)
        chunks = ((*features(candidates[s:s + KERNEL_CHUNK]), y[1 + s:1 + s + KERNEL_CHUNK])
                  for s in range(0, n_cand, KERNEL_CHUNK))
    g_t = top_layer_scores(H[:1], P[:1], y[:1])[0]
    V = solver.solve(g_t.reshape(-1)).reshape(g_t.shape)
    kernel = [top_layer_kernel(V, Hc, Pc, yc) for Hc, Pc, yc in chunks]
    return Ranking.from_scores(candidates, -torch.cat(kernel) if kernel else H.new_zeros(0))


@SELECTORS.register("top_fisher")
def top_fisher(fim_samples: int | None = None, damping: float = 0.0, factorization: str = "auto",
               curvature: str = "auto", relative_damping: float = 0.0, truncate: float | None = None) -> Selector:
    """Top-layer Fisher kernel. FIM over ``fim_samples`` random known examples (default: all of them;
    the paper used 30), pseudo-inverted (``damping == 0``, the paper) or damped; ``factorization="eigh"``
    skips the Cholesky shortcut of the pseudo-inverse (see :class:`cincer.fisher.FisherSolver`);
    ``curvature``: the exact FIM, EK-FAC or K-FAC, or ``"auto"`` (exact unless too costly to build, see
    :func:`cincer.fisher.top_layer_solver`); ``relative_damping``: damping as a fraction of the FIM's mean
    eigenvalue (scale-free; excludes ``damping``); ``truncate``: the pseudo-inverse ignores eigendirections
    below this fraction of the mean eigenvalue (scale-free); ``None``: :data:`cincer.fisher.DEFAULT_TRUNCATE`
    (the product's default, chosen by the study of docs/REPRODUCTION.md) unless damped; 0: the paper's."""
    options = _top_fisher_options(fim_samples, damping, factorization, curvature, relative_damping, truncate)

    def select(ctx: SelectionContext) -> Ranking:
        return _top_fisher_of(ctx, ctx.candidates, fim_samples, options)

    return Selector(select, prepare=_top_fisher_prepare(fim_samples, options))


def _top_fisher_options(fim_samples: int | None, damping: float, factorization: str, curvature: str,
                        relative_damping: float = 0.0, truncate: float | None = 0.0) -> dict[str, Any]:
    """The checked options of a top-layer Fisher ranking (``top_fisher``, ``nearest_fisher``, ``drop_ce``)."""
    truncate = resolve_truncate(truncate, damping, relative_damping)
    check_fim_options(fim_samples, damping, relative_damping, truncate)
    if factorization not in ("auto", "eigh"):
        raise CincerError(f"factorization must be auto or eigh, got {factorization!r}")
    if curvature not in CURVATURES:
        raise CincerError(f"curvature must be one of {', '.join(CURVATURES)}, got {curvature!r}")
    return {"damping": damping, "factorization": factorization, "curvature": curvature,
            "relative_damping": relative_damping, "truncate": truncate}


def _top_fisher_of(ctx: SelectionContext, candidates: np.ndarray, fim_samples: int | None,
                   options: dict[str, Any]) -> Ranking:
    """The top-layer Fisher ranking of ``candidates`` (a subset of the context's, or all of them), with the
    context's cached features and FIMs."""
    fim_examples = sample_indices(ctx.known, fim_samples, ctx.rng)
    solver_of = None if ctx.cache is None else (lambda examples: ctx.fisher_solver(examples, **options))
    return _top_fisher(ctx.features, solver_of, ctx.labels, ctx.target, candidates, fim_examples,
                       prefetch=ctx.prefetch, **options)


def _top_fisher_prepare(fim_samples: int | None, options: dict[str, Any]) -> Callable[[SelectionContext], None]:
    def prepare(ctx: SelectionContext) -> None:
        if fim_samples is None:  # the exact FIM over all of D serves every query of this model
            ctx.fisher_solver(ctx.known, **options)
    return prepare


def all_parameter_ranking(ctx: SelectionContext, apply_inverse: Callable[[torch.Tensor], torch.Tensor],
                          candidates: np.ndarray | None = None) -> Ranking:
    """Rank by support ``-g_t^T C^{-1} g_k`` over all parameters; ``apply_inverse`` applies ``C^{-1}``.
    ``candidates``: a subset of the context's to rank (default: all of them)."""
    candidates = ctx.candidates if candidates is None else candidates
    g_t = per_example_scores(ctx.model, ctx.X[[ctx.target]], ctx.label_tensor([ctx.target]))[0]
    v = apply_inverse(g_t)
    return Ranking.from_scores(candidates, -scores_dot(ctx.model, v, ctx.X[candidates],
                                                       ctx.label_tensor(candidates)))


def _approximate_fisher_selector(solver: Callable[[SelectionContext, np.ndarray], Solver],
                                 fim_samples: int | None) -> Selector:
    """An all-parameter Fisher-kernel selector whose FIM approximation ``solver(ctx, examples)`` makes
    (cached per model): over ``fim_samples`` random known examples, or all of D, built ahead at ``prepare``."""
    def select(ctx: SelectionContext) -> Ranking:
        return all_parameter_ranking(ctx, solver(ctx, sample_indices(ctx.known, fim_samples, ctx.rng)).solve)

    def prepare(ctx: SelectionContext) -> None:
        if fim_samples is None:
            solver(ctx, ctx.known)
    return Selector(select, needs_gradients=True, prepare=prepare)


@SELECTORS.register("full_fisher")
def full_fisher_selector(fim_samples: int | None = None, damping: float = 0.0,
                         max_params: int = 20_000) -> Selector:
    """Fisher kernel over all parameters with the dense (Gram-space) true FIM; small networks only."""
    check_fim_options(fim_samples, damping)
    if max_params < 1:
        raise CincerError(f"max_params must be at least 1, got {max_params}")

    def select(ctx: SelectionContext) -> Ranking:
        n_params = n_parameters(ctx.model)
        if n_params > max_params:
            raise CincerError(f"full_fisher needs a dense FIM over {n_params} parameters, above the limit "
                              f"of {max_params} (raise --full-fisher-max-params or use top_fisher)")
        fim_examples = sample_indices(ctx.known, fim_samples, ctx.rng)
        solver = FisherSolver(full_fisher(ctx.model, ctx.X[fim_examples]), damping=damping)
        return all_parameter_ranking(ctx, solver.solve)
    return Selector(select, needs_gradients=True)


@SELECTORS.register("practical_fisher")
def practical_fisher() -> Selector:
    """``F = I``: the plain inner product of the scores over all parameters."""
    return Selector(lambda ctx: all_parameter_ranking(ctx, lambda g_t: g_t), needs_gradients=True)


@SELECTORS.register("influence")
def influence(config: InfluenceConfig | None = None) -> Selector:
    """Influence functions: support ``-g_t^T H^{-1} g_k`` with the Hessian of the training loss over D."""
    config = config or InfluenceConfig()
    config.validate()

    return Selector(lambda ctx: all_parameter_ranking(ctx, _inverse_hessian(ctx, config)), needs_gradients=True)


def _inverse_hessian(ctx: SelectionContext, config: InfluenceConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> H^{-1} v`` with the Hessian of the training loss over D (the configured solver)."""
    X_known, y_known = ctx.X[ctx.known], ctx.label_tensor(ctx.known)
    return lambda g_t: inverse_hvp(ctx.model, X_known, y_known, g_t, config)


@SELECTORS.register("approx_fisher")
def approx_fisher(fim_samples: int | None = None, damping: float = 0.0) -> Selector:
    """Fisher kernel over all parameters with the diagonal approximation of the true FIM,
    ``diag(mean_i sum_y p_iy g_iy g_iy^T)`` over ``fim_samples`` random known examples (default: all of
    them), pseudo-inverted (``damping == 0``: entries below ``1e-10`` times the largest count as zero and
    their inverse is 0) or damped (``1 / (F_jj + damping)``). Its memory is one vector of the parameters'
    size, so it runs on networks far too large for ``full_fisher``; the diagonal over D is kept for every
    query of the same model, as ``top_fisher``'s FIM is.

    The original (``approx_fisher``) differs: it averages ``p_iy g_iy**-2``, the mean of the inverse
    squared scores (infinite where a score entry is 0), rather than inverting the mean ``p_iy g_iy**2``,
    which is the FIM's diagonal; it takes no damping; and it ranks by ``+g_t^T F^{-1} g_k`` (see the
    module docstring for the sign)."""
    check_fim_options(fim_samples, damping)

    def solver(ctx: SelectionContext, examples: np.ndarray) -> Solver:
        return _cached_solver(ctx, ("approx_fisher", _examples_key(examples), damping), lambda: DiagonalFisherSolver(
            fisher_diagonal(ctx.model, ctx.X[examples]), damping=damping))

    return _approximate_fisher_selector(solver, fim_samples)


@SELECTORS.register("block_fisher")
def block_fisher(fim_samples: int | None = None, block_damping: float = 1e-2, max_block: int = 10_000) -> Selector:
    """Fisher kernel over all parameters with the layer-wise block-diagonal approximation of the true FIM:
    one dense block per layer (a module's weight and bias together, :func:`cincer.fisher.layer_blocks`),
    each inverted on its own, damped (``(F_b + block_damping I)^{-1}``, default 0.01 as in the original's
    runs) or pseudo-inverted (``block_damping == 0``). FIM over ``fim_samples`` random known examples
    (default: all of them), kept for every query of the same model. A layer of more than ``max_block``
    parameters is refused (its block takes ``8 b^2`` bytes in float64: 0.8 GB at the default limit).

    Per layer rather than per tensor: the bias is a weight on a constant input, so a layer's weight and
    bias curvatures are strongly coupled (``F_b`` is ``mean_i A_i (x) h~_i h~_i^T`` with ``h~ = [h; 1]`` for a
    linear layer) and splitting them drops that coupling for nearly no saving; with it the head's block
    is exactly ``top_fisher``'s FIM, and a one-layer model's block FIM is its full FIM.

    The original (``block_fisher``) differs: one block per tensor (kernel and bias apart); 10 known
    examples drawn anew for each class, weighted ``p / |D|`` instead of ``p / 10``; the damping was the
    influence functions' ``--if-damping`` (0 by default, 0.01 in its runs) and the inverse a float32
    ``np.linalg.inv``; it appends to an undefined list (``block_fim_at_k``), so as committed it cannot
    run; and it ranks by ``+g_t^T F^{-1} g_k`` (see the module docstring for the sign)."""
    check_fim_options(fim_samples, 0.0)
    if not block_damping >= 0:
        raise CincerError(f"block_damping must be >= 0, got {block_damping}")
    if max_block < 1:
        raise CincerError(f"max_block must be at least 1, got {max_block}")

    def solver(ctx: SelectionContext, examples: np.ndarray) -> Solver:
        blocks = layer_blocks(ctx.model)
        for name, span in blocks:
            size = span.stop - span.start
            if size > max_block:
                raise CincerError(f"block_fisher needs a dense FIM block over the {size} parameters of layer "
                                  f"{name!r}, above the limit of {max_block} (raise --max-block or use "
                                  f"approx_fisher or top_fisher)")
        return _cached_solver(ctx, ("block_fisher", _examples_key(examples), block_damping), lambda: BlockFisherSolver(
            blocks, fisher_blocks(ctx.model, ctx.X[examples], blocks), damping=block_damping))

    return _approximate_fisher_selector(solver, fim_samples)


def _examples_key(examples: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(examples, dtype=np.int64).tobytes()).hexdigest()


def _cached_solver(ctx: SelectionContext, key: Hashable, build: Callable[[], Solver]) -> Solver:
    """``build()``, kept in the context's cache for the current model under ``key``."""
    return build() if ctx.cache is None else ctx.cache.solver(ctx.version, key, build)


# --------------------------------------------------------------------------- other baselines

@SELECTORS.register("nearest")
def nearest() -> Selector:
    """1-NN in input space (Euclidean); the score is minus the distance."""
    return Selector(lambda ctx: Ranking.from_scores(ctx.candidates, -input_distances(ctx)))


def input_distances(ctx: SelectionContext) -> np.ndarray:
    """Euclidean distance in input space (flattened) from the suspicious example to each candidate."""
    from sklearn.metrics import pairwise_distances

    def flat(idx: Any) -> np.ndarray:
        return ctx.X[idx].reshape(len(idx), -1).cpu().numpy()
    return pairwise_distances(flat([ctx.target]), flat(ctx.candidates))[0]


@SELECTORS.register("nearest_fisher")
def nearest_fisher(radius: float | None = None, fim_samples: int | None = None, damping: float = 0.0,
                   factorization: str = "auto", curvature: str = "auto") -> Selector:
    """``top_fisher`` restricted to the candidates within Euclidean distance ``radius`` of the suspicious
    example in input space (flattened; inclusive), or to the nearest candidate alone when none is that
    close. ``None`` (default) or ``inf``: no limit, the ranking is ``top_fisher``'s. The other options are
    ``top_fisher``'s, and so are the machinery and the cached features and FIMs.

    The ranking still covers every candidate, so precision@k is defined: first those in the radius by
    decreasing support, then the others by increasing distance, scored ``(lowest support above) - distance``
    (below every support; for the others the score is only an order).

    The original (``nearest_fisher``) differs: ``--nfisher-radius`` there is a fraction in (0, 1) of the
    largest distance between two training examples (computed once per data set and stored on disk), here
    an absolute distance, so ``radius = fraction * that diameter`` reproduces it; its FIM is over 30 random
    known examples (``fim_samples=30``) and pseudo-inverted whatever the damping; it returns the best
    candidate only, no ranking; and it takes the largest ``+g_t^T F^+ g_k`` (see the module docstring for
    the sign)."""
    if radius is not None and not radius >= 0:
        raise CincerError(f"radius must be >= 0 (or None: no limit), got {radius}")
    options = _top_fisher_options(fim_samples, damping, factorization, curvature)

    def select(ctx: SelectionContext) -> Ranking:
        if radius is None or not len(ctx.candidates):
            return _top_fisher_of(ctx, ctx.candidates, fim_samples, options)
        dist = input_distances(ctx)
        near = dist <= radius
        if not near.any():
            near[np.argmin(dist)] = True
        return _then_by_distance(_top_fisher_of(ctx, ctx.candidates[near], fim_samples, options),
                                 ctx.candidates[~near], dist[~near])
    return Selector(select, prepare=_top_fisher_prepare(fim_samples, options))


@SELECTORS.register("nearest_if")
def nearest_influence(n_nearest: int = 100, config: InfluenceConfig | None = None) -> Selector:
    """Influence functions (as ``influence``: support ``-g_t^T H^{-1} g_k``, the same ``config``) over the
    ``n_nearest`` candidates nearest to the suspicious example in input space (Euclidean, flattened; ties in
    candidate order). The ranking still covers every candidate: those by decreasing support, then the others
    by increasing distance, scored ``(lowest support above) - distance`` (an order, not a support).

    The original (``nearest-if``) differs: it scores with its influence library's
    ``get_influence_on_prediction`` (LiSSA), largest first, as its ``if`` does; it returns the best
    candidate only, no ranking; and that branch returns two values where its caller unpacks three, so as
    committed it cannot run."""
    if isinstance(n_nearest, bool) or not isinstance(n_nearest, (int, np.integer)) or n_nearest < 1:
        raise CincerError(f"n_nearest must be a positive integer, got {n_nearest!r}")
    config = config or InfluenceConfig()
    config.validate()

    def select(ctx: SelectionContext) -> Ranking:
        if not len(ctx.candidates):
            return Ranking.empty()
        dist = input_distances(ctx)
        near = np.zeros(len(dist), dtype=bool)
        near[np.argsort(dist, kind="stable")[:n_nearest]] = True
        return _then_by_distance(all_parameter_ranking(ctx, _inverse_hessian(ctx, config), ctx.candidates[near]),
                                 ctx.candidates[~near], dist[~near])
    return Selector(select, needs_gradients=True)


def _then_by_distance(first: Ranking, others: np.ndarray, dist: np.ndarray) -> Ranking:
    """``first``, then ``others`` by increasing ``dist`` (ties in their order), scored ``min(first's scores) -
    dist``: below every score of ``first`` and non-increasing, so the whole stays sorted."""
    if not len(others):
        return first
    order = np.argsort(dist, kind="stable")
    floor = first.scores[-1] if len(first) else 0.0
    tail = np.minimum(floor - dist[order], floor)
    return Ranking(np.concatenate([first.indices, others[order]]), np.concatenate([first.scores, tail]))


@SELECTORS.register("random")
def random_selector() -> Selector:
    """A uniformly random candidate (random scores)."""
    return Selector(lambda ctx: Ranking.from_scores(ctx.candidates, ctx.rng.random(len(ctx.candidates))))


@SELECTORS.register("none")
def no_counterexample() -> Selector:
    """Query the suspicious example alone (the paper's ``no_ce``)."""
    return Selector(lambda ctx: Ranking.empty(), policy="none")


@SELECTORS.register("drop_ce")
def drop_counterexample(fim_samples: int | None = None, damping: float = 0.0, factorization: str = "auto",
                        curvature: str = "auto", relative_damping: float = 0.0,
                        truncate: float | None = None) -> Selector:
    """Query the suspicious example alone; if its label is right, drop CINCER's counter-example from D."""
    return dataclasses.replace(top_fisher(fim_samples, damping, factorization, curvature, relative_damping,
                                          truncate),
                               policy="drop")
