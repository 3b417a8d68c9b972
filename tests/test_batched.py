"""Batched training (cincer.models.batched) against training one model at a time, and runs in lockstep."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from cincer.errors import CincerError
from cincer.experiments.simulate import RunConfig, run, run_together
from cincer.models import TrainConfig, build_model, train
from cincer.models.batched import Lockstep, Member, stacked_forward, train_together


def _members(model_name, shape, sizes, seed=0, n_classes=3):
    g = torch.Generator().manual_seed(seed)
    return [Member(build_model(model_name, shape, n_classes, seed=i, dtype=torch.float64),
                   torch.randn((n, *shape), generator=g, dtype=torch.float64),
                   torch.randint(n_classes, (n,), generator=g), 100 + i) for i, n in enumerate(sizes)]


def _assert_same_weights(a, b, atol):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("model_name,shape", [("logreg", (6,)), ("fullnet", (6,)), ("convnet", (1, 8, 8))])
def test_training_together_equals_training_alone(model_name, shape):
    """Members of different sizes (so a different number of batches per epoch, padded and masked) end where
    cincer.models.train takes each alone from the same seed: same batch order, same dropout masks."""
    members = _members(model_name, shape, [37, 50, 45])
    config = TrainConfig(epochs=4, batch_size=16)
    alone = []
    for m in members:
        model = copy.deepcopy(m.model)
        train(model, m.X, m.y, config, seed=m.seed)
        alone.append(model)
    assert stacked_forward(members[0].model, dict(members[0].model.named_parameters())) is not None
    train_together(members, config)
    for model, m in zip(alone, members):
        _assert_same_weights(model, m.model, atol=1e-12)


class _Normed(nn.Module):
    """A layer the stacked route does not cover (LayerNorm): training falls back to torch.func.vmap."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.body(x))


def test_the_generic_vmap_route_equals_training_alone():
    g = torch.Generator().manual_seed(1)
    members = []
    for i, n in enumerate([30, 41]):
        torch.manual_seed(i)
        members.append(Member(_Normed().double(), torch.randn(n, 5, generator=g, dtype=torch.float64),
                              torch.randint(2, (n,), generator=g), 7 + i))
    assert stacked_forward(members[0].model, dict(members[0].model.named_parameters())) is None
    config = TrainConfig(epochs=3, batch_size=8)
    alone = [copy.deepcopy(m.model) for m in members]
    for model, m in zip(alone, members):
        train(model, m.X, m.y, config, seed=m.seed)
    train_together(members, config)
    for model, m in zip(alone, members):
        _assert_same_weights(model, m.model, atol=1e-12)


def test_unsupported_layers_are_refused_in_one_line():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    member = Member(model, torch.zeros(8, 3, dtype=torch.float64), torch.zeros(8, dtype=torch.long), 0)
    with pytest.raises(CincerError, match="BatchNorm"):
        train_together([member], TrainConfig(epochs=1))
    with pytest.raises(CincerError, match="warm_start"):
        Lockstep(TrainConfig(warm_start=True))
    with pytest.raises(CincerError, match="excludes --warm-start"):
        RunConfig(batched=True, train=TrainConfig(warm_start=True)).validate()


def test_lockstep_runs_jobs_in_order_and_trains_the_waiting_ones_together():
    members = _members("fullnet", (4,), [20, 20, 20])
    config = TrainConfig(epochs=2, batch_size=8)
    expected = [copy.deepcopy(m.model) for m in members]
    for model, m in zip(expected, members):
        train(model, m.X, m.y, config, seed=m.seed)
    log = []

    def job(i):
        def run_job(train_fn):
            log.append(("start", i))
            torch.manual_seed(members[i].seed)  # as TorchLearner.fit seeds a fit
            train_fn(members[i].model, members[i].X, members[i].y)
            log.append(("trained", i))
            if i == 1:
                raise ValueError("job 1 failed after training")
            return i * 10
        return run_job
    lockstep = Lockstep(config)
    with pytest.raises(ValueError, match="job 1 failed"):
        lockstep.run([job(i) for i in range(3)])
    assert log == [("start", 0), ("start", 1), ("start", 2), ("trained", 0), ("trained", 1), ("trained", 2)]
    assert lockstep.batches == [3]
    for model, m in zip(expected, members):
        _assert_same_weights(model, m.model, atol=1e-12)
    assert Lockstep(config).run([lambda train_fn: 1, lambda train_fn: 2]) == [1, 2]  # jobs that never train


