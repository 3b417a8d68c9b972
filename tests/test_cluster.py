"""The audit on a Dask cluster (cincer.cluster) gives the single-process result on the same table: the same
issues and counter-examples, the same scores to float rounding, with the rows left on the workers."""

import numpy as np
import pandas as pd
import pytest
import torch

from cincer import CincerError, InputError
from cincer import outofcore as ooc

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.reset_index")  # inside dask

N, D, C = 900, 5, 3


def planted(seed=1, noise=0.1):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(C, D)) * 2.0
    true = rng.integers(C, size=N)
    given = true.copy()
    flip = rng.random(N) < noise
    given[flip] = (true[flip] + rng.integers(1, C, size=flip.sum())) % C
    frame = pd.DataFrame(means[true] + rng.normal(size=(N, D)), columns=[f"x{j}" for j in range(D)])
    frame.insert(0, "y", given)
    frame.insert(0, "uid", np.arange(N) * 7 + 3)
    return frame, set(frame["uid"][flip])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    frame, flipped = planted()
    root = tmp_path_factory.mktemp("cluster")
    (root / "parts").mkdir()
    for i, start in enumerate(range(0, N, 300)):
        frame.iloc[start:start + 300].to_parquet(root / "parts" / f"part{i}.parquet", index=False)
    return root, frame, flipped


@pytest.fixture(scope="module")
def scheduler():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def run(path, **options):
    defaults = dict(labels="y", features=None, id="uid", budget=30, k=3, cv=None, memory=2**31, seed=0,
                    drop_invalid=False, dtype=torch.float64)
    return ooc.audit_table(str(path), **{**defaults, **options})


@pytest.mark.parametrize("cv, counterexamples", [(None, "support"), (3, "support"), (3, "suspect")])
def test_the_cluster_gives_the_single_process_result(data, scheduler, monkeypatch, cv, counterexamples):
    root, _, flipped = data
    monkeypatch.setattr(ooc, "plan_memory", lambda *args, **kw: 128)   # several batches on one machine too
    local, local_summary = run(root / "parts", cv=cv, optimizer="lbfgs", counterexamples=counterexamples)
    remote, summary = run(root / "parts", cv=cv, cluster=scheduler, counterexamples=counterexamples)
    assert summary["engine"] == "dask" and summary["partitions"] == 3 and summary["workers"] == 2
    assert summary["rows"] == local_summary["rows"] == N and summary["flagged"] == local_summary["flagged"]
    assert list(remote.columns) == list(local.columns) == ooc.issue_columns(3)
    assert remote["key"].tolist() == local["key"].tolist()
    assert remote["suggested_label"].tolist() == local["suggested_label"].tolist()
    np.testing.assert_allclose(remote["suspicion"], local["suspicion"], rtol=1e-6, atol=1e-9)
    for j in (1, 2, 3):
        assert remote[f"counterexample_{j}_key"].tolist() == local[f"counterexample_{j}_key"].tolist()
        np.testing.assert_allclose(remote[f"counterexample_{j}_score"], local[f"counterexample_{j}_score"],
                                   rtol=1e-5)
    assert np.mean([k in flipped for k in remote["key"].head(20)]) >= 0.9
    assert remote["out_of_fold"].all() == (cv is not None)


def test_bad_input_on_the_cluster(data, scheduler, tmp_path):
    root, frame, _ = data
    twice = frame.copy()
    twice.loc[[10, 500], "uid"] = 4
    twice.to_parquet(tmp_path / "twice.parquet", index=False)
    with pytest.raises(InputError, match="repeats keys: 4"):
        run(tmp_path / "twice.parquet", cluster=scheduler)
    with pytest.raises(InputError, match="labels: no column 'label'"):
        run(root / "parts", labels="label", cluster=scheduler)
    with pytest.raises(CincerError, match="L-BFGS"):
        run(root / "parts", cluster=scheduler, optimizer="adam")
    with pytest.raises(CincerError, match="local:N"):
        run(root / "parts", cluster="local:zero")
