"""The `cincer run` command: outputs, and one-line errors with exit code 2 on bad input."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from cincer.cli import main

BAD = [
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--selector", "oracle"], "unknown selector 'oracle'"),
    (["--inspector", "psychic"], "unknown inspector 'psychic'"),
    (["--noise", "1.0"], "--noise must be in [0, 1)"),
    (["--noise", "-0.1"], "--noise must be in [0, 1)"),
    (["--known", "100000"], "exceeds the"),
    (["--threshold", "0"], "--threshold must be in (0, 1)"),
    (["--threshold", "1.5"], "--threshold must be in (0, 1)"),
    (["--rounds", "x"], "invalid int value"),
    (["--model", "convnet", "--dataset", "breast"], "convnet needs image input"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_is_one_line_exit_2(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cincer.cli", "run", "--rounds", "1", "--repeats", "1",
                           "--epochs", "1", "--quiet", "--out", str(tmp_path / "out"), *args],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_run_writes_config_trace_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--dataset", "iris", "--known", "20", "--rounds", "6", "--repeats", "2", "--epochs", "3",
                 "--seed", "7", "--quiet", "--out", str(out)])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["seed"] == 7 and config["config"]["train"]["epochs"] == 3
    assert {"cincer", "torch"} <= set(config["versions"])
    trace = pd.read_csv(out / "trace.csv")
    assert len(trace) == 2 * 7 and {"f1", "ece", "queries", "cleaned_ce", "pr5", "case"} <= set(trace.columns)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("f1_initial_mean", "f1_final_mean", "f1_final_std", "cleaned_final_mean",
                "cleaned_ce_final_mean", "queries_final_mean", "seconds"):
        assert key in summary
    assert summary["f1_final_mean"] == pytest.approx(trace[trace["round"] == 6]["f1"].mean())
    printed = capsys.readouterr().out
    assert "F1 final" in printed and "counter-examples" in printed