def test_a_batched_run_equals_the_unbatched_one_and_a_repeat_alone():
    """The simulated protocol with its repeats in lockstep: the same queries, cleaned labels and F1 as one
    repeat after another, and each repeat as when it runs alone (seed shifted to it)."""
    base = dict(dataset="breast", model="fullnet", repeats=3, rounds=6, known=40, train=TrainConfig(epochs=8),
                inspector="always")
    plain, _ = run(RunConfig(**base), progress=False)
    batched, summary = run(RunConfig(**base, batched=True), progress=False)
    columns = ["repeat", "round", "queries", "cleaned", "n_known", "noisy_known", "query_index", "counterexample"]
    assert plain["cleaned"].max() > 0  # something was cleaned
    np.testing.assert_array_equal(plain[columns].to_numpy(), batched[columns].to_numpy())
    np.testing.assert_allclose(plain["f1"], batched["f1"], atol=1e-12)
    assert summary["seconds"] > 0
    # two methods' repeats in one lockstep (6 models per batch): each run as when it runs alone
    other = {**base, "selector": "random"}
    together = run_together([RunConfig(**base, batched=True), RunConfig(**other, batched=True)], progress=False)
    np.testing.assert_array_equal(together[0][0][columns].to_numpy(), plain[columns].to_numpy())
    alone, _ = run(RunConfig(**other), progress=False)
    np.testing.assert_array_equal(together[1][0][columns].to_numpy(), alone[columns].to_numpy())
    with pytest.raises(CincerError, match="share the model"):
        run_together([RunConfig(**base, batched=True), RunConfig(**{**base, "model": "logreg"}, batched=True)])


def test_repeats_in_lockstep_share_one_copy_of_the_data(monkeypatch):
    """Float32 data run in float64: each repeat alone converts it, the repeats of a lockstep (which live at
    the same time) share one converted copy (at 60k images, 376 MB per repeat otherwise)."""
    import dataclasses

    import cincer.experiments.simulate as simulate
    from cincer.data import load_dataset
    data = load_dataset("breast", seed=0)
    data = dataclasses.replace(data, X_train=data.X_train.astype(np.float32), X_test=data.X_test.astype(np.float32))
    pools, new_learner = [], simulate.new_learner
    monkeypatch.setattr(simulate, "new_learner", lambda config, data, draw, *a: pools.append(draw.X)
                        or new_learner(config, data, draw, *a))
    base = dict(dataset="breast", model="fullnet", repeats=3, rounds=2, known=30, train=TrainConfig(epochs=2))
    run_together([RunConfig(**base, batched=True)], progress=False, data=data)
    assert len(pools) == 3 and all(X is pools[0] for X in pools)
    pools.clear()
    run_together([RunConfig(**base)], progress=False, data=data)
    assert len(pools) == 3 and len({id(X) for X in pools}) == 3  # one after another: each converts its own

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_together_on_a_gpu_equals_the_cpu():
    """One process for many members on a GPU: the masks and batch orders are drawn on the CPU, so the weights
    agree with the CPU's to float64 tolerance."""
    cpu = _members("convnet", (1, 8, 8), [30, 41])
    gpu = [Member(copy.deepcopy(m.model).cuda(), m.X.cuda(), m.y.cuda(), m.seed) for m in cpu]
    config = TrainConfig(epochs=3, batch_size=16)
    train_together(cpu, config)
    train_together(gpu, config)
    for a, b in zip(cpu, gpu):
        _assert_same_weights(a.model, b.model.cpu(), atol=1e-9)


def test_a_batched_run_saves_each_repeat_and_resumes(tmp_path):
    config = RunConfig(dataset="breast", model="fullnet", repeats=2, rounds=2, known=30, batched=True,
                       train=TrainConfig(epochs=3))
    first, summary = run(config, progress=False, checkpoint=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repeat-0.json", "repeat-1.json"]
    again, resumed = run(config, progress=False, checkpoint=tmp_path)  # nothing left to compute
    columns = ["repeat", "round", "queries", "cleaned", "f1"]
    np.testing.assert_array_equal(first[columns].to_numpy(), again[columns].to_numpy())
    assert resumed["seconds"] == pytest.approx(summary["seconds"])
