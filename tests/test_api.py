"""The public API: Cleaner (torch and scikit-learn), stream and audit, counterexamples, plugins, bad input."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from torch import nn

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
    net = mlp()
    cleaner = Cleaner(net, train_config=FAST).fit(X, noisy)
    assert cleaner.learner_.head is net[2]
    Xt = torch.as_tensor(X[:5])
    H, P = cleaner.learner_.features_and_probs(Xt)
    with torch.no_grad():
        torch.testing.assert_close(H, net[1](net[0](Xt)))
        torch.testing.assert_close(P, torch.softmax(net(Xt), dim=1))
    named = Cleaner(mlp(), head="2", train_config=FAST).fit(X, noisy)
    assert named.learner_.head is named.model[2]


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
    with pytest.raises(QueryError, match="unknown query"):
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
    P = model.predict_proba(np.vstack([X, x]))
    H = np.hstack([np.vstack([X, x]), np.ones((61, 1))])
    labels = np.append(y, target)
    G = (np.eye(2)[labels] - P)[:, :, None] * H[:, None, :]
    F = sum(np.kron(np.diag(p) - np.outer(p, p), np.outer(h, h)) for p, h in zip(P[:60], H[:60])) / 60
    support = -(G[:60].reshape(60, -1) @ np.linalg.pinv(F, rcond=1e-10, hermitian=True) @ G[60].reshape(-1))
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
                                  np.arange(40))
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
    assert not torch.equal(net[0].weight, initial["0.weight"])  # trained in place
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
