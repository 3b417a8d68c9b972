"""The paper's figures and tables from experiment folders.

* Q1, Q3: test F1, # cleaned and # queries against the round, mean ± std band over repeats per method.
* Q2: precision@5 and @10 bars per method (± std over repeats).
* ``results.md``: a Markdown table of the final figures per experiment; ``q1_q3.csv`` and ``q2.csv``:
  the machine-readable tables (one row per pair and method).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..errors import CincerError
from .protocols import ExperimentConfig, default_known, read_experiment

PAPER = {"repeats": 5, "rounds": 100, "epochs": 100, "noise": 0.2, "threshold": 0.2}
COLORS = {"cincer": "#000000", "top_fisher": "#d62728", "top_fisher_paper": "#ff9896", "none": "#1f77b4",
          "drop_ce": "#2ca02c", "upper_bound": "#7f7f7f", "practical_fisher": "#9467bd", "nearest": "#8c564b",
          "influence": "#ff7f0e", "random": "#bcbd22", "full_fisher": "#17becf"}
LABELS = {"cincer": "cincer (default)", "none": "no_ce", "drop_ce": "drop CE", "upper_bound": "upper bound (clean)"}
Q1Q3_COLUMNS = ["dataset", "model", "selector", "f1_initial_mean", "f1_final_mean", "f1_final_std",
                "cleaned_final_mean", "cleaned_final_std", "queries_final_mean"]
Q2_COLUMNS = ["dataset", "model", "selector", "pr5", "pr10", "pr25"]


def find_experiments(paths: list[Path]) -> list[Path]:
    """Experiment folders given directly or found below the given folders."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise CincerError(f"no such folder: {path}")
        if (path / "experiment.json").is_file():
            found.append(path)
        else:
            found += sorted(p.parent for p in path.rglob("experiment.json"))
    if not found:
        raise CincerError(f"no experiment folder (with experiment.json) under {', '.join(map(str, paths))}")
    return list(dict.fromkeys(found))


def reduced_note(exp: ExperimentConfig) -> str:
    """Empty for the paper's protocol, else which settings were reduced."""
    diffs = [f"{k}={getattr(exp, k)}" for k, v in PAPER.items() if getattr(exp, k) != v]
    if exp.known not in (None, default_known(exp.dataset)):
        diffs.append(f"known={exp.known}")
    if exp.overrides:
        diffs.append(f"overrides={json.dumps(exp.overrides)}")
    return "" if not diffs else "REDUCED/CHANGED protocol: " + ", ".join(diffs)


def summaries(folder: Path, exp: ExperimentConfig) -> dict[str, dict]:
    out = {}
    for method in exp.methods or []:
        path = folder / method / "summary.json"
        if path.is_file():
            out[method] = json.loads(path.read_text())
    return out


