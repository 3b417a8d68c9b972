"""The learner contract: one factory for every model kind, and how retraining behaves."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from cincer.data import load_dataset
from cincer.errors import ModelError
from cincer.learners import Learner, SklearnLearner, TorchLearner, make_learner
from cincer.models import TrainConfig, build_model


@pytest.fixture(scope="module")
def breast():
    data = load_dataset("breast")
    return torch.as_tensor(data.X_train[:200]), data.y_train[:200]


def loss(learner, X, y):
    probs = learner.predict_proba(X)
    return float(-np.mean(np.log(probs[np.arange(len(y)), y])))


def test_warm_start_keeps_training_the_same_weights_with_the_same_adam(breast):
    X, y = breast
    cold = TorchLearner(build_model("fullnet", (30,), 2, seed=0), TrainConfig(epochs=1, lr=1e-2), seed=0)
    warm = TorchLearner(build_model("fullnet", (30,), 2, seed=0), TrainConfig(epochs=1, lr=1e-2, warm_start=True),
                        seed=0)
    cold_losses, warm_losses = [], []
    for _ in range(6):
        cold_losses.append(loss(cold.fit(X, y), X, y))
        warm_losses.append(loss(warm.fit(X, y), X, y))
    # the first fits are the same; then each cold fit restarts from the initial weights, each warm one goes on
    assert warm_losses[0] == pytest.approx(cold_losses[0])
    assert np.all(np.diff(warm_losses) < 0) and warm_losses[-1] < 0.8 * min(cold_losses)
    assert max(cold_losses) - min(cold_losses) < 0.5 * (warm_losses[0] - warm_losses[-1])
    steps = warm.optimizer_.state[next(warm.model.parameters())]["step"]
    assert int(steps) == 6 * int(np.ceil(200 / 32))  # one Adam, its moments kept across the six fits


def test_a_cold_retrain_depends_only_on_the_data_and_the_fit_count(breast):
    X, y = breast
    first = TorchLearner(build_model("fullnet", (30,), 2, seed=0), TrainConfig(epochs=3), seed=0)
    first.fit(X[:50], y[:50])
    first.fit(X, y)  # second fit: seed 0 + 1, from the initial weights
    fresh = TorchLearner(build_model("fullnet", (30,), 2, seed=0), TrainConfig(epochs=3), seed=1).fit(X, y)
    np.testing.assert_array_equal(first.predict_proba(X), fresh.predict_proba(X))


def test_warm_epochs_set_the_length_of_a_warm_retrain(breast):
    X, y = breast
    config = TrainConfig(epochs=2, warm_start=True, warm_epochs=5)
    learner = TorchLearner(build_model("logreg", (30,), 2, seed=0), config, seed=0).fit(X, y).fit(X, y)
    steps = learner.optimizer_.state[learner.model.head.weight]["step"]
    assert int(steps) == (2 + 5) * int(np.ceil(200 / 32))


def test_make_learner_wraps_each_model_kind_once():
    torch_learner = make_learner(build_model("fullnet", (4,), 3, seed=0))
    assert isinstance(torch_learner, TorchLearner) and isinstance(torch_learner, Learner)
    assert torch_learner.head is torch_learner.model.head
    sk = make_learner(LogisticRegression(), n_classes=3)
    assert isinstance(sk, SklearnLearner) and isinstance(sk, Learner) and sk.dtype == torch.float64
    with pytest.raises(ModelError, match="not fitted"):
        make_learner(LogisticRegression())
    with pytest.raises(ModelError, match="linear top layer"):
        make_learner(DecisionTreeClassifier(), n_classes=2)
    with pytest.raises(ModelError, match="unsupported model type"):
        make_learner(object())
    with pytest.raises(ModelError, match="train_fn applies to PyTorch"):
        make_learner(LogisticRegression(), n_classes=2, train_fn=lambda *a: None)


def test_a_head_refit_reaches_the_logistic_regression_optimum():
    """fit_head is multinomial logistic regression on fixed features: the same optimum as scikit-learn's
    unpenalised solver (a problem with overlapping classes, so the optimum is finite)."""
    g = np.random.default_rng(0)
    X = g.normal(size=(300, 6))
    y = (X[:, 0] + X[:, 1] ** 2 + g.normal(size=300) > 1).astype(int) + (X[:, 2] > 0.5)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3)).double()
    learner = TorchLearner(model)
    H, _ = learner.features_and_probs(torch.as_tensor(X))
    before = loss_on(learner, H, y)
    learner.fit_head(H, y, max_iter=500)
    reference = LogisticRegression(C=np.inf, max_iter=5000, tol=1e-10).fit(H.numpy(), y)  # unpenalised
    np.testing.assert_allclose(learner.head_probs(H).numpy(), reference.predict_proba(H.numpy()), atol=1e-4)
    assert loss_on(learner, H, y) < before
    # the body did not move: same features
    torch.testing.assert_close(learner.features_and_probs(torch.as_tensor(X))[0], H)


def loss_on(learner, H, y):
    P = learner.head_probs(H).numpy()
    return float(-np.mean(np.log(P[np.arange(len(y)), y])))
