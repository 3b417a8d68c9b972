"""Q1/Q2/Q3 protocols, sweeps (local processes and a Dask cluster), resume and plots, on reduced sizes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cincer.cli import main as cli_main
from cincer.errors import CincerError
from cincer.experiments import ExperimentConfig, load_sweep, method_config, read_experiment, run_experiment, run_sweep
from cincer.experiments.plots import Q1Q3_COLUMNS, Q2_COLUMNS
from cincer.experiments.sweep import Task, run_tasks
from cincer.fisher import DEFAULT_TRUNCATE

# tiny: synthetic (2-d, 4 classes), one repeat, four rounds, a few epochs; tau low enough to ask
TINY = dict(dataset="synthetic", model="fullnet", repeats=1, rounds=4, epochs=3, threshold=0.05)
SILENT = lambda *_: None


def read_summary(folder, method) -> dict:
    return json.loads((folder / method / "summary.json").read_text())


@pytest.fixture(scope="module")
def q1(tmp_path_factory):
    out = tmp_path_factory.mktemp("q1")
    frame = run_experiment(ExperimentConfig(question="q1", methods=["top_fisher", "none", "upper_bound"], **TINY),
                           out, log=SILENT)
    return out, frame


@pytest.fixture(scope="module")
def q2(tmp_path_factory):
    out = tmp_path_factory.mktemp("q2")
    exp = ExperimentConfig(question="q2", methods=["top_fisher", "full_fisher", "nearest", "random"],
                           overrides={"full_fisher_max_params": 10}, **{**TINY, "rounds": 40})
    return out, run_experiment(exp, out, log=SILENT)


def test_q1_writes_every_method_and_the_experiment(q1):
    out, frame = q1
    meta = json.loads((out / "experiment.json").read_text())
    assert meta["experiment"]["question"] == "q1"
    assert meta["experiment"]["methods"] == ["top_fisher", "none", "upper_bound"]
    assert meta["experiment"]["known"] == 100  # the paper's default is filled in
    for method in ("top_fisher", "none", "upper_bound"):
        for name in ("config.json", "trace.csv", "summary.json"):
            assert (out / method / name).is_file()
        trace = pd.read_csv(out / method / "trace.csv")
        assert len(trace) == TINY["repeats"] * (TINY["rounds"] + 1)
    assert list(pd.read_csv(out / "summary.csv")["method"]) == ["top_fisher", "none", "upper_bound"]
    # upper bound: clean labels, never asks
    upper = json.loads((out / "upper_bound" / "config.json").read_text())["config"]
    assert upper["noise"] == 0.0 and upper["inspector"] == "never"
    assert read_summary(out, "upper_bound")["queries_final_mean"] == 0
    assert read_summary(out, "upper_bound")["noisy_known_final_mean"] == 0
    # CINCER cleans counter-examples; no_ce never does
    cincer, none = read_summary(out, "top_fisher"), read_summary(out, "none")
    assert cincer["queries_final_mean"] > 0
    assert none["cleaned_ce_final_mean"] == 0
    assert cincer["cleaned_final_mean"] <= 2 * cincer["queries_final_mean"]


def test_method_variants_carry_the_papers_settings():
    exp = ExperimentConfig(question="q3", dataset="rotten_tomatoes").resolved()
    assert exp.known == 500 and exp.repeats == 5 and exp.rounds == 100 and exp.epochs == 100
    assert exp.methods == ["cincer", "top_fisher", "top_fisher_paper", "practical_fisher", "nearest", "influence",
                           "random", "upper_bound"]
    paper, exact = method_config(exp, "top_fisher_paper"), method_config(exp, "top_fisher")
    # the reproduction pins the paper's pseudo-inverse; "cincer" is the product's default, truncated
    assert (paper.selector, paper.fim_samples, paper.damping, paper.truncate) == ("top_fisher", 30, 0.0, 0.0)
    assert (exact.selector, exact.fim_samples, exact.relative_damping, exact.truncate) == ("top_fisher", None, 0.0, 0.0)
    assert method_config(exp, "drop_ce").truncate == 0.0
    default = method_config(exp, "cincer")
    assert (default.selector, default.fim_samples, default.truncate) == ("top_fisher", None, DEFAULT_TRUNCATE)
    study = ExperimentConfig(question="q2", overrides={"truncate": 0.5})
    assert method_config(study, "cincer").truncate == 0.5
    with pytest.raises(CincerError, match="method top_fisher fixes truncate=0.0"):  # not silently ignored
        method_config(study, "top_fisher")
    assert method_config(ExperimentConfig(overrides={"relative_damping": 1.0}), "cincer").truncate == 0.0
    damped = method_config(exp, "top_fisher_damped")
    assert (damped.selector, damped.fim_samples, damped.damping, damped.relative_damping) == ("top_fisher", None, 0.0,
                                                                                             1.0)
    assert method_config(exp, "none").selector == "none"
    assert ExperimentConfig(question="q1", dataset="breast").resolved().known == 100
    with pytest.raises(CincerError, match="unknown method"):
        ExperimentConfig(methods=["top_fisher_exact"]).resolved()
    with pytest.raises(CincerError, match="unknown question"):
        ExperimentConfig(question="q4").resolved()
    with pytest.raises(CincerError, match="unknown dataset"):
        ExperimentConfig(dataset="nope").resolved()


def test_q2_ranks_the_fixed_models_mistakes(q2):
    out, frame = q2
    assert read_summary(out, "full_fisher")["status"] == "infeasible"
    assert "full_fisher needs" in read_summary(out, "full_fisher")["reason"]
    traces = {m: pd.read_csv(out / m / "trace.csv") for m in ("top_fisher", "nearest", "random")}
    # every method ranks the same queries: the stream examples the model (trained once) gets wrong
    queries = [list(t["query_index"]) for t in traces.values()]
    assert queries[0] and queries[0] == queries[1] == queries[2]
    for method, trace in traces.items():
        assert (trace["label"] != trace["prediction"]).all()
        for k in (5, 10, 25):
            top = np.minimum(k, trace["n_candidates"])
            hits = trace[f"pr{k}"] * top
            assert np.allclose(hits, np.round(hits))  # a fraction of the top-k
            assert trace[f"pr{k}"].between(0, 1).all()
            assert (hits <= trace["noisy_candidates"]).all()
        s = read_summary(out, method)
        assert s["pr5_mean"] == pytest.approx(trace["pr5"].mean())
    written = pd.read_csv(out / "summary.csv")
    assert set(written["method"]) == {"top_fisher", "full_fisher", "nearest", "random"}


def test_q3_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "q3"
    argv = ["experiment", "q3", "--dataset", "synthetic", "--repeats", "1", "--rounds", "3", "--epochs", "2",
            "--threshold", "0.05", "--methods", "top_fisher_paper,nearest", "--out", str(out)]
    assert cli_main(argv) == 0
    assert "top_fisher_paper" in capsys.readouterr().out
    assert json.loads((out / "top_fisher_paper" / "config.json").read_text())["config"]["fim_samples"] == 30
    assert read_experiment(out).methods == ["top_fisher_paper", "nearest"]
    assert cli_main(["experiment", "q3", "--methods", "bogus", "--out", str(tmp_path / "x")]) == 2
    assert "unknown method 'bogus'" in capsys.readouterr().err


def test_resume_skips_finished_methods(tmp_path):
    exp = ExperimentConfig(question="q1", methods=["none", "top_fisher_paper"], **{**TINY, "rounds": 2})
    out = tmp_path / "exp"
    run_experiment(exp, out, log=SILENT)
    finished = (out / "none" / "summary.json").stat().st_mtime_ns
    # simulate an interruption of the second method: its folder is there but not finished
    (out / "top_fisher_paper" / "summary.json").unlink()
    (out / ".top_fisher_paper.tmp-1-dead").mkdir()  # a crashed writer's leftovers are ignored
    log: list[str] = []
    run_experiment(exp, out, log=log.append)
    assert (out / "none" / "summary.json").stat().st_mtime_ns == finished
    assert (out / "top_fisher_paper" / "summary.json").is_file()
    assert sum("top_fisher_paper: ok" in line for line in log) == 1
    assert not any("none:" in line for line in log)
    # force redoes it
    run_experiment(exp, out, force=True, log=SILENT)
    assert (out / "none" / "summary.json").stat().st_mtime_ns != finished


def test_interrupted_method_resumes_at_its_next_repeat(tmp_path, monkeypatch):
    import cincer.experiments.simulate as simulate

    exp = ExperimentConfig(question="q1", methods=["top_fisher_paper"], **{**TINY, "repeats": 3})
    whole = tmp_path / "whole"
    run_experiment(exp, whole, log=SILENT)
    assert not (whole / ".top_fisher_paper.partial").exists()  # removed once the method is finished

    real_run_repeat, calls = simulate.run_repeat, []

    def crash_on_third(config, data, repeat, **kw):
        calls.append(repeat)
        if repeat == 2:
            raise KeyboardInterrupt  # the machine goes away mid-method
        return real_run_repeat(config, data, repeat, **kw)

    out = tmp_path / "resumed"
    monkeypatch.setattr(simulate, "run_repeat", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, out, log=SILENT)
    assert not (out / "top_fisher_paper" / "summary.json").exists()
    assert sorted(p.name for p in (out / ".top_fisher_paper.partial").iterdir()) == ["repeat-0.json", "repeat-1.json"]

    monkeypatch.setattr(simulate, "run_repeat", lambda *a, **kw: calls.append(a[2]) or real_run_repeat(*a, **kw))
    run_experiment(exp, out, log=SILENT)
    assert calls == [0, 1, 2, 2]  # repeats 0 and 1 were not redone
    timing = [c for c in pd.read_csv(whole / "top_fisher_paper" / "trace.csv").columns if "seconds" in c]
    a, b = (pd.read_csv(d / "top_fisher_paper" / "trace.csv").drop(columns=timing) for d in (whole, out))
    pd.testing.assert_frame_equal(a, b)
    assert read_summary(out, "top_fisher_paper")["seconds"] > 0

    # a saved repeat of other settings is not reused
    from cincer.experiments.simulate import load_repeat, save_repeat
    config = method_config(exp, "top_fisher_paper")
    save_repeat(tmp_path / "p", config, 0, {"rows": [], "seconds": 1.0})
    assert load_repeat(tmp_path / "p", config, 0) is not None
    other = method_config(ExperimentConfig(question="q1", **{**TINY, "epochs": 4}), "top_fisher_paper")
    assert load_repeat(tmp_path / "p", other, 0) is None
    assert load_repeat(tmp_path / "p", config, 1) is None


@pytest.mark.slow
def test_a_repeat_run_elsewhere_resumes_the_method(tmp_path, monkeypatch):
    """scripts/repeats_on_device.py: one repeat run in its own process on a named device and saved as a
    checkpoint is taken as is by the experiment, and equals the repeat the experiment would have run."""
    import runpy

    import cincer.experiments.simulate as simulate

    script = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "repeats_on_device.py"))
    script["main"](["--dataset", "synthetic", "--model", "fullnet", "--repeats", "2", "--rounds", "12",
                    "--epochs", "30", "--device", "cpu", "--out", str(tmp_path / "elsewhere"), "q1:drop_ce:1"])
    exp = ExperimentConfig(question="q1", dataset="synthetic", model="fullnet", methods=["drop_ce"],
                           repeats=2, rounds=12, epochs=30)
    real_run_repeat, calls = simulate.run_repeat, []
    monkeypatch.setattr(simulate, "run_repeat", lambda *a, **kw: calls.append(a[2]) or real_run_repeat(*a, **kw))
    run_experiment(exp, tmp_path / "elsewhere" / "q1", log=SILENT)
    assert calls == [0]  # repeat 1 came from the script
    run_experiment(exp, tmp_path / "here", log=SILENT)
    timing = [c for c in pd.read_csv(tmp_path / "here" / "drop_ce" / "trace.csv").columns if "seconds" in c]
    a, b = (pd.read_csv(d / "drop_ce" / "trace.csv").drop(columns=timing)
            for d in (tmp_path / "here", tmp_path / "elsewhere" / "q1"))
    pd.testing.assert_frame_equal(a, b)
    assert (a["queries"] > 0).any()  # the selector ran


def write_sweep(tmp_path, out) -> os.PathLike:
    path = tmp_path / "sweep.toml"
    path.write_text(f"""
