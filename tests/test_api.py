"""The public API: Cleaner (torch and scikit-learn), stream and audit, counterexamples, plugins, bad input;
the scikit-learn contract, transactions, devices, checkpoints, query ids and the error table of #14."""

import copy
import json
import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from apihelpers import assert_same_state, state_of
from cincer import (
    Cleaner,
    InputError,
    LabelQuery,
    ModelError,
    QueryError,
    counterexamples,
    load_plugins,
    register_inspector,
    register_selector,
)
from cincer.errors import CincerError
from cincer.fisher import DEFAULT_TRUNCATE
from cincer.learners import TorchLearner
from cincer.models import TrainConfig, build_model
from cincer.select import SELECTORS, SelectionContext, top_fisher_ranking

FAST = TrainConfig(epochs=15, batch_size=32)



@pytest.fixture(scope="module")
def blobs():
    """Well-separated 3-class data with 10 flipped labels; returns X, clean, noisy, flipped indices."""
    X, y = make_classification(n_samples=240, n_features=6, n_informative=4, n_redundant=0, n_classes=3,
                               n_clusters_per_class=1, class_sep=3.0, random_state=0)
    X = (X - X.mean(0)) / X.std(0)
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(y), 10, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + 1) % 3
    return X, y, noisy, flipped


def mlp(d=6, c=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, c)).double()


def oracle_answer(cleaner, query, clean):
    ce = query.counterexample
    return cleaner.answer(query, clean[query.index], None if ce is None else clean[ce])


# --------------------------------------------------------------------------- top-level names

def test_public_names_are_exported_from_the_package():
    import cincer.errors
    import cincer.plugins

    for name in ("Cleaner", "counterexamples", "LabelQuery"):
        assert getattr(cincer, name) is getattr(cincer.api, name)
    for name in ("register_selector", "register_inspector", "load_plugins"):
        assert getattr(cincer, name) is getattr(cincer.plugins, name)
    for name in ("CincerError", "InputError", "ModelError", "QueryError", "NotFoundError", "ConflictError"):
        error = getattr(cincer, name)
        assert error is getattr(cincer.errors, name) and issubclass(error, cincer.CincerError)


# --------------------------------------------------------------------------- scikit-learn

def test_binary_logistic_regression_is_an_equivalent_two_class_softmax_layer():
    X, y = make_classification(n_samples=120, n_features=4, random_state=1)
    cleaner = Cleaner(LogisticRegression(), classes=["neg", "pos"]).fit(X, np.where(y == 1, "pos", "neg"))
    W, b = cleaner.learner_.top_layer()
    assert W.shape == (2, 4) and np.all(W[0] == 0)
    softmax = torch.softmax(torch.as_tensor(X @ W.T + b), dim=1).numpy()
    np.testing.assert_allclose(softmax, cleaner.predict_proba(X), atol=1e-12)
    assert set(cleaner.predict(X)) <= {"neg", "pos"}


def test_audit_with_sklearn_ranks_by_margin_and_finds_the_flipped_labels(blobs):
    X, clean, noisy, flipped = blobs
    cleaner = Cleaner(LogisticRegression(max_iter=500), retrain="defer")
    queries = list(cleaner.audit(X, noisy, budget=8))
    assert len(queries) == 8 and cleaner.learner_.n_fits_ == 1
    margins = [q.margin for q in queries]
    assert margins == sorted(margins, reverse=True) and margins[-1] > 0
    assert np.mean([noisy[q.index] != clean[q.index] for q in queries]) >= 0.75  # noise rate is 10/240
    for q in queries:
        assert q.predicted != q.label and "margin" in q.reason
        assert all(label == q.predicted for label in q.counter_labels)  # CINCER's candidates
        assert np.all(np.diff(q.scores) <= 0)
    fixed = sum(len(oracle_answer(cleaner, q, clean)) for q in queries)
    assert fixed == int(np.sum(cleaner.labels_ != noisy)) >= 6
    assert cleaner.stale_ and cleaner.learner_.n_fits_ == 1
    cleaner.refit()
    assert cleaner.learner_.n_fits_ == 2 and not cleaner.stale_


def test_torch_only_selectors_and_other_sklearn_models_are_refused(blobs):
    X, _, noisy, _ = blobs
    with pytest.raises(ModelError, match="needs a PyTorch model"):
        Cleaner(LogisticRegression(), selector="full_fisher").fit(X, noisy)
    with pytest.raises(ModelError, match="linear top layer"):
        Cleaner(RandomForestClassifier()).fit(X, noisy)


# --------------------------------------------------------------------------- torch

def test_head_is_found_and_features_come_from_a_hook(blobs):
    X, _, noisy, _ = blobs
    cleaner = Cleaner(mlp(), train_config=FAST).fit(X, noisy)
    net = cleaner.model_  # the trained copy
    assert cleaner.learner_.head is net[2]
    Xt = torch.as_tensor(X[:5])
    H, P = cleaner.learner_.features_and_probs(Xt)
    with torch.no_grad():
        torch.testing.assert_close(H, net[1](net[0](Xt)))
        torch.testing.assert_close(P, torch.softmax(net(Xt), dim=1))
    named = Cleaner(mlp(), head="2", train_config=FAST).fit(X, noisy)
    assert named.learner_.head is named.model_[2]


def test_stream_query_answer_and_retrain(blobs):
    X, clean, noisy, flipped = blobs
    others = np.setdiff1d(np.arange(len(X)), flipped)
    cleaner = Cleaner(mlp(), train_config=TrainConfig(epochs=40), k=3, retrain="answer")
    cleaner.fit(X[others[:150]], clean[others[:150]])
    fits = cleaner.learner_.n_fits_
    assert cleaner.observe(X[others[150]], clean[others[150]]) is None  # a clean, easy example
    query = cleaner.observe(X[flipped[0]], noisy[flipped[0]])
    assert isinstance(query, LabelQuery) and query.index == 151
    assert query.label == noisy[flipped[0]] and query.predicted == clean[flipped[0]]
    assert len(query.counterexamples) == 3 == len(query.scores) and query.counterexample == query.counterexamples[0]
    assert f"#{query.counterexample}" in query.reason
    assert cleaner.learner_.n_fits_ == fits  # retrain="answer": observing does not retrain
    changed = cleaner.answer(query, suspicious_label=int(clean[flipped[0]]))
    assert changed == {151: (int(noisy[flipped[0]]), int(clean[flipped[0]]))}
    assert cleaner.labels_[151] == clean[flipped[0]] and cleaner.learner_.n_fits_ == fits + 1
    with pytest.raises(QueryError, match="already answered"):
        cleaner.answer(query, suspicious_label=0)
    assert cleaner.history_[-1]["changed"] == changed


def test_sync_retrains_after_every_example_and_defer_never(blobs):
    X, clean, _, _ = blobs
    sync = Cleaner(mlp(), train_config=FAST).fit(X[:60], clean[:60])
    sync.observe(X[60], clean[60])
    assert sync.learner_.n_fits_ == 2
    deferred = Cleaner(mlp(), train_config=FAST, retrain="defer").fit(X[:60], clean[:60])
    deferred.observe(X[60], clean[60])
    assert deferred.learner_.n_fits_ == 1 and deferred.stale_


def test_head_retraining_refits_the_last_layer_and_fully_every_few_answers(blobs):
    X, clean, noisy, flipped = blobs
    cleaner = Cleaner(mlp(), train_config=FAST, retrain="head", refit_every=3).fit(X, noisy)
    head = cleaner.model_[2]
    answered = 0
    for query in cleaner.audit(budget=5):
        before = head.weight.detach().clone()
        oracle_answer(cleaner, query, clean)
        answered += 1
        assert cleaner.learner_.n_fits_ == 1 + answered // 3  # a full retrain at every third answer
        assert answered % 3 == 0 or not torch.equal(head.weight, before)  # else only the head moved
    assert answered >= 3
    with pytest.raises(CincerError, match="refit_every"):
        Cleaner(mlp(), retrain="head", refit_every=0).fit(X, noisy)


