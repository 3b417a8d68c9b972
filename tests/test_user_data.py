"""A user's own table as a data set (``cincer data add``) and ``cincer compare-rankings`` on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cincer import CincerError, InputError
from cincer.cli import main as cli_main
from cincer.data import DATASETS, add_table, load_dataset, remove_table


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CINCER_CACHE", str(tmp_path / "cache"))
    yield tmp_path
    for name in [n for n in DATASETS if hasattr(DATASETS[n], "source")]:
        DATASETS.unregister(name)


def tumours(path, n=240, seed=0):
    """Two Gaussian classes with string labels, a string id column and a constant column."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 5)) * 3 + 10 + 2.5 * y[:, None]
    frame = pd.DataFrame(X, columns=[f"m{j}" for j in range(5)])
    frame["diagnosis"] = np.array(["benign", "malignant"])[y]
    frame["patient"] = [f"p{i}" for i in range(n)]
    frame.to_csv(path, index=False)
    return frame


def test_a_table_becomes_a_data_set_every_process_finds(cache):
    tumours(cache / "t.csv")
    data = add_table("tumours", cache / "t.csv", labels="diagnosis", test_size=0.25, seed=3)
    assert data.class_names == ["benign", "malignant"] and data.feature_names == [f"m{j}" for j in range(5)]
    assert len(data.y_train) == 180 and len(data.y_test) == 60
    assert abs(data.y_train.mean() - data.y_test.mean()) < 0.05  # stratified
    assert data.X_train.min() == 0 and data.X_train.max() == 1  # min-max on the training part
    again = load_dataset("tumours")
    np.testing.assert_array_equal(again.X_train, data.X_train)
    np.testing.assert_array_equal(again.y_test, data.y_test)
    assert again.meta["source"] == str((cache / "t.csv").resolve()) and again.meta["seed"] == 3
    # another process registers it at import (the workers of --jobs)
    code = "from cincer.data import load_dataset; d = load_dataset('tumours'); print(len(d.y_train), d.class_names)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "CINCER_CACHE": str(cache / "cache")})
    assert out.stdout.strip() == "180 ['benign', 'malignant']"
    remove_table("tumours")
    assert "tumours" not in DATASETS
    with pytest.raises(CincerError, match="no added data set 'tumours'"):
        remove_table("tumours")


def test_bad_tables_and_names_are_refused(cache):
    frame = tumours(cache / "t.csv")
    with pytest.raises(CincerError, match="'breast' is a built-in data set"):
        add_table("breast", cache / "t.csv", labels="diagnosis")
    with pytest.raises(CincerError, match="data set name 'a b'"):
        add_table("a b", cache / "t.csv", labels="diagnosis")
    with pytest.raises(InputError, match="labels: no column 'label'"):
        add_table("t", cache / "t.csv", labels="label")
    frame.assign(diagnosis="benign").to_csv(cache / "one.csv", index=False)
    with pytest.raises(InputError, match="single class"):
        add_table("t", cache / "one.csv", labels="diagnosis")
    broken = frame.copy()
    broken.loc[[4, 9], "m1"] = np.nan
    broken.to_csv(cache / "nan.csv", index=False)
    with pytest.raises(InputError, match="rows 4, 9 have no label or NaN/inf features"):
        add_table("t", cache / "nan.csv", labels="diagnosis")
    lonely = frame.copy()
    lonely.loc[0, "diagnosis"] = "rare"
    lonely.to_csv(cache / "rare.csv", index=False)
    with pytest.raises(InputError, match="class 'rare' has a single row"):
        add_table("t", cache / "rare.csv", labels="diagnosis")
    assert "t" not in DATASETS  # nothing half-added
    add_table("t", cache / "t.csv", labels="diagnosis")
    with pytest.raises(CincerError, match="data set 't' exists"):
        add_table("t", cache / "t.csv", labels="diagnosis")
    add_table("t", cache / "t.csv", labels="diagnosis", features=["m0", "m1"], force=True)
    assert load_dataset("t").n_features == 2


def test_compare_rankings_on_an_added_table(cache, capsys):
    tumours(cache / "t.csv", n=300)
    assert cli_main(["data", "add", "tumours", str(cache / "t.csv"), "--labels", "diagnosis"]) == 0
    assert "240 train / 60 test, 2 classes" in capsys.readouterr().out
    out = cache / "exp"
    assert cli_main(["compare-rankings", "--dataset", "tumours", "--model", "logreg", "--repeats", "2",
                     "--rounds", "15", "--known", "60", "--epochs", "5", "--methods", "top_fisher,none,random",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    printed = printed[next(i for i, line in enumerate(printed) if line.startswith("ranking")):]
    summary = pd.read_csv(out / "summary.csv").set_index("method")
    table = [line.split() for line in printed[1:4]]
    assert sorted(row[0] for row in table) == ["none", "random", "top_fisher"]
    cleaned = [float(row[1]) for row in table]
    assert cleaned == sorted(cleaned, reverse=True)
    for row in table:
        assert float(row[1]) == pytest.approx(summary.loc[row[0], "cleaned_final_mean"], abs=0.05)
        assert float(row[4]) == pytest.approx(summary.loc[row[0], "queries_final_mean"], abs=0.05)
    assert printed[1].endswith("*")
    assert json.loads((out / "experiment.json").read_text())["experiment"]["dataset"] == "tumours"
    # the same draws for every ranking: the known set and stream are the method's, the noise the same
    traces = {m: pd.read_csv(out / m / "trace.csv") for m in ("top_fisher", "none")}
    first = {m: t[t["round"] == 0]["noisy_known"].tolist() for m, t in traces.items()}
    assert first["top_fisher"] == first["none"]


def test_compare_rankings_bad_input_is_one_line(cache, capsys):
    assert cli_main(["compare-rankings", "--dataset", "nope", "--out", str(cache / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err
    assert cli_main(["compare-rankings", "--methods", "top_fisher,magic", "--out", str(cache / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "magic" in err
    assert cli_main(["data", "add", "breast", str(cache / "missing.csv"), "--labels", "y"]) == 2
    assert "built-in" in capsys.readouterr().err
    assert not (cache / "x").exists()
