"""Counter-example selectors: a planted mislabelled counter-example is found; rankings are well formed."""

import numpy as np
import pytest
import torch

from cincer.errors import CincerError
from cincer.influence import InfluenceConfig
from cincer.inspect import INSPECTORS
from cincer.learners import TorchLearner
from cincer.loop import CleaningLoop
from cincer.models import TrainConfig, build_model
from cincer.select import SELECTORS, candidates_for

PLANTED, TARGET = 80, 81


@pytest.fixture(scope="module")
def planted_case():
    """Two blobs; one point deep in blob B labelled A (the planted mislabelled example), and a
    suspicious point on A's side of the boundary labelled B. Candidates: every known A."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal([-1, 0], 0.3, size=(40, 2)), rng.normal([1, 0], 0.3, size=(40, 2)),
                   [[0.6, 0.0]], [[-0.2, 0.0]]])
    y = np.array([0] * 40 + [1] * 40 + [0] + [1])
    X = torch.as_tensor(X)
    learner = TorchLearner(build_model("logreg", (2,), 2, seed=0), TrainConfig(epochs=300, lr=0.05), seed=0)
    learner.fit(X[:81], y[:81])
    assert learner.predict_proba(X[[TARGET]])[0].argmax() == 0  # the model disagrees with label B
    loop = CleaningLoop(learner, X, y, np.arange(82), inspect=INSPECTORS.create("always"),
                        select=SELECTORS.create("none"), rng=rng)
    return loop.context(TARGET, 0)


@pytest.mark.parametrize("name", ["top_fisher", "full_fisher", "practical_fisher", "influence"])
def test_planted_mislabelled_counterexample_ranks_first(planted_case, name):
    ranking = SELECTORS[name]()(planted_case)
    assert ranking.best == PLANTED


def test_top_fisher_with_paper_fim_sample_and_damping_still_finds_it(planted_case):
    assert SELECTORS["top_fisher"](fim_samples=30)(planted_case).best == PLANTED
    assert SELECTORS["top_fisher"](damping=1e-3)(planted_case).best == PLANTED


def test_nearest_is_input_space_1nn(planted_case):
    ctx = planted_case
    ranking = SELECTORS["nearest"]()(ctx)
    dist = np.linalg.norm(ctx.X[ctx.candidates].numpy() - ctx.X[TARGET].numpy(), axis=1)
    assert ranking.best == ctx.candidates[np.argmin(dist)]


@pytest.mark.parametrize("name", ["top_fisher", "practical_fisher", "nearest", "random", "drop_ce"])
def test_ranking_is_a_sorted_permutation_of_the_candidates(planted_case, name):
    ranking = SELECTORS[name]()(planted_case)
    assert sorted(ranking.indices) == sorted(planted_case.candidates)
    assert np.all(np.diff(ranking.scores) <= 0)


def test_selectors_declare_their_policy_and_needs():
    assert SELECTORS["drop_ce"]().policy == "drop" and SELECTORS["none"]().policy == "none"
    assert SELECTORS["top_fisher"]().policy == "ask" and not SELECTORS["top_fisher"]().needs_gradients
    for name in ("full_fisher", "practical_fisher", "influence"):
        assert SELECTORS[name]().needs_gradients, name


def test_full_fisher_refuses_large_models(planted_case):
    with pytest.raises(CincerError, match="full_fisher"):
        SELECTORS["full_fisher"](max_params=3)(planted_case)


def test_candidates_are_known_examples_with_the_predicted_label():
    labels = np.array([0, 1, 1, 0, 1, 1])
    assert list(candidates_for(labels, np.array([0, 1, 2, 4, 5]), target=5, predicted=1)) == [1, 2, 4]


def test_factories_refuse_parameters_they_do_not_take():
    with pytest.raises(CincerError, match="unknown parameter 'fim_sample' .*it takes: fim_samples, damping"):
        SELECTORS["top_fisher"](fim_sample=30)
    with pytest.raises(CincerError, match="selector 'nearest'.*it takes: none"):
        SELECTORS.create("nearest", damping=1.0)
    with pytest.raises(CincerError, match="--if-solver must be one of lissa, cg, exact"):
        SELECTORS.create("influence", config=InfluenceConfig(solver="nope"))
    with pytest.raises(CincerError, match="damping must be >= 0"):
        SELECTORS.create("top_fisher", damping=-1.0)