def test_user_train_fn_is_used(blobs):
    X, clean, _, _ = blobs
    calls = []

    def train_fn(model, X, y):
        calls.append((type(X), X.dtype, y.dtype, len(y)))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(50):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X), y).backward()
            opt.step()

    cleaner = Cleaner(mlp(), train_fn=train_fn).fit(X, clean)
    assert calls == [(torch.Tensor, torch.float64, torch.long, len(X))]
    assert np.mean(cleaner.predict(X) == clean) > 0.9


def test_numpy_pandas_and_torch_dataset_inputs_agree(blobs):
    X, _, noisy, _ = blobs
    X, noisy = X[:80], noisy[:80]
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    dataset = torch.utils.data.TensorDataset(torch.as_tensor(X), torch.as_tensor(noisy))
    probs = [Cleaner(mlp(), train_config=FAST).fit(data, labels).predict_proba(X)
             for data, labels in ((X, noisy), (frame, pd.Series(noisy)), (dataset, None))]
    np.testing.assert_allclose(probs[0], probs[1])
    np.testing.assert_allclose(probs[0], probs[2])


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("case, error, message", [
    ("unknown label", InputError, "not one of the declared classes"),
    ("single class", InputError, "single class"),
    ("nan", InputError, "NaN or infinite"),
    ("inf", InputError, "NaN or infinite"),
    ("lengths", InputError, "rows but y has"),
    ("softmax after head", ModelError, "last layer is not linear"),
    ("no linear", ModelError, "no nn.Linear"),
    ("wrong head", ModelError, "not an nn.Linear"),
    ("too few logits", ModelError, "expected 3"),
])
def test_bad_input_raises_a_clear_cincer_error(blobs, case, error, message):
    X, _, noisy, _ = blobs
    X, y, model, kwargs = X[:50].copy(), noisy[:50].copy(), mlp(), {}
    if case == "unknown label":
        kwargs["classes"] = [0, 1]
    elif case == "single class":
        y[:] = 1
    elif case == "nan":
        X[3, 2] = np.nan
    elif case == "inf":
        X[7, 0] = np.inf
    elif case == "lengths":
        y = y[:-1]
    elif case == "softmax after head":
        model = nn.Sequential(nn.Linear(6, 3), nn.Softmax(dim=1)).double()
    elif case == "no linear":
        model = nn.Sequential(nn.Conv1d(1, 3, 6), nn.Flatten()).double()
        X = X[:, None, :]
    elif case == "wrong head":
        kwargs["head"] = "1"
    elif case == "too few logits":
        model = mlp(c=2)
    with pytest.raises(error, match=message) as info:
        Cleaner(model, train_config=FAST, **kwargs).fit(X, y)
    assert isinstance(info.value, CincerError) and "\n" not in str(info.value)


def test_a_bad_answer_changes_nothing(blobs):
    X, clean, noisy, flipped = blobs
    cleaner = Cleaner(LogisticRegression(max_iter=500), retrain="defer").fit(X, noisy)
    query = next(cleaner.audit(budget=1))
    before = cleaner.labels_.copy()
    with pytest.raises(InputError, match="counter_label"):
        cleaner.answer(query, suspicious_label=clean[query.index], counter_label=7)
    np.testing.assert_array_equal(cleaner.labels_, before)
    assert query.id in cleaner.pending_  # still answerable
    other = Cleaner(LogisticRegression(max_iter=500)).fit(X, noisy)
    with pytest.raises(QueryError, match="comes from another cleaner"):  # the reason, not "unknown" (#14)
        other.answer(query, suspicious_label=0)
    with pytest.raises(QueryError, match="unknown query"):
        cleaner.answer("not a query")
    cleaner.answer(query, suspicious_label=clean[query.index])
    with pytest.raises(QueryError, match="already answered"):
        cleaner.answer(query)
    with pytest.raises(CincerError, match="budget"):
        cleaner.audit(budget=0)
    with pytest.raises(InputError, match="shape"):
        cleaner.observe(X[0, :3], 0)
    with pytest.raises(CincerError, match="not fitted"):
        Cleaner(mlp()).observe(X[0], 0)


# --------------------------------------------------------------------------- functional API

def test_counterexamples_match_a_dense_numpy_fisher_kernel():
    X, y = make_classification(n_samples=60, n_features=3, n_informative=3, n_redundant=0, random_state=2)
    model = LogisticRegression().fit(X, y)
    x = X[0] + 0.1
    target = 1 - int(model.predict(x[None])[0])  # a label the model disagrees with
    idx, scores = counterexamples(model, X, y, x, target, k=4)
    predicted = 1 - target
    assert len(idx) == 4 and np.all(y[idx] == predicted) and np.all(np.diff(scores) <= 0)
    # independent check: g = (e_y - p) (x) [x; 1] over the equivalent 2-class softmax layer, F^+ by numpy
    # without the eigendirections below DEFAULT_TRUNCATE x the mean eigenvalue over F's (C-1)(A) = 4-dim range
    P = model.predict_proba(np.vstack([X, x]))
    H = np.hstack([np.vstack([X, x]), np.ones((61, 1))])
    labels = np.append(y, target)
    G = (np.eye(2)[labels] - P)[:, :, None] * H[:, None, :]
    F = sum(np.kron(np.diag(p) - np.outer(p, p), np.outer(h, h)) for p, h in zip(P[:60], H[:60])) / 60
    vals, vecs = np.linalg.eigh(F)
    keep = (vals >= DEFAULT_TRUNCATE * np.trace(F) / 4) & (vals > 1e-10 * vals.max())
    F_inv = vecs[:, keep] @ np.diag(1 / vals[keep]) @ vecs[:, keep].T
    support = -(G[:60].reshape(60, -1) @ F_inv @ G[60].reshape(-1))
    candidates = np.flatnonzero(y == predicted)
    best = candidates[np.argsort(-support[candidates], kind="stable")[:4]]
    np.testing.assert_array_equal(idx, best)
    np.testing.assert_allclose(scores, support[best], rtol=1e-6)


def test_counterexamples_with_a_torch_model_match_the_engine_ranking():
    model = build_model("fullnet", (5,), 3, seed=0).eval()
    X = np.random.default_rng(0).normal(size=(40, 5))
    y = np.arange(40) % 3
    x = X[0] + 0.05
    idx, scores = counterexamples(model, X, y, x, 2, k=5)
    with torch.no_grad():
        pred = int(model(torch.as_tensor(x[None])).argmax())
    assert len(idx) == 5 and np.all(y[idx] == pred)
    # the engine's selector on Classifier.features gives the same ranking as the forward hook
    Xt = torch.as_tensor(np.vstack([X, x]))
    expected = top_fisher_ranking(TorchLearner(model), Xt, np.append(y, 2), 40, np.flatnonzero(y == pred),
                                  np.arange(40), truncate=DEFAULT_TRUNCATE)  # the product's default
    np.testing.assert_array_equal(idx, expected.indices[:5])
    np.testing.assert_allclose(scores, expected.scores[:5])
    with pytest.raises(InputError, match="shape"):
        counterexamples(model, X, y, X[0, :2], 0)
    with pytest.raises(InputError, match="declared classes"):
        counterexamples(model, X, y, x, 3)


# --------------------------------------------------------------------------- extensibility

def test_a_registered_selector_works_in_the_cleaner_and_in_cincer_run(blobs, tmp_path, capsys):
    X, clean, noisy, flipped = blobs

    @register_selector("test_api_lowest_index")
    def lowest_index(ctx: SelectionContext):
        return -ctx.candidates.astype(float)  # one score per candidate: the lowest index wins

    assert "test_api_lowest_index" in SELECTORS
    cleaner = Cleaner(LogisticRegression(max_iter=500), selector="test_api_lowest_index", retrain="defer")
    query = next(cleaner.audit(X, noisy, budget=1))
    assert query.counterexample == min(i for i in range(len(X)) if noisy[i] == query.predicted and i != query.index)

    from cincer.cli import main
    code = main(["run", "--dataset", "iris", "--model", "logreg", "--selector", "test_api_lowest_index",
                 "--known", "20", "--rounds", "3", "--repeats", "1", "--epochs", "2", "--quiet",
                 "--out", str(tmp_path / "run")])
    assert code == 0 and (tmp_path / "run" / "trace.csv").exists()


