"""Time and peak memory of the out-of-core audit (cincer.outofcore.audit_table) on synthetic embeddings.

For each ``--rows`` size: the data (``scripts/make_embeddings.py``: N x 384 float32, C classes, 10% of the
labels flipped) are written under ``--data`` unless there already, then the audit runs in a fresh process
(so ``ru_maxrss`` is that run's peak) with ``--memory``; reported: wall time, CPU time, peak RSS, passes,
per-pass seconds, and how many planted errors are in the top ``--budget`` (recall = found / min(budget,
planted); precision = found / issues returned). The figures are merged into ``--json`` (one entry per case,
a rerun replaces its case).

    python scripts/bench_outofcore.py --rows 100000 1000000 --classes 10
    python scripts/bench_outofcore.py --rows 10000000 --classes 5     # about an hour on one core
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def label(rows: int) -> str:
    exponent = len(str(rows)) - 1
    return f"1e{exponent}" if rows == 10**exponent else str(rows)


def run_one(args: argparse.Namespace) -> int:
    """One audit in this process; prints its figures as JSON on the last line."""
    import numpy as np
    import pandas as pd

    from cincer.outofcore import audit_table
    from cincer.tables import parse_size

    data = Path(args.one)
    start = time.perf_counter()
    table, summary = audit_table(str(data / "data"), labels="label", features=None, id="id", budget=args.budget,
                                 k=3, cv=args.cv, memory=parse_size(args.memory), seed=args.seed,
                                 drop_invalid=False, cluster=args.cluster, counterexamples=args.counterexamples)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)  # local:N workers, once closed: the largest's peak
    flipped = set(pd.read_parquet(data / "flipped.parquet", columns=["id"])["id"].tolist())
    found = int(sum(k in flipped for k in table["key"]))
    ce = [k for j in (1, 2, 3) for k in table[f"counterexample_{j}_key"].dropna()]
    cpu = usage.ru_utime + usage.ru_stime
    result = {"rows": summary["rows"], "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
              "peak_rss_bytes": usage.ru_maxrss * 1024, "peak_rss_gib": round(usage.ru_maxrss * 1024 / 2**30, 3),
              "memory_bytes": parse_size(args.memory), "passes": summary["passes"], "epochs": summary["epochs"],
              "batch_rows": summary.get("batch_rows"), "pass_seconds": summary["pass_seconds"],
              "classes": summary["classes"], "features": summary["features"], "planted": len(flipped),
              "issues": len(table), "flagged": summary["flagged"], "planted_in_top": found,
              "recall_at_budget": round(found / max(1, min(args.budget, len(flipped))), 4),
              "precision_at_budget": round(found / max(1, len(table)), 4),
              "counterexamples_planted_share": round(float(np.mean([k in flipped for k in ce])) if ce else 0.0, 4),
              "estimated_noise": round(summary["estimated_noise"], 4), "fisher": summary["fisher"],
              "optimizer": summary["optimizer"], "counterexamples": args.counterexamples}
    if args.cluster:
        result.update(cluster=args.cluster, partitions=summary["partitions"],
                      worker_peak_rss_gib=round(workers.ru_maxrss * 1024 / 2**30, 3),
                      worker_cpu_seconds=round(workers.ru_utime + workers.ru_stime, 1))
    print(json.dumps(result))
    return 0


def markdown(figures: list[dict]) -> str:
    """The figures as the table of docs/SCALE.md."""
    lines = ["| case | engine | wall | CPU | peak RSS | passes | batch rows | FIM pass | counter-ex. pass | "
             "planted in top 1000 | counter-examples planted |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for f in figures:
        engine = f"Dask {f['cluster']} ({f['partitions']} partitions)" if f.get("cluster") else "one process"
        rss = f"{f['peak_rss_gib']:.2f} GiB" + (f" (client; largest worker {f['worker_peak_rss_gib']:.2f})"
                                                if f.get("cluster") else "")
        cpu = f"{f['cpu_seconds']:.0f} s" + (f" + workers {f['worker_cpu_seconds']:.0f} s" if f.get("cluster") else "")
        unit = "evaluations" if f["optimizer"] == "lbfgs" else "epochs"
        passes = f"{f['passes']} ({f['optimizer']}, {f['epochs']} {unit})"
        lines.append(f"| {f['case'].split(', cluster')[0]} | {engine} | {f['seconds']:.0f} s | {cpu} | {rss} | "
                     f"{passes} | {f['batch_rows'] if not f.get('cluster') else '-'} | "
                     f"{f['pass_seconds']['probabilities_and_fisher']:.0f} s | "
                     f"{f['pass_seconds']['counterexamples']:.0f} s | {f['planted_in_top']} / {f['issues']} | "
                     f"{f['counterexamples_planted_share']:.1%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10**5, 10**6, 10**7])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--memory", default="2GB")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--cv", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cluster", default=None, help="a Dask scheduler address or local:N (default: one process)")
    parser.add_argument("--counterexamples", default="support", choices=("support", "suspect"),
                        help="their order (default: support, as the published figures; the audit's default is "
                             "suspect)")
    parser.add_argument("--data", type=Path, default=Path("/tmp/cincer_big"), help="where the data are written")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / "outofcore.json")
    parser.add_argument("--markdown", action="store_true", help="print --json's figures as a table and stop")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return run_one(args)
    if args.markdown:
        print(markdown(json.loads(args.json.read_text())))
        return 0
    for rows in args.rows:
        data = args.data / f"{label(rows)}_c{args.classes}"
        if not (data / "config.json").exists():
            make = Path(__file__).resolve().parent / "make_embeddings.py"
            subprocess.run([sys.executable, str(make), "--rows", str(rows), "--classes", str(args.classes),
                            "--seed", str(args.seed), "--out", str(data)], check=True)
        load = os.getloadavg()[0]
        command = [sys.executable, __file__, "--one", str(data), "--memory", args.memory, "--budget",
                   str(args.budget), "--seed", str(args.seed), "--counterexamples", args.counterexamples] \
            + (["--cv", str(args.cv)] if args.cv else []) \
            + (["--cluster", args.cluster] if args.cluster else [])
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
        result = json.loads(out.strip().splitlines()[-1])
        case = (f"{label(rows)} x 384, {args.classes} classes" + (f", cv={args.cv}" if args.cv else "")
                + (f", cluster {args.cluster}" if args.cluster else ""))
        entry = {"case": case, **result, "load_average_at_start": round(load, 2),
                 "command": " ".join(["python", "scripts/bench_outofcore.py", "--rows", str(rows), "--classes",
                                      str(args.classes), "--memory", args.memory, "--budget", str(args.budget)]
                                     + (["--cv", str(args.cv)] if args.cv else [])
                                     + (["--cluster", args.cluster] if args.cluster else [])),
                 "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), torch 1 thread"}
        print(json.dumps(entry), flush=True)
        figures = json.loads(args.json.read_text()) if args.json.exists() else []
        figures = [f for f in figures if f["case"] != case] + [entry]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(figures, indent=2) + "\n")
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
