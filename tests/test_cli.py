"""The command line: outputs, one-line errors with exit code 2 on bad input, and ``--threads``.

Commands run in-process through ``main([...])``; one subprocess smoke test checks the real entry point.
"""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from cincer.cli import main

QUICK_RUN = ["run", "--rounds", "1", "--repeats", "1", "--epochs", "1", "--quiet"]
BAD = [
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--selector", "oracle"], "unknown selector 'oracle'"),
    (["--inspector", "psychic"], "unknown inspector 'psychic'"),
    (["--noise", "1.0"], "--noise must be in [0, 1)"),
    (["--noise", "-0.1"], "--noise must be in [0, 1)"),
    (["--known", "100000"], "exceeds the"),
    (["--threshold", "0"], "threshold must be in (0, 1)"),
    (["--threshold", "1.5"], "threshold must be in (0, 1)"),
    (["--rounds", "x"], "invalid int value"),
    (["--model", "convnet", "--dataset", "breast"], "convnet needs image input"),
    # once silent, or a traceback mid-run
    (["--selector", "influence", "--if-solver", "nope", "--inspector", "always"], "--if-solver must be one of"),
    (["--selector", "nearest", "--damping", "1"], "--damping: not an option of inspector 'margin' or selector"),
    (["--inspector", "always", "--threshold", "0.3"], "--threshold: not an option of inspector 'always'"),
    (["--selector", "top_fisher", "--if-damping", "0.5"], "--if-damping: not an option of inspector 'margin'"),
    (["--fim-samples", "0"], "fim_samples must be a positive integer"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--lissa-depth", "0"], "--lissa-depth must be at least 1"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_is_one_line_exit_2(args, message, tmp_path, capsys):
    code = main([*QUICK_RUN, "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_misspelt_experiment_override_is_refused(tmp_path, capsys):
    assert main(["experiment", "q1", "--set", "dampnig=1", "--out", str(tmp_path / "e")]) == 2
    assert "unknown RunConfig field 'dampnig'" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_the_entry_point_reports_bad_input_on_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cincer.cli", *QUICK_RUN, "--out", str(tmp_path / "out"),
                           "--dataset", "nope"], capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("cincer: error: unknown dataset 'nope'")


@pytest.mark.parametrize("argv, threads", [
    (["--threads", "3", "data", "list"], 3),
    (["data", "--threads", "2", "list"], 2),
    (["data", "list", "--threads", "4"], 4),
    (["data", "list"], 1),
])
def test_threads_is_one_option_accepted_before_or_after_the_command(argv, threads, capsys, monkeypatch):
    monkeypatch.delenv("CINCER_THREADS", raising=False)
    assert main(argv) == 0
    assert torch.get_num_threads() == threads


def test_threads_reach_the_workers_of_a_sweep(monkeypatch, tmp_path):
    import cincer.commands.sweep as command

    seen = {}
    monkeypatch.setattr(command, "run_sweep", lambda sweep, **kw: seen.update(kw) or [])
    sweep = tmp_path / "s.toml"
    sweep.write_text('[[experiment]]\nquestion = "q1"\ndataset = "iris"\nmodel = "logreg"\n')
    assert main(["--threads", "4", "sweep", str(sweep), "--out", str(tmp_path / "o")]) == 0
    assert seen["threads"] == 4
    assert main(["sweep", str(sweep), "--threads", "0", "--out", str(tmp_path / "o")]) == 0
    assert seen["threads"] is None  # 0: torch's default in each worker
    monkeypatch.setenv("CINCER_THREADS", "2")
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "o")]) == 0 and seen["threads"] == 2


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


def test_help_lists_every_option_with_its_help_text(capsys):
    assert main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--dataset", "--threshold", "--fim-samples", "--if-solver", "--lissa-depth", "--warm-start",
                 "--batch-size", "--threads"):
        assert flag in text, flag
    assert "fraction of training labels flipped (default: 0.2)" in text


def test_options_with_the_same_field_name_in_nested_configurations_stay_apart(tmp_path):
    """--damping (the Fisher selectors) and --if-damping (influence) are both a field named damping."""
    out = tmp_path / "out"
    assert main([*QUICK_RUN, "--dataset", "iris", "--known", "20", "--selector", "influence", "--if-damping", "0.5",
                 "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["influence"]["damping"] == 0.5 and config["damping"] == 0.0