def test_register_inspector_and_load_plugins(tmp_path, monkeypatch, blobs):
    X, clean, noisy, _ = blobs
    register_inspector("test_api_everything")(lambda probs, label, rng: True)
    cleaner = Cleaner(LogisticRegression(max_iter=500), inspector="test_api_everything").fit(X[:50], clean[:50])
    assert cleaner.observe(X[50], clean[50]) is not None  # even a label the model agrees with

    (tmp_path / "my_cincer_plugin.py").write_text(
        "from cincer import register_selector\n"
        "@register_selector('test_api_plugin')\n"
        "def mine(ctx):\n    return ctx.rng.random(len(ctx.candidates))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CINCER_PLUGINS", "my_cincer_plugin, ")
    assert load_plugins() == ["my_cincer_plugin"] and "test_api_plugin" in SELECTORS
    with pytest.raises(CincerError, match="cannot import 'no_such_module_xyz'"):
        load_plugins("no_such_module_xyz")


def test_a_float32_model_works_and_the_fisher_algebra_runs_in_float64(blobs):
    X, clean, noisy, _ = blobs
    net = mlp().float()
    cleaner = Cleaner(net, train_config=FAST, retrain="defer")
    queries = list(cleaner.audit(X, noisy, budget=3))
    assert cleaner.X_.dtype == torch.float32 and len(queries) >= 1
    H, P = cleaner.learner_.features_and_probs(cleaner.X_[:4])
    assert H.dtype == P.dtype == torch.float64
    assert all(len(q.counterexamples) for q in queries)


def test_params_follow_the_scikit_learn_convention(blobs):
    X, clean, _, _ = blobs
    cleaner = Cleaner(LogisticRegression(), k=2, threshold=0.3)
    assert not any(name.endswith("_") for name in vars(cleaner))  # the constructor only stores parameters
    assert cleaner.get_params()["k"] == 2 and cleaner.set_params(k=4).k == 4
    with pytest.raises(CincerError, match="unknown parameter"):
        cleaner.set_params(epochs=3)
    assert cleaner.fit(X, clean) is cleaner and hasattr(cleaner, "classes_")


def test_a_failing_selector_leaves_the_stream_unchanged(blobs):
    X, clean, noisy, flipped = blobs

    @register_selector("test_api_broken")
    def broken(ctx):
        raise RuntimeError("boom")

    cleaner = Cleaner(LogisticRegression(max_iter=500), selector="test_api_broken", inspector="always",
                      retrain="defer").fit(X[:100], clean[:100])
    with pytest.raises(RuntimeError, match="boom"):
        cleaner.observe(X[flipped[0]], noisy[flipped[0]])
    assert len(cleaner.X_) == 100 and len(cleaner.labels_) == 100 and len(cleaner.loop_.known) == 100


def test_refitting_a_torch_cleaner_starts_from_the_initial_weights(blobs):
    X, clean, noisy, _ = blobs
    net = mlp()
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    cleaner = Cleaner(net, train_config=FAST)
    first = cleaner.fit(X, noisy).predict_proba(X)
    assert cleaner.model_ is not net and not torch.equal(cleaner.model_[0].weight, initial["0.weight"])  # a copy
    assert all(torch.equal(v, initial[k]) for k, v in net.state_dict().items())  # the model given is unchanged
    second = cleaner.fit(X, noisy).predict_proba(X)
    np.testing.assert_allclose(first, second)  # same start, same seed: same model
    torch.testing.assert_close(cleaner.learner_.initial_state["0.weight"], initial["0.weight"])


# --------------------------------------------------------------------------- the audit follows the inspector

def test_audit_asks_only_what_the_inspector_flags_most_suspicious_first(blobs):
    X, clean, noisy, flipped = blobs
    base = Cleaner(LogisticRegression(max_iter=500), retrain="defer").fit(X, noisy)
    probs = base.predict_proba(X)
    margins = probs.max(1) - probs[np.arange(len(X)), noisy]
    quality = probs[np.arange(len(X)), noisy]
    for kwargs, flagged, suspicion in (({"threshold": 0.6}, margins > 0.6, margins),
                                       ({"inspector": "always"}, probs.argmax(1) != noisy, margins),
                                       ({"inspector": "cleanlab", "threshold": 0.3}, quality < 0.3, -quality)):
        cleaner = Cleaner(LogisticRegression(max_iter=500), retrain="defer", **kwargs)
        asked = [q.index for q in cleaner.audit(X, noisy, budget=len(X))]
        assert sorted(asked) == sorted(np.flatnonzero(flagged)), kwargs  # nothing answered: all still suspicious
        assert np.all(np.diff(suspicion[asked]) <= 1e-12), kwargs
    assert len(list(Cleaner(LogisticRegression(max_iter=500), inspector="never").audit(X, noisy, budget=5))) == 0


def test_a_custom_inspector_changes_the_audit(blobs):
    X, _, noisy, _ = blobs

    @register_inspector("test_api_unsure")
    def unsure(probs, label, rng):
        return probs[label] < 0.05

    cleaner = Cleaner(LogisticRegression(max_iter=500), inspector="test_api_unsure", retrain="defer")
    asked = list(cleaner.audit(X, noisy, budget=len(X)))
    probs = cleaner.predict_proba(X)
    assert 0 < len(asked) == int(np.sum(probs[np.arange(len(X)), noisy] < 0.05))
    assert all(q.margin > 0.05 for q in asked)


def test_misspelt_stage_parameters_are_refused(blobs):
    X, _, noisy, _ = blobs
    with pytest.raises(CincerError, match="unknown parameter 'dampng'.*fim_samples, damping"):
        Cleaner(LogisticRegression(), selector_params={"dampng": 1.0}).fit(X, noisy)
    with pytest.raises(CincerError, match="inspector 'always'.*threshold"):
        Cleaner(LogisticRegression(), inspector="always", threshold=0.3).fit(X, noisy)
    with pytest.raises(CincerError, match="fim_samples"):
        counterexamples(LogisticRegression().fit(X, noisy), X, noisy, X[0], noisy[0], fim_samples=0)


def test_an_audit_never_shows_an_example_twice():
    """An audit of real data in which the person confirms every label: no example comes back."""
    from cincer import flip_labels, load_dataset

    data = load_dataset("digits")
    noisy = flip_labels(data.y_train, 0.1, 10, rng=np.random.default_rng(0))
    cleaner = Cleaner(LogisticRegression(max_iter=300), retrain="defer")
    shown = []
    for q in cleaner.audit(data.X_train, noisy, budget=40):
        shown += [q.index] + ([] if q.counterexample is None else [q.counterexample])
        cleaner.answer(q, q.label, None if q.counterexample is None else cleaner.labels_[q.counterexample])
    assert len(shown) > 40 and len(shown) == len(set(shown))


@pytest.mark.slow
def test_a_cross_fitted_audit_does_not_trust_a_memorising_model():
    from cincer import flip_labels, load_dataset

    data = load_dataset("digits")
    X, y = data.X_train[:500], data.y_train[:500]
    noisy = flip_labels(y, 0.2, 10, rng=np.random.default_rng(0))

    def audit(cv):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).double()
        cleaner = Cleaner(net, train_config=TrainConfig(epochs=100, lr=1e-2), retrain="defer")
        return cleaner, list(cleaner.audit(X, noisy, budget=60, cv=cv))

    _, plain = audit(None)
    cleaner, folded = audit(4)
    wrong = noisy != y
    assert sum(wrong[q.index] for q in folded) > 1.5 * sum(wrong[q.index] for q in plain)
    for q in folded:  # the counter-examples come from the fold model that never saw the example
        (fold,) = [f for f in cleaner.folds_ if q.index not in set(f.known)]
        assert set(q.counterexamples) <= set(fold.known)
    with pytest.raises(CincerError, match="cv must be"):
        next(cleaner.audit(budget=1, cv=1))


# --------------------------------------------------------------------------- #14: the error table, row by row

def bn_net(d=6, c=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, c)).double()


