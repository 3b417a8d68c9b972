"""cleanlab side by side: the cleanlab inspector and the compare-cleanlab experiment (tiny sizes)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cincer.cli import main
from cincer.errors import CincerError
from cincer.experiments.compare import CompareConfig, cross_val_probs, prepare_data, run_compare, summarize
from cincer.inspect import INSPECTORS, label_quality
from cincer.models import TrainConfig


def test_cleanlab_inspector_uses_self_confidence():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.45, 0.45]])
    np.testing.assert_allclose(label_quality(probs, np.array([1, 2])), [0.2, 0.45])
    inspect = INSPECTORS["cleanlab"](threshold=0.3)
    rng = np.random.default_rng(0)
    assert inspect(probs[0], 1, rng) and not inspect(probs[0], 0, rng)
    assert not inspect(probs[1], 2, rng)  # quality 0.45 >= 0.3, though the margin is 0
    with pytest.raises(CincerError, match="threshold"):
        INSPECTORS["cleanlab"](threshold=0.0)


def test_cross_val_probs_are_out_of_sample():
    config = CompareConfig(dataset="iris", model="logreg", folds=3, train=TrainConfig(epochs=30))
    data = prepare_data(config)
    X = torch.as_tensor(data.X_train, dtype=torch.float64)
    labels = data.y_train.copy()
    labels[:5] = (labels[:5] + 1) % 3  # in-sample, a flexible model would learn these flipped labels
    probs = cross_val_probs(config, X, labels, 3, seed=0)
    assert probs.shape == (len(labels), 3)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    quality = label_quality(probs, labels)
    assert np.mean(quality[:5]) < np.mean(quality[5:])


def test_compare_cleanlab_command_writes_results(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare-cleanlab", "--dataset", "breast", "--model", "logreg", "--budget", "6", "--repeats", "2",
                 "--epochs", "5", "--known", "40", "--folds", "3", "--train-size", "120", "--test-size", "60",
                 "--threshold", "0.05", "--out", str(out), "--quiet"])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["budget"] == 6 and config["data"]["train_rows"] == 120
    assert "ONE question" in config["counting"]
    results = pd.read_csv(out / "results.csv")
    methods_all = ["cleanlab", "cincer_stream", "cincer_audit", "cleanlab_same_examples", "noisy", "clean"]
    assert sorted(set(results["method"])) == sorted(methods_all) and len(results) == 12
    methods = results[results["method"].isin(methods_all[:3])]
    assert (methods["questions"] <= 6).all() and (methods["inspected"] <= 2 * methods["questions"]).all()
    assert (methods["fixed"] == methods["noisy_before"] - methods["noisy_after"]).all()
    assert (methods["fixed"] == methods["fixed_suspicious"] + methods["fixed_ce"]).all()
    cleanlab = results[results["method"] == "cleanlab"]
    assert (cleanlab["questions"] == 6).all() and (cleanlab["fixed_ce"] == 0).all()
    audit = results[results["method"] == "cincer_audit"].set_index("repeat")
    assert (audit["questions"] > 0).all()  # the 5-epoch model is unsure: a low threshold gives the audit work
    same = results[results["method"] == "cleanlab_same_examples"].set_index("repeat")
    assert (same["questions"] == audit["inspected"]).all()
    assert (same["fixed"] >= cleanlab.set_index("repeat")["fixed"]).all()
    assert (results.loc[results["method"] == "clean", "noisy_after"] == 0).all()
    assert (results.loc[results["method"] == "noisy", "noisy_after"] == 24).all()  # 20% of 120
    assert results["f1"].between(0, 1).all()
    table = (out / "summary.md").read_text()
    assert "| cincer_audit |" in table and table in capsys.readouterr().out
    assert list(pd.read_csv(out / "summary.csv")["method"])[:4] == methods_all[:4]


def test_compare_is_reproducible_with_a_seed():
    config = CompareConfig(dataset="iris", model="logreg", budget=4, repeats=1, known=30, folds=2,
                           train=TrainConfig(epochs=3))
    first, second = run_compare(config), run_compare(config)
    cols = ["method", "questions", "fixed", "noisy_after", "f1"]
    pd.testing.assert_frame_equal(first[cols], second[cols])
    assert list(summarize(first).index) == ["cleanlab", "cincer_stream", "cincer_audit", "cleanlab_same_examples",
                                            "noisy", "clean"]


@pytest.mark.parametrize("args, message", [
    (["--budget", "0"], "--budget must be at least 1"),
    (["--known", "500"], "leaves no stream"),
    (["--stream-retrain", "never"], "--stream-retrain"),
    (["--dataset", "nope"], "unknown dataset"),
    (["--selector", "nope"], "unknown selector"),
    (["--noise-kind", "nope"], "--noise-kind"),
    (["--threshold", "1.5"], "threshold must be in (0, 1)"),
])
def test_compare_cleanlab_bad_input_is_one_line(tmp_path, capsys, args, message):
    code = main(["compare-cleanlab", "--out", str(tmp_path / "x"), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_cincer_run_accepts_the_cleanlab_inspector(tmp_path):
    code = main(["run", "--dataset", "iris", "--model", "logreg", "--inspector", "cleanlab", "--threshold", "0.6",
                 "--known", "20", "--rounds", "4", "--repeats", "1", "--epochs", "2", "--quiet",
                 "--out", str(tmp_path / "run")])
    assert code == 0
    trace = pd.read_csv(tmp_path / "run" / "trace.csv")
    assert trace["queries"].iloc[-1] >= 1  # an untrained-ish logreg is unsure: quality < 0.6 somewhere
