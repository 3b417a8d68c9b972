"""Loop invariants on short simulated runs."""

import numpy as np
import pytest

from cincer.data import flip_labels, load_dataset
from cincer.loop import Answer, CleaningLoop, OracleAnnotator, Query
from cincer.models import TrainConfig
from cincer.select import Ranking
from cincer.simulate import RunConfig, run


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


def test_apply_relabels_and_drop_policy():
    loop = CleaningLoop(learner=None, X=None, labels=np.array([0, 1, 1, 0]), known=[0, 1, 2, 3],
                        inspect=None, select=None, rng=np.random.default_rng(0))
    query = Query(3, 0, 1, np.array([0.1, 0.9]), Ranking(np.array([2, 1]), np.array([2.0, 1.0])))
    update = loop.apply(query, Answer(suspicious_label=1, counter_label=0))
    assert update.relabelled == {3: (0, 1), 2: (1, 0)} and list(loop.labels) == [0, 1, 0, 1]
    drop = Query(0, 0, 1, np.array([0.1, 0.9]), Ranking(np.array([1]), np.array([1.0])), policy="drop")
    assert loop.apply(drop, Answer(suspicious_label=0)).dropped == [1] and 1 not in loop.known
    # the caller's label array is never modified
    labels = np.array([0, 1])
    CleaningLoop(None, None, labels, [0], inspect=None, select=None, rng=None).labels[0] = 1
    assert labels[0] == 0


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
