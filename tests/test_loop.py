"""Loop invariants on short simulated runs."""

import numpy as np
import pytest
import torch

from cincer.data import flip_labels, load_dataset
from cincer.errors import CincerError, ModelError, QueryError
from cincer.experiments.simulate import RunConfig, run
from cincer.fisher import DEFAULT_TRUNCATE
from cincer.inspect import INSPECTORS
from cincer.loop import Answer, CleaningLoop, OracleAnnotator, Query
from cincer.models import TrainConfig
from cincer.select import SELECTORS, Ranking


def quick_config(**overrides) -> RunConfig:
    base = dict(dataset="synthetic", model="fullnet", known=30, rounds=25, repeats=2, noise=0.3,
                train=TrainConfig(epochs=15, lr=1e-2), seed=3)
    base.update(overrides)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", seed=3)


@pytest.mark.parametrize("selector", ["top_fisher", "none", "drop_ce", "random"])
def test_invariants(synthetic, selector):
    trace, summary = run(quick_config(selector=selector), progress=False, data=synthetic)
    for _, rows in trace.groupby("repeat"):
        rows = rows.sort_values("round")
        # cumulative counters never decrease
        for col in ("queries", "cleaned", "cleaned_ce", "dropped", "noisy_seen"):
            assert np.all(np.diff(rows[col].to_numpy()) >= 0), col
        # a query only when the example was suspicious (margin > tau implies a disagreement)
        asked = rows["query_index"] >= 0
        assert np.all(np.diff(rows["queries"].to_numpy()) == asked.to_numpy()[1:])
        assert np.all(rows.loc[asked, "margin"] > 0.2)
        assert np.all(rows["queries"] <= rows["disagreements"])
        assert np.all(rows["cleaned_suspicious"] <= rows["queries"])
        # the oracle only fixes labels: noise in D is the initial noise plus arrivals minus fixes/drops
        initial_noise = rows["noisy_known"].iloc[0]
        expected = initial_noise + rows["noisy_seen"] - rows["cleaned"] - rows["dropped_noisy"]
        assert np.all(rows["noisy_known"] == expected)
        assert np.all(rows["cleaned"] <= initial_noise + rows["noisy_seen"])
    if selector in ("none", "drop_ce"):
        assert summary["cleaned_ce_final_mean"] == 0
    if selector != "drop_ce":
        assert summary["dropped_final_mean"] == 0


def test_same_seed_same_trace(synthetic):
    a, _ = run(quick_config(repeats=1), progress=False, data=synthetic)
    b, _ = run(quick_config(repeats=1), progress=False, data=synthetic)
    timing = [c for c in a.columns if c.endswith("seconds")]
    assert a.drop(columns=timing).equals(b.drop(columns=timing))
    c, _ = run(quick_config(repeats=1, seed=4), progress=False, data=synthetic)
    assert not a.drop(columns=timing).equals(c.drop(columns=timing))


def test_never_inspector_makes_no_queries(synthetic):
    trace, _ = run(quick_config(inspector="never", repeats=1), progress=False, data=synthetic)
    assert trace["queries"].max() == 0 and trace["cleaned"].max() == 0


def test_oracle_never_corrupts_a_clean_label():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 4, size=200)
    noisy = flip_labels(clean, 0.3, 4, rng=rng)
    oracle = OracleAnnotator(clean)
    for i in range(200):
        ranking = Ranking(np.array([(i + 1) % 200]), np.array([1.0]))
        answer = oracle(Query(i, int(noisy[i]), int((noisy[i] + 1) % 4), np.full(4, 0.25), ranking))
        assert answer.suspicious_label == clean[i] and answer.counter_label == clean[(i + 1) % 200]


def bare_loop(labels, known, select="top_fisher"):
    """A loop for label bookkeeping only (no model is consulted)."""
    return CleaningLoop(learner=None, X=torch.zeros(len(labels), 1), labels=np.asarray(labels), known=known,
                        inspect=INSPECTORS.create("always"), select=SELECTORS.create(select),
                        rng=np.random.default_rng(0))


def test_apply_relabels_and_drop_policy():
    loop = bare_loop([0, 1, 1, 0], [0, 1, 2, 3])
    query = Query(3, 0, 1, np.array([0.1, 0.9]), Ranking(np.array([2, 1]), np.array([2.0, 1.0])))
    update = loop.apply(query, Answer(suspicious_label=1, counter_label=0))
    assert update.relabelled == {3: (0, 1), 2: (1, 0)} and list(loop.labels) == [0, 1, 0, 1]
    drop = Query(0, 0, 1, np.array([0.1, 0.9]), Ranking(np.array([1]), np.array([1.0])), policy="drop")
    assert loop.apply(drop, Answer(suspicious_label=0)).dropped == [1] and 1 not in loop.known
    # the caller's label array is never modified, and the loop's labels change only through apply
    labels = np.array([0, 1])
    loop = bare_loop(labels, [0])
    with pytest.raises(ValueError, match="read-only"):
        loop.labels[0] = 1
    assert labels[0] == 0