@pytest.mark.parametrize("m", [1, 2, 3])
def test_a_batchnorm_model_trains_at_batch_size_times_m_plus_one(blobs, m):
    """The built-in trainer never makes a batch of one: D of ``batch_size*m + 1`` examples, reached by
    ``fit``, by an observed example (sync retrain) or by an answer, trains a BatchNorm model."""
    X, clean, noisy, _ = blobs
    config = TrainConfig(epochs=2, batch_size=16)
    n = 16 * m + 1
    assert Cleaner(bn_net(), train_config=config).fit(X[:n], clean[:n]).learner_.n_fits_ == 1
    stream = Cleaner(bn_net(), train_config=config, inspector="never").fit(X[:n - 1], clean[:n - 1])
    assert stream.observe(X[n - 1], clean[n - 1]) is None
    assert len(stream.X_) == n and stream.learner_.n_fits_ == 2
    asked = Cleaner(bn_net(), train_config=config, inspector="always", retrain="answer").fit(X[:n - 1], noisy[:n - 1])
    query = asked.observe(X[n - 1], (clean[n - 1] + 1) % 3)  # a wrong label: asked, answered, retrained on n
    assert query is not None
    asked.answer(query, clean[n - 1])
    assert asked.learner_.n_fits_ == 2 and asked.labels_[n - 1] == clean[n - 1]


def test_a_failing_train_fn_leaves_the_cleaner_as_it_was(blobs):
    """A train_fn raising in fit, refit, observe (sync) or answer: a ModelError naming it, and nothing changed
    (a fitted cleaner keeps its pool, labels, pending queries and weights; a new one stays unfitted)."""
    X, clean, noisy, flipped = blobs
    fail = {"now": True}

    def train_fn(model, X, y):
        if fail["now"]:
            raise RuntimeError("CUDA out of memory")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(20):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(X), y).backward()
            optimizer.step()

    cleaner = Cleaner(mlp(), train_fn=train_fn, inspector="always", retrain="answer")
    with pytest.raises(ModelError, match="train_fn failed on 100 examples: RuntimeError: CUDA out of memory"):
        cleaner.fit(X[:100], noisy[:100])
    assert not cleaner.__sklearn_is_fitted__() and not any(name.endswith("_") for name in vars(cleaner))
    fail["now"] = False
    cleaner.fit(X[:100], noisy[:100])
    query = cleaner.observe(X[flipped[0]], noisy[flipped[0]])
    assert query is not None
    before = state_of(cleaner)
    fail["now"] = True
    for failing in (cleaner.refit, lambda: cleaner.fit(X[100:200], noisy[100:200]),
                    lambda: cleaner.answer(query, clean[flipped[0]]),
                    lambda: cleaner.set_params(retrain="sync", inspector="never").observe(X[150], clean[150])):
        with pytest.raises(ModelError, match="train_fn failed"):
            failing()
        cleaner.set_params(retrain="answer", inspector="always")
        assert_same_state(before, state_of(cleaner))
    fail["now"] = False
    assert cleaner.answer(query.id, clean[flipped[0]]) == {100: (noisy[flipped[0]], clean[flipped[0]])}


@pytest.mark.parametrize("labels, message", [
    ([0, None, 1, 2] * 10, r"y\[1\] is None \(a missing label\)"),
    ([0, "1", 1, 2] * 10, r"y mixes label types: y\[0\] = 0 \(number\) and y\[1\] = '1' \(str\)"),
    (np.tile([0.0, np.nan, 1.0, 2.0], 10), r"y\[1\] is NaN \(a missing label\)"),
    (np.linspace(0, 1, 40), r"continuous values \(e.g. 0.0256"),
    (np.eye(3)[np.arange(40) % 3], "multi-output target"),
    (pd.Series(["a", None] * 20), r"y\[1\] is (None|NaN) \(a missing label\)"),
])
def test_bad_labels_name_the_problem_and_change_nothing(blobs, labels, message):
    X, _, noisy, _ = blobs
    fresh = Cleaner(LogisticRegression())
    with pytest.raises(InputError, match=message) as info:
        fresh.fit(X[:40], labels)
    assert "\n" not in str(info.value) and not fresh.__sklearn_is_fitted__()
    fitted = Cleaner(LogisticRegression(), retrain="defer").fit(X[:40], noisy[:40])
    before = state_of(fitted)
    with pytest.raises(InputError, match=message):
        fitted.fit(X[:40], labels)
    assert_same_state(before, state_of(fitted))


def test_float_labels_are_classes_when_declared(blobs):
    X, _, noisy, _ = blobs
    values = np.array([0.5, 1.5, 2.5])[noisy]
    with pytest.raises(InputError, match="continuous"):
        Cleaner(LogisticRegression()).fit(X, values)
    cleaner = Cleaner(LogisticRegression(), classes=[0.5, 1.5, 2.5]).fit(X, values)
    assert list(cleaner.classes_) == [0.5, 1.5, 2.5] and set(cleaner.predict(X)) <= {0.5, 1.5, 2.5}


@pytest.mark.parametrize("params, message", [
    ({"k": 2.5}, "k must be a positive integer, got 2.5"),
    ({"k": 0}, "k must be a positive integer, got 0"),
    ({"retrain": "bogus"}, "retrain must be one of sync, answer, head, defer, got 'bogus'"),
    ({"seed": "abc"}, r"seed must be an integer in \[0, 2\*\*31\), got 'abc'"),
    ({"seed": -1}, "seed must be an integer"),
    ({"refit_every": 1.5}, "refit_every must be a positive integer"),
    ({"threshold": "high"}, "threshold must be a number"),
    ({"threshold": 2.0}, r"threshold must be in \(0, 1\), got 2.0"),
    ({"inspector": "always", "threshold": 0.3}, "inspector 'always'.*threshold"),
    ({"selector": "bogus"}, "unknown selector 'bogus'"),
    ({"selector": "full_fisher"}, "needs a PyTorch model"),
    ({"selector_params": {"damping": -1.0}}, "damping must be >= 0"),
    ({"selector_params": {"damping": "x"}}, "top_fisher"),
    ({"selector_params": [1]}, "selector_params must be a dict"),
    ({"selector_params": {"fim_samples": True}}, r"selector_params\['fim_samples'\] must be int \| None, got True"),
    ({"selector_params": {"damping": float("inf")}}, r"selector_params\['damping'\] must be finite, got inf"),
    ({"train_config": {"epochs": 3}}, "train_config must be a cincer.models.TrainConfig"),
    ({"train_config": TrainConfig(epochs=0)}, "epochs must be at least 1"),
    ({"head": "0"}, "head= names a layer of a PyTorch model"),
    ({"train_fn": print}, "train_fn applies to PyTorch models"),
    ({"classes": [0, 0, 1]}, "classes has duplicates"),
    ({"classes": "ab"}, "classes must be a list"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"device": 3}, "device must be a name"),
    ({"model": RandomForestClassifier()}, "linear top layer"),
    ({"model": SGDClassifier()}, "loss='log_loss'"),
    ({"model__C": -1.0}, "model: InvalidParameterError: The 'C' parameter of LogisticRegression"),
    ({"model__bogus": 1}, "model: ValueError: Invalid parameter 'bogus'"),
    ({"k__x": 1}, r"k \(int\) has no parameters to set"),
    ({"epochs": 3}, "unknown parameter 'epochs' of Cleaner \\(choose from: classes, device, head, inspector, k"),
])
def test_bad_parameters_are_refused_at_once_and_nothing_changes(blobs, params, message):
    """``set_params`` checks before it sets (a bad value among good ones sets none of them); the same values
    given to the constructor are refused by ``fit`` before anything is fitted."""
    X, _, noisy, _ = blobs
    model = LogisticRegression(max_iter=500)
    cleaner = Cleaner(model, retrain="defer").fit(X[:80], noisy[:80])
    before = state_of(cleaner)
    with pytest.raises(CincerError, match=message) as info:
        cleaner.set_params(**{"k": 3, **params})
    assert "\n" not in str(info.value)
    assert_same_state(before, state_of(cleaner))
    assert cleaner.k == 5 and model.C == 1.0 and cleaner.model is model
    if not any("__" in key for key in params) and "epochs" not in params:
        fresh = Cleaner(**{"model": LogisticRegression(max_iter=500), **params})
        with pytest.raises(CincerError, match=message):
            fresh.fit(X[:80], noisy[:80])
        assert not fresh.__sklearn_is_fitted__()


