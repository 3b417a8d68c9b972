"""``cincer audit`` and ``cincer.find_label_issues``: the label issues of a table, with counter-examples.

Small synthetic tables with planted wrong labels, written by each test; the out-of-fold table checked
against fold models trained by hand, the counter-examples against :func:`cincer.counterexamples`; the
bad inputs each a one-line error with nothing written; the audit feeding the app (``--from-audit``).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import cincer
from cincer import InputError, find_label_issues
from cincer.cli import main as cli_main
from cincer.issues import issue_columns

N, D, PLANTED = 400, 6, 40


def planted_table(seed: int = 0, n: int = N) -> tuple[pd.DataFrame, np.ndarray]:
    """Two separable Gaussian classes (a little overlap), ``PLANTED`` labels flipped; returns the frame and the
    flipped rows. Columns: x0..x5, label ('no'/'yes'), rid (a unique string id, not in row order)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, D)) + np.where(y[:, None] == 1, 1.2, -1.2) * (np.arange(D) < 3)
    flipped = rng.choice(n, PLANTED * n // N, replace=False)
    noisy = y.copy()
    noisy[flipped] ^= 1
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(D)])
    frame["label"] = np.array(["no", "yes"])[noisy]
    frame["rid"] = [f"id-{v}" for v in rng.permutation(10 * n)[:n]]
    return frame, np.sort(flipped)


def _pipeline():
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def _features(frame):
    return frame[[f"x{i}" for i in range(D)]].to_numpy()


# --------------------------------------------------------------------------- the table

def test_planted_wrong_labels_come_first_and_keys_are_row_numbers():
    frame, flipped = planted_table()
    table = find_label_issues(frame, labels="label")
    assert list(table.columns) == issue_columns(3)
    assert table["suspicion"].is_monotonic_decreasing and (table["suspicion"] > 0.2).all()
    top = table["key"].head(30).to_numpy()
    assert np.isin(top, flipped).mean() >= 0.9  # the planted errors dominate the top
    assert np.isin(flipped, table["key"]).mean() >= 0.6
    assert (table["given_label"].to_numpy() == frame["label"].to_numpy()[table["key"].to_numpy()]).all()
    assert (table["given_label"] != table["suggested_label"]).all()
    assert not table["out_of_fold"].any()
    summary = table.attrs["summary"]
    assert summary["rows"] == N and summary["classes"] == 2 and summary["issues"] == len(table)


def test_in_sample_table_is_the_margin_of_the_model_and_the_counterexamples_of_cincer():
    """Brute force: the same pipeline fitted by hand gives the margins; cincer.counterexamples the same
    counter-examples and scores."""
    frame, _ = planted_table(1)
    X, labels = _features(frame), frame["label"].to_numpy()
    table = find_label_issues(frame, labels="label", k=4, counterexamples="support")
    model = _pipeline().fit(X, labels)
    probs = model.predict_proba(X)
    y = np.searchsorted(model.classes_, labels)
    margins = probs.max(1) - probs[np.arange(N), y]
    expected = np.flatnonzero(margins > 0.2)
    expected = expected[np.argsort(-margins[expected], kind="stable")]
    np.testing.assert_array_equal(table["key"].to_numpy(), expected)
    np.testing.assert_allclose(table["suspicion"], margins[expected], rtol=1e-6, atol=1e-9)
    for row in table.head(5).itertuples(index=False):
        keys, scores = cincer.counterexamples(model, X, labels, X[row.key], labels[row.key], k=4)
        got = [getattr(row, f"counterexample_{j}_key") for j in range(1, 5)]
        assert got == list(keys)
        np.testing.assert_allclose([getattr(row, f"counterexample_{j}_score") for j in range(1, 5)], scores,
                                   rtol=1e-6)


