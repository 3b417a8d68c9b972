"""Inspectors that score with the model (gradient, influence, fisher): their scores against autograd and brute
force, the closed forms for scikit-learn against the equivalent softmax layer, and their use by the loop, the
API and the command line."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from cincer import Cleaner
from cincer.cleaning import CleaningConfig
from cincer.cli import main
from cincer.errors import CincerError, ModelError
from cincer.influence import InfluenceConfig, exact_hessian, hvp_fn, lissa
from cincer.inspect import (
    INSPECTORS,
    Inspector,
    ModelView,
    audit_order,
    expected_gradient_lengths,
    fisher_score_norms,
    influence_norms,
)
from cincer.learners import SklearnLearner, TorchLearner
from cincer.loop import CleaningLoop
from cincer.models import TrainConfig
from cincer.select import SELECTORS

TOL = 1e-9
MODEL_INSPECTORS = ("gradient", "fisher", "influence")


def data(n=60, d=3, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = ((X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()) % c
    flipped = torch.arange(0, n, 7)
    y[flipped] = (y[flipped] + 1) % c  # a few wrong labels: large gradients and influence
    return X, y


def tiny_learner(X, y, c=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(X.shape[1], 5), nn.Tanh(), nn.Linear(5, c)).double()
    return TorchLearner(model, TrainConfig(epochs=40, batch_size=16, lr=1e-2), seed=0).fit(X, y)


def sklearn_learner(X, y, c):
    estimator = LogisticRegression(max_iter=1000).fit(X.numpy(), y.numpy())
    return SklearnLearner.fitted(estimator)


@pytest.fixture(scope="module")
def tiny():
    X, y = data()
    return tiny_learner(X, y), X, y


def autograd_score(model, x, label):
    """``grad_theta log p(label | x)`` over all parameters, by plain autograd on one example."""
    logp = torch.log_softmax(model(x[None]), dim=1)[0, label]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(logp, list(model.parameters()))])


def brute_egl(model, X):
    out = []
    for x in X:
        p = torch.softmax(model(x[None]), dim=1)[0].detach()
        out.append(sum(p[c] * autograd_score(model, x, c).pow(2).sum() for c in range(len(p))))
    return torch.stack(out).numpy()


def brute_fisher(model, X, y):
    return np.array([float(autograd_score(model, x, int(label)).pow(2).sum()) for x, label in zip(X, y)])


# --------------------------------------------------------------------------- scores against brute force

def test_gradient_and_fisher_scores_match_autograd_per_example(tiny):
    learner, X, y = tiny
    view = ModelView(learner, X[:12], y[:12].numpy())
    np.testing.assert_allclose(expected_gradient_lengths(view), brute_egl(learner.model, X[:12]), rtol=TOL, atol=0)
    np.testing.assert_allclose(fisher_score_norms(view), brute_fisher(learner.model, X[:12], y[:12]), rtol=TOL,
                               atol=0)
    # the view's rows: a subset of the pool, in the order asked for
    rows = np.array([7, 2, 30])
    part = ModelView(learner, X, y.numpy(), rows)
    np.testing.assert_allclose(fisher_score_norms(part), brute_fisher(learner.model, X[rows], y[rows]), rtol=TOL)


def test_egl_is_the_expected_fisher_score_over_the_models_labels(tiny):
    # a known identity: EGL(x) = sum_c p_c * fisher(x, label c)
    learner, X, _ = tiny
    P = torch.as_tensor(learner.predict_proba(X[:8]))
    per_label = np.stack([fisher_score_norms(ModelView(learner, X[:8], np.full(8, c))) for c in range(3)], axis=1)
    np.testing.assert_allclose(expected_gradient_lengths(ModelView(learner, X[:8], np.zeros(8))),
                               (P.numpy() * per_label).sum(1), rtol=TOL)


def test_influence_matches_a_dense_hessian_solve(tiny):
    learner, X, y = tiny
    known, rows = np.arange(10, 60), np.array([0, 3, 14, 40])
    config = InfluenceConfig(solver="exact", damping=0.3)
    view = ModelView(learner, X, y.numpy(), rows, known)
    H = exact_hessian(learner.model, X[known], y[known])
    A = H + 0.3 * torch.eye(len(H), dtype=H.dtype)
    expected = [float(torch.linalg.vector_norm(torch.linalg.solve(A, autograd_score(learner.model, X[i], y[i]))))
                for i in rows]
    np.testing.assert_allclose(influence_norms(view, config), expected, rtol=1e-7)
    # the inspector made with that configuration scores the same
    inspector = INSPECTORS.create("influence", threshold=1.0, config=config)
    np.testing.assert_allclose(inspector.scores(np.zeros((4, 3)), y[rows].numpy(), view), expected, rtol=1e-7)


def test_influence_uses_lissa_with_the_paper_settings_by_default(tiny):
    learner, X, y = tiny
    known = np.arange(40)
    view = ModelView(learner, X, y.numpy(), [45, 50], known)
    hvp = hvp_fn(learner.model, X[known], y[known])
    expected = [float(torch.linalg.vector_norm(lissa(hvp, autograd_score(learner.model, X[i], y[i]), damping=1.0,
                                                     depth=10))) for i in (45, 50)]
    scores = INSPECTORS.create("influence").scores(np.zeros((2, 3)), y[[45, 50]].numpy(), view)
    np.testing.assert_allclose(scores, expected, rtol=1e-8)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_sklearn_closed_forms_match_autograd_on_the_equivalent_softmax_layer(n_classes):
    X, y = data(n=40, d=4, c=n_classes, seed=1)
    learner = sklearn_learner(X, y, n_classes)
    W, b = (torch.tensor(a, requires_grad=True) for a in learner.top_layer())

    def score(x, label):
        logp = torch.log_softmax(W @ x + b, dim=0)[label]
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(logp, (W, b))])

    P = torch.softmax(X @ W.T + b, dim=1).detach()
    torch.testing.assert_close(P, torch.as_tensor(learner.predict_proba(X)), atol=1e-10, rtol=0)
    egl = [float(sum(P[i, c] * score(X[i], c).pow(2).sum() for c in range(n_classes))) for i in range(len(X))]
    fisher = [float(score(X[i], int(y[i])).pow(2).sum()) for i in range(len(X))]
    view = ModelView(learner, X, y.numpy())
    np.testing.assert_allclose(expected_gradient_lengths(view), egl, rtol=1e-10)
    np.testing.assert_allclose(fisher_score_norms(view), fisher, rtol=1e-10)


def test_empty_views_score_nothing(tiny):
    learner, X, y = tiny
    empty = ModelView(learner, X, y.numpy(), np.zeros(0, dtype=np.int64))
    for score in (expected_gradient_lengths, fisher_score_norms, lambda v: influence_norms(v, InfluenceConfig())):
        assert score(empty).shape == (0,)


# --------------------------------------------------------------------------- the loop

def make_loop(kind, name, threshold, learner=None):
    X, y = data()
    if learner is None:
        learner = tiny_learner(X, y) if kind == "torch" else sklearn_learner(X, y, 3)
    return CleaningLoop(learner, X, y.numpy(), np.arange(len(y)), inspect=INSPECTORS.create(name, threshold=threshold),
                        select=SELECTORS.create("none"), rng=np.random.default_rng(0))


def reference_scores(loop, rows):
    """The inspector's score of each row, from a view built here (not by the loop)."""
    view = ModelView(loop.learner, loop.X, loop.labels, rows, loop.known)
    assert loop.inspect.model_score is not None
    return loop.inspect.model_score(view)