out = "{out}"
[defaults]
dataset = "synthetic"
model = "fullnet"
repeats = 1
rounds = 2
epochs = 2
threshold = 0.05
[[experiment]]
question = "q1"
methods = ["none", "top_fisher_paper"]
[[experiment]]
question = "q3"
methods = ["top_fisher_paper", "random"]
[[experiment]]
question = "q2"
methods = ["nearest"]
rounds = 20
""")
    return path


def test_device_option(q2, tmp_path, capsys, monkeypatch):
    """--device: a bad name or a missing GPU is a one-line error before anything is written; on the CPU,
    Q2's fixed-model path gives the default run's results (the loop's: test_a_repeat_run_elsewhere...)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    experiment = ["experiment", "q2", "--dataset", "synthetic", "--out", str(tmp_path / "x")]
    sweep = ["sweep", str(write_sweep(tmp_path, tmp_path / "x"))]
    for argv in (experiment, sweep):
        assert cli_main(argv + ["--device", "bogus"]) == 2
        assert "unknown device 'bogus'" in capsys.readouterr().err
        assert cli_main(argv + ["--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    out, _ = q2
    exp = read_experiment(out)
    run_experiment(exp, tmp_path / "cpu", device="cpu", log=SILENT)
    for method in exp.methods:
        a, b = (pd.read_csv(d / method / "trace.csv").drop(columns="select_seconds") for d in (out, tmp_path / "cpu"))
        pd.testing.assert_frame_equal(a, b)


def check_sweep(root) -> None:
    for question, methods in (("q1", ["none", "top_fisher_paper"]), ("q3", ["top_fisher_paper", "random"]),
                              ("q2", ["nearest"])):
        folder = root / "synthetic-fullnet" / question
        assert read_experiment(folder).question == question
        assert list(pd.read_csv(folder / "summary.csv")["method"]) == methods
    # top_fisher_paper is the same run in Q1 and Q3: computed once, copied
    a = pd.read_csv(root / "synthetic-fullnet" / "q1" / "top_fisher_paper" / "trace.csv")
    b = pd.read_csv(root / "synthetic-fullnet" / "q3" / "top_fisher_paper" / "trace.csv")
    pd.testing.assert_frame_equal(a, b)


def test_sweep_local_processes_and_resume(tmp_path):
    root = tmp_path / "runs"
    sweep = load_sweep(write_sweep(tmp_path, root))
    assert len(sweep.experiments) == 3
    records = run_sweep(sweep, jobs=2, log=SILENT)
    assert sorted(r["method"] for r in records) == ["nearest", "none", "random", "top_fisher_paper"]  # dedup
    check_sweep(root)
    # resume: nothing finished is redone
    q2_done = (root / "synthetic-fullnet" / "q2" / "nearest" / "summary.json").stat().st_mtime_ns
    (root / "synthetic-fullnet" / "q3" / "random" / "summary.json").unlink()
    records = run_sweep(load_sweep(write_sweep(tmp_path, root)), jobs=2, log=SILENT)
    assert [r["method"] for r in records] == ["random"]
    assert (root / "synthetic-fullnet" / "q2" / "nearest" / "summary.json").stat().st_mtime_ns == q2_done


@pytest.mark.slow
def test_sweep_on_a_dask_cluster(tmp_path):
    from distributed import LocalCluster

    root = tmp_path / "runs"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        records = run_sweep(load_sweep(write_sweep(tmp_path, root)), cluster=cluster.scheduler_address, log=SILENT)
    assert len(records) == 4
    check_sweep(root)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "docs" / "results").glob("*.toml")),
                         ids=lambda p: p.name)
