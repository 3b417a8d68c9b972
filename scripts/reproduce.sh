#!/usr/bin/env bash
# Reproduce the paper's Q1, Q2, Q3 on its eight (data set, model) pairs, then the figures and tables.
#
# Usage: scripts/reproduce.sh [--jobs N] [--cluster ADDRESS] [--threads T] [--device D] [--sweep FILE] [--out DIR]
#                            [--results DIR]   (figures and tables; default docs/results)
#        scripts/reproduce.sh --estimate        (time a 1-repeat, 2-round, 10-epoch run per pair and
#                                                extrapolate the full protocol's CPU time: an estimate)
#
# The sweep resumes: rerunning after a crash or Ctrl-C skips every finished method.
# Full protocol: 5 repeats x 100 rounds, 100 epochs, 100 known (500 for the text set), 20% noise, tau 0.2.
set -euo pipefail
cd "$(dirname "$0")/.."
CINCER=${CINCER:-.venv/bin/cincer}
PYTHON=${PYTHON:-.venv/bin/python}
SWEEP=docs/results/paper.toml
OUT=runs/paper
RESULTS=docs/results
ARGS=()
ESTIMATE=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --jobs|--cluster|--threads|--device) ARGS+=("$1" "$2"); shift 2 ;;
        --results) RESULTS=$2; shift 2 ;;
        --sweep) SWEEP=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --estimate) ESTIMATE=1; shift ;;
        *) echo "reproduce.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [[ $ESTIMATE == 1 ]]; then
    exec "$PYTHON" - "$SWEEP" <<'PY'
import dataclasses, sys, tempfile, time
import pandas as pd, torch
from cincer.experiments import load_sweep, run_method
torch.set_num_threads(1)
pairs = list(dict.fromkeys((e.dataset, e.model) for e, _ in load_sweep(sys.argv[1]).experiments))
print("pair,cpu_s_per_round_full,loop_methods_h,q2_h,total_cpu_h  (ESTIMATE: 1 core per method)")
for dataset, model in pairs:
    exp = next(e for e, _ in load_sweep(sys.argv[1]).experiments if (e.dataset, e.model, e.question) == (dataset, model, "q1"))
    small = dataclasses.replace(exp, repeats=1, rounds=2, epochs=10)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.process_time()
        run_method(small, "top_fisher", tmp)
        cpu = time.process_time() - t0
        trace = pd.read_csv(f"{tmp}/top_fisher/trace.csv")
    wall = trace["elapsed_seconds"].max()
    train_frac = trace["train_seconds"].sum() / wall if wall > 0 else 1.0
    rounds = len(trace)
    # training scales with epochs (x10) and with the known set (100 -> 200 over the run: x1.5 on average)
    per_round = cpu / rounds * (train_frac * 10 * 1.5 + (1 - train_frac))
    loop = per_round * (exp.rounds + 1) * exp.repeats * 9 / 3600  # 9 distinct Q1+Q3 methods; influence extra
    q2 = per_round / (exp.rounds + 1) * exp.repeats * 7 / 3600 + loop / 9 * 0.2
    print(f"{dataset}/{model},{per_round:.2f},{loop:.2f},{q2:.2f},{loop + q2:.2f}", flush=True)
PY
fi

"$CINCER" sweep "$SWEEP" --out "$OUT" "${ARGS[@]}"
"$CINCER" plot "$OUT" --out "$RESULTS"
echo "reproduce.sh: figures and tables in $RESULTS/ (results.md, q1_q3.csv, q2.csv)"
