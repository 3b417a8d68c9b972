"""The out-of-core audit (cincer.outofcore): the same issues and scores whatever the batch size and the file
format, the FIM against its dense closed form, the counter-examples against top_fisher, planted errors on top,
and bad input refused with the offending keys."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cincer import CincerError, InputError, TorchLearner
from cincer import outofcore as ooc
from cincer.fisher import TopLayerFisher, augment, class_blocks, sum_free_basis
from cincer.select import top_fisher_ranking, weigh_by_suspicion
from cincer.tables import parse_size

N, D, C = 600, 6, 3


def planted(n=N, seed=0, noise=0.08):
    """A Gaussian mixture with ``noise`` of the labels flipped; ids are strings; returns (frame, flipped ids)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(C, D)) * 2.0
    true = rng.integers(C, size=n)
    X = means[true] + rng.normal(size=(n, D))
    given = true.copy()
    flip = rng.random(n) < noise
    given[flip] = (true[flip] + rng.integers(1, C, size=flip.sum())) % C
    frame = pd.DataFrame(X, columns=[f"f{j}" for j in range(D)])
    frame.insert(0, "label", np.array(["ant", "bee", "cat"])[given])
    frame.insert(0, "rid", [f"r{i:04d}" for i in range(n)])
    return frame, set(frame["rid"][flip])


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    frame, flipped = planted()
    root = tmp_path_factory.mktemp("tables")
    frame.to_csv(root / "t.csv", index=False)
    frame.to_csv(root / "t.tsv", index=False, sep="\t")
    frame.to_parquet(root / "t.parquet", index=False)
    (root / "parts").mkdir()
    for i, start in enumerate(range(0, N, 250)):   # three files, read in the order of their names
        frame.iloc[start:start + 250].to_parquet(root / "parts" / f"p{i}.parquet", index=False)
    return root, frame, flipped


def audit(path, monkeypatch=None, rows=None, **options):
    """``audit_table`` with the batch size forced to ``rows`` (None: the whole table in one batch)."""
    if monkeypatch is not None and rows is not None:
        monkeypatch.setattr(ooc, "plan_memory", lambda *args, **kw: rows)
    defaults = dict(labels="label", features=None, id="rid", budget=40, k=3, cv=None, memory=2**31, seed=0,
                    drop_invalid=False, cluster=None, epochs=15)
    return ooc.audit_table(str(path), **{**defaults, **options})


def assert_same(a, b, rtol):
    assert list(a.columns) == list(b.columns) == ooc.issue_columns(3)
    assert a["key"].tolist() == b["key"].tolist()
    assert a["given_label"].tolist() == b["given_label"].tolist()
    assert a["suggested_label"].tolist() == b["suggested_label"].tolist()
    np.testing.assert_allclose(a["suspicion"], b["suspicion"], rtol=rtol, atol=rtol)
    for j in (1, 2, 3):
        assert a[f"counterexample_{j}_key"].tolist() == b[f"counterexample_{j}_key"].tolist()
        np.testing.assert_allclose(a[f"counterexample_{j}_score"], b[f"counterexample_{j}_score"], rtol=rtol)


@pytest.mark.parametrize("cv, counterexamples", [(None, "support"), (3, "support"), (3, "suspect")])
def test_batches_do_not_change_the_result(tables, monkeypatch, cv, counterexamples):
    root, _, _ = tables
    whole, summary = audit(root / "t.parquet", dtype=torch.float64, cv=cv, counterexamples=counterexamples)
    assert summary["batch_rows"] >= N and len(whole) == 40 and summary["counterexamples"] == counterexamples
    for rows in (37, 256):
        chunked, chunked_summary = audit(root / "t.parquet", monkeypatch, rows, dtype=torch.float64, cv=cv,
                                         counterexamples=counterexamples)
        assert chunked_summary["batch_rows"] == rows
        assert_same(whole, chunked, rtol=1e-7)
    assert whole["out_of_fold"].all() == (cv is not None)


def test_every_format_gives_the_same_issues(tables, monkeypatch):
    root, _, _ = tables
    reference, _ = audit(root / "t.parquet")
    for name in ("t.csv", "t.tsv", "parts"):
        other, summary = audit(root / name, monkeypatch, 101)
        assert summary["rows"] == N and summary["classes"] == C and summary["class_names"] == ["ant", "bee", "cat"]
        assert_same(reference, other, rtol=1e-4)