def test_published_sweep_files_resolve(path):
    """The sweep files the reproduction tells people to run name real data sets, models and methods."""
    sweep = load_sweep(path)
    assert sweep.experiments and all(str(target).startswith("runs/") for _, target in sweep.experiments)


@pytest.mark.slow
def test_sweep_file_errors(tmp_path):
    with pytest.raises(CincerError, match="no such sweep file"):
        load_sweep(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid\n")
    with pytest.raises(CincerError, match="invalid TOML"):
        load_sweep(bad)
    bad.write_text('[[experiment]]\nquestion = "q1"\nepochz = 3\n')
    with pytest.raises(CincerError, match="epochz"):
        load_sweep(bad)
    grid = tmp_path / "grid.toml"
    grid.write_text('out = "r"\n[grid]\nquestions = ["q1", "q2"]\npairs = [["breast", "fullnet"], '
                    '["adult", "fullnet"]]\n')
    assert [e.label for e, _ in load_sweep(grid).experiments] == [
        "breast/fullnet/q1", "breast/fullnet/q2", "adult/fullnet/q1", "adult/fullnet/q2"]
    grid.write_text('[grid]\nquestions = ["q1"]\npairs = [["breast", "fullnet"], ["mnist", "convnet", {bits = 32}]]\n')
    assert [(e.label, e.bits) for e, _ in load_sweep(grid).experiments] == [
        ("breast/fullnet/q1", 64), ("mnist/convnet/q1", 32)]  # per-pair settings
    grid.write_text('[grid]\npairs = [["breast", "fullnet", 32]]\n')
    with pytest.raises(CincerError, match="each \\[grid\\] pair"):
        load_sweep(grid)
    assert cli_main(["sweep", str(tmp_path / "missing.toml")]) == 2
    with pytest.raises(CincerError, match="Dask scheduler"):
        run_tasks([Task(ExperimentConfig(question="q1", methods=["none"], **TINY).resolved(), "none", tmp_path)],
                  cluster="tcp://127.0.0.1:1", log=SILENT)


def test_plot_figures_tables_and_markdown(q1, q2, tmp_path, capsys):
    (out1, _), (out2, _) = q1, q2
    dest = tmp_path / "figs"
    assert cli_main(["plot", str(out1), str(out2), "--out", str(dest)]) == 0
    for q in ("q1", "q2"):
        assert (dest / f"synthetic-fullnet-{q}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (dest / f"synthetic-fullnet-{q}.pdf").read_bytes()[:5] == b"%PDF-"
    assert read_experiment(dest / "runs" / "synthetic-fullnet-q1").methods == ["top_fisher", "none", "upper_bound"]
    md = (dest / "results.md").read_text()
    assert "REDUCED" in md and "| top_fisher |" in md and "| no_ce |" in md and "infeasible" in md
    q1q3 = pd.read_csv(dest / "q1_q3.csv")
    assert list(q1q3.columns) == Q1Q3_COLUMNS
    assert set(q1q3["selector"]) == {"top_fisher", "none", "upper_bound"}
    row = q1q3.set_index("selector").loc["top_fisher"]
    assert row["f1_final_mean"] == pytest.approx(read_summary(out1, "top_fisher")["f1_final_mean"], abs=1e-4)
    q2csv = pd.read_csv(dest / "q2.csv")
    assert list(q2csv.columns) == Q2_COLUMNS
    assert np.isnan(q2csv.set_index("selector").loc["full_fisher", "pr5"])
    assert cli_main(["plot", str(tmp_path / "nothing-here"), "--out", str(dest)]) == 2
    assert "no such folder" in capsys.readouterr().err
    # the original draw.py's --summary: F1 and # cleaned only (two panels: a narrower figure)
    import matplotlib.image

    two = tmp_path / "two"
    assert cli_main(["plot", str(out1), "--out", str(two), "--panels", "f1,cleaned"]) == 0
    width = matplotlib.image.imread(two / "synthetic-fullnet-q1.png").shape[1]
    assert width < matplotlib.image.imread(dest / "synthetic-fullnet-q1.png").shape[1] * 0.8
    assert cli_main(["plot", str(out1), "--out", str(two), "--panels", "f1,loss"]) == 2
    assert "--panels must be" in capsys.readouterr().err


def test_a_failing_method_does_not_stop_the_others(tmp_path):
    # full_fisher inside the loop above its size limit fails; 'none' still finishes, and the error is reported
    exp = ExperimentConfig(question="q3", methods=["full_fisher", "none"], overrides={"full_fisher_max_params": 10},
                           **TINY)
    with pytest.raises(CincerError, match="1 method run.* failed.*full_fisher.*full_fisher needs"):
        run_experiment(exp, tmp_path, log=SILENT)
    assert (tmp_path / "none" / "summary.json").is_file()
    assert not (tmp_path / "full_fisher").exists()


def test_methods_run_a_few_at_a_time_share_the_folder(tmp_path):
    out = tmp_path / "exp"
    small = {**TINY, "rounds": 1}
    run_experiment(ExperimentConfig(question="q1", methods=["upper_bound"], **small), out, log=SILENT)
    frame = run_experiment(ExperimentConfig(question="q1", methods=["none"], **small), out, log=SILENT)
    assert read_experiment(out).methods == ["none", "upper_bound"]  # the question's order
    assert list(frame["method"]) == ["none", "upper_bound"]
    with pytest.raises(CincerError, match="other settings.*epochs"):
        run_experiment(ExperimentConfig(question="q1", methods=["none"], **{**small, "epochs": 5}), out, log=SILENT)