def test_undo_reverts_an_answer_and_refuses_a_stale_one():
    loop = bare_loop([0, 1, 1, 0, 1], [0, 1, 2, 3, 4])
    query = Query(3, 0, 1, np.array([0.1, 0.9]), Ranking(np.array([2, 4]), np.array([2.0, 1.0])))
    # the annotator was shown the second candidate (4), not the best (2)
    update = loop.apply(query, Answer(suspicious_label=1, counter_label=0, counterexample=4))
    assert update.relabelled == {3: (0, 1), 4: (1, 0)} and list(loop.labels) == [0, 1, 1, 1, 0]
    with pytest.raises(QueryError, match="not one of the counter-examples"):
        loop.apply(query, Answer(None, 0, counterexample=1))
    later = loop.apply(Query(4, 0, 1, np.array([0.2, 0.8]), Ranking.empty()), Answer(suspicious_label=1))
    with pytest.raises(CincerError, match="changed since"):
        loop.undo(update)  # example 4 was relabelled again after it
    loop.undo(later)
    loop.undo(update)
    assert list(loop.labels) == [0, 1, 1, 0, 1]
    drop = bare_loop([0, 1, 1], [0, 1, 2], select="drop_ce")
    dropped = drop.apply(Query(0, 0, 1, np.array([0.3, 0.7]), Ranking(np.array([2]), np.array([1.0])), "drop"),
                         Answer(suspicious_label=0))
    drop.undo(dropped)
    assert sorted(drop.known) == [0, 1, 2]


def test_add_grows_the_pool_and_a_failed_transaction_leaves_nothing(synthetic):
    config = quick_config(repeats=1)
    X = torch.as_tensor(synthetic.X_train[:40])
    learner = config.new_learner(X.shape[1:], synthetic.n_classes, seed=0, dtype=X.dtype).fit(X, synthetic.y_train[:40])
    loop = config.new_loop(learner, X, synthetic.y_train[:40], range(40), np.random.default_rng(0))
    for i in range(40, 100):  # many adds: the pool's buffer grows geometrically
        assert loop.add(torch.as_tensor(synthetic.X_train[i]), int(synthetic.y_train[i])) == i
    assert len(loop.X) == len(loop.labels) == 100 and list(loop.known) == list(range(100))
    torch.testing.assert_close(loop.X, torch.as_tensor(synthetic.X_train[:100]))
    state = loop.rng.bit_generator.state
    with pytest.raises(RuntimeError, match="boom"), loop.transaction():
        loop.add(torch.as_tensor(synthetic.X_train[100]), 1)
        loop.rng.random()
        raise RuntimeError("boom")
    assert len(loop.X) == 100 and len(loop.known) == 100 and loop.rng.bit_generator.state == state


def test_audit_order_honours_the_inspector_and_query_rechecks_it(synthetic):
    config = quick_config(repeats=1)
    X = torch.as_tensor(synthetic.X_train[:120])
    noisy = flip_labels(synthetic.y_train[:120], 0.3, synthetic.n_classes, rng=np.random.default_rng(0))
    learner = config.new_learner(X.shape[1:], synthetic.n_classes, seed=0, dtype=X.dtype).fit(X, noisy)
    probs = learner.predict_proba(X)
    margins = probs.max(1) - probs[np.arange(120), noisy]
    for inspector, params, expected in (("margin", {"threshold": 0.2}, margins > 0.2),
                                        ("margin", {"threshold": 0.6}, margins > 0.6),
                                        ("always", {}, probs.argmax(1) != noisy)):
        loop = CleaningLoop(learner, X, noisy, range(120), inspect=INSPECTORS.create(inspector, **params),
                            select=SELECTORS.create("top_fisher"), rng=np.random.default_rng(0))
        order = loop.audit_order()
        assert sorted(order) == sorted(np.flatnonzero(expected)) and len(order) > 0
        assert np.all(np.diff(margins[order]) <= 0)  # most suspicious first
        assert all(loop.query(i) is not None for i in order)
    quiet = CleaningLoop(learner, X, noisy, range(120), inspect=INSPECTORS.create("never"),
                         select=SELECTORS.create("top_fisher"), rng=np.random.default_rng(0))
    assert len(quiet.audit_order()) == 0 and quiet.query(int(order[0])) is None