def test_a_bad_budget_cv_or_batch_is_refused_and_changes_nothing(blobs):
    X, _, noisy, _ = blobs
    cleaner = Cleaner(LogisticRegression(max_iter=500), retrain="defer").fit(X, noisy)
    before = state_of(cleaner)
    for kwargs, message in (({"budget": True}, "budget must be a positive integer, got True"),
                            ({"budget": 2.0}, "budget must be a positive integer"),
                            ({"budget": 3, "cv": 1}, "cv must be an integer of at least 2"),
                            ({"budget": 3, "batch": 0}, "batch must be a positive integer"),
                            ({"budget": 3, "cv": 200}, "fewer than the folds")):
        with pytest.raises(CincerError, match=message):
            next(iter(cleaner.audit(**kwargs)))
        assert_same_state(before, state_of(cleaner))
    with pytest.raises(CincerError, match="n must be a positive integer"):
        cleaner.next_queries(0)
    with pytest.raises(CincerError, match="max_issues must be a positive integer"):
        cleaner.label_issues(max_issues=-1)
    assert_same_state(before, state_of(cleaner))


def test_counterexamples_of_a_model_fitted_on_string_labels(blobs):
    """Documented to work: for scikit-learn, labels are values of ``model.classes_`` (here strings)."""
    X, _, noisy, _ = blobs
    names = np.array(["ant", "bee", "cat"])
    x = X[0] + 0.1
    by_name = counterexamples(LogisticRegression(max_iter=500).fit(X, names[noisy]), X, names[noisy], x, "ant", k=4)
    by_index = counterexamples(LogisticRegression(max_iter=500).fit(X, noisy), X, noisy, x, 0, k=4)
    np.testing.assert_array_equal(by_name[0], by_index[0])
    np.testing.assert_allclose(by_name[1], by_index[1], rtol=1e-9)
    assert len(by_name[0]) == 4


@pytest.mark.parametrize("kwargs, message", [
    ({"fim_samples": 0}, "fim_samples must be a positive integer or None"),
    ({"fim_samples": 2.5}, "fim_samples must be a positive integer or None"),
    ({"damping": -1}, "damping must be >= 0, got -1"),
    ({"damping": "x"}, "top_fisher: TypeError"),
    ({"damping": np.inf}, "damping must be finite, got inf"),
    ({"fim_samples": True}, r"fim_samples must be int \| None, got True"),
    ({"k": 0}, "k must be a positive integer"),
    ({"seed": "s"}, "seed must be an integer"),
    ({"device": "cuda:99"}, "device 'cuda:99'"),
    ({"y": "dog"}, "y = 'dog' is not one of the declared classes"),
    ({"y": 9}, "y = 9 is not one of the declared classes \\[0, 1, 2\\]"),
    ({"x_cols": 3}, "x has shape"),
    ({"X_cols": 3}, "X_train has 3 features per example, the model was fitted on 6"),
    ({"y_train": "short"}, "X_train has 240 rows but y_train has 239 labels"),
    ({"y_train": "nan"}, r"y_train\[0\] is NaN"),
])
def test_bad_counterexamples_calls_are_one_line_errors(blobs, kwargs, message):
    X, _, noisy, _ = blobs
    model = LogisticRegression(max_iter=500).fit(X, noisy)
    kwargs = dict(kwargs)
    x, y, X_train, y_train = X[0], 0, X, noisy.astype(float)
    if "x_cols" in kwargs:
        x = X[0, :kwargs.pop("x_cols")]
    if "X_cols" in kwargs:
        cols = kwargs.pop("X_cols")
        X_train, x = X[:, :cols], X[0, :cols]
    if kwargs.get("y_train") == "short":
        kwargs.pop("y_train")
        y_train = y_train[:-1]
    elif kwargs.get("y_train") == "nan":
        kwargs.pop("y_train")
        y_train = y_train.copy()
        y_train[0] = np.nan
    y = kwargs.pop("y", y)
    coefficients = model.coef_.copy()
    with pytest.raises(CincerError, match=message) as info:
        counterexamples(model, X_train, y_train, x, y, **kwargs)
    assert "\n" not in str(info.value)
    np.testing.assert_array_equal(model.coef_, coefficients)


def test_predict_with_the_wrong_shape_is_an_input_error(blobs):
    X, _, noisy, _ = blobs
    for model in (LogisticRegression(max_iter=500), mlp()):
        cleaner = Cleaner(model, train_config=FAST, retrain="defer").fit(X, noisy)
        for call in (cleaner.predict, cleaner.predict_proba):
            with pytest.raises(InputError, match=r"X has examples of shape \(3,\), the cleaner was fitted on "
                                                 r"shape \(6,\)"):
                call(X[:, :3])
        with pytest.raises(InputError, match="NaN or infinite"):
            cleaner.predict(np.full((2, 6), np.nan))


def test_a_dataloader_is_refused_with_what_to_pass_instead(blobs):
    X, _, noisy, _ = blobs
    dataset = torch.utils.data.TensorDataset(torch.as_tensor(X), torch.as_tensor(noisy))
    loader = torch.utils.data.DataLoader(dataset, batch_size=16)
    with pytest.raises(InputError, match=r"X is a torch DataLoader: pass its dataset, fit\(loader.dataset\)"):
        Cleaner(mlp(), train_config=FAST).fit(loader)
    assert Cleaner(mlp(), train_config=FAST).fit(loader.dataset).learner_.n_fits_ == 1


def test_a_query_from_another_cleaner_is_refused_with_that_reason(blobs):
    X, clean, noisy, _ = blobs
    first = Cleaner(LogisticRegression(max_iter=500), retrain="defer").fit(X, noisy)
    second = clone(first).fit(X, noisy)
    query = first.next_queries(1)[0]
    second.next_queries(1)
    before = state_of(second)
    for given in (query, query.id):
        with pytest.raises(QueryError, match=f"query '{query.id}' comes from another cleaner"):
            second.answer(given, clean[query.index])
    assert_same_state(before, state_of(second))
    first.fit(X, noisy)  # a new fit: the queries of the old one are another cleaner's too
    with pytest.raises(QueryError, match="or from before this one was fitted again"):
        first.answer(query, clean[query.index])


