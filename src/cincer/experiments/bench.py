"""Speed benchmark: the fast paths of :mod:`cincer.fisher` / :mod:`cincer.select` against naive baselines.

Every naive baseline computes the same formula the way the paper's code did: a Python loop over the
candidates, one ``torch.autograd.grad`` per candidate, then a dot product with ``F^+ g_t`` (or
``H^{-1} g_t``). Fast and naive are timed in the same process, one after the other, so their ratio
is meaningful even on a shared, noisy machine. ``run_benchmark`` returns a JSON-able dict;
:mod:`cincer.commands.bench` prints it as a table. ``check_*`` functions return the largest
discrepancy between a fast path and its baseline (used by the tests).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .. import __version__
from ..cleaning import CleaningConfig
from ..data import flip_labels, load_dataset
from ..fisher import DEFAULT_TRUNCATE, FisherSolver, TopLayerFisher, head_kernel, top_layer_kernel, top_layer_scores
from ..influence import InfluenceConfig
from ..inspect import INSPECTORS
from ..loop import CleaningLoop, OracleAnnotator
from ..metrics import test_metrics
from ..models import TrainConfig, build_model, predict_proba, train
from ..models.batched import Member, train_together
from ..select import SELECTORS
from . import scale
from .naive import (
    head_params,
    naive_dense_fim,
    naive_lissa,
    naive_score,
    naive_scores_dot,
    naive_top_fisher_vector,
    naive_top_kernel,
    naive_top_score,
)
from .protocols import ExperimentConfig, method_config
from .simulate import RunConfig, run, run_together


@dataclass
class BenchConfig:
    """Sizes of every section; ``quick()`` is the CI / smoke-test size."""

    seed: int = 0
    sizes: tuple[int, ...] = (100, 1_000, 10_000, 100_000, 1_000_000)   # section 1: number of candidates
    naive_max: int = 1_000          # section 1: naive baseline timed on at most this many candidates
    fim_known: int = 200            # known examples in every FIM
    hidden: int = 32                # section 1: fullnet's penultimate width
    n_classes: int = 10
    repeats: int = 5                # timed repetitions (median reported)
    mnist_pinv_eigh: bool = True    # section 2: also time the always-eigh pinv
    datasets: tuple[str, ...] = ("breast", "mnist")   # section 3
    round_cases: tuple[tuple[str, str, str, int], ...] = (   # section 4: dataset, model, mode, rounds
        ("breast", "fullnet", "paper", 10), ("breast", "fullnet", "fast", 10),
        ("mnist", "convnet", "paper", 3), ("mnist", "convnet", "fast", 5))
    fast_epochs: int = 10
    train_epochs: int = 100         # paper: 100 epochs from the initial weights
    q1: bool = True                 # section 5
    q1_log: str = "/tmp/breast_top_fisher.log"
    layout_images: int = 10_000     # section 6: MNIST-shaped images evaluated (the test set's size)
    layout_train: tuple[int, int] = (150, 10)   # section 6: images and epochs of the timed training
    sections: tuple[int, ...] = (1, 2, 3, 4, 5, 6)   # 7 (scale) and 8 (batched) only when asked for: minutes
    scale_quick: bool = False       # section 7 at smoke-test sizes
    batched_cases: tuple[tuple[str, str, str, int], ...] = (("breast", "fullnet", "q1", 100),)  # section 8
    # section 8, training alone: model, members, rows each, epochs, bits (convnet: MNIST-shaped, float32)
    batched_training: tuple[tuple[str, int, int, int, int], ...] = (
        ("fullnet", 5, 150, 20, 64), ("fullnet", 30, 150, 20, 64), ("convnet", 5, 150, 3, 32))

    @classmethod
    def quick(cls, **kw) -> BenchConfig:
        base: dict[str, Any] = dict(
            sizes=(100, 10_000, 100_000), naive_max=200, repeats=3, mnist_pinv_eigh=False,
            round_cases=(("breast", "fullnet", "paper", 2), ("breast", "fullnet", "fast", 2)),
            q1=False, layout_images=512, layout_train=(40, 1), scale_quick=True,
            batched_cases=(("breast", "fullnet", "q1", 2),), batched_training=(("fullnet", 3, 40, 2, 64),))
        base.update(kw)
        return cls(**base)


# --------------------------------------------------------------------------- measuring

def machine() -> dict:
    """CPU model, cores, thread count and library versions."""
    cpu = platform.processor() or ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"model name\s*:\s*(.+)", text)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {"cpu": cpu, "cores": os.cpu_count(), "affinity_cores": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "cincer": __version__,
            "load_average_at_start": [round(x, 2) for x in load]}


class Timing(NamedTuple):
    """Median wall time, every wall time, median CPU time (on a shared machine the wall time includes
    waiting for a core, the CPU time does not) and the last result."""

    wall: float
    times: list[float]
    cpu: float
    result: Any


def timed(fn: Callable[[], Any], repeats: int) -> Timing:
    """``repeats`` timed calls after one warm-up call."""
    result = fn()
    times, cpu = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return Timing(statistics.median(times), times, statistics.median(cpu), result)


def peak_extra_memory(fn: Callable[[], object]) -> tuple[int | None, object]:
    """Bytes by which the resident set's high-water mark rose while ``fn`` ran (Linux; ``None`` elsewhere).

    torch tensors bypass ``tracemalloc``, so this resets the kernel's peak-RSS counter
    (``/proc/self/clear_refs``) and reads ``VmHWM`` after the call.
    """
    if not scale.reset_peak():
        return None, fn()
    before = scale.rss_kib("VmRSS")
    result = fn()
    peak = scale.rss_kib("VmHWM")
    if before is None or peak is None:
        return None, result
    return max(0, peak - before) * 1024, result


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# --------------------------------------------------------------------------- fast paths

def fast_top_fisher(weight: torch.Tensor, bias: torch.Tensor, H_known: torch.Tensor, h_t: torch.Tensor,
                    y_t: int, H: torch.Tensor, y: torch.Tensor, *, P: torch.Tensor | None = None,
                    damping: float = 0.0, factorization: str = "auto") -> torch.Tensor:
    """Kernel ``g_t^T F^{-1} g_k`` for every cached feature row: closed-form FIM over ``H_known``, one
    solve, one pass over ``H`` (with the cached softmax outputs ``P`` if given, else computed per chunk)."""
    with torch.no_grad():
        P_known = torch.softmax(H_known @ weight.T + bias, dim=1)
        p_t = torch.softmax(h_t @ weight.T + bias, dim=0)
        solver = FisherSolver(TopLayerFisher(H_known, P_known), damping=damping, factorization=factorization)
        g_t = top_layer_scores(h_t[None], p_t[None], torch.tensor([y_t]))[0]
        V = solver.solve(g_t.reshape(-1)).reshape(g_t.shape)
        if P is not None:
            return top_layer_kernel(V, H, P, y)
        return head_kernel(V, H, weight, bias, y)


# --------------------------------------------------------------------------- synthetic top layer

def synthetic_top_layer(n: int, hidden: int, n_classes: int, n_known: int, *, seed: int,
                        dtype: torch.dtype = torch.float64) -> dict:
    """ReLU-like features of ``n`` candidates and ``n_known`` known examples and a head with moderately
    confident softmax outputs."""
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(n, hidden, generator=g, dtype=dtype).clamp_min_(0)
    H_known = torch.randn(n_known, hidden, generator=g, dtype=dtype).clamp_min(0)
    weight = torch.randn(n_classes, hidden, generator=g, dtype=dtype) / hidden ** 0.5
    bias = 0.1 * torch.randn(n_classes, generator=g, dtype=dtype)
    y = torch.randint(n_classes, (n,), generator=g)
    P = torch.softmax(H @ weight.T + bias, dim=1)   # cached with the features, as Learner.features_and_probs does
    return dict(H=H, P=P, y=y, H_known=H_known, weight=weight, bias=bias, h_t=H_known[0], y_t=int(y[0]))


def check_top_fisher(n: int = 300, hidden: int = 8, n_classes: int = 4, n_known: int = 40, *,
                     seed: int = 0, damping: float = 0.0) -> float:
    """Max relative difference between :func:`fast_top_fisher` and the autograd/pinv baseline (float64)."""
    s = synthetic_top_layer(n, hidden, n_classes, n_known, seed=seed)
    fast = fast_top_fisher(s["weight"], s["bias"], s["H_known"], s["h_t"], s["y_t"], s["H"], s["y"],
                           P=s["P"], damping=damping)
    on_the_fly = fast_top_fisher(s["weight"], s["bias"], s["H_known"], s["h_t"], s["y_t"], s["H"], s["y"],
                                 damping=damping)
    if damping == 0:
        v = naive_top_fisher_vector(s["weight"], s["bias"], s["H_known"], s["h_t"], s["y_t"])
    else:
        W, b = head_params(s["weight"], s["bias"])
        F = naive_dense_fim(W, b, s["H_known"])
        F = F + damping * torch.eye(len(F), dtype=F.dtype)
        v = torch.linalg.solve(F, naive_top_score(W, b, s["h_t"], s["y_t"]))
    naive = naive_top_kernel(s["weight"], s["bias"], v, s["H"], s["y"]).detach()
    scale = naive.abs().max()
    return float(max((fast - naive).abs().max(), (on_the_fly - naive).abs().max()) / scale)


# --------------------------------------------------------------------------- sections

def section_top_fisher_scaling(cfg: BenchConfig) -> list[dict]:
    """1. top_fisher selection latency vs number of candidates (fullnet top layer: 32 + 1, 10 classes)."""
    rows = []
    for dtype in (torch.float64, torch.float32):
        rows += _scaling_rows(cfg, dtype)
        gc.collect()  # the synthetic features of one dtype are gone before the next are made
    return rows


def _scaling_rows(cfg: BenchConfig, dtype: torch.dtype) -> list[dict]:
    rows = []
    largest = max(cfg.sizes)
    s = synthetic_top_layer(largest, cfg.hidden, cfg.n_classes, cfg.fim_known, seed=cfg.seed, dtype=dtype)
    # the naive baseline: fixed part (autograd FIM + pinv + g_t) and per-candidate loop, timed once
    n_naive = min(cfg.naive_max, largest)
    naive_fixed, _, naive_fixed_cpu, v = timed(
        lambda: naive_top_fisher_vector(s["weight"], s["bias"], s["H_known"], s["h_t"], s["y_t"]), 1)
    naive_loop = timed(lambda: naive_top_kernel(s["weight"], s["bias"], v, s["H"][:n_naive],
                                                s["y"][:n_naive]), 1)
    per_candidate, per_candidate_cpu = naive_loop.wall / n_naive, naive_loop.cpu / n_naive
    for n in cfg.sizes:
        if dtype == torch.float32 and n != largest:
            continue
        H, P, y = s["H"][:n], s["P"][:n], s["y"][:n]
        for cached in (True, False) if n == largest else (True,):
            def select():
                K = fast_top_fisher(s["weight"], s["bias"], s["H_known"], s["h_t"], s["y_t"], H, y,
                                    P=P if cached else None)
                return int(torch.argmin(K))   # best support = most negative kernel
            mem, _ = peak_extra_memory(select)   # first call: nothing cached by earlier repeats
            fast, times, fast_cpu, _ = timed(select, cfg.repeats)
            solve_only, *_ = timed(lambda: fast_top_fisher(s["weight"], s["bias"], s["H_known"], s["h_t"],
                                                             s["y_t"], H[:1], y[:1], P=P[:1]), cfg.repeats)
            naive = naive_fixed + per_candidate * n
            naive_cpu = naive_fixed_cpu + per_candidate_cpu * n
            rows.append({
                "section": 1, "case": f"top_fisher fullnet-head N={n:.0e} {str(dtype)[6:]}"
                                      + ("" if cached else " p on the fly"),
                "candidates": n, "dtype": str(dtype)[6:], "cached_probs": cached,
                "fast_s": fast, "fast_cpu_s": fast_cpu, "fast_times_s": times,
                "fast_fixed_s": solve_only, "candidates_per_s": n / fast,
                "naive_s": naive, "naive_fixed_s": naive_fixed, "naive_per_candidate_s": per_candidate,
                "naive_measured_on": n_naive, "naive_extrapolated": n > n_naive,
                "naive_cpu_s": naive_cpu, "speedup": naive / fast, "speedup_cpu": naive_cpu / fast_cpu,
                "speedup_scoring_only": (per_candidate * n / (fast - solve_only)
                                         if fast - solve_only > 0.2 * fast else None),
                "peak_extra_bytes": mem, "feature_bytes": H.element_size() * H.numel(),
                "peak_over_features": None if mem is None else mem / (H.element_size() * H.numel()),
            })
    return rows


def _trained_learner(dataset: str, model: str, n_known: int, seed: int, epochs: int):
    data = load_dataset(dataset, seed=seed)
    rng = np.random.default_rng(seed)
    known = rng.permutation(len(data.y_train))[:n_known]
    X = torch.as_tensor(data.X_train[known], dtype=torch.float64)
    y = torch.as_tensor(data.y_train[known], dtype=torch.long)
    config = CleaningConfig(model=model, train=TrainConfig(epochs=epochs))
    learner = config.new_learner(data.X_train.shape[1:], data.n_classes, seed=seed, dtype=torch.float64)
    return learner.fit(X, y), X, y.numpy()


def _context(learner, X, labels, rng):
    """A query as the loop would make it: the first known example the model gets wrong (else the first),
    candidates = the other known examples labelled with the model's prediction for it."""
    pred = learner.predict_proba(X).argmax(1)
    wrong = np.flatnonzero(pred != labels)
    target = int(wrong[0]) if len(wrong) else 0
    loop = CleaningLoop(learner, X, labels, np.arange(len(X)), inspect=INSPECTORS.create("always"),
                        select=SELECTORS.create("none"), rng=rng)
    return loop.context(target, int(pred[target]))