def test_a_selector_that_needs_gradients_refuses_a_model_without_them():
    with pytest.raises(ModelError, match="needs a PyTorch model"):
        CleaningLoop(learner=None, X=torch.zeros(2, 1), labels=np.array([0, 1]), known=[0, 1],
                     inspect=INSPECTORS.create("margin"), select=SELECTORS.create("influence"),
                     rng=np.random.default_rng(0))


def test_noise_flips_exact_fraction_to_other_classes():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(5), 100)
    for kind in ("random", "pair"):
        noisy = flip_labels(y, 0.2, 5, kind=kind, rng=rng)
        assert np.sum(noisy != y) == 100 and noisy.min() >= 0 and noisy.max() < 5
        if kind == "pair":
            assert np.all(noisy[noisy != y] == (y[noisy != y] + 1) % 5)
    flipped_to = flip_labels(y, 0.9, 5, rng=rng)
    assert len(np.unique(flipped_to[flipped_to != y])) == 5  # uniform over the other classes


def _trained_loop(synthetic):
    """A loop over 150 synthetic examples (30% noise, all known) with its model trained."""
    config = quick_config(repeats=1)
    X = torch.as_tensor(synthetic.X_train[:150])
    noisy = flip_labels(synthetic.y_train[:150], 0.3, synthetic.n_classes, rng=np.random.default_rng(1))
    learner = config.new_learner(X.shape[1:], synthetic.n_classes, seed=0, dtype=X.dtype)
    loop = config.new_loop(learner, X, noisy, range(150), np.random.default_rng(0))
    loop.retrain()
    return loop, learner, X, noisy


def test_features_and_fim_are_cached_per_model_version(synthetic, monkeypatch):
    """On a frozen model a query costs no forward pass and no new FIM; any change of model empties the cache,
    and a cached ranking equals the uncached one."""
    import cincer.select as select

    loop, learner, X, noisy = _trained_loop(synthetic)
    rows, solvers = [], []
    real_features, real_solver = learner.features_and_probs, select.top_layer_solver
    monkeypatch.setattr(learner, "features_and_probs", lambda X: rows.append(len(X)) or real_features(X))
    monkeypatch.setattr(select, "top_layer_solver", lambda *a, **kw: solvers.append(1) or real_solver(*a, **kw))

    order = loop.audit_order()
    assert len(order) >= 3 and rows == [150]  # the audit's one forward pass over D ...
    first = loop.query(int(order[0]))
    assert rows == [150] and len(solvers) == 1  # ... serves the queries; one FIM
    for index in order[1:3]:
        query = loop.query(int(index))
        uncached = select.top_fisher_ranking(learner, X, loop.labels, int(index), query.ranking.indices,
                                             np.arange(150), truncate=DEFAULT_TRUNCATE)  # the loop's default
        np.testing.assert_array_equal(query.ranking.indices, uncached.indices)
        np.testing.assert_allclose(query.ranking.scores, uncached.scores, rtol=0,
                                   atol=1e-8 * np.abs(uncached.scores).max())  # other batches: float noise
    assert len(rows) == 1 + 2 and len(solvers) == 1 + 2  # only the uncached reference computed anything

    for change in (loop.retrain, lambda: learner.fit(X, noisy),
                   lambda: setattr(loop, "learner", learner)):
        rows.clear(), solvers.clear()
        change()
        loop.rank(first.index, first.prediction)
        assert len(rows) == 1 and len(solvers) == 1, change


def test_a_checked_example_is_never_asked_about_or_shown_again(synthetic):
    config = quick_config(repeats=1)
    X = torch.as_tensor(synthetic.X_train[:200])
    noisy = flip_labels(synthetic.y_train[:200], 0.3, synthetic.n_classes, rng=np.random.default_rng(2))
    learner = config.new_learner(X.shape[1:], synthetic.n_classes, seed=0, dtype=X.dtype).fit(X, noisy)
    loop = config.new_loop(learner, X, noisy, range(200), np.random.default_rng(0), skip_checked=True)
    order = loop.audit_order()
    first = loop.query(int(order[0]))
    shown = first.counterexample
    # the person confirms the counter-example's label and fixes nothing: both are now checked
    update = loop.apply(first, Answer(first.label, int(loop.labels[shown])))
    assert sorted(update.checked) == sorted([first.index, shown]) and not update.relabelled
    assert loop.query(first.index) is None
    for index in order[1:]:
        query = loop.query(int(index))
        if query is not None and query.prediction == first.prediction:
            assert shown not in query.ranking.indices  # the next best candidate instead
            break
    else:
        pytest.fail("no later query with the same predicted class")
    loop.undo(update)
    assert len(loop.checked) == 0 and loop.query(first.index) is not None
    # without skip_checked (the paper's protocol) nothing is skipped
    paper = config.new_loop(learner, X, noisy, range(200), np.random.default_rng(0), checked=[first.index])
    assert paper.query(first.index) is not None


