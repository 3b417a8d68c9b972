"""Label issues of a table: :func:`find_label_issues` (cleanlab's name) and what ``cincer audit`` reads.

A table (a pandas DataFrame, or a CSV / TSV / Parquet file, or a folder of Parquet files read in the
sorted order of their paths) with a label column becomes a :class:`cincer.Cleaner` fitted on its
feature columns (a linear head by default: ``StandardScaler`` + ``LogisticRegression``), and the
cleaner's :meth:`~cincer.Cleaner.label_issues` becomes one row per issue, most suspicious first, in
the schema the out-of-core engine (:mod:`cincer.outofcore`) shares:

``key`` (the ``id`` column's value, else the 0-based row number in the input), ``given_label``,
``suggested_label``, ``suspicion`` (higher = more suspicious: the margin ``P(suggested) - P(given)``),
``out_of_fold`` (the probabilities came from a model that did not train on the row: ``cv`` was used),
then for ``j`` in ``1..k``: ``counterexample_{j}_key``, ``counterexample_{j}_label`` and
``counterexample_{j}_score`` (the Fisher-kernel support of the suggested label, times the row's own
probability of being mislabelled unless ``counterexamples="support"``; missing when fewer).

Bad input is an :class:`~cincer.errors.InputError` naming the problem: a missing column, a single
class, non-numeric feature columns, NaN/inf features or missing labels (with the rows' keys; or left
out with ``drop_invalid=True`` and counted), duplicate or missing ids, an unreadable file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CincerError, InputError
from .tables import read_images, read_table, text_features

MODEL_NAMES = ("linear", "fullnet")
SHOWN_KEYS = 10


def issue_columns(k: int) -> list[str]:
    """The columns of a label-issue table with ``k`` counter-examples per issue (the shared schema)."""
    columns = ["key", "given_label", "suggested_label", "suspicion", "out_of_fold"]
    for j in range(1, k + 1):
        columns += [f"counterexample_{j}_key", f"counterexample_{j}_label", f"counterexample_{j}_score"]
    return columns


# --------------------------------------------------------------------------- checks

def plain_value(value: Any) -> Any:
    """A key or label as Python keeps it (numpy scalars unwrapped)."""
    return value.item() if isinstance(value, np.generic) else value


def _listed_keys(keys: Any, limit: int = SHOWN_KEYS) -> str:
    keys = [plain_value(k) for k in keys]
    shown = ", ".join(map(repr, keys[:limit]))
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _positive(name: str, value: Any, *, none: bool = False) -> int | None:
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise CincerError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_options(*, labels: Any, features: Any, text: Any, images: Any, id: Any, model: Any, cv: Any,
                  budget: Any, k: Any, seed: Any, counterexamples: Any = "suspect") -> None:
    """The options of an audit, checked before any data is read."""
    from .select import check_counterexample_order

    check_counterexample_order(counterexamples)
    if not isinstance(labels, str) or not labels:
        raise CincerError(f"labels must name the label column, got {labels!r}")
    given = [name for name, value in (("features", features), ("text", text), ("images", images)) if value is not None]
    if len(given) > 1:
        raise CincerError(f"{' and '.join(given)} exclude each other: the model reads one kind of input")
    if model not in MODEL_NAMES:
        raise CincerError(f"model must be one of {', '.join(MODEL_NAMES)}, got {model!r}")
    if cv is not None and (isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2):
        raise CincerError(f"cv must be an integer of at least 2 (the number of folds), got {cv!r}")
    _positive("budget", budget, none=True)
    _positive("k", k)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31:
        raise CincerError(f"seed must be an integer in [0, 2**31), got {seed!r}")
    if features is not None and (isinstance(features, str) or not all(isinstance(c, str) for c in features)):
        raise CincerError(f"features must be a list of column names, got {features!r}")
    for name, value in (("id", id), ("text", text)):
        if value is not None and not isinstance(value, str):
            raise CincerError(f"{name} must name a column, got {value!r}")


def _require(frame: Any, column: str, what: str, source: str) -> None:
    if column not in frame.columns:
        listed = ", ".join(map(str, frame.columns[:30])) + (", ..." if len(frame.columns) > 30 else "")
        raise InputError(f"{what}: no column {column!r} in {source} (columns: {listed})")


def row_keys(frame: Any, id: str | None, source: str) -> np.ndarray:
    """Each row's key: the ``id`` column's values (none missing, none repeated), else the row numbers."""
    if id is None:
        return np.arange(len(frame), dtype=np.int64)
    _require(frame, id, "id", source)
    ids = frame[id]
    if ids.isna().any():
        raise InputError(f"id: column {id!r} has missing values in rows {_listed_keys(np.flatnonzero(ids.isna()))}")
    repeated = ids[ids.duplicated(keep=False)]
    if len(repeated):
        raise InputError(f"id: column {id!r} repeats keys: {_listed_keys(repeated.drop_duplicates().to_numpy())} "
                         "(each row needs its own key)")
    return ids.to_numpy()


def numeric_features(frame: Any, features: list[str] | None, exclude: list[str], source: str) -> list[str]:
    """The feature columns: those named (each numeric), else every numeric (or boolean) column but ``exclude``."""
    import pandas as pd

    def numeric(column: str) -> bool:
        dtype = frame[column].dtype
        return bool(pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))

    if features is not None:
        if not features:
            raise CincerError("features: name at least one column")
        for column in features:
            _require(frame, column, "features", source)
        clash = [c for c in features if c in exclude]
        if clash:
            raise InputError(f"features: {', '.join(map(repr, clash))} is the label or id column")
        bad = [c for c in features if not numeric(c)]
        if bad:
            raise InputError(f"features: column(s) {', '.join(map(repr, bad))} are not numeric (e.g. "
                             f"{frame[bad[0]].dropna().iloc[0] if frame[bad[0]].notna().any() else None!r}); "
                             "encode them as numbers, or use text= / --text for a text column")
        return list(features)
    chosen = [c for c in frame.columns if c not in exclude and numeric(c)]
    if not chosen:
        others = [str(c) for c in frame.columns if c not in exclude]
        raise InputError(f"{source} has no numeric feature columns besides the labels"
                         + (f" (non-numeric: {', '.join(others[:10])}); encode them as numbers, or use "
                            "text= / --text or images= / --images" if others else ""))
    return chosen


# --------------------------------------------------------------------------- the audit

def find_label_issues(data: Any, *, labels: str, features: list[str] | None = None, text: str | None = None,
                      images: str | Path | None = None, files: str | None = None, id: str | None = None,
                      model: str = "linear", cv: int | None = None, budget: int | None = None, k: int = 3,
                      seed: int = 0, drop_invalid: bool = False, threshold: float | None = None,
                      train_config: Any = None, counterexamples: str = "suspect") -> Any:
    """The label issues of a table, most suspicious first, each with its counter-examples (CINCER).

    ``data``: a pandas DataFrame, or the path of a CSV / TSV / Parquet file or of a folder of Parquet
    files. ``labels``: the label column. The model's input: ``features`` (columns; default: every numeric
    column but the labels and ``id``), or ``text`` (a text column: TF-IDF + truncated SVD, as
    ``cincer project init --text``), or ``images`` (a folder of image files named in the ``files`` column,
    default the first other column; 28x28 gray, as ``cincer project init --images``). ``model``:
    ``"linear"`` (``StandardScaler`` + ``LogisticRegression``) or ``"fullnet"`` (the paper's small
    network, standardised inputs; ``train_config`` sets its training, default 30 epochs at lr 5e-3).
    ``cv=K``: out-of-fold probabilities and counter-examples (K fold models, see
    :meth:`cincer.Cleaner.audit`). ``budget``: at most this many issues (default: all). ``k``:
    counter-examples per issue. ``threshold``: the margin above which a row is an issue (default 0.2).
    ``drop_invalid``: leave out rows with NaN/inf features or no label (counted in the summary) instead
    of refusing them. ``counterexamples``: ``"suspect"`` (default: the rows' support of the suggested label,
    CINCER's Fisher kernel, times their own probability of being mislabelled, out of fold with ``cv``:
    supporters that are themselves likely wrong first, so a reader of each issue and its first counter-example
    meets more wrong labels per row read; see docs/SCALE.md) or ``"support"`` (the support alone).

    Returns a pandas DataFrame in the schema of :mod:`cincer.issues` (:func:`issue_columns`);
    ``table.attrs["summary"]`` holds the rows read and used, the rows dropped, the classes, the estimated
    noise (the share of rows whose prediction, out of fold with ``cv``, disagrees with the label) and the
    time taken.
    """
    table, summary = audit_table(data, labels=labels, features=features, text=text, images=images, files=files,
                                 id=id, model=model, cv=cv, budget=budget, k=k, seed=seed, drop_invalid=drop_invalid,
                                 threshold=threshold, train_config=train_config, counterexamples=counterexamples)
    table.attrs["summary"] = summary
    return table


def audit_table(data: Any, *, labels: str, features: list[str] | None = None, text: str | None = None,
                images: str | Path | None = None, files: str | None = None, id: str | None = None,
                model: str = "linear", cv: int | None = None, budget: int | None = None, k: int = 3, seed: int = 0,
                drop_invalid: bool = False, threshold: float | None = None,
                train_config: Any = None, counterexamples: str = "suspect") -> tuple[Any, dict]:
    """:func:`find_label_issues` returning ``(table, summary)`` (what ``cincer audit`` writes)."""
    import pandas as pd

    start = time.perf_counter()
    check_options(labels=labels, features=features, text=text, images=images, id=id, model=model, cv=cv,
                  budget=budget, k=k, seed=seed, counterexamples=counterexamples)
    if isinstance(data, pd.DataFrame):
        frame, source = data.reset_index(drop=True), "the DataFrame"
    elif isinstance(data, (str, Path)):
        frame, source = read_table(data), Path(data).name
    else:
        raise CincerError(f"data must be a pandas DataFrame or the path of a table, got {type(data).__name__}")
    n_read = len(frame)
    _require(frame, labels, "labels", source)
    keys = row_keys(frame, id, source)
    if id == labels:
        raise InputError("id and labels name the same column")
    exclude = [labels] + ([id] if id is not None else [])
    X, feature_names, kind = _inputs(frame, features=features, text=text, images=images, files=files,
                                     exclude=exclude, source=source, seed=seed)
    missing_label = frame[labels].isna().to_numpy()
    flat = X.reshape(len(X), -1)
    nonfinite = ~np.isfinite(flat).all(axis=1) if flat.dtype.kind == "f" else np.zeros(len(X), bool)
    invalid = missing_label | nonfinite
    dropped = {"missing_label": int(missing_label.sum()), "nonfinite_features": int((nonfinite & ~missing_label).sum())}
    if invalid.any() and not drop_invalid:
        parts = []
        if nonfinite.any():
            parts.append(f"{int(nonfinite.sum())} rows have NaN or infinite features (keys: "
                         f"{_listed_keys(keys[nonfinite])})")
        if missing_label.any():
            parts.append(f"{int(missing_label.sum())} rows have no label (keys: {_listed_keys(keys[missing_label])})")
        raise InputError(f"{source}: {'; '.join(parts)}; leave them out with drop_invalid=True (--drop-invalid)")
    keep = ~invalid
    X, keys, y = X[keep], keys[keep], frame[labels].to_numpy()[keep]
    from .validation import check_labels

    y = check_labels(y, name=f"labels {labels!r}")
    if y.dtype.kind == "f" and len(y) and (y == np.round(y)).all():  # integer labels read as floats (a gap)
        y = y.astype(np.int64)
    classes = np.unique(y)
    if len(classes) < 2:
        raise InputError(f"labels: column {labels!r} holds a single class ({plain_value(classes[0])!r}"
                         + (" once rows without a label or with NaN/inf features are left out" if invalid.any()
                            else "") + "): need at least two classes")
    if cv is not None:
        counts = np.unique(y, return_counts=True)[1]
        if counts.min() < cv:
            rare = plain_value(classes[int(np.argmin(counts))])
            raise InputError(f"cv={cv}: class {rare!r} has only {counts.min()} rows, fewer than the folds")
    cleaner = _cleaner(model, X, len(classes), k=k, seed=seed, threshold=threshold, train_config=train_config,
                       kind=kind)
    Xm = _model_input(model, X, kind)
    cleaner.fit(Xm, y)
    found = cleaner._issues(budget, cv, counterexamples)
    table = _table(found, cleaner.classes_, cleaner.loop_.labels, keys, k)
    summary = {"rows": n_read, "rows_used": int(keep.sum()), "dropped": int(invalid.sum()),
               "dropped_by_reason": dropped, "classes": int(len(classes)),
               "class_names": [plain_value(c) for c in classes], "estimated_noise": found.disagreement,
               "issues": int(len(table)), "out_of_fold": cv is not None, "features": len(feature_names),
               "input": kind, "model": model, "counterexamples": counterexamples, "engine": "in-memory",
               "seconds": round(time.perf_counter() - start, 3)}
    return table, summary


def _inputs(frame: Any, *, features: list[str] | None, text: str | None, images: str | Path | None,
            files: str | None, exclude: list[str], source: str, seed: int) -> tuple[np.ndarray, list[str], str]:
    """The model's input of every row, its feature names and the kind of input (tabular, text, image),
    made as ``cincer project init`` makes them."""
    if text is not None:
        _require(frame, text, "text", source)
        X = text_features(frame[text].fillna("").astype(str).tolist(), seed=seed).astype(np.float64)
        return X, [f"lsa{i}" for i in range(X.shape[1])], "text"
    if images is not None:
        files = files or next((c for c in frame.columns if c not in exclude), None)
        if files is None:
            raise InputError(f"images: {source} has no column of file names besides the labels")
        _require(frame, files, "files", source)
        X = read_images(frame, Path(images), files).astype(np.float64)
        return X, ["pixels"], "image"
    columns = numeric_features(frame, features, exclude, source)
    X = frame[columns].to_numpy(dtype=np.float64, na_value=np.nan)
    return X, [str(c) for c in columns], "tabular"


# the audit keeps the paper's pseudo-inverse (truncate=0), as its out-of-core engine (cincer.outofcore) does and
# as its published comparison with cleanlab (docs/SCALE.md) was measured; Cleaner's default truncates (#16)
AUDIT_INVERSE = {"truncate": 0.0}


def _cleaner(model: str, X: np.ndarray, n_classes: int, *, k: int, seed: int, threshold: float | None,
             train_config: Any, kind: str) -> Any:
    from .api import Cleaner

    if model == "linear":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        estimator: Any = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        return Cleaner(estimator, k=k, seed=seed, threshold=threshold, retrain="defer", selector_params=AUDIT_INVERSE)
    from .models import TrainConfig, build_model

    config = train_config if train_config is not None else TrainConfig(epochs=30, lr=5e-3)
    shape = X.shape[1:] if kind == "image" else (X.shape[1],)
    net = build_model("fullnet", shape, n_classes, seed=seed)
    return Cleaner(net, k=k, seed=seed, threshold=threshold, retrain="defer", train_config=config,
                   selector_params=AUDIT_INVERSE)


def _model_input(model: str, X: np.ndarray, kind: str) -> np.ndarray:
    """The linear model sees flat rows (its pipeline standardises them); the network standardised
    features (images as they are: in [-0.5, 0.5])."""
    if model == "linear":
        return X.reshape(len(X), -1)
    if kind == "image":
        return X
    std = X.std(axis=0)
    return (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)


def _table(found: Any, classes: np.ndarray, pool_labels: np.ndarray, keys: np.ndarray, k: int) -> Any:
    import pandas as pd

    n = len(found.order)
    out: dict[str, Any] = {
        "key": _values([plain_value(v) for v in keys[found.order]], keys),
        "given_label": classes[found.labels],
        "suggested_label": classes[found.predicted],
        "suspicion": np.asarray(found.scores, dtype=np.float64),
        "out_of_fold": np.full(n, found.out_of_fold, dtype=bool),
    }
    for j in range(k):
        ces = [r.indices[j] if len(r.indices) > j else None for r in found.rankings]
        out[f"counterexample_{j + 1}_key"] = _values([None if c is None else plain_value(keys[c]) for c in ces], keys)
        out[f"counterexample_{j + 1}_label"] = _values(
            [None if c is None else plain_value(classes[pool_labels[c]]) for c in ces], classes)
        out[f"counterexample_{j + 1}_score"] = np.array(
            [np.nan if len(r.scores) <= j else float(r.scores[j]) for r in found.rankings], dtype=np.float64)
    return pd.DataFrame(out, columns=issue_columns(k))


def _values(values: list, like: np.ndarray) -> Any:
    """A column of keys or labels with missing values: nullable integers for integer ones, else objects."""
    import pandas as pd

    if np.asarray(like).dtype.kind in "iub":
        return pd.array(values, dtype="Int64")
    return pd.array(values, dtype=object)