def section_logreg_mnist(cfg: BenchConfig) -> list[dict]:
    """2. top_fisher on softmax regression over MNIST (7,850 top-layer parameters), FIM over all known."""
    learner, X, labels = _trained_learner("mnist", "logreg", cfg.fim_known, cfg.seed, cfg.train_epochs)
    H, P = learner.features_and_probs(X)
    rows = []
    # (name, damping, truncate, factorization): the paper's pseudo-inverse, the product's default, damped
    routes = [("pinv", 0.0, 0.0, "auto"), (f"truncated {DEFAULT_TRUNCATE:g} (default)", 0.0, DEFAULT_TRUNCATE, "auto"),
              ("damped 1e-3", 1e-3, 0.0, "auto")]
    if cfg.mnist_pinv_eigh:
        routes.append(("pinv eigh-only", 0.0, 0.0, "eigh"))
    for name, damping, truncate, factorization in routes:
        ctx = _context(learner, X, labels, np.random.default_rng(cfg.seed))
        select = SELECTORS.create("top_fisher", damping=damping, factorization=factorization, truncate=truncate)
        fast, times, fast_cpu, _ = timed(lambda: select(ctx), cfg.repeats if factorization == "auto" else 1)
        solver = FisherSolver(TopLayerFisher(H, P), damping=damping, factorization=factorization,
                              truncate=truncate)  # its route
        rows.append({"section": 2, "case": f"top_fisher mnist/logreg {name}", "candidates": len(ctx.candidates),
                     "fast_cpu_s": fast_cpu,
                     "fim_examples": len(ctx.known), "top_params": learner.model.head.weight.numel() + 10,
                     "route": f"{solver.method}/{solver.factorization}", "fast_s": fast, "fast_times_s": times,
                     "target_s": 0.1, "meets_target": fast <= 0.1})
    return rows