def test_cv_is_out_of_fold_like_fold_models_trained_by_hand():
    frame, flipped = planted_table(2)
    X, labels = _features(frame), frame["label"].to_numpy()
    table = find_label_issues(frame, labels="label", cv=4, seed=3)
    assert table["out_of_fold"].all() and table.attrs["summary"]["out_of_fold"]
    y = (labels == "yes").astype(int)
    probs, fold = np.zeros((N, 2)), np.zeros(N, int)
    for j, (train, held) in enumerate(StratifiedKFold(4, shuffle=True, random_state=3).split(np.arange(N), y)):
        probs[held] = _pipeline().fit(X[train], y[train]).predict_proba(X[held])
        fold[held] = j
    margins = probs.max(1) - probs[np.arange(N), y]
    expected = np.flatnonzero(margins > 0.2)
    expected = expected[np.argsort(-margins[expected], kind="stable")]
    np.testing.assert_array_equal(table["key"].to_numpy(), expected)
    np.testing.assert_allclose(table["suspicion"], margins[expected], rtol=1e-6, atol=1e-9)
    assert table.attrs["summary"]["estimated_noise"] == pytest.approx(np.mean(probs.argmax(1) != y))
    assert np.isin(table["key"].head(30), flipped).mean() >= 0.9
    for row in table.itertuples(index=False):  # counter-examples: training rows of the model that judged the row
        for j in range(1, 4):
            ce = getattr(row, f"counterexample_{j}_key")
            if not pd.isna(ce):
                assert fold[ce] != fold[row.key]


def test_suspect_counterexamples_are_the_support_times_their_own_suspicion():
    """Brute force: every candidate's support (the 'support' table with k = every row) times 1 - P(its label),
    from the pipeline fitted by hand (in sample) or the fold models fitted by hand (out of fold)."""
    frame, _ = planted_table(1)
    X, labels = _features(frame), frame["label"].to_numpy()
    y = (labels == "yes").astype(int)
    in_sample = _pipeline().fit(X, y).predict_proba(X)
    out_of_fold = np.zeros((N, 2))
    for train, held in StratifiedKFold(4, shuffle=True, random_state=3).split(np.arange(N), y):
        out_of_fold[held] = _pipeline().fit(X[train], y[train]).predict_proba(X[held])
    for cv, probs in ((None, in_sample), (4, out_of_fold)):
        support = find_label_issues(frame, labels="label", k=N, cv=cv, seed=3, counterexamples="support")
        suspect = find_label_issues(frame, labels="label", k=3, cv=cv, seed=3)  # the default
        assert suspect.attrs["summary"]["counterexamples"] == "suspect"
        assert suspect["key"].tolist() == support["key"].tolist()
        every_key = support[[f"counterexample_{j}_key" for j in range(1, N + 1)]].to_numpy(float, na_value=np.nan)
        every_score = support[[f"counterexample_{j}_score" for j in range(1, N + 1)]].to_numpy()
        chosen_key = suspect[[f"counterexample_{j}_key" for j in (1, 2, 3)]].to_numpy(float, na_value=np.nan)
        chosen_score = suspect[[f"counterexample_{j}_score" for j in (1, 2, 3)]].to_numpy()
        changed = 0
        for keys, scores, got_keys, got_scores in zip(every_key, every_score, chosen_key, chosen_score):
            keys, scores = keys[~np.isnan(keys)].astype(int), scores[~np.isnan(keys)]
            weighted = scores * (1 - probs[keys, y[keys]])
            best = np.argsort(-weighted, kind="stable")[:3]
            np.testing.assert_array_equal(got_keys[:len(best)], keys[best])
            np.testing.assert_allclose(got_scores[:len(best)], weighted[best], rtol=1e-5, atol=1e-12)
            changed += keys[best[0]] != keys[0]
        assert changed > 0  # the weights do change some choices


def test_key_follows_the_id_column_and_counterexamples_match_the_input():
    frame, _ = planted_table(3)
    by_row = find_label_issues(frame, labels="label", budget=25)
    by_id = find_label_issues(frame, labels="label", id="rid", budget=25)
    assert len(by_id) == 25
    ids = frame["rid"].to_numpy()
    assert list(by_id["key"]) == list(ids[by_row["key"].to_numpy()])
    label_of = dict(zip(frame["rid"], frame["label"]))
    for j in range(1, 4):
        shown = by_id[f"counterexample_{j}_key"].notna()
        assert shown.all()  # 200 rows of each class: three counter-examples always exist
        assert list(by_id[f"counterexample_{j}_key"].map(ids.tolist().index)) == \
            list(by_row[f"counterexample_{j}_key"])
        assert (by_id[f"counterexample_{j}_label"] == by_id[f"counterexample_{j}_key"].map(label_of)).all()
        assert (by_id[f"counterexample_{j}_label"] == by_id["suggested_label"]).all()
        assert (by_id[f"counterexample_{j}_key"] != by_id["key"]).all()
    scores = by_id[[f"counterexample_{j}_score" for j in range(1, 4)]].to_numpy()
    assert (np.diff(scores, axis=1) <= 1e-12).all()  # best first


