"""``cincer audit``: the label issues of a table, each with its counter-examples, as CSV or Parquet.

In memory (:func:`cincer.issues.audit_table`) when the table fits ``--memory``; above it, or with
``--cluster``, out of core (:func:`cincer.outofcore.audit_table`: the table streamed in chunks, or
partitions of a Dask cluster), which needs the linear model on numeric feature columns.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import CincerError

OUT_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
NOISE_HELP = "the share of rows whose prediction (out of fold with --cv) disagrees with the given label"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit", help="find wrong labels in a table (CSV/TSV/Parquet, a folder of Parquet): the most suspicious "
                      "rows first, each with its counter-examples",
        description="Trains a model on the table (a linear head on the feature columns by default), flags the rows "
                    "whose label the model doubts (margin P(suggested) - P(given) above 0.2) and ranks, for each, "
                    "the training rows that support the suggested label (CINCER's counter-examples; by default "
                    "those that are themselves likely mislabelled first, see --counterexamples). Writes "
                    "one row per issue, most suspicious first: key, given_label, suggested_label, suspicion, "
                    "out_of_fold, then counterexample_J_key/_label/_score for J = 1..k; and FILE.json with every "
                    f"option and the summary. Estimated noise: {NOISE_HELP}. Tables above --memory (or any table "
                    "with --cluster) are audited out of core, chunk by chunk, with --model linear on numeric "
                    "feature columns.")
    p.add_argument("data", type=Path, help="a .csv, .tsv or .parquet file, or a folder of .parquet files "
                                           "(read in the sorted order of their paths)")
    p.add_argument("--labels", required=True, metavar="COL", help="the label column")
    inputs = p.add_mutually_exclusive_group()
    inputs.add_argument("--features", default=None, metavar="COLS",
                        help="comma-separated feature columns (default: every numeric column but --labels and --id)")
    inputs.add_argument("--text", default=None, metavar="COL",
                        help="a text column: TF-IDF + truncated SVD features, as `cincer project init --text`")
    inputs.add_argument("--images", type=Path, default=None, metavar="DIR",
                        help="a folder of images named in the --files column (28x28 gray, as `cincer project init "
                             "--images`)")
    p.add_argument("--files", default=None, metavar="COL",
                   help="with --images: the file-name column (default: the first column besides --labels and --id)")
    p.add_argument("--id", default=None, metavar="COL",
                   help="key column (unique; default: the 0-based row number in the input)")
    p.add_argument("--model", default="linear", choices=("linear", "fullnet"),
                   help="linear (default): StandardScaler + LogisticRegression; fullnet: the paper's small network")
    p.add_argument("--cv", type=int, default=None, metavar="K",
                   help="out of fold: K models, each without one stratified fold, judge the rows they did not train "
                        "on and take their counter-examples from their own training rows (default: one model on "
                        "every row)")
    p.add_argument("--budget", type=int, default=None, metavar="N", help="write at most N issues (default: all)")
    p.add_argument("--k", type=int, default=3, help="counter-examples per issue (default: 3)")
    p.add_argument("--counterexamples", default="suspect", choices=("suspect", "support"),
                   help="suspect (default): the training rows' support of the suggested label (CINCER's Fisher "
                        "kernel) times their own probability of being mislabelled (out of fold with --cv), so the "
                        "counter-examples shown are more often wrong labels themselves; support: the support alone")
    p.add_argument("--seed", type=int, default=0, help="random seed of the folds and the network (default: 0)")
    p.add_argument("--drop-invalid", action="store_true",
                   help="leave out rows with NaN/inf features or no label (counted in the summary) instead of "
                        "stopping with their keys")
    p.add_argument("--memory", default=None, metavar="SIZE",
                   help="memory budget, e.g. 2GB or 500MB (binary units); a table whose in-memory estimate (4x its "
                        "uncompressed size) exceeds it is audited out of core (default: a quarter of this machine's "
                        "RAM)")
    p.add_argument("--cluster", default=None, metavar="ADDRESS",
                   help="run out of core on a Dask cluster: a scheduler address (tcp://HOST:8786) or local:N")
    p.add_argument("--out", type=Path, default=Path("label_issues.csv"),
                   help="output table, .csv or .parquet by extension (default: label_issues.csv); its configuration "
                        "and summary go to OUT.json")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from .. import issues, tables

    start = time.perf_counter()
    out = args.out
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise CincerError(f"--out {out.name}: write .csv, .tsv or .parquet (by extension)")
    if out.exists() and out.is_dir():
        raise CincerError(f"--out {out} is a folder")
    features = None if args.features is None else [c.strip() for c in args.features.split(",") if c.strip()]
    if args.features is not None and not features:
        raise CincerError("--features: name at least one column")
    if args.files is not None and args.images is None:
        raise CincerError("--files goes with --images")
    issues.check_options(labels=args.labels, features=features, text=args.text, images=args.images, id=args.id,
                         model=args.model, cv=args.cv, budget=args.budget, k=args.k, seed=args.seed,
                         counterexamples=args.counterexamples)
    memory = tables.default_memory() if args.memory is None else tables.parse_size(args.memory)
    source = tables.check_source(args.data)
    estimate = tables.memory_estimate(source)
    outofcore = args.cluster is not None or estimate > memory
    if outofcore:
        why = (f"--cluster {args.cluster}" if args.cluster is not None else
               f"the table needs about {tables.format_size(estimate)} in memory, above --memory "
               f"{tables.format_size(memory)}")
        if args.model != "linear" or args.text is not None or args.images is not None:
            raise CincerError(f"out-of-core audit ({why}) needs --model linear and numeric feature columns "
                              "(not --text, --images or --model fullnet)"
                              + ("" if args.cluster is not None else "; raise --memory to audit it in memory"))
        from ..outofcore import audit_table as outofcore_audit

        table, summary = outofcore_audit(str(source), labels=args.labels, features=features, id=args.id,
                                         budget=args.budget, k=args.k, cv=args.cv, memory=memory, seed=args.seed,
                                         drop_invalid=args.drop_invalid, cluster=args.cluster,
                                         counterexamples=args.counterexamples)
        summary = {"engine": "out-of-core" if args.cluster is None else "dask", **dict(summary)}
    else:
        table, summary = issues.audit_table(source, labels=args.labels, features=features, text=args.text,
                                            images=args.images, files=args.files, id=args.id, model=args.model,
                                            cv=args.cv, budget=args.budget, k=args.k, seed=args.seed,
                                            drop_invalid=args.drop_invalid, counterexamples=args.counterexamples)
    summary["memory_estimate_bytes"] = int(estimate)
    summary["seconds_total"] = round(time.perf_counter() - start, 3)
    config = {"command": "audit", "input": str(source.resolve()), "output": str(out.resolve()),
              "options": {"labels": args.labels, "features": features, "text": args.text,
                          "images": None if args.images is None else str(args.images), "files": args.files,
                          "id": args.id, "model": args.model, "cv": args.cv, "budget": args.budget, "k": args.k,
                          "counterexamples": args.counterexamples,
                          "seed": args.seed, "drop_invalid": args.drop_invalid, "memory": memory,
                          "cluster": args.cluster, "threads": getattr(args, "threads", None)},
              "columns": [str(c) for c in table.columns], "estimated_noise_means": NOISE_HELP,
              "versions": _versions(), "summary": summary}
    written = write_outputs(table, config, out)
    print(_summary_lines(summary, written))
    return 0


def write_outputs(table: Any, config: dict, out: Path) -> list[Path]:
    """The table (CSV/TSV/Parquet by ``out``'s extension) and ``out.json``, each written beside its place
    and renamed into it: a reader never sees half a file, and a failure leaves nothing."""
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = out.with_name(out.name + ".json")
    tmp_table = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp_meta = meta.with_name(f".{meta.name}.{os.getpid()}.tmp")
    try:
        suffix = out.suffix.lower()
        if suffix in (".parquet", ".pq"):
            table.to_parquet(tmp_table, index=False)
        else:
            table.to_csv(tmp_table, index=False, sep="\t" if suffix == ".tsv" else ",")
        tmp_meta.write_text(json.dumps(config, indent=2, default=_json_default))
        os.replace(tmp_table, out)
        os.replace(tmp_meta, meta)
    except BaseException:
        for tmp in (tmp_table, tmp_meta):
            tmp.unlink(missing_ok=True)
        raise
    return [out, meta]


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    found = {"cincer": __version__, "python": sys.version.split()[0]}
    for name in ("numpy", "pandas", "pyarrow", "scikit-learn", "torch", "dask"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def _summary_lines(summary: dict, written: list[Path]) -> str:
    dropped = summary.get("dropped", 0)
    noise = summary.get("estimated_noise")
    noise_text = "n/a" if noise is None else f"{float(noise):.1%}"
    fold = " out-of-fold" if summary.get("out_of_fold") else ""
    seconds = summary.get("seconds_total", summary.get("seconds", 0.0))
    return "\n".join([
        f"cincer audit: {summary.get('rows')} rows read"
        + (f", {dropped} dropped (--drop-invalid: {_reasons(summary)})" if dropped else "")
        + f", {summary.get('classes')} classes ({summary.get('engine', 'in-memory')})",
        f"estimated noise: {noise_text} (rows whose{fold} prediction disagrees with the label)",
        f"issues written: {summary.get('issues')} to {written[0]} (configuration and summary: {written[1]})",
        f"time: {float(seconds):.1f} s"])


def _reasons(summary: dict) -> str:
    reasons = summary.get("dropped_by_reason") or {}
    text = ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in reasons.items() if n)
    return text or "invalid rows"
