"""Label-noise kinds of the original code: how many labels are wrong, which ones, and to what; the published
``random`` / ``pair`` draws unchanged; every kind runs from the command line."""

import json

import numpy as np
import pytest
import torch

from cincer.cli import main
from cincer.data import MARGIN_KINDS, NOISE_KINDS, NOISE_NEEDS, flip_labels, load_dataset, probability_margins
from cincer.errors import CincerError
from cincer.experiments.simulate import RunConfig, clean_margins, draw_repeat
from cincer.models import TrainConfig

NEW_KINDS = ("max_margin", "min_margin", "min_max_margin", "max_margin_cluster", "outlier")


def legacy_flip_labels(y, rate, n_classes, kind, rng):
    """``flip_labels`` as published (before the data-dependent kinds), kept here verbatim as the reference."""
    y = np.asarray(y, dtype=np.int64)
    noisy = y.copy()
    flip = rng.choice(len(y), size=int(round(rate * len(y))), replace=False)
    if kind == "random":
        offset = rng.integers(1, n_classes, size=len(flip))
    else:
        offset = np.ones(len(flip), dtype=np.int64)
    noisy[flip] = (y[flip] + offset) % n_classes
    return noisy


def problem(n_per_class=50, n_classes=4, seed=0):
    """Labels, 2-D inputs (one blob per class) and arbitrary distinct margins."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    centres = 10.0 * np.stack([np.cos(np.arange(n_classes)), np.sin(np.arange(n_classes))], axis=1)
    X = centres[y] + rng.normal(size=(len(y), 2))
    margins = rng.permutation(len(y)) / len(y)
    return y, X, margins


def test_the_kinds_and_what_they_need():
    assert ("random", "pair", *NEW_KINDS) == NOISE_KINDS
    assert set(MARGIN_KINDS) == {"max_margin", "min_margin", "min_max_margin", "max_margin_cluster"}
    assert NOISE_NEEDS["outlier"] == ("X",) and "X" in NOISE_NEEDS["max_margin_cluster"]


@pytest.mark.parametrize("kind", NOISE_KINDS)
@pytest.mark.parametrize("rate", [0.0, 0.07, 0.2, 0.45])
def test_every_kind_flips_exactly_the_requested_number_to_another_class(kind, rate):
    y, X, margins = problem()
    noisy = flip_labels(y, rate, 4, kind=kind, rng=np.random.default_rng(1), X=X, margins=margins)
    assert noisy.dtype == np.int64 and noisy.shape == y.shape
    assert np.sum(noisy != y) == round(rate * len(y))
    assert noisy.min() >= 0 and noisy.max() < 4
    # the same seed gives the same labels
    again = flip_labels(y, rate, 4, kind=kind, rng=np.random.default_rng(1), X=X, margins=margins)
    assert np.array_equal(noisy, again)


@pytest.mark.parametrize("kind", ["max_margin", "min_margin", "min_max_margin", "outlier"])
def test_flipped_labels_move_uniformly_to_the_other_classes(kind):
    y, X, margins = problem(n_per_class=200, n_classes=3)
    rng = np.random.default_rng(0)
    moves = np.concatenate([(noisy - y)[noisy != y] % 3
                            for noisy in (flip_labels(y, 0.3, 3, kind=kind, rng=rng, X=X, margins=margins)
                                          for _ in range(5))])
    share = np.mean(moves == 1)  # offsets 1 and 2 about equally often
    assert set(moves) == {1, 2} and 0.4 < share < 0.6


def test_random_and_pair_are_the_published_draws():
    y = np.repeat(np.arange(5), 40)
    X, margins = np.zeros((len(y), 3)), np.ones(len(y))
    for kind in ("random", "pair"):
        for seed in range(5):
            expected = legacy_flip_labels(y, 0.3, 5, kind, np.random.default_rng(seed))
            assert np.array_equal(flip_labels(y, 0.3, 5, kind=kind, rng=np.random.default_rng(seed)), expected)
            # the data-dependent arguments change nothing for them
            given = flip_labels(y, 0.3, 5, kind=kind, rng=np.random.default_rng(seed), X=X, margins=margins)
            assert np.array_equal(given, expected)


@pytest.mark.parametrize("kind", ["random", "pair"])
def test_draw_repeat_keeps_the_published_noise_known_set_and_stream(kind):
    data = load_dataset("breast", seed=0)
    config = RunConfig(dataset="breast", noise_kind=kind, noise=0.2, known=50, rounds=10, seed=4)
    draw = draw_repeat(config, data, repeat=2)
    rng = np.random.default_rng(config.seed + 2)
    expected = legacy_flip_labels(data.y_train, 0.2, data.n_classes, kind, rng)
    order = rng.permutation(len(expected))
    assert np.array_equal(draw.noisy, expected)
    assert np.array_equal(draw.known, order[:50]) and np.array_equal(draw.stream, order[50:60])
    same_seed = flip_labels(data.y_train, 0.2, data.n_classes, kind=kind, rng=np.random.default_rng(6))
    assert np.array_equal(draw.noisy, same_seed)


def test_margins_are_max_minus_min_probability():
    probs = np.array([[0.7, 0.2, 0.1], [0.34, 0.33, 0.33], [1.0, 0.0, 0.0]])
    assert np.allclose(probability_margins(probs), [0.6, 0.01, 1.0])


def test_max_min_and_min_max_margin_flip_the_planted_examples():
    y, _, _ = problem(n_per_class=25)  # 100 examples
    margins = np.full(len(y), 0.5)
    top, bottom = [3, 30, 57, 80, 99, 11, 42, 64], [0, 25, 50, 75, 13, 38, 63, 88]
    margins[top] = 0.9 + np.arange(8) / 100       # surest
    margins[bottom] = 0.1 - np.arange(8) / 100    # least sure
    rng = np.random.default_rng(0)
    flipped = {kind: set(np.flatnonzero(flip_labels(y, 0.08, 4, kind=kind, rng=rng, margins=margins) != y))
               for kind in ("max_margin", "min_margin", "min_max_margin")}
    assert flipped["max_margin"] == set(top)
    assert flipped["min_margin"] == set(bottom)
    # half and half: the 4 least sure (the smallest margins come last in `bottom`) and the 4 surest
    assert flipped["min_max_margin"] == set(bottom[4:]) | set(top[4:])
    odd = np.flatnonzero(flip_labels(y, 0.07, 4, kind="min_max_margin", rng=rng, margins=margins) != y)
    assert set(odd) == set(bottom[4:]) | set(top[5:])  # 7 flips: round(3.5) = 4 least sure, 3 surest


def cluster_problem():
    """Three classes far apart; class 0 has a tight blob of 10 around its surest example and 20 further off."""
    rng = np.random.default_rng(0)
    blob = rng.normal(scale=0.1, size=(10, 2))
    rest0 = np.array([20.0, 0.0]) + rng.normal(size=(20, 2))
    class1 = np.array([0.0, 50.0]) + rng.normal(size=(30, 2))
    class2 = np.array([50.0, 50.0]) + rng.normal(size=(30, 2))
    X = np.concatenate([blob, rest0, class1, class2])
    y = np.repeat([0, 0, 1, 2], [10, 20, 30, 30])
    margins = np.full(len(y), 0.5)
    margins[4] = 0.99        # class 0's surest: inside the blob
    margins[75] = 0.98       # class 2 next
    margins[40] = 0.97       # class 1 last
    return y, X, margins


def test_a_cluster_is_flipped_together_with_one_shared_wrong_label():
    y, X, margins = cluster_problem()
    targets = set()
    for seed in range(10):
        noisy = flip_labels(y, 10 / 90, 3, kind="max_margin_cluster", rng=np.random.default_rng(seed), X=X,
                            margins=margins)
        flipped = np.flatnonzero(noisy != y)
        assert np.array_equal(flipped, np.arange(10))  # exactly the blob around the surest example
        assert len(set(noisy[flipped])) == 1 and noisy[0] != 0
        targets.add(int(noisy[0]))
    assert targets == {1, 2}  # the shared label is drawn among the other classes


def test_clusters_take_turns_by_class_and_the_last_is_cut():
    y, X, margins = cluster_problem()
    noisy = flip_labels(y, 25 / 90, 3, kind="max_margin_cluster", rng=np.random.default_rng(0), X=X,
                        margins=margins)
    flipped = noisy != y
    # clusters of max(10, ceil(25 / 3)) = 10: class 0, then class 2, then 5 of class 1 (cut)
    assert [int(flipped[y == c].sum()) for c in range(3)] == [10, 5, 10]
    for c in range(3):
        assert len(set(noisy[flipped & (y == c)])) == 1  # one wrong label per cluster
    # class 1's five are the nearest to its surest example
    members = np.flatnonzero(y == 1)
    nearest = members[np.argsort(np.linalg.norm(X[members] - X[40], axis=1))[:5]]
    assert set(np.flatnonzero(flipped & (y == 1))) == set(nearest)
    # more than one turn per class once every class had one
    many = flip_labels(y, 0.6, 3, kind="max_margin_cluster", rng=np.random.default_rng(0), X=X, margins=margins)
    assert np.sum(many != y) == 54


def test_outlier_prefers_isolated_points():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(100, 2)), [[30.0, 30.0]]])
    y = rng.integers(0, 3, size=len(X))
    hits = np.zeros(len(X))
    for seed in range(40):
        noisy = flip_labels(y, 0.05, 3, kind="outlier", rng=np.random.default_rng(seed), X=X)
        hits += noisy != y
    assert hits[100] / 40 >= 0.95          # the planted far-away point: nearly always
    assert hits[:100].mean() / 40 < 0.1    # the others: about 4 of 100 each time


def test_outlier_works_on_images_and_big_data_without_an_n_by_n_matrix():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12_000, 1, 2, 2)).astype(np.float32)   # 12,000^2 float64 would be 1.1 GB
    y = rng.integers(0, 10, size=len(X))
    noisy = flip_labels(y, 0.1, 10, kind="outlier", rng=rng, X=X)
    assert np.sum(noisy != y) == 1200


@pytest.mark.parametrize("kind,missing,message", [
    ("outlier", "X", "needs the inputs X"),
    ("max_margin_cluster", "X", "needs the inputs X"),
    ("max_margin_cluster", "margins", "needs the margins"),
    ("max_margin", "margins", "needs the margins"),
    ("min_margin", "margins", "needs the margins"),
    ("min_max_margin", "margins", "needs the margins"),
])
def test_a_missing_input_is_a_one_line_error(kind, missing, message):
    y, X, margins = problem()
    given = {"X": X, "margins": margins}
    del given[missing]
    with pytest.raises(CincerError, match=message) as err:
        flip_labels(y, 0.2, 4, kind=kind, rng=np.random.default_rng(0), **given)
    assert "\n" not in str(err.value) and kind in str(err.value)


def test_nothing_to_flip_needs_nothing():
    y, _, _ = problem()
    for kind in NEW_KINDS:
        assert np.array_equal(flip_labels(y, 0.0, 4, kind=kind, rng=np.random.default_rng(0)), y)
    data = load_dataset("iris", seed=0)
    config = RunConfig(dataset="iris", model="logreg", noise_kind="max_margin_cluster", noise=0.0, known=20, rounds=5)
    assert np.array_equal(draw_repeat(config, data, repeat=0).noisy, data.y_train)  # no margin model trained


def test_inputs_of_the_wrong_length_are_refused():
    y, X, margins = problem()
    with pytest.raises(CincerError, match="X has 10 rows for 200 labels"):
        flip_labels(y, 0.2, 4, kind="outlier", rng=np.random.default_rng(0), X=X[:10])
    with pytest.raises(CincerError, match="margins has 3 rows"):
        flip_labels(y, 0.2, 4, kind="max_margin", rng=np.random.default_rng(0), margins=margins[:3])


def test_draw_repeat_ranks_by_a_model_trained_on_the_clean_labels():
    data = load_dataset("iris", seed=0)
    config = RunConfig(dataset="iris", model="logreg", noise_kind="max_margin", noise=0.1, known=20, rounds=5,
                       train=TrainConfig(epochs=1), seed=2)
    state = torch.random.get_rng_state()
    draw = draw_repeat(config, data, repeat=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the margin model leaves torch's state alone
    margins = clean_margins(config, data, seed=3)
    flipped = np.flatnonzero(draw.noisy != data.y_train)
    assert len(flipped) == round(0.1 * len(data.y_train))
    assert set(flipped) == set(np.argsort(-margins, kind="stable")[:len(flipped)])
    assert np.array_equal(draw_repeat(config, data, repeat=1).noisy, draw.noisy)  # reproducible
    # a different repeat: a different seed for the model and for the new labels, still exactly k wrong
    other = draw_repeat(config, data, repeat=2)
    assert np.sum(other.noisy != data.y_train) == len(flipped)


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_each_new_kind_runs_from_the_command_line(kind, tmp_path, capsys):
    out = tmp_path / kind
    code = main(["run", "--dataset", "breast", "--noise-kind", kind, "--rounds", "2", "--repeats", "1",
                 "--epochs", "1", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["config"]["noise_kind"] == kind


def test_the_help_lists_every_kind(capsys):
    assert main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for kind in NOISE_KINDS:
        assert kind in text, kind