CASES = [("torch", name) for name in MODEL_INSPECTORS] + [("sklearn", "gradient"), ("sklearn", "fisher")]


@pytest.mark.parametrize("kind,name", CASES)
def test_the_loop_queries_an_example_iff_its_score_exceeds_the_threshold(kind, name):
    loop = make_loop(kind, name, threshold=0.0)
    rows = np.arange(len(loop.labels))
    scores = reference_scores(loop, rows)
    threshold = float(np.median(scores))
    loop = make_loop(kind, name, threshold, loop.learner)
    asked = np.array([loop.query(int(i)) is not None for i in rows])
    assert asked.sum() == (scores > threshold).sum() == len(rows) // 2
    np.testing.assert_array_equal(asked, scores > threshold)
    for i in np.flatnonzero(asked)[:3]:  # the query the loop returns is a normal one
        query = loop.query(int(i))
        assert query is not None and query.index == i and query.policy == "none"


@pytest.mark.parametrize("kind,name", CASES)
def test_audit_order_is_by_decreasing_score_above_the_threshold(kind, name):
    loop = make_loop(kind, name, threshold=0.0)
    scores = reference_scores(loop, loop.known)
    threshold = float(np.quantile(scores, 0.3))
    loop = make_loop(kind, name, threshold, loop.learner)
    order = loop.audit_order()
    flagged = loop.known[scores > threshold]
    assert sorted(order) == sorted(flagged)
    by_index = dict(zip(loop.known, scores))
    ordered = np.array([by_index[i] for i in order])
    np.testing.assert_array_equal(order, flagged[np.argsort(-scores[scores > threshold], kind="stable")])
    assert np.all(np.diff(ordered) <= 0) and np.all(ordered > threshold)