def test_fewer_candidates_than_k_leave_missing_counterexamples():
    frame, _ = planted_table(4, n=60)
    frame.loc[:5, "label"] = "maybe"  # a class of six rows, a few of which the model may suggest
    table = find_label_issues(frame, labels="label", k=8)
    assert list(table.columns) == issue_columns(8)
    counts = table[[f"counterexample_{j}_key" for j in range(1, 9)]].notna().sum(axis=1)
    suggested_size = table["suggested_label"].map(frame["label"].value_counts())
    assert (counts <= suggested_size).all()
    for j in range(1, 8):  # missing values only at the end
        later = table[f"counterexample_{j + 1}_key"].notna()
        assert table.loc[later, f"counterexample_{j}_key"].notna().all()
        assert table.loc[table[f"counterexample_{j}_key"].isna(), f"counterexample_{j}_score"].isna().all()


def test_csv_tsv_parquet_and_a_parquet_folder_give_the_same_table(tmp_path):
    frame, _ = planted_table(5)
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_csv(tmp_path / "t.tsv", index=False, sep="\t")
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    (tmp_path / "parts").mkdir()
    for i, start in enumerate(range(0, N, 150)):  # part-0, part-1, part-2: read in sorted order
        frame.iloc[start:start + 150].to_parquet(tmp_path / "parts" / f"part-{i}.parquet", index=False)
    reference = find_label_issues(frame, labels="label", id="rid")
    for source in ("t.csv", "t.tsv", "t.parquet", "parts"):
        table = find_label_issues(tmp_path / source, labels="label", id="rid")
        pd.testing.assert_frame_equal(table, reference, check_dtype=False)
    by_row = [find_label_issues(tmp_path / s, labels="label", features=["x0", "x1", "x2"])["key"].tolist()
              for s in ("t.csv", "parts")]
    assert by_row[0] == by_row[1]


def test_text_column_and_fullnet_models_run():
    rng = np.random.default_rng(0)
    good, bad = ["great", "lovely", "superb", "fine"], ["awful", "boring", "dull", "bad"]
    y = rng.integers(0, 2, 120)
    texts = [" ".join(rng.choice(good if c else bad, 4)) + " film" for c in y]
    noisy = y.copy()
    noisy[:10] ^= 1
    frame = pd.DataFrame({"review": texts, "label": noisy})
    table = find_label_issues(frame, labels="label", text="review")
    assert table.attrs["summary"]["input"] == "text"
    assert np.isin(table["key"].head(10), np.arange(10)).mean() >= 0.8
    tab, _ = planted_table(6, n=200)
    net = find_label_issues(tab, labels="label", model="fullnet", train_config=cincer.TrainConfig(epochs=10),
                            budget=10)
    assert list(net.columns) == issue_columns(3) and len(net) <= 10
    assert (net["given_label"] != net["suggested_label"]).all()


# --------------------------------------------------------------------------- the command