def section_per_query(cfg: BenchConfig) -> list[dict]:
    """3. influence (LiSSA, paper settings) and practical_fisher per query vs per-candidate autograd."""
    rows = []
    config = InfluenceConfig()
    for dataset in cfg.datasets:
        learner, X, labels = _trained_learner(dataset, "fullnet", cfg.fim_known, cfg.seed, cfg.train_epochs)
        ctx = _context(learner, X, labels, np.random.default_rng(cfg.seed))
        model = learner.model
        y_known = torch.as_tensor(labels, dtype=torch.long)
        Xc, yc = X[ctx.candidates], torch.as_tensor(labels[ctx.candidates])

        def naive_practical():
            g_t = naive_score(model, X[ctx.target], int(labels[ctx.target]))
            return -naive_scores_dot(model, g_t, Xc, yc)

        def naive_influence():
            g_t = naive_score(model, X[ctx.target], int(labels[ctx.target]))
            v = naive_lissa(model, X, y_known, g_t, config)
            return -naive_scores_dot(model, v, Xc, yc)

        for name, fast_fn, naive_fn in (
                ("practical_fisher", SELECTORS["practical_fisher"](), naive_practical),
                ("influence (LiSSA)", SELECTORS["influence"](config=config), naive_influence)):
            fast, times, fast_cpu, ranking = timed(lambda: fast_fn(ctx), cfg.repeats)
            naive, naive_times, naive_cpu, naive_scores = timed(naive_fn, max(1, cfg.repeats // 2))
            order = np.argsort(-naive_scores.detach().numpy(), kind="stable")
            err = float(np.max(np.abs(np.sort(ranking.scores) - np.sort(naive_scores.detach().numpy())))
                        / max(1e-300, np.max(np.abs(ranking.scores))))
            rows.append({"section": 3, "case": f"{name} {dataset}/fullnet", "candidates": len(ctx.candidates),
                         "known": len(X), "params": sum(p.numel() for p in model.parameters()),
                         "fast_s": fast, "fast_cpu_s": fast_cpu, "naive_cpu_s": naive_cpu,
                         "fast_times_s": times, "naive_s": naive, "naive_times_s": naive_times,
                         "speedup": naive / fast, "speedup_cpu": naive_cpu / fast_cpu,
                         "max_rel_diff": err,
                         "same_best": int(ranking.indices[0]) == int(ctx.candidates[order[0]])})
    return rows


def section_rounds(cfg: BenchConfig) -> list[dict]:
    """4. whole rounds (add, inspect, select, retrain, evaluate), paper mode vs fast (warm-start) mode."""
    rows = []
    for dataset, model_name, mode, rounds in cfg.round_cases:
        data = load_dataset(dataset, seed=cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        X = torch.as_tensor(data.X_train, dtype=torch.float64)
        X_test = torch.as_tensor(data.X_test, dtype=torch.float64)
        noisy = flip_labels(data.y_train, 0.2, data.n_classes, kind="random", rng=rng)
        order = rng.permutation(len(noisy))
        known, stream = order[:100], order[100:100 + rounds]
        train_config = TrainConfig(epochs=cfg.train_epochs, warm_start=mode == "fast",
                                   warm_epochs=cfg.fast_epochs if mode == "fast" else None)
        config = CleaningConfig(model=model_name, inspector="always", train=train_config)
        learner = config.new_learner(data.X_train.shape[1:], data.n_classes, seed=cfg.seed, dtype=torch.float64)
        loop = config.new_loop(learner, X, noisy, known, rng)
        oracle = OracleAnnotator(data.y_train)
        loop.retrain()   # the initial fit (100 epochs in both modes) is not part of a round
        parts: dict[str, list[float]] = {k: [] for k in ("observe", "apply", "retrain", "evaluate", "total")}
        for index in stream:
            t0 = time.perf_counter()
            query = loop.observe(int(index))          # add + inspect + select
            t1 = time.perf_counter()
            if query is not None:
                loop.apply(query, oracle(query))
            t2 = time.perf_counter()
            loop.retrain()
            t3 = time.perf_counter()
            test_metrics(learner.predict_proba(X_test), data.y_test)
            t4 = time.perf_counter()
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                parts[k].append(v)
        rows.append({"section": 4, "case": f"round {dataset}/{model_name} {mode}", "mode": mode, "rounds": rounds,
                     "epochs": cfg.train_epochs if mode == "paper" else cfg.fast_epochs,
                     "median_s": statistics.median(parts["total"]), "p95_s": percentile(parts["total"], 95),
                     **{f"{k}_median_s": statistics.median(v) for k, v in parts.items() if k != "total"},
                     "times_s": parts["total"], "inspector": "always (a query every round)"})
    return rows


def section_q1(cfg: BenchConfig) -> list[dict]:
    """5. the full Q1 run for breast/fullnet/top_fisher: reuse a ``/usr/bin/time -v`` log, else measure."""
    log = Path(cfg.q1_log)
    if log.exists():
        text = log.read_text(errors="replace")
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        if wall:
            return [{"section": 5, "case": "Q1 breast/fullnet top_fisher 5x100", "source": str(log),
                     "wall_s": _clock_seconds(wall.group(1)),
                     "peak_rss_bytes": int(rss.group(1)) * 1024 if rss else None}]
    start = time.perf_counter()
    _, summary = run(RunConfig(dataset="breast", model="fullnet", selector="top_fisher"), progress=False)
    import resource
    return [{"section": 5, "case": "Q1 breast/fullnet top_fisher 5x100", "source": "measured",
             "wall_s": time.perf_counter() - start,
             "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
             "f1_final_mean": summary["f1_final_mean"], "cleaned_final_mean": summary["cleaned_final_mean"]}]


def section_cnn_layout(cfg: BenchConfig) -> list[dict]:
    """6. the convnet in channels_last layout with 128-image evaluation chunks (what ``build_model`` and
    ``predict_proba`` do) against the default NCHW layout with 4,096-image chunks, on MNIST-shaped input."""
    g = torch.Generator().manual_seed(cfg.seed)
    n_train, epochs = cfg.layout_train
    rows = []
    for dtype in (torch.float32, torch.float64):
        images = torch.rand(cfg.layout_images, 1, 28, 28, generator=g).to(dtype) - 0.5
        X, y = images[:n_train], torch.randint(10, (n_train,), generator=g)
        fast = build_model("convnet", (1, 28, 28), 10, seed=cfg.seed, dtype=dtype)
        naive = build_model("convnet", (1, 28, 28), 10, seed=cfg.seed, dtype=dtype)
        naive = naive.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        bits = torch.finfo(dtype).bits
        for what, run_fast, run_naive in (
                (f"evaluate {cfg.layout_images} images", lambda: predict_proba(fast, images),
                 lambda: predict_proba(naive, images, chunk=4096)),
                (f"train {epochs} epochs on {n_train}", lambda: train(fast, X, y, TrainConfig(epochs=epochs), seed=0),
                 lambda: train(naive, X, y, TrainConfig(epochs=epochs), seed=0))):
            fast_s, _, fast_cpu, _ = timed(run_fast, cfg.repeats)
            naive_s, _, naive_cpu, _ = timed(run_naive, cfg.repeats)
            rows.append({"section": 6, "case": f"convnet float{bits} {what}", "fast_s": fast_s, "naive_s": naive_s,
                         "fast_cpu_s": fast_cpu, "naive_cpu_s": naive_cpu, "speedup": naive_s / fast_s,
                         "speedup_cpu": naive_cpu / fast_cpu})
        naive.load_state_dict(fast.state_dict())  # same weights, each in its own layout: the same function
        rows[-1]["max_rel_diff"] = float(np.abs(predict_proba(fast, images) - predict_proba(naive, images)).max())
    return rows


def _clock_seconds(text: str) -> float:
    parts = [float(p) for p in text.split(":")]
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    return seconds


def section_scale(cfg: BenchConfig) -> list[dict]:
    """7. the product paths at a user's data size (see :mod:`cincer.experiments.scale`)."""
    return scale.section_scale(scale.ScaleConfig.quick() if cfg.scale_quick else scale.ScaleConfig(seed=cfg.seed))


def section_batched(cfg: BenchConfig) -> list[dict]:
    """8. a question's loop methods (the paper's protocol, 5 repeats) one run after another, then with every
    repeat of every method in one lockstep, their models trained as one batched model (``--set batched=true``):
    CPU and wall time of each, and whether they cleaned the same labels."""
    rows = []
    for dataset, model_name, question, rounds in cfg.batched_cases:
        exp = ExperimentConfig(question=question, dataset=dataset, model=model_name, rounds=rounds,
                               epochs=cfg.train_epochs, seed=cfg.seed).resolved()
        methods = list(exp.methods or [])
        data = load_dataset(dataset, seed=cfg.seed)
        measured = {}
        for batched in (False, True):
            configs = [dataclasses.replace(method_config(exp, m), batched=batched) for m in methods]
            wall, cpu = time.perf_counter(), time.process_time()
            results = run_together(configs, progress=False, data=data)
            measured[batched] = (time.perf_counter() - wall, time.process_time() - cpu, results)
        (wall_one, cpu_one, one), (wall_all, cpu_all, together) = measured[False], measured[True]
        decisions = ["queries", "cleaned", "query_index", "counterexample"]
        pairs = [(a, b) for (a, _), (b, _) in zip(one, together)]
        same = all((a[decisions].to_numpy() == b[decisions].to_numpy()).all() for a, b in pairs)
        rows.append({"section": 8, "case": f"{question} {dataset}/{model_name} {len(methods)}x{exp.repeats}x{rounds}",
                     "methods": methods, "members": len(methods) * exp.repeats, "naive_s": wall_one,
                     "fast_s": wall_all, "naive_cpu_s": cpu_one, "fast_cpu_s": cpu_all,
                     "speedup": wall_one / wall_all, "speedup_cpu": cpu_one / cpu_all, "same_decisions": same,
                     "max_f1_diff": max(float((a["f1"] - b["f1"]).abs().max()) for a, b in pairs),
                     "cleaned": {m: [a["cleaned_final_mean"], b["cleaned_final_mean"]]
                                 for m, (_, a), (_, b) in zip(methods, one, together)}})
    return rows + [_batched_training(cfg, *case) for case in cfg.batched_training]


def _batched_training(cfg: BenchConfig, model_name: str, members: int, n: int, epochs: int, bits: int) -> dict:
    """Training alone: ``members`` models (their own random data and seeds) one by one with
    :func:`cincer.models.train`, then together; CPU and wall time and the largest weight difference."""
    dtype = torch.float64 if bits == 64 else torch.float32
    shape, classes = ((30,), 2) if model_name != "convnet" else ((1, 28, 28), 10)
    g = torch.Generator().manual_seed(cfg.seed)
    data = [(torch.rand((n, *shape), generator=g).to(dtype), torch.randint(classes, (n,), generator=g))
            for _ in range(members)]
    models = [build_model(model_name, shape, classes, seed=cfg.seed + i, dtype=dtype) for i in range(members)]
    config = TrainConfig(epochs=epochs)
    alone = [copy.deepcopy(m) for m in models]
    wall, cpu = time.perf_counter(), time.process_time()
    for i, model in enumerate(alone):
        train(model, *data[i], config, seed=cfg.seed + i)
    wall_one, cpu_one = time.perf_counter() - wall, time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    train_together([Member(model, *data[i], cfg.seed + i) for i, model in enumerate(models)], config)
    wall_all, cpu_all = time.perf_counter() - wall, time.process_time() - cpu
    diff = max(float((p - q).detach().abs().max())
               for a, b in zip(alone, models) for p, q in zip(a.parameters(), b.parameters()))
    return {"section": 8, "case": f"train {members} {model_name} float{bits}, {n} rows, {epochs} epochs",
            "members": members, "naive_s": wall_one, "fast_s": wall_all, "naive_cpu_s": cpu_one,
            "fast_cpu_s": cpu_all, "speedup": wall_one / wall_all, "speedup_cpu": cpu_one / cpu_all,
            "max_weight_diff": diff}


SECTIONS = {1: section_top_fisher_scaling, 2: section_logreg_mnist, 3: section_per_query,
            4: section_rounds, 5: section_q1, 6: section_cnn_layout, 7: section_scale, 8: section_batched}


def run_benchmark(cfg: BenchConfig, *, log: Callable[[str], None] | None = None) -> dict:
    """Every selected section, with the machine description and the configuration."""
    torch.manual_seed(cfg.seed)
    result: dict[str, Any] = {"machine": machine(), "config": asdict(cfg), "rows": []}
    start = time.perf_counter()
    for number in cfg.sections:
        if number == 5 and not cfg.q1:
            continue
        t0 = time.perf_counter()
        rows = SECTIONS[number](cfg)
        result["rows"] += rows
        if log:
            log(f"section {number} done in {time.perf_counter() - t0:.1f}s")
    result["seconds"] = time.perf_counter() - start
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def format_table(result: dict) -> str:
    """One line per row: case, candidates, fast, naive, speed-up, extra columns."""
    lines = [f"{'#':<2} {'case':<44} {'cand.':>9} {'fast':>10} {'naive':>10} {'speedup':>9}  notes"]
    for r in result["rows"]:
        fast = r.get("fast_s", r.get("median_s", r.get("wall_s", r.get("first_s"))))
        naive = r.get("naive_s")
        notes = []
        if r.get("fast_cpu_s") is not None:
            notes.append(f"fast cpu {_fmt_s(r['fast_cpu_s'])}")
        if "speedup_cpu" in r:
            notes.append(f"cpu speedup {_fmt_x(r['speedup_cpu'])}")
        if "candidates_per_s" in r:
            notes.append(f"{r['candidates_per_s']:.3g} cand/s")
        if r.get("naive_extrapolated"):
            notes.append(f"naive extrapolated from {r['naive_measured_on']}")
        if r.get("peak_over_features") is not None:
            notes.append(f"peak mem {r['peak_over_features']:.2f}x features")
        if "route" in r:
            notes.append(r["route"])
        if "p95_s" in r:
            notes.append(f"p95 {_fmt_s(r['p95_s'])}, retrain {_fmt_s(r['retrain_median_s'])}, "
                         f"select {_fmt_s(r['observe_median_s'])}, {r['rounds']} rounds")
        if "peak_rss_bytes" in r and r["peak_rss_bytes"] and r["section"] != 7:
            notes.append(f"peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB")
        if "max_rel_diff" in r:
            notes.append(f"max rel diff {r['max_rel_diff']:.1e}")
        if r.get("section") == 7:
            notes.append(_scale_notes(r))
        if r.get("section") == 8 and "same_decisions" in r:
            notes.append(f"{r['members']} models per batch; same decisions: {r['same_decisions']}, "
                         f"max F1 diff {r['max_f1_diff']:.1e}")
        if "max_weight_diff" in r:
            notes.append(f"max weight diff {r['max_weight_diff']:.1e}")
        cand = r.get("candidates", "")
        lines.append(f"{r['section']:<2} {r['case']:<44} {cand!s:>9} {_fmt_s(fast):>10} "
                     f"{_fmt_s(naive) if naive is not None else '-':>10} "
                     f"{_fmt_x(r['speedup']) if 'speedup' in r else '-':>9}  {'; '.join(notes)}")
    return "\n".join(lines)


def _scale_notes(r: dict) -> str:
    """First question, later ones, what fit prepared, memory, against the case's targets."""
    t, parts = r.get("targets", {}), []

    def check(key: str, value: float | None) -> str:
        if value is None or key not in t:
            return ""
        return " ok" if value <= t[key] else f" (target {_fmt_target(key, t[key])})"

    parts.append(f"first {_fmt_s(r['first_s'])}{check('first_s', r['first_s'])}")
    if "later_median_s" in r:
        parts.append(f"later {_fmt_s(r['later_median_s'])}{check('later_median_s', r['later_median_s'])}")
        parts.append(f"fit {_fmt_s(r['fit_s'])} (prepare {_fmt_s(r['prepare_s'])})")
        parts.append(f"uncached query {_fmt_s(r['uncached_query_s'])}, FIM {r['fisher']}")
    if r.get("peak_rss_bytes"):
        parts.append(f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GB{check('peak_rss_bytes', r['peak_rss_bytes'])}")
    if r.get("extra_bytes") is not None:
        ratio = r["extra_bytes"] / r["feature_bytes"]
        parts.append(f"extra memory {ratio:.2f}x the features{check('extra_over_features', ratio)}")
    return "; ".join(parts)


def _fmt_target(key: str, value: float) -> str:
    if key == "peak_rss_bytes":
        return f"{value / 2**30:.1f} GB"
    return f"{value:.1f}x" if "over" in key else _fmt_s(value)


def _fmt_x(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio < 10 else f"{ratio:.0f}x"


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def plot_latency(result: dict, path: Path) -> None:
    """Log-log plot of section 1: selection latency (wall and CPU) vs number of candidates, fast vs naive."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["section"] == 1 and r.get("cached_probs", True)]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for dtype, marker, color in (("float64", "o", "tab:blue"), ("float32", "s", "tab:green")):
        sel = sorted((r for r in rows if r["dtype"] == dtype), key=lambda r: r["candidates"])
        if not sel:
            continue
        n = [r["candidates"] for r in sel]
        ax.plot(n, [r["fast_s"] for r in sel], marker=marker, color=color, label=f"fast {dtype} (wall)")
        ax.plot(n, [r["fast_cpu_s"] for r in sel], marker=marker, color=color, linestyle=":", fillstyle="none",
                label=f"fast {dtype} (CPU time)")
        if dtype == "float64":
            measured = [r for r in sel if not r["naive_extrapolated"]]
            ax.plot(n, [r["naive_s"] for r in sel], marker="x", color="tab:red", linestyle="--",
                    label="naive autograd loop (extrapolated)")
            if measured:
                ax.plot([r["candidates"] for r in measured], [r["naive_s"] for r in measured], "x",
                        color="tab:red", markersize=10, label="naive, measured")
    ax.axhline(0.05, color="grey", linewidth=0.8, linestyle="-.")
    ax.text(min(r["candidates"] for r in rows) if rows else 1, 0.055, "50 ms", color="grey", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("candidates")
    ax.set_ylabel("selection latency per query (s)")
    m = result["machine"]
    ax.set_title(f"top_fisher, fullnet head (32+1 x 10), FIM over {result['config']['fim_known']} known\n"
                 f"{m['cpu']}, {m['torch_threads']} torch thread(s)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