def test_probability_inspectors_get_no_view_and_keep_their_results(tiny):
    learner, X, y = tiny
    margin = INSPECTORS.create("margin", threshold=0.2)
    assert not margin.needs_model and not margin.needs_gradients
    loop = CleaningLoop(learner, X, y.numpy(), np.arange(60), inspect=margin, select=SELECTORS.create("none"),
                        rng=np.random.default_rng(0))
    assert loop.model_view([0]) is None
    P = learner.predict_proba(X)
    margins = P.max(1) - P[np.arange(60), y.numpy()]
    expected = np.flatnonzero(margins > 0.2)
    np.testing.assert_array_equal(loop.audit_order(), expected[np.argsort(-margins[expected], kind="stable")])
    # a plain flag function is still an Inspector's first field
    assert Inspector(lambda P, labels, rng: np.ones(len(P), bool))(P[0], 0, np.random.default_rng(0))


def test_an_inspector_is_either_a_flag_or_a_model_score(tiny):
    with pytest.raises(CincerError, match="exactly one"):
        Inspector()
    with pytest.raises(CincerError, match="exactly one"):
        Inspector(lambda P, labels, rng: labels >= 0, model_score=lambda view: np.zeros(len(view)))
    learner, X, y = tiny
    gradient = INSPECTORS.create("gradient")
    assert gradient.needs_model and not gradient.needs_gradients and INSPECTORS.create("influence").needs_gradients
    with pytest.raises(CincerError, match="needs a ModelView"):
        audit_order(gradient, learner.predict_proba(X), y.numpy(), np.random.default_rng(0))
    wrong = Inspector(model_score=lambda view: np.zeros(len(view) + 1))
    with pytest.raises(CincerError, match="2 values for 1 rows"):
        wrong(np.array([0.5, 0.5, 0.0]), 0, np.random.default_rng(0), ModelView(learner, X, y.numpy(), [0]))


@pytest.mark.parametrize("name", MODEL_INSPECTORS)
def test_thresholds_are_checked_and_have_defaults(name):
    assert INSPECTORS.create(name).threshold > 0
    assert INSPECTORS.create(name, threshold=0).threshold == 0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(CincerError, match="threshold must be a finite number >= 0"):
            INSPECTORS.create(name, threshold=bad)
    assert CleaningConfig(inspector=name, threshold=7.5).make_inspector().threshold == 7.5


# --------------------------------------------------------------------------- models that cannot be inspected so

def test_influence_with_a_sklearn_model_is_refused_when_the_loop_is_built():
    X, y = data(n=30, d=3, c=3)
    with pytest.raises(ModelError, match="PyTorch model") as err:
        Cleaner(LogisticRegression(), inspector="influence").fit(X.numpy(), y.numpy())
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match="PyTorch model"):
        make_loop("sklearn", "influence", 1.0)
    with pytest.raises(ModelError, match="PyTorch model"):  # asked directly, the score refuses too
        influence_norms(ModelView(sklearn_learner(X, y, 3), X, y.numpy()), InfluenceConfig())


def test_a_cleaner_audits_a_logistic_regression_by_expected_gradient_length():
    X, y = data(n=80, d=4, c=3, seed=2)
    X, y = X.numpy(), y.numpy()
    base = Cleaner(LogisticRegression(max_iter=1000), retrain="defer").fit(X, y)
    P = base.predict_proba(X)
    egl = (1 - (P * P).sum(1)) * ((X * X).sum(1) + 1)  # the closed form by hand
    threshold = float(np.quantile(egl, 0.8))
    cleaner = Cleaner(LogisticRegression(max_iter=1000), retrain="defer", inspector="gradient", threshold=threshold)
    asked = [q.index for q in cleaner.audit(X, y, budget=len(X))]
    np.testing.assert_array_equal(asked, np.flatnonzero(egl > threshold)[np.argsort(-egl[egl > threshold])])


# --------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("name,threshold", [("gradient", "0.05"), ("fisher", "0.05"), ("influence", "0.5")])
def test_cli_runs_each_model_inspector(name, threshold, tmp_path):
    out = tmp_path / name
    code = main(["run", "--dataset", "iris", "--model", "fullnet", "--inspector", name, "--threshold", threshold,
                 "--rounds", "3", "--repeats", "1", "--epochs", "2", "--quiet", "--out", str(out)])
    assert code == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["inspector"] == name and config["threshold"] == float(threshold)
    assert len(pd.read_csv(out / "trace.csv")) == 4
