"""The benchmark's fast paths agree with its naive per-candidate autograd baselines (correctness, not timing),
and ``cincer bench`` runs end to end at a reduced size."""

import json

import pytest
import torch

from cincer.cli import main as cli_main
from cincer.experiments.bench import (
    BenchConfig,
    check_top_fisher,
    format_table,
    run_benchmark,
    section_per_query,
    section_rounds,
    synthetic_top_layer,
)
from cincer.experiments.naive import naive_lissa, naive_score, naive_scores_dot
from cincer.fisher import scores_dot
from cincer.influence import InfluenceConfig, inverse_hvp
from cincer.models import build_model

TOL = 1e-8


@pytest.mark.parametrize("damping", [0.0, 0.05])
@pytest.mark.parametrize("n_classes", [2, 5])
def test_fast_top_fisher_matches_autograd_loop_and_dense_pinv(damping, n_classes):
    assert check_top_fisher(n=120, hidden=6, n_classes=n_classes, n_known=25, damping=damping) < TOL


def test_naive_baselines_match_vmap_and_jvp_paths():
    model = build_model("fullnet", (6,), 3, seed=1).eval()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 6, generator=g, dtype=torch.float64)
    y = torch.arange(30) % 3
    v = naive_score(model, X[0], int(y[0]))
    torch.testing.assert_close(scores_dot(model, v, X, y, chunk=7), naive_scores_dot(model, v, X, y),
                               atol=TOL * v.norm().item() ** 2, rtol=0)
    config = InfluenceConfig()
    fast = inverse_hvp(model, X, y, v, config)
    torch.testing.assert_close(fast, naive_lissa(model, X, y, v, config), atol=TOL * fast.abs().max().item(), rtol=0)


def test_per_query_section_fast_equals_naive_on_breast():
    cfg = BenchConfig.quick(datasets=("breast",), fim_known=60, train_epochs=3, repeats=1)
    rows = section_per_query(cfg)
    assert [r["case"] for r in rows] == ["practical_fisher breast/fullnet", "influence (LiSSA) breast/fullnet"]
    for r in rows:
        assert r["max_rel_diff"] < TOL and r["same_best"], r
        assert r["candidates"] > 0 and r["fast_s"] > 0 and r["naive_s"] > 0


def test_rounds_section_times_every_stage():
    cfg = BenchConfig.quick(round_cases=(("breast", "fullnet", "fast", 2),), train_epochs=2, fast_epochs=1)
    (row,) = section_rounds(cfg)
    assert row["rounds"] == 2 and len(row["times_s"]) == 2
    assert row["median_s"] >= row["retrain_median_s"] > 0
    assert row["p95_s"] >= row["median_s"]


def test_run_benchmark_scaling_section_is_json_and_bounded_in_memory():
    cfg = BenchConfig.quick(sizes=(50, 20_000), naive_max=30, repeats=1, sections=(1,), fim_known=20, hidden=8,
                            n_classes=4)
    result = run_benchmark(cfg)
    json.dumps(result)
    assert {"cpu", "cores", "torch_threads", "torch", "numpy"} <= set(result["machine"])
    rows = result["rows"]
    assert [r["candidates"] for r in rows] == [50, 20_000, 20_000, 20_000, 20_000]  # f64 x2 cases, f32 x2
    big = [r for r in rows if r["candidates"] == 20_000 and r["dtype"] == "float64" and r["cached_probs"]][0]
    assert big["naive_extrapolated"] and big["naive_measured_on"] == 30
    if big["peak_extra_bytes"] is not None:   # Linux: never materialises per-candidate gradients
        assert big["peak_extra_bytes"] < 2 * big["feature_bytes"] + 8 * 2**20
    assert "top_fisher" in format_table(result)


def test_cnn_layout_section_compares_the_same_function_in_both_layouts():
    cfg = BenchConfig.quick(sections=(6,), repeats=1, layout_images=64, layout_train=(8, 1))
    rows = run_benchmark(cfg)["rows"]
    assert [r["case"] for r in rows] == ["convnet float32 evaluate 64 images", "convnet float32 train 1 epochs on 8",
                                         "convnet float64 evaluate 64 images", "convnet float64 train 1 epochs on 8"]
    assert all(r["fast_s"] > 0 and r["naive_s"] > 0 for r in rows)
    assert rows[1]["max_rel_diff"] < 1e-5 and rows[3]["max_rel_diff"] < 1e-12


def test_synthetic_top_layer_is_reproducible():
    a = synthetic_top_layer(10, 4, 3, 5, seed=3)
    b = synthetic_top_layer(10, 4, 3, 5, seed=3)
    assert all(torch.equal(a[k], b[k]) for k in ("H", "P", "H_known", "weight"))
    torch.testing.assert_close(a["P"].sum(1), torch.ones(10, dtype=torch.float64))


@pytest.mark.parametrize("argv", [["--sections", "9"], ["--sections", "a"], ["--sizes", "0"], ["--repeats", "0"],
                                  ["--threads", "-1"]])
def test_cli_bench_rejects_bad_input(argv, capsys):
    assert cli_main(["bench", "--quick", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cincer: error:") and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.slow
def test_cli_bench_writes_json_and_replots_it(tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "latency.png"
    assert cli_main(["bench", "--quick", "--sections", "1", "--sizes", "20,200", "--repeats", "1",
                     "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["torch_threads"] == 1
    assert [r["candidates"] for r in result["rows"]][:2] == [20, 200]
    assert "speedup" in capsys.readouterr().out
    assert cli_main(["bench", "--from-json", str(out), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli_main(["bench", "--from-json", str(bad)]) == 2
    assert "cannot read benchmark result" in capsys.readouterr().err


def test_the_batched_protocol_section_runs_each_method_both_ways_with_the_same_decisions():
    from cincer.experiments.bench import BenchConfig, run_benchmark

    cfg = BenchConfig.quick(sections=(8,), train_epochs=3, batched_cases=(("breast", "fullnet", "q1", 3),))
    row, training = run_benchmark(cfg)["rows"]
    assert row["members"] == 6 * 5 and row["same_decisions"] and row["max_f1_diff"] < 1e-9
    assert training["members"] == 3 and training["max_weight_diff"] < 1e-12 and training["speedup_cpu"] > 0
    assert row["naive_cpu_s"] > 0 and row["fast_cpu_s"] > 0 and set(row["cleaned"]) == set(row["methods"])
    assert all(a == b for a, b in row["cleaned"].values())
