"""Your own labelled table as a named data set: every protocol (``cincer run``, ``experiment``, ``sweep``,
``compare-rankings``) then runs on it as on the built-in ones.

:func:`add_table` reads the table as ``cincer audit`` reads it (numeric feature columns, a text column, or a
folder of images), splits it once (stratified, ``test_size``, ``seed``), min-max scales tabular features on
the training part (the built-in tabular sets' preprocessing) and saves it in the data cache (NPZ + JSON,
the source recorded in ``meta``). Saved tables are registered in :data:`~cincer.data.DATASETS` whenever
``cincer.data`` is imported, so the worker processes of ``--jobs`` find them too. The labels are the clean
ones of a simulation: label noise is injected by the protocol (``--noise``), as for the paper's data sets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CincerError, InputError
from . import cache
from .base import Dataset
from .registry import DATASETS

PREFIX = "user-"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _key(name: str) -> str:
    return f"{PREFIX}{name}"


def _loader(name: str, source: str) -> Callable[..., Dataset]:
    def load(*, seed: int = 0) -> Dataset:  # the split was fixed when the table was added
        dataset = cache.load(_key(name))
        if dataset is None:
            raise CincerError(f"data set {name!r}: its cached copy is missing or damaged; add it again "
                              f"(cincer data add {name} TABLE ... --force)")
        return dataset

    load.cache_key = lambda **_: _key(name)  # type: ignore[attr-defined]
    load.source = source  # type: ignore[attr-defined]
    return load


def saved() -> dict[str, str]:
    """The tables added on this machine: name -> source (the table's path)."""
    out = {}
    for path in sorted(cache.datasets_dir().glob(f"{PREFIX}*.json")):
        try:  # the sidecar alone (cheap at import); the checksum is verified when the data set is loaded
            sidecar = json.loads(path.read_text())
            if sidecar["meta"]["user_table"] and _key(sidecar["name"]) == sidecar["key"]:
                out[sidecar["name"]] = str(sidecar["meta"]["source"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def register_saved() -> None:
    """Register every saved table in DATASETS (a name a built-in set already has is left to the built-in)."""
    for name, source in saved().items():
        if name not in DATASETS:
            DATASETS.register(name)(_loader(name, source))


def check_name(name: str, *, force: bool) -> None:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise CincerError(f"data set name {name!r}: use letters, digits, '_', '-' or '.' (at most 64)")
    if name in DATASETS and not hasattr(DATASETS[name], "source"):
        raise CincerError(f"{name!r} is a built-in data set: choose another name")
    if name in DATASETS and not force:
        raise CincerError(f"data set {name!r} exists ({DATASETS[name].source}); --force replaces it")  # type: ignore


def add_table(name: str, path: str | Path, *, labels: str, features: list[str] | None = None,
              text: str | None = None, images: str | Path | None = None, files: str | None = None,
              test_size: float = 0.2, seed: int = 0, force: bool = False) -> Dataset:
    """Read the table at ``path`` into data set ``name`` (see the module's docstring) and register it.

    Rows with no label or NaN/inf features are refused with their row numbers; every class needs at least
    two rows (the split is stratified). Returns the :class:`Dataset`."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import MinMaxScaler

    from ..issues import _inputs, _require, check_options, plain_value
    from ..tables import check_source, read_table
    from ..validation import check_labels

    check_name(name, force=force)
    check_options(labels=labels, features=features, text=text, images=images, id=None, model="linear", cv=None,
                  budget=None, k=1, seed=seed)
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or not 0 < test_size < 1:
        raise CincerError(f"test_size must be a fraction in (0, 1), got {test_size!r}")
    source = check_source(path)
    frame = read_table(source)
    _require(frame, labels, "labels", source.name)
    X, feature_names, kind = _inputs(frame, features=features, text=text, images=images, files=files,
                                     exclude=[labels], source=source.name, seed=seed)
    flat = X.reshape(len(X), -1)
    bad = np.flatnonzero(frame[labels].isna().to_numpy() | ~np.isfinite(flat).all(axis=1))
    if len(bad):
        shown = ", ".join(map(str, bad[:10])) + (f", ... ({len(bad)} in all)" if len(bad) > 10 else "")
        raise InputError(f"{source.name}: rows {shown} have no label or NaN/inf features; leave them out first")
    given = check_labels(frame[labels].to_numpy(), name=f"labels {labels!r}")
    classes, y = np.unique(given, return_inverse=True)
    if len(classes) < 2:
        raise InputError(f"labels: column {labels!r} holds a single class ({plain_value(classes[0])!r}): need at "
                         "least two")
    counts = np.bincount(y)
    if counts.min() < 2:
        rare = plain_value(classes[int(np.argmin(counts))])
        raise InputError(f"labels: class {rare!r} has a single row: the split is stratified, each class needs at "
                         "least two")
    index = np.arange(len(y))
    train, test = train_test_split(index, test_size=test_size, random_state=seed, stratify=y)
    train, test = np.sort(train), np.sort(test)
    X_train, X_test = X[train], X[test]
    if kind == "tabular":
        scaler = MinMaxScaler().fit(X_train)
        X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    texts = frame[text].fillna("").astype(str).tolist() if text is not None else None
    meta: dict[str, Any] = {"user_table": True, "source": str(source.resolve()), "labels": labels, "input": kind,
                            "features": features, "text": text, "images": None if images is None else str(images),
                            "files": files, "test_size": test_size, "seed": seed}
    dataset = Dataset(name, X_train, y[train], X_test, y[test], class_names=[str(c) for c in classes],
                      feature_names=feature_names if kind == "tabular" else None,
                      image_shape=tuple(X.shape[1:]) if kind == "image" else None,
                      texts_train=None if texts is None else [texts[i] for i in train],
                      texts_test=None if texts is None else [texts[i] for i in test], meta=meta)
    cache.save(dataset, _key(name))
    if name in DATASETS:
        DATASETS.unregister(name)
    DATASETS.register(name)(_loader(name, meta["source"]))
    return dataset


def remove_table(name: str) -> None:
    """Forget an added table (its cache entry and its registration)."""
    if name not in saved():
        raise CincerError(f"no added data set {name!r} (added: {', '.join(saved()) or 'none'})")
    for path in cache.cache_paths(_key(name))[::-1]:  # the sidecar first: no valid half-entry
        path.unlink(missing_ok=True)
    if name in DATASETS:
        DATASETS.unregister(name)
