"""``cincer sweep FILE.toml``: a grid of experiments in parallel (local processes or a Dask cluster)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..device import DEVICE_HELP, resolve_device
from ..errors import CincerError
from ..experiments.sweep import load_sweep, run_sweep


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a grid of experiments from a TOML file; resumes finished runs",
                       description="Runs every method of every experiment in FILE (see cincer.experiments.sweep "
                                   "for the format). A finished method (summary.json present) is not redone.")
    p.add_argument("file", type=Path, help="sweep file (TOML)")
    p.add_argument("--jobs", type=int, default=None, help="local worker processes (default: the file's, else 1)")
    p.add_argument("--cluster", default=None, metavar="ADDRESS",
                   help="run on an existing Dask distributed scheduler, e.g. tcp://127.0.0.1:8786")
    p.add_argument("--out", type=Path, default=None, help="root folder (overrides the file's 'out')")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--force", action="store_true", help="rerun finished methods")
    p.add_argument("--dry-run", action="store_true", help="list the experiments and what is left, run nothing")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise CincerError(f"--jobs must be at least 1, got {args.jobs}")
    sweep = load_sweep(args.file, out=args.out)
    if args.dry_run:
        for exp, out in sweep.experiments:
            left = [m for m in exp.methods or [] if args.force or not (out / m / "summary.json").is_file()]
            print(f"{exp.label:<40} {out}  left: {', '.join(left) or '-'}")
        return 0
    if args.cluster is None:
        resolve_device(args.device)  # on a cluster the workers check it: they may have GPUs this machine lacks
    records = run_sweep(sweep, jobs=args.jobs, cluster=args.cluster, force=args.force, threads=args.threads,
                        device=args.device)
    print(f"{len(records)} method run(s) done; {len(sweep.experiments)} experiment(s) summarised")
    return 0