def test_observing_a_pandas_row_gives_no_warning(blobs):
    X, _, noisy, _ = blobs
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)])
    cleaner = Cleaner(mlp(), train_config=FAST, retrain="defer").fit(frame.iloc[:100], pd.Series(noisy[:100]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cleaner.observe(frame.iloc[100], noisy[100])     # a Series (read-only under copy-on-write)
        cleaner.observe(frame.iloc[[101]], noisy[101])   # a DataFrame of one row
        cleaner.observe(torch.as_tensor(X[102]), noisy[102])
    np.testing.assert_array_equal(cleaner.X_[100:103].numpy(), X[100:103])
    with pytest.raises(InputError, match="x must be one example, got a DataFrame of 2 rows"):
        cleaner.observe(frame.iloc[:2], 0)


# --------------------------------------------------------------------------- the scikit-learn contract

def test_the_cleaner_is_a_scikit_learn_estimator(blobs):
    X, _, noisy, _ = blobs
    model = LogisticRegression(C=0.5)
    cleaner = Cleaner(model, k=3, retrain="defer")
    assert isinstance(cleaner, BaseEstimator)
    assert repr(cleaner) == "Cleaner(LogisticRegression(C=0.5), k=3, retrain='defer')"
    params = cleaner.get_params(deep=True)
    assert params["model__C"] == 0.5 and params["k"] == 3 and params["device"] == "cpu"
    assert set(cleaner.get_params(deep=False)) == {"model", "classes", "head", "train_fn", "train_config", "inspector",
                                                   "threshold", "selector", "selector_params", "k", "retrain",
                                                   "refit_every", "seed", "device"}
    twin = clone(cleaner)
    assert twin.model is not model and twin.get_params()["model__C"] == 0.5 and repr(twin) == repr(cleaner)
    assert cleaner.set_params(model__C=2.0, k=4) is cleaner and model.C == 2.0 and twin.model.C == 0.5
    cleaner.fit(X, noisy)
    assert not hasattr(model, "coef_") and hasattr(cleaner.model_, "coef_")  # a copy was fitted
    assert not clone(cleaner).__sklearn_is_fitted__()
    piped = Cleaner(make_pipeline(StandardScaler(), LogisticRegression()))
    assert piped.get_params()["model__logisticregression__C"] == 1.0
    with pytest.raises(CincerError, match="The 'C' parameter of LogisticRegression must be"):
        piped.set_params(model__logisticregression__C=-1.0)  # a step's value, checked before it is set
    assert piped.model[-1].C == 1.0
    net = mlp()
    torch_cleaner = Cleaner(net, train_config=FAST)
    assert re.fullmatch(r"Cleaner\(Sequential\(<163 parameters>\), train_config=TrainConfig\(.*\)\)",
                        repr(torch_cleaner))
    copied = clone(torch_cleaner)
    assert copied.model is not net and all(torch.equal(a, b) for a, b in zip(copied.model.parameters(),
                                                                               net.parameters()))

    def my_training(model, X, y):
        pass

    assert repr(Cleaner(mlp(), train_fn=my_training, seed=3)) == (
        "Cleaner(Sequential(<163 parameters>), seed=3, train_fn=my_training)")


def test_fitting_one_cleaner_never_changes_another(blobs):
    """The model given is copied at fit: two cleaners of the same module are independent, and the module
    keeps its weights (a scikit-learn estimator stays unfitted)."""
    X, clean, noisy, _ = blobs
    net = mlp()
    initial = copy.deepcopy(net.state_dict())
    a = Cleaner(net, train_config=FAST).fit(X, noisy)
    predictions = a.predict_proba(X)
    b = Cleaner(net, train_config=TrainConfig(epochs=5, lr=0.05)).fit(X[:100], clean[:100])
    np.testing.assert_array_equal(a.predict_proba(X), predictions)
    assert a.model_ is not b.model_ and a.model_ is not net
    assert all(torch.equal(v, initial[k]) for k, v in net.state_dict().items())
    estimator = LogisticRegression()
    Cleaner(estimator).fit(X, noisy)
    assert not hasattr(estimator, "coef_")


def test_a_pipeline_with_a_scaler_is_the_same_as_the_scaled_features(blobs):
    """A Pipeline's features are its transform of X and its top layer the last step: auditing raw data with
    ``make_pipeline(StandardScaler(), LogisticRegression())`` asks what a LogisticRegression on the scaled
    data asks."""
    X, clean, noisy, _ = blobs
    raw = X * np.array([1, 10, 100, 1, 5, 0.1]) + 7
    pipeline = Cleaner(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), retrain="defer")
    asked = list(pipeline.audit(raw, noisy, budget=5))
    scaled = StandardScaler().fit_transform(raw)
    plain = list(Cleaner(LogisticRegression(max_iter=500), retrain="defer").audit(scaled, noisy, budget=5))
    assert [(q.index, list(q.counterexamples)) for q in asked] == [(q.index, list(q.counterexamples)) for q in plain]
    np.testing.assert_allclose([q.scores for q in asked], [q.scores for q in plain], rtol=1e-6)
    H, P = pipeline.learner_.features_and_probs(pipeline.X_[:5])
    np.testing.assert_allclose(H.numpy(), scaled[:5], atol=1e-12)
    np.testing.assert_allclose(P.numpy(), pipeline.model_.predict_proba(raw[:5]), atol=1e-12)
    W, b = pipeline.learner_.top_layer()
    assert W.shape == (3, 6)
    # retrain="head" refits the last step only: the scaler keeps what it learned
    head = Cleaner(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), retrain="head").fit(raw, noisy)
    mean, coef = head.model_[0].mean_.copy(), head.model_[-1].coef_.copy()
    oracle_answer(head, head.next_queries(1)[0], clean)
    assert np.array_equal(head.model_[0].mean_, mean) and not np.array_equal(head.model_[-1].coef_, coef)