def _curve(trace: pd.DataFrame, col: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    grouped = trace.groupby("round")[col]
    mean, std = grouped.mean(), grouped.std(ddof=0).fillna(0.0)
    return mean.index.to_numpy(), mean.to_numpy(), std.to_numpy()


def _title(exp: ExperimentConfig) -> str:
    note = reduced_note(exp)
    head = f"{exp.dataset} / {exp.model} — {exp.question.upper()} ({exp.repeats} repeats, {exp.known} known)"
    return head + (f"\n{note}" if note else "")


PANELS = {"f1": "test F1 (weighted)", "cleaned": "# cleaned examples", "queries": "# queries"}


def plot_loop(folder: Path, exp: ExperimentConfig, out: Path, panels: tuple[str, ...] = tuple(PANELS)) -> list[Path]:
    """Q1/Q3: the chosen ``panels`` (F1, # cleaned, # queries) against the round."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.4), squeeze=False)
    axes = axes[0]
    drawn = 0
    for method in exp.methods or []:
        path = folder / method / "trace.csv"
        if not (folder / method / "summary.json").is_file() or not path.is_file():
            continue
        trace = pd.read_csv(path)
        color, label = COLORS.get(method), LABELS.get(method, method)
        for ax, col in zip(axes, panels):
            x, m, s = _curve(trace, col)
            style = "--" if method == "upper_bound" else "-"
            ax.plot(x, m, style, color=color, label=label, lw=1.8)
            ax.fill_between(x, m - s, m + s, color=color, alpha=0.15, lw=0)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return []
    for ax, name in zip(axes, (PANELS[p] for p in panels)):
        ax.set_xlabel("round")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    for ax, panel in zip(axes, panels):
        if panel != "f1":
            ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(_title(exp), fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, out / f"{exp.dataset}-{exp.model}-{exp.question}")


def plot_ranking(folder: Path, exp: ExperimentConfig, out: Path) -> list[Path]:
    """Q2: precision@5 and @10 per method, ± std over repeats."""
    sums = summaries(folder, exp)
    if not sums:
        return []
    methods = list(sums)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(methods) + 2), 4.4))
    x = np.arange(len(methods))
    width = 0.38
    for j, (k, shade) in enumerate(((5, 1.0), (10, 0.55))):
        means = [sums[m].get(f"pr{k}_mean", math.nan) for m in methods]
        stds = [sums[m].get(f"pr{k}_std", 0.0) for m in methods]
        ax.bar(x + (j - 0.5) * width, np.nan_to_num(means), width, yerr=np.nan_to_num(stds), capsize=3,
               color=[COLORS.get(m, "#333333") for m in methods], alpha=shade, edgecolor="black", lw=0.5,
               label=f"precision@{k}")
    for i, m in enumerate(methods):
        if sums[m].get("status") == "infeasible":
            ax.text(x[i], 0.02, "infeasible", rotation=90, ha="center", va="bottom", fontsize=8)
    chance = [s["chance_mean"] for s in sums.values() if s.get("chance_mean") is not None]
    chance = [c for c in chance if c == c]
    if chance:
        ax.axhline(float(np.mean(chance)), color="black", ls=":", lw=1, label="noisy fraction of candidates")
    ax.set_xticks(x, [LABELS.get(m, m) for m in methods], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of top-k candidates mislabelled")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(_title(exp), fontsize=11)
    fig.tight_layout()
    return _save(fig, out / f"{exp.dataset}-{exp.model}-{exp.question}")


def _save(fig, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]
    fig.savefig(paths[0], dpi=120)
    fig.savefig(paths[1], metadata={"CreationDate": None})  # same figure, same bytes: no churn in git
    plt.close(fig)
    return paths


# --------------------------------------------------------------------------- tables

def _pm(summary: dict, key: str, digits: int = 3) -> str:
    mean, std = summary.get(f"{key}_mean", math.nan), summary.get(f"{key}_std", math.nan)
    if mean is None or mean != mean:
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std == std and std is not None else f"{mean:.{digits}f}"


def markdown_table(folder: Path, exp: ExperimentConfig) -> str:
    sums = summaries(folder, exp)
    lines = [f"### {exp.dataset} / {exp.model} — {exp.question.upper()}", ""]
    note = reduced_note(exp)
    lines += [f"**{note}**", ""] if note else [f"Paper protocol: {exp.repeats} repeats × {exp.rounds} rounds, "
                                                f"{exp.epochs} epochs, {exp.known} known, {exp.noise:.0%} noise, "
                                                f"float{exp.bits}.", ""]
    if exp.question == "q2":
        lines += ["| method | precision@5 | precision@10 | precision@25 | noisy fraction of candidates | "
                  "queries / repeat | s / query |", "|---|---|---|---|---|---|---|"]
        for m, s in sums.items():
            if s.get("status") == "infeasible":
                lines.append(f"| {m} | infeasible | | | | | |")
                continue
            lines.append(f"| {m} | {_pm(s, 'pr5', 2)} | {_pm(s, 'pr10', 2)} | {_pm(s, 'pr25', 2)} | "
                         f"{s.get('chance_mean', math.nan):.2f} | {s.get('queries_mean', math.nan):.1f} | "
                         f"{s.get('select_seconds_mean', math.nan):.3f} |")
    else:
        lines += ["| method | F1 initial | F1 final | # cleaned | # queries | cleaned / query | seconds |",
                  "|---|---|---|---|---|---|---|"]
        for m, s in sums.items():
            q = s.get("queries_final_mean", math.nan)
            ratio = f"{s.get('cleaned_final_mean', math.nan) / q:.2f}" if q else "—"
            lines.append(f"| {LABELS.get(m, m)} | {_pm(s, 'f1_initial')} | {_pm(s, 'f1_final')} | "
                         f"{_pm(s, 'cleaned_final', 1)} | {_pm(s, 'queries_final', 1)} | {ratio} | "
                         f"{s.get('seconds', math.nan):.0f} |")
    missing = [m for m in exp.methods or [] if m not in sums]
    if missing:
        lines += ["", f"Not finished: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def collect_tables(folders: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``q1_q3`` (one row per pair and method; a method in both Q1 and Q3 appears once, from Q1)
    and ``q2`` (pr5/pr10/pr25 means; NaN where infeasible)."""
    loop, rank = [], []
    for folder in folders:
        exp = read_experiment(folder)
        for method, s in summaries(folder, exp).items():
            if exp.question == "q2":
                rank.append({"dataset": exp.dataset, "model": exp.model, "selector": method,
                             **{f"pr{k}": s.get(f"pr{k}_mean", math.nan) for k in (5, 10, 25)}})
            else:
                loop.append({"question": exp.question, "dataset": exp.dataset, "model": exp.model,
                             "selector": method, **{c: s.get(c, math.nan) for c in Q1Q3_COLUMNS[3:]}})
    q1q3 = pd.DataFrame(loop, columns=["question"] + Q1Q3_COLUMNS)
    q1q3 = q1q3.sort_values("question", kind="stable").drop_duplicates(["dataset", "model", "selector"])
    q1q3 = q1q3[Q1Q3_COLUMNS].sort_values(["dataset", "model"], kind="stable").reset_index(drop=True)
    q2 = pd.DataFrame(rank, columns=Q2_COLUMNS).drop_duplicates(["dataset", "model", "selector"], keep="last")
    return q1q3, q2.reset_index(drop=True)


def write_all(paths: list[Path], out: Path, *, panels: tuple[str, ...] = tuple(PANELS)) -> dict[str, list[Path]]:
    """Figures (PNG, PDF), ``results.md``, ``q1_q3.csv`` and ``q2.csv`` into ``out``; ``panels``: which
    curves the Q1/Q3 figures show."""
    unknown = sorted(set(panels) - set(PANELS))
    if unknown or not panels:
        raise CincerError(f"--panels must be a comma-separated subset of {', '.join(PANELS)}, got {panels!r}")
    folders = find_experiments(paths)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {"figures": [], "tables": []}
    sections = ["# Results", "",
                "Generated by `cincer plot`. Means ± std over repeats at the last round (Q1, Q3) or over "
                "repeats of the per-query precision (Q2). `seconds` is wall time of the whole method "
                "(all repeats) on the machine that ran it.", ""]
    for folder in folders:
        exp = read_experiment(folder)
        figures = plot_ranking(folder, exp, out) if exp.question == "q2" else plot_loop(folder, exp, out, panels)
        written["figures"] += figures
        # provenance: every setting and the per-method summaries (small files, no traces)
        keep = out / "runs" / f"{exp.dataset}-{exp.model}-{exp.question}"
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("experiment.json", "summary.csv"):
            if (folder / name).is_file():
                _write_text(keep / name, (folder / name).read_text())
                written["tables"].append(keep / name)
        sections.append(markdown_table(folder, exp))
        if figures:
            sections.append(f"![{exp.label}]({figures[0].name})\n")
    q1q3, q2 = collect_tables(folders)
    for name, frame in (("q1_q3.csv", q1q3), ("q2.csv", q2)):
        _write_text(out / name, frame.to_csv(index=False, float_format="%.4f"))
        written["tables"].append(out / name)
    _write_text(out / "results.md", "\n".join(sections))
    written["tables"].append(out / "results.md")
    return written


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
