"""``cincer compare-rankings``: which counter-example ranking cleans most on *your* data, before annotating.

The paper's simulated protocol (Q1/Q3: a known set with injected noise, a stream, an oracle annotator who
relabels whatever is shown) run for each candidate ranking on any registered data set: the paper's, or a
table added with ``cincer data add``. Prints, per ranking, the wrong labels cleaned, the questions asked and
the cleaned per question, best first; the experiment folder (``--out``) holds every trace for
``cincer plot``.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ..errors import CincerError
from ..experiments import run_experiment
from .experiment import add_experiment_options, experiment_from_args

RANKINGS = ["cincer", "top_fisher", "top_fisher_paper", "top_fisher_damped", "practical_fisher", "influence", "nearest",
            "random", "none"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare-rankings", help="simulate cleaning with each counter-example ranking on a data set (yours: "
                                 "`cincer data add`) and print the wrong labels each cleans per question",
        description="Runs the paper's simulated protocol (known set with injected noise, a stream, an oracle who "
                    "relabels what is shown) once per ranking, with the same draws, and prints the wrong labels "
                    "cleaned, the questions asked and the cleaned per question, best first. 'none' asks about "
                    "the suspicious example alone (no counter-example). The paper's settings by default; for a first "
                    "look in minutes: --repeats 2 --set retrain=head --set full_every=10. Traces in --out.")
    add_experiment_options(p, methods=",".join(RANKINGS), methods_help="comma-separated rankings")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    exp = experiment_from_args(args, "q3")
    if not exp.methods:
        raise CincerError("--methods: name at least one ranking")
    frame = run_experiment(exp, args.out, force=args.force, jobs=args.jobs, threads=args.threads, device=args.device)
    print(ranking_table(frame))
    print(f"results in {args.out}/ (experiment.json, summary.csv, <method>/); figures: cincer plot {args.out}")
    return 0


def ranking_table(frame: Any) -> str:
    """The finished rankings, most wrong labels cleaned first, with the cleaned per question; the best one and
    those within one standard deviation of it are marked."""
    done = frame[frame["status"] == "ok"].copy() if len(frame) else frame
    if not len(done):
        return "no ranking finished"
    done = done.sort_values("cleaned_final_mean", ascending=False, kind="stable")
    best = done.iloc[0]
    lines = [f"{'ranking':<18} {'cleaned':>13} {'questions':>13} {'per question':>12} {'F1':>13} {'seconds':>8}"]
    for row in done.itertuples(index=False):
        queries = row.queries_final_mean
        per = row.cleaned_final_mean / queries if queries else float("nan")
        near = row.cleaned_final_mean >= best.cleaned_final_mean - best.cleaned_final_std
        mark = " *" if row.method == best.method else (" ~" if near else "")
        lines.append(f"{row.method:<18} {row.cleaned_final_mean:>6.1f} ± {row.cleaned_final_std:<4.1f} "
                     f"{queries:>6.1f} ± {row.queries_final_std:<4.1f} {per:>12.2f} "
                     f"{row.f1_final_mean:>6.3f} ± {row.f1_final_std:<4.3f} {row.seconds:>8.0f}{mark}")
    lines.append("* most wrong labels cleaned; ~ within one standard deviation of it "
                 f"(over {int(np.max(done['repeats']))} repeats)")
    return "\n".join(lines)