def test_a_head_refit_keeps_the_features_and_the_curvature(synthetic, monkeypatch):
    import cincer.select as select

    loop, learner, X, noisy = _trained_loop(synthetic)
    loop.prepare()
    first = loop.query(int(loop.audit_order()[0]))
    loop.apply(first, Answer(int(synthetic.y_train[first.index])))
    rows, solvers = [], []
    real_features, real_solver = learner.features_and_probs, select.top_layer_solver
    monkeypatch.setattr(learner, "features_and_probs", lambda X: rows.append(len(X)) or real_features(X))
    monkeypatch.setattr(select, "top_layer_solver", lambda *a, **kw: solvers.append(1) or real_solver(*a, **kw))
    head_before = learner.model.head.weight.detach().clone()
    loop.retrain_head()
    assert not torch.equal(learner.model.head.weight, head_before)  # the head learned the new label
    order = loop.audit_order()
    np.testing.assert_allclose(  # probabilities follow the new head
        [loop.query(int(i)).probs for i in order[:3]], learner.predict_proba(X[order[:3]]), atol=1e-6)
    assert rows == [] and solvers == []  # no forward pass, no new FIM
    loop.retrain()
    loop.query(int(order[0]))
    assert rows and solvers  # a full retrain refreshes both


def test_a_snapshot_with_the_model_puts_everything_back(synthetic):
    """restore(snapshot(model=True)) after adds, answers, a retrain and a head refit: the same labels, D, random
    state, weights and model version, and the same queries as a twin loop that did none of it."""
    config = quick_config(repeats=1)
    X = torch.as_tensor(synthetic.X_train[:160])
    noisy = flip_labels(synthetic.y_train[:160], 0.3, synthetic.n_classes, rng=np.random.default_rng(1))

    def make():
        learner = config.new_learner(X.shape[1:], synthetic.n_classes, seed=0, dtype=X.dtype)
        loop = config.new_loop(learner, X[:120], noisy[:120], range(120), np.random.default_rng(0), skip_checked=True)
        loop.retrain()
        loop.prepare()
        return loop

    loop, twin = make(), make()
    state, version = loop.snapshot(model=True), loop.model_version
    weights = {k: v.clone() for k, v in loop.learner.model.state_dict().items()}
    for i in range(120, 150):
        loop.add(X[i], int(noisy[i]))
    first = loop.query(int(loop.audit_order()[0]))
    loop.apply(first, Answer(int(synthetic.y_train[first.index])))
    loop.rng.random(3)
    loop.retrain()
    loop.retrain_head()
    loop.restore(state)
    assert loop.model_version == version and len(loop.X) == 120 and list(loop.known) == list(range(120))
    assert len(loop.checked) == 0 and np.array_equal(loop.labels, noisy[:120])
    assert all(torch.equal(v, weights[k]) for k, v in loop.learner.model.state_dict().items())
    assert loop.rng.bit_generator.state == twin.rng.bit_generator.state
    for mine, theirs in zip(loop.audit_order()[:4], twin.audit_order()[:4]):
        a, b = loop.query(int(mine)), twin.query(int(theirs))
        assert a.index == b.index and np.array_equal(a.ranking.indices, b.ranking.indices)
        np.testing.assert_allclose(a.ranking.scores, b.ranking.scores, rtol=1e-9)
    with pytest.raises(RuntimeError, match="boom"), loop.transaction(model=True):
        loop.retrain()
        raise RuntimeError("boom")
    assert loop.model_version == version
    assert all(torch.equal(v, weights[k]) for k, v in loop.learner.model.state_dict().items())


def test_the_cache_holds_only_the_rows_asked_for():
    """A model with a huge penultimate layer (kernel_logreg on images: 614,656 features) must not get a cache
    the size of the whole pool: rows are stored as they are asked for."""
    from cincer.select import ModelCache

    class Features:
        def features_and_probs(self, X):
            return X.double() * 2, torch.softmax(X[:, :2].double(), dim=1)

    X = torch.arange(30_000.0).reshape(10_000, 3)
    cache = ModelCache()
    H, P = cache.features(Features(), X, np.array([5, 9_000, 5, 42]), version=1)
    torch.testing.assert_close(H, X[[5, 9_000, 5, 42]].double() * 2)
    H, _ = cache.features(Features(), X, np.array([42, 7]), version=1)
    torch.testing.assert_close(H, X[[42, 7]].double() * 2)
    assert len(cache._H) <= 8  # rows for the 4 distinct examples asked for, not for 10,000
    assert cache.probs(9_000, version=1) is not None and cache.probs(1, version=1) is None
    cache.features(Features(), X, np.array([1]), version=2)  # a new model: emptied
    assert cache.probs(9_000, version=2) is None
