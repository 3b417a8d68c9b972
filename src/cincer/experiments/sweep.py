"""Grids of experiments run in parallel: local processes, or an existing Dask distributed cluster.

The unit of work is one method of one experiment (:class:`Task`). A method's ``summary.json`` marks
it finished (written atomically by :func:`~cincer.experiments.protocols.run_method`), so a crashed or
interrupted sweep resumes where it stopped. Methods whose configuration is identical in two
experiments of a sweep (e.g. ``top_fisher`` in Q1 and Q3) run once and are copied to the other.

A sweep file (TOML)::

    out = "runs/paper"              # experiments go to <out>/<dataset>-<model>/<question>
    [defaults]                      # any ExperimentConfig field
    repeats = 5
    [grid]                          # questions x pairs (or questions x datasets x models)
    questions = ["q1", "q2", "q3"]
    pairs = [["breast", "fullnet"], ["adult", "fullnet"], ["mnist", "convnet", {bits = 32}]]
    [[experiment]]                  # single experiments; fields override [defaults]
    question = "q2"
    dataset = "german"
    model = "fullnet"
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import tomllib

from ..device import resolve_device
from ..errors import CincerError
from .protocols import (
    ExperimentConfig,
    collect_summary,
    method_config,
    method_done,
    replace_folder,
    run_method,
    run_methods_together,
    temporary_folder,
    write_experiment,
)

SLOW_FIRST = {"influence": 0, "full_fisher": 1, "practical_fisher": 2}  # start the long ones first


@dataclass
class Task:
    """One method of one experiment, written to ``out/method``."""

    exp: ExperimentConfig
    method: str
    out: Path
    force: bool = False
    threads: int | None = 1  # torch threads per method run (None: torch's default); small nets run best on 1
    device: str | None = None  # where the models train (None: the CPU)

    def key(self) -> str:
        """Identical work has an identical key (the question matters only as Q2 vs the loop)."""
        kind = "ranking" if self.exp.question == "q2" else "loop"
        return kind + json.dumps(dataclasses.asdict(method_config(self.exp, self.method)), sort_keys=True,
                                 default=str)


def _set_up_worker(task: Task) -> None:
    """The task's torch threads, and its device checked where it runs (maybe another machine; this sets its
    float32 mode)."""
    if task.threads:
        import torch
        torch.set_num_threads(task.threads)
    resolve_device(task.device)


def run_task(task: Task) -> dict:
    """Worker entry point (must stay importable at module level for processes and Dask)."""
    _set_up_worker(task)
    start = time.perf_counter()
    status = run_method(task.exp, task.method, task.out, force=task.force, device=task.device)
    return {"experiment": task.exp.label, "method": task.method, "status": status,
            "seconds": time.perf_counter() - start}


def run_together_task(tasks: list[Task], *, log=print) -> list[dict]:
    """The loop methods of one experiment in this process, their repeats in one lockstep (``batched``)."""
    first = tasks[0]
    _set_up_worker(first)
    start = time.perf_counter()
    try:
        status = run_methods_together(first.exp, [t.method for t in tasks], first.out, force=first.force,
                                      device=first.device)
    except Exception as err:  # reported like a failed method run: finished repeats are kept
        status = {t.method: f"failed: {type(err).__name__}: {err}".splitlines()[0] for t in tasks}
    seconds = time.perf_counter() - start
    records = [{"experiment": first.exp.label, "method": t.method, "status": status[t.method],
                "seconds": seconds} for t in tasks]
    for record in records:
        log(f"{record['experiment']} {record['method']}: {record['status']} (together, {seconds:.0f} s)")
    return records


def copy_method(src: Path, dst: Path, method: str) -> None:
    """Copy a finished method folder atomically (temporary copy, then rename)."""
    tmp = temporary_folder(dst, method)
    shutil.copytree(src / method, tmp)
    replace_folder(tmp, dst / method)


def run_tasks(tasks: list[Task], *, jobs: int = 1, cluster: str | None = None, log=print) -> list[dict]:
    """Run every unfinished task: in this process (``jobs == 1``), a process pool, or on the Dask
    cluster at ``cluster``. Returns one record per task."""
    groups: dict[str, list[Task]] = {}
    for task in tasks:
        groups.setdefault(task.key(), []).append(task)
    todo, records = [], []
    for group in groups.values():
        primary = next((t for t in group if method_done(t.out, t.method) and not t.force), None)
        if primary is None:
            todo.append(group[0])
    todo.sort(key=lambda t: SLOW_FIRST.get(t.method, 9))
    n_done = len(groups) - len(todo)
    if n_done:
        log(f"{n_done} finished method run(s) skipped")

    def report(task: Task, get) -> None:
        try:
            record = get()
        except Exception as err:  # one failed method does not stop the others; reported at the end
            record = {"experiment": task.exp.label, "method": task.method, "seconds": float("nan"),
                      "status": f"failed: {type(err).__name__}: {err}".splitlines()[0]}
        records.append(record)
        log(f"[{len(records)}/{len(todo)}] {record['experiment']} {record['method']}: {record['status']} "
            f"({record['seconds']:.0f} s)")

    if cluster is not None:
        try:
            from distributed import Client
            from distributed import as_completed as dask_completed
        except ImportError:  # pragma: no cover - distributed is a dependency
            raise CincerError("--cluster needs the 'distributed' package") from None
        try:
            client = Client(cluster, timeout="10s")
        except (OSError, TimeoutError) as err:
            raise CincerError(f"cannot reach the Dask scheduler at {cluster}: {err}") from None
        with client:
            futures = {client.submit(run_task, t, pure=False): t for t in todo}
            for future in dask_completed(list(futures)):
                report(futures[future], future.result)
    elif jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            pool_futures = {pool.submit(run_task, t): t for t in todo}
            for pool_future in as_completed(pool_futures):
                report(pool_futures[pool_future], pool_future.result)
    else:
        for task in todo:
            report(task, lambda: run_task(task))

    # duplicates get a copy of their group's finished run
    for group in groups.values():
        source = next((t for t in group if method_done(t.out, t.method)), None)
        for task in group:
            if source is not None and task is not source and (task.force or not method_done(task.out, task.method)):
                copy_method(source.out, task.out, task.method)
    return records


def run_experiment(exp: ExperimentConfig, out: Path, *, force: bool = False, jobs: int = 1,
                   threads: int | None = 1, device: str | None = None, log=print) -> pd.DataFrame:
    """Every method of ``exp`` into ``out``; finished methods are skipped unless ``force``."""
    exp = exp.resolved()
    out = Path(out)
    tasks = [Task(exp, m, out, force, threads, device) for m in exp.methods or []]
    merged = write_experiment(out, exp, force=force)
    if jobs == 1 and len(tasks) > 1 and exp.question != "q2" and all(
            method_config(exp, m).batched for m in exp.methods or []):
        records = run_together_task(tasks, log=log)  # one lockstep for every method's repeats
    else:
        records = run_tasks(tasks, jobs=jobs, log=log)
    frame = collect_summary(out, merged)
    raise_failures(records)
    return frame


def raise_failures(records: list[dict]) -> None:
    failed = [r for r in records if str(r["status"]).startswith("failed")]
    if failed:
        raise CincerError(f"{len(failed)} method run(s) failed (rerun to retry; finished ones are kept): "
                          + "; ".join(f"{r['experiment']} {r['method']}: {r['status'][8:]}" for r in failed))


# --------------------------------------------------------------------------- sweep files

@dataclass
class Sweep:
    experiments: list[tuple[ExperimentConfig, Path]]
    jobs: int = 1


def load_sweep(path: Path, *, out: Path | None = None) -> Sweep:
    """Parse a sweep file into resolved experiments and their output folders."""
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CincerError(f"no such sweep file: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise CincerError(f"{path}: invalid TOML: {err}") from None
    unknown = sorted(set(spec) - {"out", "jobs", "defaults", "grid", "experiment"})
    if unknown:
        raise CincerError(f"{path}: unknown top-level key(s): {', '.join(unknown)}")
    root = Path(out or spec.get("out", "runs/sweep"))
    defaults = dict(spec.get("defaults", {}))
    entries: list[dict] = []
    grid = spec.get("grid")
    if grid:
        bad = sorted(set(grid) - {"questions", "pairs", "datasets", "models"})
        if bad:
            raise CincerError(f"{path}: unknown [grid] key(s): {', '.join(bad)}")
        pairs = [tuple(p) for p in grid.get("pairs", [])]
        pairs += [(d, m) for d in grid.get("datasets", []) for m in grid.get("models", [])]
        if any(len(p) not in (2, 3) or (len(p) == 3 and not isinstance(p[2], dict)) for p in pairs):
            raise CincerError(f"{path}: each [grid] pair must be [dataset, model] or [dataset, model, {{settings}}]")
        for dataset, model, *settings in pairs:
            for question in grid.get("questions", ["q1", "q2", "q3"]):
                entries.append({**(settings[0] if settings else {}), "question": question, "dataset": dataset,
                                "model": model})
    entries += [dict(e) for e in spec.get("experiment", [])]
    if not entries:
        raise CincerError(f"{path}: no experiments (add a [grid] or [[experiment]] tables)")
    experiments = []
    for entry in entries:
        folder = entry.pop("out", None)
        exp = ExperimentConfig.from_dict({**defaults, **entry}).resolved()
        target = Path(folder) if folder else root / f"{exp.dataset}-{exp.model}" / exp.question
        experiments.append((exp, target))
    targets = [str(t) for _, t in experiments]
    if len(set(targets)) != len(targets):
        raise CincerError(f"{path}: two experiments write to the same folder")
    return Sweep(experiments, jobs=int(spec.get("jobs", 1)))


def run_sweep(sweep: Sweep, *, jobs: int | None = None, cluster: str | None = None, force: bool = False,
              threads: int | None = 1, device: str | None = None, log=print) -> list[dict]:
    """Every experiment of the sweep; finished methods are skipped, summaries rebuilt at the end."""
    tasks, merged = [], []
    for exp, out in sweep.experiments:
        merged.append((write_experiment(out, exp, force=force), out))
        tasks += [Task(exp, m, out, force, threads, device) for m in exp.methods or []]
    records = run_tasks(tasks, jobs=jobs or sweep.jobs, cluster=cluster, log=log)
    for exp, out in merged:
        collect_summary(out, exp)
    raise_failures(records)
    return records
