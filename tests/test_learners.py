"""The learner contract: one factory for every model kind, and how retraining behaves."""

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, SGDClassifier
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


def test_features_ignore_the_head_running_in_another_thread():
    """The app serves requests while it retrains: a forward pass in another thread during ours must not count
    as ours (it once made a request fail with "the head layer ran 2 times")."""
    import threading

    class Busy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)

        def forward(self, x):
            h = torch.relu(self.body(x))
            other = threading.Thread(target=lambda: self.head(h.detach()))  # someone else's forward, meanwhile
            other.start()
            other.join()
            return self.head(h)

    torch.manual_seed(0)
    model = Busy().double()
    X = torch.randn(20, 4, dtype=torch.float64)
    H, P = TorchLearner(model).features_and_probs(X, chunk=7)
    with torch.no_grad():
        torch.testing.assert_close(H, torch.relu(model.body(X)))
        torch.testing.assert_close(P, torch.softmax(model.head(torch.relu(model.body(X))), dim=1))


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


# --------------------------------------------------------------------------- #14

def test_the_trainer_merges_a_last_batch_of_one_only_for_batchnorm():
    """A batch of one breaks BatchNorm in training; for any other model the batches stay as they were (the
    paper's runs are checked bit for bit)."""
    from cincer.models.train import batch_bounds, has_batchnorm

    assert batch_bounds(65, 32) == [(0, 32), (32, 64), (64, 65)]
    assert batch_bounds(65, 32, merge_single=True) == [(0, 32), (32, 65)]
    assert batch_bounds(66, 32, merge_single=True) == [(0, 32), (32, 64), (64, 66)]
    assert batch_bounds(1, 32, merge_single=True) == [(0, 1)]
    assert not has_batchnorm(build_model("fullnet", (30,), 2, seed=0))
    bn = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)).double()
    assert has_batchnorm(bn)
    X = torch.randn(33, 4, dtype=torch.float64)
    learner = TorchLearner(bn, TrainConfig(epochs=2, batch_size=16)).fit(X, np.arange(33) % 2)  # 16 + 16 + 1
    assert learner.n_fits_ == 1


def test_a_failing_train_fn_is_a_model_error_with_its_cause():
    def broken(model, X, y):
        raise RuntimeError("boom")

    learner = TorchLearner(build_model("fullnet", (4,), 2, seed=0), train_fn=broken)
    with pytest.raises(ModelError, match="train_fn failed on 3 examples: RuntimeError: boom") as info:
        learner.fit(torch.zeros(3, 4, dtype=torch.float64), [0, 1, 0])
    assert isinstance(info.value.__cause__, RuntimeError) and learner.n_fits_ == 0
    assert not learner.model.training


def test_snapshot_and_restore_put_back_weights_fits_and_adam(breast):
    X, y = breast
    learner = TorchLearner(build_model("fullnet", (30,), 2, seed=0), TrainConfig(epochs=1, warm_start=True), seed=0)
    learner.fit(X, y)
    state = learner.snapshot()
    probs, steps = learner.predict_proba(X), int(learner.optimizer_.state[next(learner.model.parameters())]["step"])
    learner.fit(X, y)
    assert not np.array_equal(learner.predict_proba(X), probs)
    learner.restore(state)
    np.testing.assert_array_equal(learner.predict_proba(X), probs)
    assert learner.n_fits_ == 1 and int(learner.optimizer_.state[next(learner.model.parameters())]["step"]) == steps
    sk = SklearnLearner(LogisticRegression(), 2).fit(X, y)
    state, coef = sk.snapshot(), sk.model.coef_.copy()
    sk.fit_head(X, 1 - y)  # changes the fitted estimator in place
    sk.restore(state)
    np.testing.assert_array_equal(sk.model.coef_, coef)


def test_export_and_import_state_rebuild_a_torch_learner(breast):
    X, y = breast
    config = TrainConfig(epochs=1, warm_start=True)
    learner = TorchLearner(build_model("fullnet", (30,), 2, seed=0), config, seed=0).fit(X, y).fit(X, y)
    meta, tensors, arrays = learner.export_state()
    json.dumps(meta)
    other = TorchLearner(build_model("fullnet", (30,), 2, seed=5), config, seed=0)
    other.import_state(json.loads(json.dumps(meta)), {k: v.clone() for k, v in tensors.items()}, arrays)
    np.testing.assert_array_equal(other.predict_proba(X), learner.predict_proba(X))
    assert all(torch.equal(other.initial_state[k], v) for k, v in learner.initial_state.items())
    learner.fit(X, y)
    other.fit(X, y)  # the same Adam moments and the same seed (from the fit count): the same next model
    np.testing.assert_array_equal(other.predict_proba(X), learner.predict_proba(X))


def test_a_pipeline_is_one_learner_its_features_the_transform():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    g = np.random.default_rng(0)
    X = g.normal(size=(80, 3)) * [1, 10, 100] + 5
    y = np.where(X[:, 0] > 5, "yes", "no")
    pipeline = make_pipeline(StandardScaler(), LogisticRegression())
    learner = make_learner(pipeline, n_classes=2)
    assert isinstance(learner, SklearnLearner) and learner.top is pipeline[-1]
    learner.fit(torch.as_tensor(X), (y == "yes").astype(int))
    assert not hasattr(pipeline[0], "mean_")  # a clone was fitted
    H, P = learner.features_and_probs(torch.as_tensor(X))
    np.testing.assert_allclose(H.numpy(), learner.model[0].transform(X))
    np.testing.assert_allclose(P.numpy(), learner.model.predict_proba(X))
    fitted = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)  # string classes, fitted elsewhere
    outside = make_learner(fitted)
    np.testing.assert_allclose(outside.predict_proba(torch.as_tensor(X)), fitted.predict_proba(X))
    with pytest.raises(ModelError, match="has no transform"):
        make_learner(make_pipeline(LogisticRegression(), LogisticRegression()), n_classes=2)
    with pytest.raises(ModelError, match="loss='log_loss'"):
        make_learner(SGDClassifier(loss="hinge"), n_classes=2)
    assert isinstance(make_learner(SGDClassifier(loss="log_loss"), n_classes=2), SklearnLearner)