def test_cli_writes_the_table_its_configuration_and_a_summary(tmp_path, capsys):
    frame, flipped = planted_table(7)
    frame.to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "res" / "issues.parquet"
    assert cli_main(["audit", str(tmp_path / "t.csv"), "--labels", "label", "--cv", "3", "--k", "2",
                     "--seed", "5", "--counterexamples", "suspect", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = pd.read_parquet(out)
    config = json.loads((tmp_path / "res" / "issues.parquet.json").read_text())
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["issues.parquet", "issues.parquet.json"]
    assert list(table.columns) == issue_columns(2) == config["columns"]
    expected = find_label_issues(frame, labels="label", cv=3, k=2, seed=5, counterexamples="suspect")
    pd.testing.assert_frame_equal(table, expected, check_dtype=False)
    assert config["options"]["cv"] == 3 and config["options"]["seed"] == 5 and config["options"]["k"] == 2
    assert config["options"]["counterexamples"] == config["summary"]["counterexamples"] == "suspect"
    assert config["input"] == str((tmp_path / "t.csv").resolve())
    assert {"cincer", "numpy", "pandas", "scikit-learn"} <= set(config["versions"])
    summary = config["summary"]
    assert summary["rows"] == N and summary["classes"] == 2 and summary["issues"] == len(table)
    assert 0.05 < summary["estimated_noise"] < 0.3
    assert f"{N} rows read" in printed and "2 classes" in printed
    assert f"estimated noise: {summary['estimated_noise']:.1%}" in printed
    assert f"issues written: {len(table)}" in printed and "time:" in printed
    assert cli_main(["audit", str(tmp_path / "t.csv"), "--labels", "label", "--out", str(tmp_path / "a.csv")]) == 0
    assert np.isin(pd.read_csv(tmp_path / "a.csv")["key"].head(30), flipped).mean() >= 0.9


def test_drop_invalid_leaves_out_bad_rows_and_counts_them(tmp_path, capsys):
    frame, _ = planted_table(8)
    frame.loc[[3, 50], "x1"] = np.nan
    frame.loc[7, "x4"] = np.inf
    frame.loc[9, "label"] = None
    frame.to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "o.csv"
    assert cli_main(["audit", str(tmp_path / "t.csv"), "--labels", "label", "--id", "rid", "--drop-invalid",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "o.csv.json").read_text())["summary"]
    assert summary["dropped"] == 4 and summary["rows_used"] == N - 4
    assert summary["dropped_by_reason"] == {"missing_label": 1, "nonfinite_features": 3}
    assert "4 dropped" in printed
    dropped = set(frame.loc[[3, 7, 9, 50], "rid"])
    table = pd.read_csv(out)
    shown = set(table["key"]) | {k for j in range(1, 4) for k in table[f"counterexample_{j}_key"].dropna()}
    assert not shown & dropped


def _bad(tmp_path, name, frame=None, text=None):
    path = tmp_path / name
    if frame is not None:
        frame.to_parquet(path, index=False) if name.endswith(".parquet") else frame.to_csv(path, index=False)
    elif text is not None:
        path.write_text(text)
    return path


BAD = {
    "missing label column": (lambda t, f: _bad(t, "t.csv", f), ["--labels", "nope"], "no column 'nope'"),
    "missing id column": (lambda t, f: _bad(t, "t.csv", f), ["--labels", "label", "--id", "key"], "no column 'key'"),
    "missing feature": (lambda t, f: _bad(t, "t.csv", f), ["--labels", "label", "--features", "x0,x9"],
                        "no column 'x9'"),
    "single class": (lambda t, f: _bad(t, "t.csv", f.assign(label="yes")), ["--labels", "label"], "single class"),
    "non-numeric feature": (lambda t, f: _bad(t, "t.csv", f), ["--labels", "label", "--features", "x0,rid"],
                            "not numeric"),
    "no numeric feature": (lambda t, f: _bad(t, "t.csv", f[["rid", "label"]]), ["--labels", "label"],
                           "no numeric feature columns"),
    "NaN features": (lambda t, f: _bad(t, "t.csv", f.assign(x2=f.x2.where(f.index != 5))),
                     ["--labels", "label", "--id", "rid"], "NaN or infinite features"),
    "inf features": (lambda t, f: _bad(t, "t.parquet", f.assign(x2=f.x2.where(f.index != 11, np.inf))),
                     ["--labels", "label"], "1 rows have NaN or infinite features (keys: 11)"),
    "missing label": (lambda t, f: _bad(t, "t.csv", f.assign(label=f.label.where(f.index != 2))),
                      ["--labels", "label"], "rows have no label (keys: 2)"),
    "duplicate ids": (lambda t, f: _bad(t, "t.csv", f.assign(rid=f.rid.where(f.index != 4, f.rid[8]))),
                      ["--labels", "label", "--id", "rid"], "repeats keys"),
    "unreadable file": (lambda t, f: _bad(t, "t.parquet", text="not parquet at all"), ["--labels", "label"],
                        "cannot read"),
    "unknown extension": (lambda t, f: _bad(t, "t.xlsx", text="a,b\n1,2\n"), ["--labels", "label"],
                          "unknown table format '.xlsx'"),
    "no such file": (lambda t, f: t / "missing.csv", ["--labels", "label"], "no such file"),
    "empty folder": (lambda t, f: (t / "empty").mkdir() or t / "empty", ["--labels", "label"], "no .parquet files"),
    "bad output extension": (lambda t, f: _bad(t, "t.csv", f), ["--labels", "label", "--out", "OUT.xlsx"],
                             "--out"),
    "cv above a class size": (lambda t, f: _bad(t, "t.csv", f.head(40).assign(label=["a"] * 38 + ["b"] * 2)),
                              ["--labels", "label", "--cv", "3"], "fewer than the folds"),
    "text with features": (lambda t, f: _bad(t, "t.csv", f), ["--labels", "label", "--text", "rid", "--features",
                                                              "x0"], "not allowed with"),
    "bad memory": (lambda t, f: _bad(t, "t.csv", f), ["--labels", "label", "--memory", "lots"], "--memory"),
    "out of core with fullnet": (lambda t, f: _bad(t, "t.csv", f), ["--labels", "label", "--memory", "1KB",
                                                                    "--model", "fullnet"], "needs --model linear"),
    "cluster with text": (lambda t, f: _bad(t, "t.csv", f), ["--labels", "label", "--text", "rid", "--cluster",
                                                             "local:2"], "numeric feature columns"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, tmp_path, capsys, monkeypatch):
    make, argv, words = BAD[case]
    frame, _ = planted_table(9, n=120)
    data = make(tmp_path, frame)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.chdir(out_dir)  # a relative --out lands here too
    if "--out" not in argv:
        argv = [*argv, "--out", str(out_dir / "issues.csv")]
    assert cli_main(["audit", str(data), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert list(out_dir.iterdir()) == []


def test_bad_input_from_python_is_an_input_error():
    frame, _ = planted_table(10, n=100)
    with pytest.raises(InputError, match="keys: 'id-"):
        find_label_issues(frame.assign(x0=frame.x0.where(frame.index != 3)), labels="label", id="rid")
    with pytest.raises(InputError, match="single class"):
        find_label_issues(frame.assign(label="no"), labels="label")
    with pytest.raises(cincer.CincerError, match="model must be one of linear, fullnet"):
        find_label_issues(frame, labels="label", model="forest")


# --------------------------------------------------------------------------- out of core: the dispatch

def test_a_table_above_memory_goes_out_of_core_and_finds_the_same_issues(tmp_path, capsys, monkeypatch):
    """Above --memory the command streams the table through cincer.outofcore (its own tests check it against
    the dense algebra); here: the dispatch, the shared schema, and the same wrong labels at the top as in memory."""
    import cincer.tables

    frame, wrong = planted_table(11, n=400)
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    in_memory, streamed = tmp_path / "m.csv", tmp_path / "o.csv"
    assert cli_main(["audit", str(tmp_path / "t.parquet"), "--labels", "label", "--features", "x0,x1,x2",
                     "--budget", "20", "--out", str(in_memory)]) == 0
    assert json.loads((tmp_path / "m.csv.json").read_text())["summary"].get("engine") != "out-of-core"
    monkeypatch.setattr(cincer.tables, "memory_estimate", lambda source: 64 * 2**30)  # as if 64 GB were needed
    assert cli_main(["audit", str(tmp_path / "t.parquet"), "--labels", "label", "--features", "x0,x1,x2",
                     "--memory", "2GB", "--budget", "20", "--out", str(streamed)]) == 0
    config = json.loads((tmp_path / "o.csv.json").read_text())
    assert config["summary"]["engine"] == "out-of-core" and config["options"]["memory"] == 2 * 2**30
    assert "400 rows read" in capsys.readouterr().out
    a, b = pd.read_csv(in_memory), pd.read_csv(streamed)
    assert list(a.columns) == list(b.columns) == issue_columns(3) and len(b) == 20
    planted = set(wrong.tolist())
    assert b["key"].isin(planted).mean() >= 0.9 and a["key"].isin(planted).mean() >= 0.9
    assert len(set(a["key"]) & set(b["key"])) >= 15  # two trainings of the same linear head


# --------------------------------------------------------------------------- the app

def test_the_audit_feeds_the_app_and_the_export_keeps_its_keys(tmp_path):
    from cincer.app import Session, load_project, write_export

    frame, _ = planted_table(12, n=200)
    data = tmp_path / "t.csv"
    frame.to_csv(data, index=False)
    audit = tmp_path / "issues.csv"
    assert cli_main(["audit", str(data), "--labels", "label", "--id", "rid", "--cv", "3", "--out", str(audit)]) == 0
    issues = pd.read_csv(audit)
    project = tmp_path / "proj"
    assert cli_main(["project", "init", str(project), "--data", str(tmp_path / "t.csv"), "--labels", "label",
                     "--from-audit", str(audit), "--model", "logreg", "--epochs", "5"]) == 2  # keyed by --id
    assert not project.exists()
    assert cli_main(["project", "init", str(project), "--data", str(data), "--labels", "label", "--id", "rid",
                     "--from-audit", str(audit), "--model", "logreg", "--epochs", "5"]) == 0
    loaded = load_project(project)
    assert loaded.config.mode == "audit" and len(loaded.audit) == len(issues)
    session = Session(loaded, who="tester", background=False).start()
    try:
        assert session.store.get_meta("audit_order") == [loaded.keys.index(k) for k in issues["key"]]
        q = session.current_query()
        first = issues.iloc[0]
        assert loaded.key(q.suspicious) == first["key"] and loaded.key(q.counter) == first["counterexample_1_key"]
        view = session.query_view(q)
        assert view["audit"]["out_of_fold"] and "The audit (out of fold) suggests" in view["sentence"]
        assert view["prediction_name"] == first["suggested_label"]
        session.answer(q.id, action="label", suspicious_label=q.prediction)  # the person agrees with the audit
        q2 = session.current_query()
        assert loaded.key(q2.suspicious) in set(issues["key"][1:])
        assert session.progress()["total"] == len(issues)
    finally:
        session.close()
    labels = pd.read_csv(write_export(project, fmt="csv", out=tmp_path / "export")[0])
    assert set(labels["key"]) == set(frame["rid"])
    changed = labels[labels["changed"]]
    assert list(changed["key"]) == [first["key"]] and list(changed["name"]) == [first["suggested_label"]]


# --------------------------------------------------------------------------- a real data set

def test_breast_with_planted_noise_end_to_end(tmp_path, capsys):
    data = cincer.load_dataset("breast")
    rng = np.random.default_rng(0)
    clean = data.y_train
    noisy = cincer.flip_labels(clean, 0.2, data.n_classes, rng=rng)
    frame = pd.DataFrame(data.X_train, columns=data.feature_names)
    frame["diagnosis"] = np.array(data.class_names)[noisy]
    frame.to_csv(tmp_path / "breast.csv", index=False)
    out = tmp_path / "issues.csv"
    assert cli_main(["audit", str(tmp_path / "breast.csv"), "--labels", "diagnosis", "--cv", "5",
                     "--out", str(out)]) == 0
    table = pd.read_csv(out)
    wrong = np.flatnonzero(noisy != clean)
    found = int(np.isin(table["key"].head(50), wrong).sum())
    assert found >= 45, found
    print(capsys.readouterr().out, f"planted errors in the top 50: {found} of {len(wrong)} planted")


def test_an_image_folder_is_read_as_project_init_reads_it(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.flatnonzero(digits.target < 2)[:80]
    folder = tmp_path / "images"
    folder.mkdir()
    names = []
    for i in keep:
        name = f"digit-{i}.png"
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize((28, 28)).save(folder / name)
        names.append(name)
    labels = digits.target[keep].copy()
    labels[:6] ^= 1
    frame = pd.DataFrame({"file": names, "digit": labels})
    table = find_label_issues(frame, labels="digit", images=folder, cv=4)  # in sample, 784 pixels fit any label
    assert table.attrs["summary"]["input"] == "image" and list(table.columns) == issue_columns(3)
    assert np.isin(table["key"].head(6), np.arange(6)).mean() >= 0.8
    assert not any(p.suffix == ".png" for p in tmp_path.rglob("*") if p.parent != folder)  # no copies left


def test_from_audit_refuses_an_audit_of_other_data(tmp_path):
    from cincer.app.project import SessionConfig, init_project

    frame, _ = planted_table(13, n=120)
    frame.to_csv(tmp_path / "t.csv", index=False)
    assert cli_main(["audit", str(tmp_path / "t.csv"), "--labels", "label", "--out", str(tmp_path / "a.csv")]) == 0
    first = int(pd.read_csv(tmp_path / "a.csv")["key"][0])
    relabelled = frame.copy()
    relabelled.loc[first, "label"] = "yes" if frame.loc[first, "label"] == "no" else "no"
    relabelled.to_csv(tmp_path / "other.csv", index=False)
    frame.head(60).to_csv(tmp_path / "short.csv", index=False)
    config = SessionConfig(model="logreg")
    cases = [(tmp_path / "other.csv", {}, "in the audit but"), (tmp_path / "t.csv", {"holdout": 0.2}, "--holdout"),
             (tmp_path / "t.csv", {"id_column": "rid"}, "keyed by row numbers"),
             (tmp_path / "t.csv", {"from_audit": tmp_path / "t.csv"}, "not a `cincer audit` table"),
             (tmp_path / "short.csv", {}, "not a row number")]  # rows 60.. are not in it
    assert (pd.read_csv(tmp_path / "a.csv")["key"] >= 60).any()
    for data, extra, words in cases:
        options = {"from_audit": tmp_path / "a.csv", **extra}
        with pytest.raises(cincer.CincerError, match=words):
            init_project(tmp_path / "p", data=data, labels="label", config=config, **options)
        assert not (tmp_path / "p").exists()
