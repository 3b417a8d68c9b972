"""The original code's other selectors: nearest_fisher, nearest_if, approx_fisher, block_fisher.

Their FIMs (diagonal, layer-wise blocks) against the dense FIM; the restricted rankings against the
unrestricted ones; the planted mislabelled counter-example of test_select.py; options from the command line.
"""

import inspect

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from torch import nn

from cincer.api import Cleaner
from cincer.cleaning import SELECTOR_OPTIONS, CleaningConfig
from cincer.cli import main
from cincer.errors import CincerError, ModelError
from cincer.fisher import (
    BlockFisherSolver,
    DiagonalFisherSolver,
    TopLayerFisher,
    fisher_blocks,
    fisher_diagonal,
    full_fisher,
    layer_blocks,
)
from cincer.influence import InfluenceConfig
from cincer.inspect import INSPECTORS
from cincer.learners import TorchLearner
from cincer.loop import CleaningLoop
from cincer.models import TrainConfig, build_model
from cincer.models.nets import Classifier
from cincer.select import SELECTORS, input_distances

PLANTED, TARGET = 80, 81
NEW = ("nearest_fisher", "nearest_if", "approx_fisher", "block_fisher")
TOL = 1e-10


def planted(model):
    """test_select.py's planted case (two blobs; a point deep in blob B labelled A; a suspicious point on
    A's side labelled B; candidates: every known A) with ``model`` (logreg: one layer; fullnet: three)."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal([-1, 0], 0.3, size=(40, 2)), rng.normal([1, 0], 0.3, size=(40, 2)),
                   [[0.6, 0.0]], [[-0.2, 0.0]]])
    y = np.array([0] * 40 + [1] * 40 + [0] + [1])
    X = torch.as_tensor(X)
    learner = TorchLearner(build_model(model, (2,), 2, seed=0), TrainConfig(epochs=300, lr=0.05), seed=0)
    learner.fit(X[:81], y[:81])
    assert learner.predict_proba(X[[TARGET]])[0].argmax() == 0  # the model disagrees with label B
    loop = CleaningLoop(learner, X, y, np.arange(82), inspect=INSPECTORS.create("always"),
                        select=SELECTORS.create("none"), rng=rng)
    return loop.context(TARGET, 0)


@pytest.fixture(scope="module")
def planted_case():
    return planted("logreg")


@pytest.fixture(scope="module")
def planted_deep():
    return planted("fullnet")


@pytest.fixture(scope="module")
def small_net():
    """A random 3-layer tanh net (3 inputs, 3 classes; 67 parameters) and 9 inputs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = Classifier(nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh()),
                           nn.Linear(4, 3)).double()
    X = torch.randn(9, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, X


def scores_by_index(ranking):
    return dict(zip(ranking.indices.tolist(), ranking.scores.tolist()))


# --------------------------------------------------------------------------- the FIMs against the dense one

@pytest.mark.parametrize("chunk", [None, 2])
def test_fisher_diagonal_is_the_diagonal_of_the_dense_fim(small_net, chunk):
    model, X = small_net
    dense = full_fisher(model, X).dense()
    torch.testing.assert_close(fisher_diagonal(model, X, chunk=chunk), torch.diagonal(dense), atol=TOL, rtol=0)


def test_layer_blocks_pair_each_weight_with_its_bias_and_cover_every_parameter(small_net):
    model, _ = small_net
    blocks = layer_blocks(model)
    assert [name for name, _ in blocks] == ["body.0", "body.2", "head"]
    assert [s.stop - s.start for _, s in blocks] == [3 * 6 + 6, 6 * 4 + 4, 4 * 3 + 3]
    assert blocks[0][1].start == 0 and all(a.stop == b.start for (_, a), (_, b) in zip(blocks, blocks[1:]))
    assert blocks[-1][1].stop == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("chunk", [None, 4])
def test_fisher_blocks_are_the_diagonal_blocks_of_the_dense_fim(small_net, chunk):
    model, X = small_net
    dense = full_fisher(model, X).dense()
    blocks = layer_blocks(model)
    matrices = fisher_blocks(model, X, blocks, chunk=chunk)
    for (name, s), F in zip(blocks, matrices):
        torch.testing.assert_close(F, dense[s, s], atol=TOL, rtol=0, msg=name)
    assert torch.count_nonzero(torch.block_diag(*matrices) - dense) > 0  # the off-diagonal blocks are dropped


def test_the_head_block_is_the_top_layer_fim(small_net):
    """Weight and bias together: the head's block is exactly top_fisher's FIM (up to the order of entries)."""
    model, X = small_net
    (_, s), = [(name, s) for name, s in layer_blocks(model) if name == "head"]
    F = fisher_blocks(model, X, [("head", s)])[0]
    with torch.no_grad():
        H = model.features(X)
        P = torch.softmax(model.head(H), dim=1)
    C, A = P.shape[1], H.shape[1] + 1
    # flattened parameters: head.weight (C x H, row-major) then head.bias; top layer: [W_c | b_c] per class
    order = [c * (A - 1) + a if a < A - 1 else C * (A - 1) + c for c in range(C) for a in range(A)]
    torch.testing.assert_close(F[order][:, order], TopLayerFisher(H, P).dense(), atol=TOL, rtol=0)


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_diagonal_solver_inverts_the_diagonal(small_net, damping):
    model, X = small_net
    diag = fisher_diagonal(model, X)
    solver = DiagonalFisherSolver(diag, damping=damping)
    torch.testing.assert_close(solver.dense(), torch.diag(diag))
    v = torch.randn(len(diag), 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dense = torch.diag(diag) + damping * torch.eye(len(diag), dtype=diag.dtype)
    expected = torch.linalg.pinv(dense, rtol=1e-10, hermitian=True) @ v
    torch.testing.assert_close(solver.solve(v), expected, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(solver.solve(v[:, 0]), expected[:, 0], atol=1e-8, rtol=1e-8)


def test_diagonal_pseudo_inverse_sends_zero_entries_to_zero():
    solver = DiagonalFisherSolver(torch.tensor([2.0, 0.0, 4.0, 1e-20], dtype=torch.float64))
    assert solver.solve(torch.ones(4, dtype=torch.float64)).tolist() == [0.5, 0.0, 0.25, 0.0]
    damped = DiagonalFisherSolver(torch.tensor([2.0, 0.0], dtype=torch.float64), damping=1.0)
    assert damped.solve(torch.ones(2, dtype=torch.float64)).tolist() == [1 / 3, 1.0]


@pytest.mark.parametrize("damping", [0.0, 0.3])
@pytest.mark.parametrize("factorization", ["auto", "eigh"])
def test_block_solver_inverts_each_block(small_net, damping, factorization):
    model, X = small_net
    blocks = layer_blocks(model)
    matrices = fisher_blocks(model, X, blocks)
    solver = BlockFisherSolver(blocks, matrices, damping=damping, factorization=factorization)
    torch.testing.assert_close(solver.dense(), torch.block_diag(*matrices))
    inverse = torch.block_diag(*[
        torch.linalg.pinv(F, rtol=1e-10, hermitian=True) if damping == 0
        else torch.linalg.inv(F + damping * torch.eye(len(F), dtype=F.dtype)) for F in matrices])
    v = torch.randn(len(inverse), 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = inverse @ v
    scale = expected.abs().max().item()
    torch.testing.assert_close(solver.solve(v), expected, atol=1e-7 * scale, rtol=0)
    torch.testing.assert_close(solver.solve(v[:, 1]), expected[:, 1], atol=1e-7 * scale, rtol=0)


def test_block_solver_refuses_mismatched_blocks(small_net):
    model, X = small_net
    blocks = layer_blocks(model)
    matrices = fisher_blocks(model, X, blocks)
    with pytest.raises(CincerError, match="block 'head' spans 15 parameters"):
        BlockFisherSolver(blocks, [*matrices[:-1], matrices[-1][:3, :3]])
    with pytest.raises(CincerError, match="damping must be >= 0"):
        BlockFisherSolver(blocks, matrices, damping=-1.0)


# --------------------------------------------------------------------------- the planted counter-example

@pytest.mark.parametrize("name, params", [
    ("approx_fisher", {}), ("approx_fisher", {"damping": 1e-3}), ("approx_fisher", {"fim_samples": 60}),
    ("block_fisher", {}), ("block_fisher", {"block_damping": 0.0}), ("block_fisher", {"fim_samples": 60}),
    ("nearest_fisher", {"radius": float("inf")}), ("nearest_if", {"n_nearest": 100}),
])
@pytest.mark.parametrize("case", ["planted_case", "planted_deep"])
def test_planted_mislabelled_counterexample_ranks_first(name, params, case, request):
    ctx = request.getfixturevalue(case)
    assert SELECTORS[name](**params)(ctx).best == PLANTED


def test_one_layer_block_fisher_is_full_fisher(planted_case):
    """logreg has one layer: its block FIM is its full FIM, so without damping the rankings agree."""
    block = SELECTORS["block_fisher"](block_damping=0.0)(planted_case)
    full = SELECTORS["full_fisher"]()(planted_case)
    np.testing.assert_array_equal(block.indices, full.indices)
    np.testing.assert_allclose(block.scores, full.scores, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name, params", [
    ("nearest_fisher", {}), ("nearest_fisher", {"radius": 0.5}), ("nearest_fisher", {"radius": 0.0}),
    ("nearest_if", {}), ("nearest_if", {"n_nearest": 5}), ("approx_fisher", {}), ("block_fisher", {}),
])
def test_ranking_is_a_sorted_permutation_of_the_candidates(planted_case, name, params):
    ranking = SELECTORS[name](**params)(planted_case)
    assert sorted(ranking.indices) == sorted(planted_case.candidates)
    assert np.all(np.isfinite(ranking.scores)) and np.all(np.diff(ranking.scores) <= 0)


# --------------------------------------------------------------------------- restricted to the nearest candidates

@pytest.mark.parametrize("radius", [None, float("inf"), 1e6])
@pytest.mark.parametrize("options", [{}, {"damping": 1e-3}, {"curvature": "ekfac"}])
def test_nearest_fisher_without_a_binding_radius_is_top_fisher(planted_case, radius, options):
    ours = SELECTORS["nearest_fisher"](radius=radius, **options)(planted_case)
    top = SELECTORS["top_fisher"](**options)(planted_case)
    np.testing.assert_array_equal(ours.indices, top.indices)
    np.testing.assert_array_equal(ours.scores, top.scores)


@pytest.mark.parametrize("radius", [0.0, 1e-9])
def test_nearest_fisher_with_no_candidate_in_the_radius_puts_the_nearest_first(planted_case, radius):
    ctx = planted_case
    dist = input_distances(ctx)
    assert dist.min() > radius
    ranking = SELECTORS["nearest_fisher"](radius=radius)(ctx)
    assert ranking.best == ctx.candidates[np.argmin(dist)]
    assert ranking.best == SELECTORS["nearest"]()(ctx).best
    by_index = dict(zip(ctx.candidates.tolist(), dist))
    assert np.all(np.diff([by_index[i] for i in ranking.indices]) >= 0)  # then the others by distance
    assert ranking.scores[0] == pytest.approx(scores_by_index(SELECTORS["top_fisher"]()(ctx))[ranking.best])


def test_nearest_fisher_ranks_the_candidates_in_the_radius_by_support_then_the_others_by_distance(planted_case):
    ctx = planted_case
    dist = dict(zip(ctx.candidates.tolist(), input_distances(ctx)))
    radius = 0.5
    inside = {i for i, d in dist.items() if d <= radius}
    assert 1 < len(inside) < len(ctx.candidates)
    ranking = SELECTORS["nearest_fisher"](radius=radius)(ctx)
    head, tail = ranking.indices[:len(inside)].tolist(), ranking.indices[len(inside):].tolist()
    assert set(head) == inside
    top = scores_by_index(SELECTORS["top_fisher"]()(ctx))  # the FIM over D does not depend on the candidates
    np.testing.assert_allclose(ranking.scores[:len(inside)], [top[i] for i in head], rtol=1e-10, atol=1e-12)
    assert np.all(np.diff([dist[i] for i in tail]) >= 0)
    assert PLANTED not in inside and PLANTED in tail  # far away: not a counter-example within the radius


def test_nearest_if_over_every_candidate_is_influence(planted_case):
    ctx = planted_case
    for config in (None, InfluenceConfig(solver="exact", damping=0.01)):
        ours = SELECTORS["nearest_if"](n_nearest=len(ctx.candidates), config=config)(ctx)
        reference = SELECTORS["influence"](config=config)(ctx)
        np.testing.assert_array_equal(ours.indices, reference.indices)
        np.testing.assert_array_equal(ours.scores, reference.scores)


def test_nearest_if_ranks_the_nearest_by_influence_then_the_others_by_distance(planted_case):
    ctx = planted_case
    dist = input_distances(ctx)
    n = 7
    nearest = set(ctx.candidates[np.argsort(dist, kind="stable")[:n]].tolist())
    ranking = SELECTORS["nearest_if"](n_nearest=n)(ctx)
    head, tail = ranking.indices[:n].tolist(), ranking.indices[n:].tolist()
    assert set(head) == nearest and ranking.best != PLANTED
    influence = scores_by_index(SELECTORS["influence"]()(ctx))
    np.testing.assert_allclose(ranking.scores[:n], [influence[i] for i in head], rtol=1e-10, atol=1e-12)
    by_index = dict(zip(ctx.candidates.tolist(), dist))
    assert np.all(np.diff([by_index[i] for i in tail]) >= 0)


# --------------------------------------------------------------------------- options and declarations

def test_selectors_declare_their_needs():
    assert not SELECTORS["nearest_fisher"]().needs_gradients
    for name in NEW:
        assert SELECTORS[name]().policy == "ask"
    for name in ("nearest_if", "approx_fisher", "block_fisher"):
        assert SELECTORS[name]().needs_gradients, name


def test_block_fisher_refuses_a_layer_too_large_to_hold(planted_deep):
    with pytest.raises(CincerError, match="block_fisher") as err:
        SELECTORS["block_fisher"](max_block=200)(planted_deep)
    message = str(err.value)
    assert "\n" not in message and "'body.4'" in message and "2080 parameters" in message and "200" in message
    assert SELECTORS["block_fisher"](max_block=2080)(planted_deep).best == PLANTED


@pytest.mark.parametrize("name, params, message", [
    ("nearest_fisher", {"nfisher_radius": 1.0}, "unknown parameter 'nfisher_radius' .*it takes: radius"),
    ("nearest_if", {"damping": 1.0}, "selector 'nearest_if': unknown parameter 'damping'"),
    ("approx_fisher", {"block_damping": 0.1}, "unknown parameter 'block_damping' .*it takes: fim_samples, damping"),
    ("block_fisher", {"damping": 0.1}, "unknown parameter 'damping' .*it takes: fim_samples, block_damping, max_block"),
    ("nearest_fisher", {"radius": -1.0}, "radius must be >= 0"),
    ("nearest_fisher", {"radius": float("nan")}, "radius must be >= 0"),
    ("nearest_fisher", {"curvature": "nope"}, "curvature must be one of"),
    ("nearest_if", {"n_nearest": 0}, "n_nearest must be a positive integer"),
    ("nearest_if", {"n_nearest": 2.5}, "n_nearest must be a positive integer"),
    ("nearest_if", {"config": InfluenceConfig(solver="nope")}, "--if-solver must be one of"),
    ("approx_fisher", {"damping": -1.0}, "damping must be >= 0"),
    ("approx_fisher", {"fim_samples": 0}, "fim_samples must be a positive integer"),
    ("block_fisher", {"block_damping": -1.0}, "block_damping must be >= 0"),
    ("block_fisher", {"max_block": 0}, "max_block must be at least 1"),
])
def test_factories_refuse_parameters_they_do_not_take_or_bad_values(name, params, message):
    with pytest.raises(CincerError, match=message):
        SELECTORS.create(name, **params)


def test_config_defaults_are_the_factories_defaults():
    """An option at its config default means the factory's default, so leaving it out changes nothing."""
    defaults = CleaningConfig()
    for name in SELECTORS:
        parameters = inspect.signature(SELECTORS[name]).parameters
        for field, param in SELECTOR_OPTIONS.items():
            if param in parameters and param != "config":
                assert getattr(defaults, field) == parameters[param].default, (name, field)


def test_config_maps_the_options_to_the_selectors():
    config = CleaningConfig(selector="nearest_fisher", nfisher_radius=0.5, fim_samples=30)
    assert config.selector_params() == {"radius": 0.5, "fim_samples": 30, "damping": 0.0}
    assert CleaningConfig(selector="nearest_if", n_nearest=7).selector_params()["n_nearest"] == 7
    assert CleaningConfig(selector="block_fisher", block_damping=0.0, max_block=99).selector_params() == {
        "block_damping": 0.0, "max_block": 99}  # None (fim_samples) means the factory's own default
    assert CleaningConfig(selector="approx_fisher", damping=0.1).selector_params() == {"damping": 0.1}
    with pytest.raises(CincerError, match="--nfisher-radius: not an option of .* selector 'top_fisher'"):
        CleaningConfig(selector="top_fisher", nfisher_radius=0.5).validate()
    with pytest.raises(CincerError, match="--damping: not an option of .* selector 'block_fisher'"):
        CleaningConfig(selector="block_fisher", damping=0.5).validate()
    with pytest.raises(CincerError, match="--nfisher-radius must be at least 0"):
        CleaningConfig(selector="nearest_fisher", nfisher_radius=-1.0).validate()


# --------------------------------------------------------------------------- clients

RUN = ["run", "--dataset", "iris", "--model", "fullnet", "--rounds", "3", "--repeats", "1", "--epochs", "2",
       "--quiet"]


@pytest.mark.parametrize("args", [[name] for name in NEW] + [
    ["nearest_fisher", "--nfisher-radius", "0.5"], ["nearest_if", "--n-nearest", "3"],
    ["approx_fisher", "--fim-samples", "30"], ["block_fisher", "--block-damping", "0", "--inspector", "always"],
])
def test_cincer_run_takes_each_new_selector(args, tmp_path, capsys):
    code = main([*RUN, "--selector", *args, "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "summary.json").is_file()


def test_cincer_run_takes_damping_for_approx_fisher(tmp_path, capsys):
    code = main([*RUN, "--selector", "approx_fisher", "--damping", "0.01", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["top_fisher", "--nfisher-radius", "0.5"], "--nfisher-radius: not an option of inspector 'margin' or selector "),
    (["approx_fisher", "--n-nearest", "3"], "--n-nearest: not an option of inspector 'margin' or selector "),
    (["nearest_if", "--block-damping", "0.1"], "--block-damping: not an option of inspector 'margin' or selector "),
    (["block_fisher", "--damping", "0.1"], "--damping: not an option of inspector 'margin' or selector "),
    (["nearest_fisher", "--nfisher-radius", "-1"], "--nfisher-radius must be at least 0"),
    (["block_fisher", "--max-block", "100", "--inspector", "always"],
     "320 parameters of layer 'body.1', above the limit of 100"),
])
def test_cincer_run_refuses_bad_options_on_one_line(args, message, tmp_path, capsys):
    code = main([*RUN, "--selector", *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err


def test_sklearn_models_get_nearest_fisher_but_not_the_gradient_selectors():
    X, y = make_classification(n_samples=80, n_features=4, n_informative=3, n_redundant=0, random_state=0)
    for name in ("approx_fisher", "block_fisher", "nearest_if"):
        with pytest.raises(ModelError, match="needs a PyTorch model"):
            Cleaner(LogisticRegression(), selector=name).fit(X, y)
    noisy = y.copy()
    noisy[:5] = 1 - noisy[:5]
    cleaner = Cleaner(LogisticRegression(), selector="nearest_fisher", selector_params={"radius": 1.0},
                      retrain="defer")
    queries = list(cleaner.audit(X, noisy, budget=3))
    assert queries and all(q.counterexample is not None and np.all(np.diff(q.scores) <= 0) for q in queries)