def test_planted_errors_dominate_the_top(tables):
    root, frame, flipped = tables
    for cv in (None, 4):
        table, summary = audit(root / "parts", budget=None, cv=cv, epochs=None)
        assert summary["budget"] == ooc.DEFAULT_BUDGET and len(table) == summary["flagged"] <= ooc.DEFAULT_BUDGET
        top = table["key"].head(len(flipped) // 2)
        assert np.mean([k in flipped for k in top]) >= 0.9
        assert abs(summary["estimated_noise"] - len(flipped) / N) < 0.05
        assert (np.diff(table["suspicion"]) <= 0).all() and (table["suspicion"] > 0.2).all()
        # a counter-example carries the suggested label, and is not the issue itself
        assert (table["counterexample_1_label"] == table["suggested_label"]).all()
        assert (table["counterexample_1_key"] != table["key"]).all()
        assert frame.set_index("rid").loc[table["counterexample_1_key"], "label"].tolist() == \
            table["suggested_label"].tolist()


def test_the_fisher_sum_is_the_dense_closed_form():
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(257, 4, generator=g, dtype=torch.float64)
    P = torch.softmax(torch.randn(257, 3, generator=g, dtype=torch.float64) * 2, dim=1)
    Q = sum_free_basis(3)
    S = sum(ooc.fisher_sum(Z[s:s + 50], P[s:s + 50], Q) for s in range(0, 257, 50))
    F = ooc.AccumulatedTopLayerFisher(S, 257, 3, 5).dense()
    Zt = augment(Z)
    brute = sum(torch.kron(A, torch.outer(z, z)) for A, z in zip(class_blocks(P), Zt)) / 257
    torch.testing.assert_close(F, brute, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(S / 257, TopLayerFisher(Z, P).dense_sub(), rtol=1e-10, atol=1e-12)


def test_counterexamples_are_top_fishers_ranking(tables, monkeypatch):
    """The streamed kernel scores of every query equal cincer.select's top_fisher ranking with the same head,
    over the whole table in memory (FIM over every row; candidates: the rows labelled with the prediction)."""
    root, _, _ = tables
    monkeypatch.setattr(ooc, "plan_memory", lambda *args, **kw: 97)
    table = ooc.open_table(root / "t.parquet")
    plan = ooc.scan(table, labels="label", features=None, id=None, memory=2**31, folds=None, seed=0,
                    drop_invalid=False, budget=15)
    head = ooc.train_heads(plan, epochs=10, dtype=torch.float64)[0]
    probed = ooc.probe(plan, [head], 15, torch.float64)
    solver = ooc.fisher_solver(probed.sums[0], probed.counts[0], C, D + 1)
    scores, best, _ = ooc.find_counterexamples(plan, [head], probed.queries, [solver], 5, torch.float64)
    suspect_scores, suspect_best, _ = ooc.find_counterexamples(plan, [head], probed.queries, [solver], 5,
                                                               torch.float64, suspect=True)

    Z = torch.cat([c.Z for c in ooc.chunks(plan)]).double()
    y = np.concatenate([c.y for c in ooc.chunks(plan)])
    linear = nn.Linear(D, C, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(head.weight)
        linear.bias.copy_(head.bias)
    learner = TorchLearner(linear)
    probs = learner.features_and_probs(Z)[1].numpy()
    everyone = np.arange(N)
    assert len(probed.queries.rows) == 15
    for i, target in enumerate(probed.queries.rows):
        predicted = probs[target].argmax()
        candidates = everyone[(y == predicted) & (everyone != target)]
        ranking = top_fisher_ranking(learner, Z, y, int(target), candidates, everyone)
        assert best[i].tolist() == ranking.indices[:5].tolist()
        np.testing.assert_allclose(scores[i], ranking.scores[:5], rtol=1e-8)
        weighed = weigh_by_suspicion(ranking, probs[ranking.indices, y[ranking.indices]])
        assert suspect_best[i].tolist() == weighed.indices[:5].tolist()
        np.testing.assert_allclose(suspect_scores[i], weighed.scores[:5], rtol=1e-8)


def test_cv_counterexamples_come_from_the_other_folds(tables):
    root, _, _ = tables
    table, _ = audit(root / "t.parquet", id=None, cv=3)
    fold = ooc.fold_of(np.arange(N), 3, 0)
    queries = table["key"].to_numpy(dtype=np.int64)
    for j in (1, 2, 3):
        ce = table[f"counterexample_{j}_key"].to_numpy(dtype=np.int64)
        assert (fold[ce] != fold[queries]).all()


def test_bad_input_is_refused_with_the_keys(tmp_path, tables):
    root, frame, _ = tables
    with pytest.raises(InputError, match="labels: no column 'nope'"):
        audit(root / "t.parquet", labels="nope")
    with pytest.raises(InputError, match="features: no column 'f9'"):
        audit(root / "t.parquet", features=["f0", "f9"])
    with pytest.raises(InputError, match="not numeric"):
        audit(root / "t.csv", features=["f0", "rid"], id=None)
    single = frame.assign(label="ant")
    single.to_parquet(tmp_path / "single.parquet")
    with pytest.raises(InputError, match="single class"):
        audit(tmp_path / "single.parquet")
    broken = frame.copy()
    broken.loc[[5, 17], "f2"] = [np.nan, np.inf]
    broken.loc[30, "label"] = None
    broken.to_parquet(tmp_path / "nan.parquet")
    with pytest.raises(InputError, match=r"2 rows have NaN or infinite features \(keys: r0005, r0017\).*"
                                         r"1 rows have no label \(keys: r0030\)"):
        audit(tmp_path / "nan.parquet")
    table, summary = audit(tmp_path / "nan.parquet", drop_invalid=True)
    assert summary["rows"] == N and summary["rows_dropped"] == 3 and summary["rows_used"] == N - 3
    assert not set(table["key"]) & {"r0005", "r0017", "r0030"}
    twice = frame.copy()
    twice.loc[[3, 9], "rid"] = "r0100"
    twice.to_csv(tmp_path / "twice.csv", index=False)
    with pytest.raises(InputError, match="repeats keys: r0100"):
        audit(tmp_path / "twice.csv")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="junk.parquet: cannot read it"):
        audit(tmp_path / "junk.parquet")
    with pytest.raises(InputError, match="no such file"):
        audit(tmp_path / "missing.csv")
    with pytest.raises(CincerError, match="memory budget .* too small"):
        audit(root / "t.parquet", memory=2**20)


def test_no_counterexamples_and_row_number_keys(tables):
    root, _, flipped = tables
    table, summary = audit(root / "t.csv", id=None, k=0, budget=5)
    assert list(table.columns) == ooc.issue_columns(0) and len(table) == 5
    assert table["key"].dtype == np.int64 and summary["passes"] == 1 + 15 + 1
    assert parse_size("2GB") == 2 * 2**30 and parse_size("512 MiB") == 2**29