def test_other_linear_classifiers_and_what_is_refused(blobs):
    X, _, noisy, _ = blobs
    sgd = Cleaner(make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", random_state=0)), retrain="defer")
    assert len(sgd.fit(X, noisy).next_queries(2)) == 2
    for model, message in ((SGDClassifier(loss="hinge"), "SGDClassifier\\(loss='hinge'\\) gives no probabilities"),
                           (make_pipeline(StandardScaler(), RandomForestClassifier()), "linear top layer"),
                           (make_pipeline(LogisticRegression(), LogisticRegression()), "has no transform")):
        with pytest.raises(ModelError, match=message):
            Cleaner(model).fit(X, noisy)


# --------------------------------------------------------------------------- transactions

def test_every_operation_is_all_or_nothing(blobs, monkeypatch):
    """A failure half-way through next_queries, a batch of the audit, an answer's head refit or a cross-fitted
    audit's answer leaves the whole cleaner as it was, and it goes on exactly as a twin that never failed."""
    X, clean, noisy, _ = blobs
    calls = {"n": 0, "fail_at": None}

    @register_selector("test_api_fails_later")
    def fails_later(ctx):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise RuntimeError("selector broke")
        return -ctx.candidates.astype(float)

    def make():
        return Cleaner(mlp(), train_config=FAST, selector="test_api_fails_later", retrain="head",
                       refit_every=10).fit(X, noisy)

    cleaner, twin = make(), make()
    for step in (lambda c: c.next_queries(4), lambda c: next(c.audit(budget=4, batch=4))):
        before = state_of(cleaner)
        calls.update(n=0, fail_at=3)
        with pytest.raises(RuntimeError, match="selector broke"):
            step(cleaner)
        assert_same_state(before, state_of(cleaner))
    calls.update(n=0, fail_at=None)
    query = cleaner.next_queries(1)[0]
    assert query.id.endswith(":0")  # the failed calls registered nothing
    real = cleaner.learner_.fit_head

    def broken_fit_head(H, y):
        real(H, y)  # the head's weights change in place ...
        raise RuntimeError("head refit broke")  # ... and then the refit fails

    monkeypatch.setattr(cleaner.learner_, "fit_head", broken_fit_head)
    before = state_of(cleaner)
    with pytest.raises(RuntimeError, match="head refit broke"):
        oracle_answer(cleaner, query, clean)
    assert_same_state(before, state_of(cleaner))
    monkeypatch.undo()
    twin_query = twin.next_queries(1)[0]
    assert (twin_query.id[-2:], twin_query.index, list(twin_query.counterexamples)) == (
        query.id[-2:], query.index, list(query.counterexamples))
    assert oracle_answer(cleaner, query, clean) == oracle_answer(twin, twin_query, clean)
    for mine, theirs in zip(cleaner.next_queries(3), twin.next_queries(3)):
        assert (mine.index, list(mine.counterexamples)) == (theirs.index, list(theirs.counterexamples))
    np.testing.assert_array_equal(cleaner.predict_proba(X), twin.predict_proba(X))


def test_a_failed_answer_in_a_cross_fitted_audit_restores_the_folds(blobs):
    X, clean, noisy, _ = blobs
    cleaner = Cleaner(LogisticRegression(max_iter=300), retrain="answer")
    queries = cleaner.audit(X, noisy, budget=3, cv=3)
    query = next(queries)
    assert len(cleaner.folds_) == 3
    before = state_of(cleaner)

    def broken_fit(X, y):
        raise RuntimeError("refit broke")

    cleaner.learner_.fit = broken_fit
    with pytest.raises(RuntimeError, match="refit broke"):
        oracle_answer(cleaner, query, clean)
    assert_same_state(before, state_of(cleaner))  # the fold loops' labels too
    del cleaner.learner_.fit
    oracle_answer(cleaner, query, clean)
    assert all(np.array_equal(fold.labels, cleaner.loop_.labels) for fold in cleaner.folds_)
    cleaner.observe(X[0], noisy[0])  # the folds cover the examples the audit started with: it ends
    with pytest.raises(CincerError, match="this cross-fitted audit is over"):
        next(queries)


# --------------------------------------------------------------------------- devices

@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_the_model_and_the_pool_follow_the_device(blobs, device):
    X, clean, noisy, _ = blobs
    expected = "cuda" if device == "auto" and torch.cuda.is_available() else "cpu"
    cleaner = Cleaner(mlp(), train_config=FAST, retrain="defer", device=device).fit(X, noisy)
    assert cleaner.X_.device.type == expected and next(cleaner.model_.parameters()).device.type == expected
    query = cleaner.next_queries(1)[0]
    oracle_answer(cleaner, query, clean)
    cleaner.observe(X[0], noisy[0])
    assert len(cleaner.label_issues(max_issues=2)) <= 2
    idx, _ = counterexamples(mlp(), X, noisy, X[0], 1, device=device)
    assert len(idx) == 5


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error of a machine without a GPU")
def test_cuda_without_a_gpu_is_a_one_line_error(blobs):
    X, _, noisy, _ = blobs
    with pytest.raises(CincerError, match="device 'cuda': this machine has no CUDA GPU that torch can use"):
        Cleaner(mlp(), train_config=FAST, device="cuda").fit(X, noisy)
    cleaner = Cleaner(mlp(), train_config=FAST, retrain="defer").fit(X, noisy)
    before = state_of(cleaner)
    with pytest.raises(CincerError, match="no CUDA GPU"):
        cleaner.set_params(device="cuda")
    assert_same_state(before, state_of(cleaner))
    with pytest.raises(CincerError, match="no CUDA GPU"):
        counterexamples(mlp(), X, noisy, X[0], 1, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_everything_follows_the_model(blobs, tmp_path):
    X, clean, noisy, _ = blobs
    cleaner = Cleaner(mlp(), train_config=FAST, retrain="head", refit_every=2, device="cuda").fit(X, noisy)
    assert cleaner.X_.is_cuda and next(cleaner.model_.parameters()).is_cuda
    for query in cleaner.audit(budget=4, batch=2):
        for q in query:
            oracle_answer(cleaner, q, clean)
    cleaner.observe(X[0], noisy[0])
    assert len(cleaner.label_issues()) >= 0 and cleaner.predict(X).shape == (len(X),)
    cleaner.save(tmp_path / "gpu")
    on_cpu = Cleaner.load(tmp_path / "gpu", mlp(), device="cpu")
    np.testing.assert_allclose(on_cpu.predict_proba(X), cleaner.predict_proba(X), atol=1e-10)
    with pytest.raises(ModelError, match="scikit-learn model runs on the CPU"):
        Cleaner(LogisticRegression(), device="cuda").fit(X, noisy)


# --------------------------------------------------------------------------- query ids and batches

def test_queries_have_stable_ids_and_come_in_batches(blobs):
    X, clean, noisy, _ = blobs
    cleaner = Cleaner(LogisticRegression(max_iter=500), retrain="defer").fit(X, noisy)
    batch = cleaner.next_queries(4)
    assert len(batch) == 4 and len({q.index for q in batch}) == 4 and list(cleaner.pending_) == [q.id for q in batch]
    assert [q.id for q in batch] == [f"{cleaner.uid_}:{n}" for n in range(4)]
    assert json.loads(json.dumps([q.to_dict() for q in batch]))[0]["id"] == batch[0].id
    more = cleaner.next_queries(4)  # neither pending nor checked examples
    assert not {q.index for q in more} & {q.index for q in batch}
    changed = cleaner.answer(batch[2].id, clean[batch[2].index])  # by id, in any order
    assert batch[2].id not in cleaner.pending_ and cleaner.history_[-1]["query"] == batch[2].id
    assert changed == cleaner.history_[-1]["changed"]
    with pytest.raises(QueryError, match=f"query '{batch[2].id}' was already answered"):
        cleaner.answer(batch[2].id)
    with pytest.raises(QueryError, match="this cleaner asked no such query"):
        cleaner.answer(f"{cleaner.uid_}:999")
    with pytest.raises(QueryError, match="not a query id"):
        cleaner.answer("0")
    with pytest.raises(QueryError, match="unknown query \\(a int\\)"):
        cleaner.answer(0)
    # audit(batch=n): lists of n queries (modAL's n_instances), the budget counts queries
    batched = list(Cleaner(LogisticRegression(max_iter=500), retrain="defer").audit(X, noisy, budget=7, batch=3))
    single = list(Cleaner(LogisticRegression(max_iter=500), retrain="defer").audit(X, noisy, budget=7))
    assert [len(b) for b in batched] == [3, 3, 1]
    assert [q.index for b in batched for q in b] == [q.index for q in single]


def test_label_issues_is_the_audit_as_a_table(blobs):
    X, clean, noisy, _ = blobs
    cleaner = Cleaner(LogisticRegression(max_iter=500), retrain="defer").fit(X, noisy)
    before = state_of(cleaner)
    table = cleaner.label_issues()
    assert_same_state(before, state_of(cleaner))  # no query registered, the random state kept
    assert list(table.columns) == ["given_label", "suggested_label", "suspicion", "counterexamples"]
    assert table.index.name == "index"
    probs = cleaner.predict_proba(X)
    margins = probs.max(1) - probs[np.arange(len(X)), noisy]
    assert sorted(table.index) == sorted(np.flatnonzero(margins > 0.2))
    np.testing.assert_allclose(table["suspicion"], margins[table.index])
    assert table["suspicion"].is_monotonic_decreasing
    assert (table["given_label"] == noisy[table.index]).all()
    assert (table["suggested_label"] == probs[table.index].argmax(1)).all()
    assert np.mean(noisy[table.index[:8]] != clean[table.index[:8]]) >= 0.75
    audit = list(clone(cleaner).audit(X, noisy, budget=3))
    assert [q.index for q in audit] == list(table.index[:3])
    assert [list(q.counterexamples) for q in audit] == list(table["counterexamples"][:3])
    first = cleaner.next_queries(1)[0]
    cleaner.answer(first, first.label)  # a person confirmed it: not an issue any more
    assert first.index not in cleaner.label_issues().index
    assert len(cleaner.label_issues(max_issues=3)) == 3


# --------------------------------------------------------------------------- checkpoints

def _ask(cleaner, X, noisy, stream):
    """The next query of a session: from the next stream examples (observed in turn), else next_queries."""
    while stream:
        i = stream.pop(0)
        query = cleaner.observe(X[i], noisy[i])
        if query is not None:
            return query
    return cleaner.next_queries(1)[0]


def _answer(cleaner, query, clean):
    """What was asked and changed (the query's number: the cleaners of a comparison have their own ids)."""
    number = int(query.id.split(":")[1])
    return number, query.index, list(query.counterexamples), oracle_answer(cleaner, query, clean)


def test_save_and_load_continue_a_torch_session_exactly(blobs, tmp_path):
    """A warm-started torch session saved with a pending query and loaded around a model of other weights
    goes on exactly as the uninterrupted one (weights, initial weights, Adam's state, labels, D, random state)."""
    X, clean, noisy, _ = blobs
    config = TrainConfig(epochs=4, batch_size=32, lr=1e-2, warm_start=True, warm_epochs=2)

    def session():
        return Cleaner(mlp(), train_config=config, retrain="answer", k=3, inspector="always").fit(X[:120], noisy[:120])

    whole, stream = session(), list(range(120, 160))
    expected = [_answer(whole, _ask(whole, X, noisy, stream), clean) for _ in range(8)]
    first, stream = session(), list(range(120, 160))
    trace = [_answer(first, _ask(first, X, noisy, stream), clean) for _ in range(4)]
    pending = _ask(first, X, noisy, stream)
    path = first.save(tmp_path / "session")
    assert sorted(p.name for p in (tmp_path / "session").iterdir()) == [
        "arrays.npz", "state.json", "weights.safetensors"]
    with np.load(tmp_path / "session" / "arrays.npz", allow_pickle=False) as arrays:
        assert all(arrays[name].dtype != object for name in arrays.files)
    loaded = Cleaner.load(path, mlp(seed=7))
    assert list(loaded.pending_) == [pending.id] and loaded.pending_[pending.id].index == pending.index
    assert repr(loaded) == repr(first) and loaded.uid_ == first.uid_ and loaded.n_queries_ == first.n_queries_
    np.testing.assert_array_equal(loaded.predict_proba(X), first.predict_proba(X))
    assert_same_state({k: v for k, v in state_of(first).items() if k != "pending"},
                      {k: v for k, v in state_of(loaded).items() if k != "pending"})
    trace.append(_answer(loaded, loaded.pending_[pending.id], clean))
    trace += [_answer(loaded, _ask(loaded, X, noisy, stream), clean) for _ in range(3)]
    assert trace == expected


def test_what_a_checkpoint_refuses(blobs, tmp_path):
    X, clean, noisy, _ = blobs
    with pytest.raises(CincerError, match="not fitted"):
        Cleaner(mlp()).save(tmp_path / "none")
    with pytest.raises(CincerError, match="no cincer checkpoint"):
        Cleaner.load(tmp_path / "none", mlp())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    cleaner = Cleaner(mlp(), train_config=FAST, train_fn=None, retrain="defer").fit(X, noisy)
    with pytest.raises(CincerError, match="the folder holds other files"):
        cleaner.save(tmp_path / "busy")
    with pytest.raises(CincerError, match="it is a file"):
        cleaner.save(tmp_path / "busy" / "notes.txt")
    cleaner.save(tmp_path / "net")
    cleaner.save(tmp_path / "net")  # a checkpoint is replaced
    edited = json.loads((tmp_path / "net" / "state.json").read_text())
    del edited["uid"]
    (tmp_path / "edited").mkdir()
    for name in ("arrays.npz", "weights.safetensors"):
        (tmp_path / "edited" / name).write_bytes((tmp_path / "net" / name).read_bytes())
    (tmp_path / "edited" / "state.json").write_text(json.dumps(edited))
    with pytest.raises(CincerError, match="is not a readable cincer checkpoint: KeyError: 'uid'"):
        Cleaner.load(tmp_path / "edited", mlp())
    (tmp_path / "edited" / "state.json").write_text("{")
    with pytest.raises(CincerError, match="cannot read"):
        Cleaner.load(tmp_path / "edited", mlp())
    with pytest.raises(ModelError, match="does not match the saved weights"):
        Cleaner.load(tmp_path / "net", mlp(c=2))
    with pytest.raises(CincerError, match="unknown parameter 'epochs'"):
        Cleaner.load(tmp_path / "net", mlp(), epochs=3)

    def train_fn(model, X, y):
        pass

    with_fn = Cleaner(mlp(), train_fn=train_fn, retrain="defer").fit(X, noisy)
    with_fn.save(tmp_path / "fn")
    with pytest.raises(CincerError, match="saved with a train_fn"):
        Cleaner.load(tmp_path / "fn", mlp())
    assert Cleaner.load(tmp_path / "fn", mlp(), train_fn=train_fn).train_fn is train_fn
    pipeline = Cleaner(make_pipeline(StandardScaler(), LogisticRegression(C=0.5)), retrain="defer").fit(X * 3, noisy)
    pipeline.save(tmp_path / "pipe")
    assert not (tmp_path / "pipe" / "weights.safetensors").exists()
    loaded = Cleaner.load(tmp_path / "pipe", make_pipeline(StandardScaler(), LogisticRegression(C=0.5)))
    np.testing.assert_array_equal(loaded.predict_proba(X * 3), pipeline.predict_proba(X * 3))
    with pytest.raises(ModelError, match=r"differs from the saved one: LogisticRegression\(C=1.0\), saved C=0.5"):
        Cleaner.load(tmp_path / "pipe", make_pipeline(StandardScaler(), LogisticRegression()))
    with pytest.raises(ModelError, match="the model given has 1 estimator\\(s\\), the saved one 2"):
        Cleaner.load(tmp_path / "pipe", LogisticRegression(C=0.5))
    from cincer.influence import InfluenceConfig

    unsaveable = Cleaner(mlp(), train_config=FAST, selector="influence",
                         selector_params={"config": InfluenceConfig()}, retrain="defer").fit(X[:40], noisy[:40])
    with pytest.raises(CincerError, match="cannot save the state as JSON"):
        unsaveable.save(tmp_path / "influence")
    assert not (tmp_path / "influence").exists()


SESSION = textwrap.dedent('''
    """A session of 100 oracle answers with a LogisticRegression, in two halves (cincer tests)."""
    import json
    import sys

    import numpy as np
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    from cincer import Cleaner


    def data():
        X, y = make_classification(n_samples=700, n_features=8, n_informative=6, n_redundant=0, n_classes=3,
                                   n_clusters_per_class=1, class_sep=2.0, random_state=3)
        rng = np.random.default_rng(3)
        noisy = y.copy()
        flip = rng.choice(len(y), 175, replace=False)
        noisy[flip] = (y[flip] + rng.integers(1, 3, len(flip))) % 3
        return X, y, noisy


    def ask(cleaner, X, noisy, position):
        """The next query: from the next stream examples (observed in turn), else next_queries."""
        while position < len(X):
            query = cleaner.observe(X[position], noisy[position])
            position += 1
            if query is not None:
                return query, position
        return cleaner.next_queries(1)[0], position


    def answer(cleaner, query, clean):
        ce = query.counterexample
        changed = cleaner.answer(query.id, int(clean[query.index]), None if ce is None else int(clean[ce]))
        return [query.id, query.index, [int(i) for i in query.counterexamples],
                {str(k): [int(a), int(b)] for k, (a, b) in changed.items()}]


    def steps(cleaner, X, clean, noisy, position, n):
        trace = []
        for _ in range(n):
            query, position = ask(cleaner, X, noisy, position)
            trace.append(answer(cleaner, query, clean))
        return trace, position


    def main(mode, path):
        X, clean, noisy = data()
        if mode == "rest":
            cleaner = Cleaner.load(path, LogisticRegression(max_iter=300))
            with open(path + ".json") as f:
                position = json.load(f)["position"]
            (pending,) = cleaner.pending_.values()
            trace = [answer(cleaner, pending, clean)]
            more, _ = steps(cleaner, X, clean, noisy, position, 49)
            return {"trace": trace + more, "labels": cleaner.labels_.tolist(),
                    "probs": cleaner.predict_proba(X).tolist()}
        cleaner = Cleaner(LogisticRegression(max_iter=300), retrain="answer", k=3)
        cleaner.fit(X[:300], noisy[:300])
        trace, position = steps(cleaner, X, clean, noisy, 300, 50)
        if mode == "first":
            _, position = ask(cleaner, X, noisy, position)  # pending when saved
            cleaner.save(path)
            with open(path + ".json", "w") as f:
                json.dump({"position": position}, f)
            return {"trace": trace}
        more, _ = steps(cleaner, X, clean, noisy, position, 50)
        return {"trace": trace + more, "labels": cleaner.labels_.tolist(), "probs": cleaner.predict_proba(X).tolist()}


    if __name__ == "__main__":
        print(json.dumps(main(sys.argv[1], sys.argv[2])))
''')


@pytest.mark.slow
def test_a_session_of_100_answers_saved_and_continued_in_a_new_process_is_the_same(tmp_path):
    script = tmp_path / "session.py"
    script.write_text(SESSION)
    namespace: dict = {"__name__": "session"}
    exec(compile(SESSION, str(script), "exec"), namespace)
    whole = json.loads(json.dumps(namespace["main"]("whole", str(tmp_path / "unused"))))
    first = json.loads(json.dumps(namespace["main"]("first", str(tmp_path / "checkpoint"))))
    out = subprocess.run([sys.executable, str(script), "rest", str(tmp_path / "checkpoint")], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rest = json.loads(out.stdout)
    assert len(whole["trace"]) == 100 and len(first["trace"]) == 50
    interrupted = first["trace"] + rest["trace"]
    assert len({t[0].split(":")[0] for t in interrupted}) == 1  # the loaded cleaner kept its queries' ids
    numbered = [[t[0].split(":")[1], *t[1:]] for t in interrupted]
    assert numbered == [[t[0].split(":")[1], *t[1:]] for t in whole["trace"]]  # the same queries, changes
    assert rest["labels"] == whole["labels"]
    np.testing.assert_array_equal(rest["probs"], whole["probs"])
