"""kernel_logreg: logistic regression on the flattened outer product x x^T, with the top-layer Fisher machinery."""

import json

import numpy as np
import pytest
import torch

from cincer.cleaning import CleaningConfig
from cincer.cli import main
from cincer.data import flip_labels, load_dataset
from cincer.errors import CincerError
from cincer.fisher import top_layer_scores
from cincer.learners import make_learner
from cincer.models import MODELS, TrainConfig, build_model
from cincer.models.nets import MAX_KERNEL_FEATURES, OuterProduct


def test_kernel_logreg_is_registered_with_an_outer_product_body_and_a_linear_head():
    assert "kernel_logreg" in MODELS
    model = build_model("kernel_logreg", (2, 3), 4, seed=0)
    assert isinstance(model.body, OuterProduct) and isinstance(model.head, torch.nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (36, 4) and model.head.weight.dtype == torch.float64
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    flat = x.reshape(5, 6)
    expected = torch.stack([torch.outer(row, row).reshape(-1) for row in flat])
    assert torch.equal(model.body(x), expected) and torch.equal(model.features(x), expected)
    assert torch.allclose(model(x), expected @ model.head.weight.T + model.head.bias)


def test_the_same_seed_gives_the_same_initial_weights():
    a, b = (build_model("kernel_logreg", (4,), 3, seed=7) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_inputs_too_large_are_refused_on_one_line():
    with pytest.raises(CincerError, match=r"3,072 values would need 9,437,184 features") as err:
        build_model("kernel_logreg", (3, 32, 32), 10, seed=0)  # CIFAR-10
    assert "\n" not in str(err.value) and f"{MAX_KERNEL_FEATURES:,}" in str(err.value)
    mnist = build_model("kernel_logreg", (1, 28, 28), 10, seed=0, dtype=torch.float32)  # 614,656 features
    assert mnist.head.in_features == 784 * 784 <= MAX_KERNEL_FEATURES


def test_kernel_logreg_learns_a_quadratic_boundary_that_logreg_cannot():
    rng = np.random.default_rng(0)
    X = torch.as_tensor(rng.uniform(-1, 1, size=(400, 2)))
    y = (X[:, 0] * X[:, 1] > 0).long().numpy()  # XOR of the signs: linear in x1 * x2 only
    config = TrainConfig(epochs=40, lr=0.05)
    accuracy = {}
    for name in ("logreg", "kernel_logreg"):
        learner = make_learner(build_model(name, (2,), 2, seed=0), config=config, seed=0).fit(X, y)
        accuracy[name] = np.mean(learner.predict_proba(X).argmax(1) == y)
    assert accuracy["kernel_logreg"] > 0.9 > 0.7 > accuracy["logreg"]


def test_top_layer_features_and_scores_are_the_outer_product_ones():
    data = load_dataset("iris", seed=0)
    X = torch.as_tensor(data.X_train[:30])
    learner = make_learner(build_model("kernel_logreg", (4,), 3, seed=0), config=TrainConfig(epochs=2), seed=0)
    learner.fit(X, data.y_train[:30])
    H, P = learner.features_and_probs(X)
    assert H.shape == (30, 16) and torch.allclose(H, OuterProduct()(X))
    assert torch.allclose(P.sum(1), torch.ones(30, dtype=P.dtype))
    # the closed-form top-layer score equals autograd's gradient of log p(y|x) with respect to the head
    y = torch.as_tensor(data.y_train[:30])
    scores = top_layer_scores(H, P, y)
    model = learner.model
    log_p = torch.log_softmax(model(X[:1]), dim=1)[0, y[0]]
    grad_w, grad_b = torch.autograd.grad(log_p, [model.head.weight, model.head.bias])
    assert torch.allclose(scores[0], torch.cat([grad_w, grad_b[:, None]], dim=1))


def test_top_fisher_ranks_through_a_cleaning_loop():
    data = load_dataset("iris", seed=0)
    X = torch.as_tensor(data.X_train)
    noisy = flip_labels(data.y_train, 0.2, data.n_classes, rng=np.random.default_rng(0))
    config = CleaningConfig(model="kernel_logreg", inspector="always", selector="top_fisher",
                            train=TrainConfig(epochs=3))
    learner = config.new_learner(data.X_train.shape[1:], data.n_classes, seed=0, dtype=torch.float64)
    loop = config.new_loop(learner, X, noisy, np.arange(40), np.random.default_rng(0))
    loop.retrain()
    queries = [loop.observe(i) for i in range(40, 45)]
    assert all(q is not None for q in queries)
    for query in queries:
        ranking = query.ranking
        assert len(ranking) > 0 and np.all(np.isfinite(ranking.scores))
        assert np.all(np.diff(ranking.scores) <= 0)  # sorted, most helpful first
        assert query.counterexample in set(loop.known)


def test_kernel_logreg_runs_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--model", "kernel_logreg", "--dataset", "iris", "--known", "20", "--rounds", "3",
                 "--repeats", "1", "--epochs", "2", "--inspector", "always", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["queries_final_mean"] == 3  # every arrival queried, each ranked by top_fisher
    assert json.loads((out / "config.json").read_text())["config"]["model"] == "kernel_logreg"
