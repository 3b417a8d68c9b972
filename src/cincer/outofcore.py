"""Label issues of a table too big for memory: CINCER's audit streamed over row batches (one machine).

:func:`audit_table` reads a CSV / TSV / Parquet file or a folder of Parquet files in row batches (pyarrow),
never holding the rows, and returns the label issues in the schema shared with :mod:`cincer.issues`
(``key``, ``given_label``, ``suggested_label``, ``suspicion``, ``out_of_fold``, then ``counterexample_{j}_key``,
``_label``, ``_score`` for ``j`` in ``1..k``). The model is a linear softmax head on the standardised feature
columns: the whole trainable model, so the top-layer Fisher information is its exact Fisher.

The passes (each one streamed over the batches; docs/SCALE.md):

a. **scan**: the label set, the row count, the features' mean and variance (Chan's parallel merge), checks
   (missing columns, non-numeric features, a single class, NaN/inf features or missing labels with their
   keys, duplicate ids through a sorted array of 64-bit hashes: 8 bytes a row);
b. **train** (``epochs`` passes): the head by mini-batch Adam (see :func:`train_heads`);
c. **probabilities and Fisher**: every row's margin ``P(predicted) - P(given)`` (the ``margin`` inspector),
   a running top-``budget`` of the flagged rows, and the exact top-layer FIM accumulated per batch with
   :func:`cincer.fisher.kron_sum` in the ``(C - 1)(d + 1)`` subspace that holds its range, pseudo-inverted
   once by :class:`cincer.fisher.FisherSolver` (as ``top_fisher``);
d. **counter-examples**: for all the queries at once, the support ``-g_t^T F^+ g_k`` of every candidate (a
   row labelled with the query's prediction: ``top_fisher``'s rule and sign) by
   :func:`cincer.fisher.top_layer_kernel`, a running top-``k`` per query.

With ``cv=K`` there are K fold heads (fold = a seeded hash of the row number); a row's suspicion comes from
the head that did not train on it, and so do its counter-examples (among that head's training rows, with
that head's FIM), as :meth:`cincer.Cleaner.audit` does in memory.

The per-batch steps are plain functions of one batch (:func:`scan_part`, :func:`make_chunk`,
:func:`gradient_chunk`, :func:`probe_chunk`, :func:`supports_chunk`) whose results merge; with ``cluster=``
:func:`audit_on_cluster` applies them to the partitions of a Dask cluster (:mod:`cincer.cluster`: the Dask
plumbing), training the head there by full-batch L-BFGS (:func:`fit_lbfgs`).
"""

from __future__ import annotations

import inspect as pyinspect
import math
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CincerError, InputError, one_line
from .fisher import (
    DEFAULT_RTOL,
    FisherSolver,
    TopLayerFisher,
    class_blocks,
    kron_sum,
    sum_free_basis,
    top_layer_kernel,
    top_layer_scores,
)
from .inspect import margin_inspector
from .issues import SHOWN_KEYS, issue_columns, plain_value
from .progress import Progress
from .select import check_counterexample_order

MARGIN_THRESHOLD: float = pyinspect.signature(margin_inspector).parameters["threshold"].default
DEFAULT_BUDGET = 1000      # issues returned when budget=None: every flagged row, at most this many
MAX_CLASSES = 10_000       # a label column with more distinct values is not a class label
WINDOW_ROWS = 32_768       # training shuffles the rows within windows of this many consecutive rows
BATCH_SIZE = 512           # training mini-batch
LEARNING_RATE = 1e-2       # Adam, decayed linearly to 5% over the training
LBFGS_ITERATIONS = 200     # optimizer="lbfgs": at most this many evaluations (passes)
LBFGS_L2 = 1e-4            # optimizer="lbfgs": L2 penalty on the weights (mean loss + L2/2 ||W||^2)
TARGET_STEPS = 2000        # epochs=None: enough epochs for about this many steps (2 to 20 epochs)
READ_BUFFER = 2**22        # Parquet read buffer (bytes)
BASE_BYTES = 450 * 2**20   # the interpreter, torch, pyarrow and pandas, before any data
FISHER_ROWS = 16_384       # rows summed in the rows' precision before adding to the float64 FIM sum
KRON_BYTES = 2**26         # one block of kron_sum's weighted products
SCORE_BYTES = 2**26        # one block of candidate x query products in the counter-example pass
TABLE_SUFFIXES = {".csv": ",", ".txt": ",", ".tsv": "\t", ".tab": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")
COMPRESSED = (".gz", ".bz2", ".zip", ".xz", ".zst")


def peak_rss_bytes() -> int:
    """The peak resident set size of this process so far (``ru_maxrss``, kilobytes on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# --------------------------------------------------------------------------- reading a table in batches

@dataclass
class Table:
    """A table on disk read in row batches: one CSV/TSV file or a list of Parquet files (in that order).

    ``schema`` is pinned at open (CSV: inferred from the first block), so every pass reads the same types."""

    path: Path
    files: list[Path]
    delimiter: str | None    # None: Parquet
    schema: Any              # pyarrow.Schema
    n_rows: int | None       # known without reading for Parquet
    bytes_per_row: float = 0.0

    @property
    def name(self) -> str:
        return self.path.name

    def batches(self, columns: list[str], rows: int, floats: tuple[str, ...] = ()) -> Iterator[Any]:
        """``pyarrow.RecordBatch`` es of about ``rows`` rows holding ``columns``, in file order; a CSV's
        ``floats`` columns are read as float64 (an integer column may hold a decimal further down)."""
        import pyarrow as pa

        try:
            if self.delimiter is None:
                import pyarrow.parquet as pq

                for file in self.files:  # pre_buffer would keep the file's buffers until its end
                    reader = pq.ParquetFile(file, pre_buffer=False, buffer_size=READ_BUFFER)
                    yield from reader.iter_batches(batch_size=rows, columns=columns, use_threads=False)
                return
            import pyarrow.csv as pacsv

            types = {c: pa.float64() if c in floats else self.schema.field(c).type for c in columns}
            reader = pacsv.open_csv(
                self.files[0], read_options=pacsv.ReadOptions(block_size=_block_size(rows, self.bytes_per_row),
                                                              use_threads=False),
                parse_options=pacsv.ParseOptions(delimiter=self.delimiter),
                convert_options=pacsv.ConvertOptions(column_types=types, include_columns=columns))
            yield from reader
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"{self.name}: cannot read it ({one_line(err)})") from None


def _block_size(rows: int, bytes_per_row: float) -> int:
    return int(min(2**30, max(2**16, rows * max(bytes_per_row, 1.0))))


def open_table(path: str | Path) -> Table:
    """A :class:`Table` for a CSV / TSV (``.csv``, ``.tsv``, ``.txt``, ``.tab``, optionally compressed) or
    Parquet file, or a folder of Parquet files (sorted by path, hidden and ``_`` entries skipped)."""
    import pyarrow as pa

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PARQUET_SUFFIXES
                           and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
            if not files:
                raise InputError(f"{path}: a folder holding no .parquet files")
            return _parquet(path, files)
        suffixes = [s.lower() for s in path.suffixes]
        if suffixes and suffixes[-1] in COMPRESSED:
            suffixes = suffixes[:-1]
        last = suffixes[-1] if suffixes else ""
        if last in PARQUET_SUFFIXES:
            return _parquet(path, [path])
        if last in TABLE_SUFFIXES:
            return _csv(path, TABLE_SUFFIXES[last])
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path.name}: cannot read it ({one_line(err)})") from None
    raise InputError(f"{path.name}: unknown table format {last or '(no extension)'!r} "
                     "(use .csv, .tsv, .parquet, or a folder of .parquet files)")


def _parquet(path: Path, files: list[Path]) -> Table:
    import pyarrow.parquet as pq

    schema, n_rows = None, 0
    for file in files:
        meta = pq.ParquetFile(file)
        file_schema = meta.schema_arrow
        if schema is None:
            schema = file_schema
        elif file_schema.names != schema.names or file_schema.types != schema.types:
            raise InputError(f"{path.name}: {file.name} has other columns or types than {files[0].name}")
        n_rows += meta.metadata.num_rows
    return Table(path, files, None, schema, n_rows)


def _csv(path: Path, delimiter: str) -> Table:
    import pyarrow.csv as pacsv

    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=2**20, use_threads=False),
                            parse_options=pacsv.ParseOptions(delimiter=delimiter))
    first = next(iter(reader), None)
    rows = max(first.num_rows if first is not None else 1, 1)
    bytes_per_row = min(path.stat().st_size, 2**20) / rows
    return Table(path, [path], delimiter, reader.schema, None, bytes_per_row)


# --------------------------------------------------------------------------- pass (a): scan and checks

@dataclass
class Plan:
    """What the scan found, and how the other passes read the table."""

    table: Table | None   # None on a cluster (the partitions are read there)
    labels: str
    features: list[str]
    id: str | None
    classes: np.ndarray
    n_read: int
    n_used: int
    n_dropped: int
    mean: np.ndarray
    scale: np.ndarray
    batch_rows: int
    folds: int | None
    seed: int
    fold_counts: list[int] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return [self.labels, *self.features] + ([self.id] if self.id is not None else [])


@dataclass
class Chunk:
    """The valid rows of one batch: input row numbers, standardised features, encoded labels, keys, folds."""

    rows: np.ndarray
    Z: torch.Tensor
    y: np.ndarray
    keys: np.ndarray | None
    fold: np.ndarray | None


def _numeric(arrow_type: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type))


def choose_columns(table: Table, labels: str, features: list[str] | None, id: str | None) -> list[str]:
    """The feature columns (checked); ``None``: every numeric column but the label and id columns."""
    names = table.schema.names

    def require(column: str, what: str) -> None:
        if column not in names:
            listed = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
            raise InputError(f"{what}: no column {column!r} in {table.name} (columns: {listed})")

    require(labels, "labels")
    if id is not None:
        require(id, "id")
        if id == labels:
            raise InputError("id and labels name the same column")
    exclude = [labels] + ([id] if id is not None else [])
    if features is not None:
        if not features:
            raise CincerError("features: name at least one column")
        for column in features:
            require(column, "features")
        clash = [c for c in features if c in exclude]
        if clash:
            raise InputError(f"features: {', '.join(map(repr, clash))} is the label or id column")
        bad = [c for c in features if not _numeric(table.schema.field(c).type)]
        if bad:
            raise InputError(f"features: column(s) {', '.join(map(repr, bad))} of {table.name} are not numeric "
                             f"({table.schema.field(bad[0]).type}); encode them as numbers")
        return list(features)
    chosen = [c for c in names if c not in exclude and _numeric(table.schema.field(c).type)]
    if not chosen:
        others = [c for c in names if c not in exclude]
        raise InputError(f"{table.name} has no numeric feature columns besides the labels"
                         + (f" (non-numeric: {', '.join(others[:10])}); encode them as numbers" if others else ""))
    return chosen


def feature_matrix(batch: Any, features: list[str]) -> np.ndarray:
    """The feature columns of a record batch as a float32 ``(rows, d)`` array (missing values: NaN)."""
    out = np.empty((len(features), batch.num_rows), dtype=np.float32)
    for j, name in enumerate(features):
        column = batch.column(name)
        if column.null_count:
            column = column.cast("float64")
        out[j] = column.to_numpy(zero_copy_only=False)
    return out.T


def scan_batch(X: np.ndarray, *, block: int = 8192) -> tuple[int, np.ndarray, np.ndarray]:
    """``(n, mean, M2)`` of the rows of ``X`` in float64, ``block`` rows at a time (no float64 copy of ``X``);
    merged across batches by :func:`merge_moments`."""
    n, d = X.shape
    if n == 0:
        return 0, np.zeros(d), np.zeros(d)
    mean = np.zeros(d)
    for s in range(0, n, block):
        mean += X[s:s + block].sum(0, dtype=np.float64)
    mean /= n
    M2 = np.zeros(d)
    for s in range(0, n, block):
        centred = X[s:s + block] - mean
        M2 += np.einsum("ij,ij->j", centred, centred)
    return n, mean, M2


def merge_moments(a: tuple[int, np.ndarray, np.ndarray], b: tuple[int, np.ndarray, np.ndarray]
                  ) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan et al.'s parallel merge of two ``(n, mean, M2)`` summaries."""
    na, ma, Ma = a
    nb, mb, Mb = b
    n = na + nb
    if n == 0:
        return a
    delta = mb - ma
    return n, ma + delta * (nb / n), Ma + Mb + delta**2 * (na * nb / n)


def fold_of(rows: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold of each input row number: a seeded 64-bit mix (splitmix64) of the row number, modulo ``folds``."""
    z = rows.astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (seed + 1)) % 2**64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(folds)).astype(np.int64)


def _listed(keys: list[Any], total: int) -> str:
    shown = ", ".join(str(k) for k in keys[:SHOWN_KEYS])
    return shown + (f", ... ({total} in all)" if total > SHOWN_KEYS else "")


def plan_memory(memory: int, d: int, C: int, folds: int | None, budget: int) -> int:
    """Rows per batch so that the whole audit stays within ``memory`` bytes: the fixed part (the interpreter
    and libraries, the FIM sums and their factorisation, the training window, the queries) comes first, and
    each row of a batch costs about fourteen copies of its ``d`` floats (Parquet pages, Arrow, float32, standardised,
    training windows, products; measured)."""
    heads = folds or 1
    sub = (C - 1) * (d + 1)
    fixed = (BASE_BYTES + 8 * sub * sub * (heads + 4) + 3 * WINDOW_ROWS * 4 * (d + 1)
             + 4 * budget * (d + 2 * C) * 2 + 2 * KRON_BYTES + 3 * SCORE_BYTES)
    per_row = 14 * 4 * d + 8 * C * heads + 64
    rows = (memory - fixed) // per_row
    if rows < 256:
        need = fixed + 256 * per_row
        raise CincerError(f"memory budget of {memory / 2**30:.2f} GiB is too small for {C} classes x {d} features "
                          f"({'' if folds is None else f'{folds} fold heads, '}budget {budget}): needs at least "
                          f"{need / 2**30:.2f} GiB")
    return int(min(rows, 131_072))


@dataclass
class ScanPart:
    """What the scan learns from some rows; parts merge (:meth:`merge`), so batches and partitions add up."""

    n_read: int
    moments: tuple[int, np.ndarray, np.ndarray]
    values: set[Any]
    fold_counts: np.ndarray
    bad_features: list[Any] = field(default_factory=list)
    bad_labels: list[Any] = field(default_factory=list)
    missing_ids: list[int] = field(default_factory=list)
    n_bad_features: int = 0
    n_bad_labels: int = 0
    n_missing_ids: int = 0
    invalid: int = 0

    def merge(self, other: ScanPart) -> ScanPart:
        return ScanPart(self.n_read + other.n_read, merge_moments(self.moments, other.moments),
                        self.values | other.values, self.fold_counts + other.fold_counts,
                        (self.bad_features + other.bad_features)[:SHOWN_KEYS],
                        (self.bad_labels + other.bad_labels)[:SHOWN_KEYS],
                        (self.missing_ids + other.missing_ids)[:SHOWN_KEYS],
                        self.n_bad_features + other.n_bad_features, self.n_bad_labels + other.n_bad_labels,
                        self.n_missing_ids + other.n_missing_ids, self.invalid + other.invalid)


def scan_part(batch: Any, start: int, *, labels: str, features: list[str], id: str | None, folds: int | None,
              seed: int) -> ScanPart:
    """The scan of one record batch whose first row is input row ``start``."""
    import pyarrow as pa

    m = batch.num_rows
    row_numbers = np.arange(start, start + m, dtype=np.int64)
    keys = row_numbers if id is None else batch.column(id).to_numpy(zero_copy_only=False)
    part = ScanPart(m, (0, np.zeros(len(features)), np.zeros(len(features))), set(),
                    np.zeros(folds or 1, dtype=np.int64))
    if id is not None:
        null_id = np.asarray(batch.column(id).is_null(), dtype=bool)
        if null_id.any():
            part.n_missing_ids = int(null_id.sum())
            part.missing_ids = row_numbers[null_id][:SHOWN_KEYS].tolist()
    X = feature_matrix(batch, features)
    label_col = batch.column(labels)
    no_label = np.asarray(label_col.is_null(), dtype=bool)
    if pa.types.is_floating(label_col.type):
        no_label |= np.isnan(label_col.to_numpy(zero_copy_only=False))
    finite = np.isfinite(X).all(1)
    if not finite.all():
        part.n_bad_features = int((~finite).sum())
        part.bad_features = [plain_value(k) for k in keys[~finite][:SHOWN_KEYS]]
    if no_label.any():
        part.n_bad_labels = int(no_label.sum())
        part.bad_labels = [plain_value(k) for k in keys[no_label][:SHOWN_KEYS]]
    valid = finite & ~no_label
    part.invalid = int((~valid).sum())
    part.values = set(label_col.filter(pa.array(valid)).unique().to_pylist())
    if len(part.values) > MAX_CLASSES:
        raise InputError(f"labels: column {labels!r} has more than {MAX_CLASSES} distinct values: not class labels")
    part.moments = scan_batch(X if valid.all() else X[valid])
    if folds:
        part.fold_counts = np.bincount(fold_of(row_numbers[valid], folds, seed), minlength=folds)
    return part


def check_schema(table: Table, labels: str, features: list[str] | None, id: str | None) -> list[str]:
    """The feature columns, and the label column's type checked."""
    import pyarrow as pa

    feature_names = choose_columns(table, labels, features, id)
    label_type = table.schema.field(labels).type
    if not (_numeric(label_type) or pa.types.is_string(label_type) or pa.types.is_large_string(label_type)
            or pa.types.is_dictionary(label_type)):
        raise InputError(f"labels: column {labels!r} has type {label_type}: use integers or strings")
    return feature_names


def scan(table: Table, *, labels: str, features: list[str] | None, id: str | None, memory: int, folds: int | None,
         seed: int, drop_invalid: bool, budget: int) -> Plan:
    """Pass (a): the checks, the label set, the row count and the standardisation statistics."""
    import pandas as pd

    feature_names = check_schema(table, labels, features, id)
    columns = [labels, *feature_names] + ([id] if id is not None else [])
    # the rows per batch need the class count, known only after the scan: plan with a guess, then again
    rows = plan_memory(memory, len(feature_names), 2, folds, budget)
    total: ScanPart | None = None
    hashes: list[np.ndarray] = []
    with Progress(table.n_rows or 0, "scan", unit="rows") as progress:
        for batch in table.batches(columns, rows, tuple(feature_names)):
            part = scan_part(batch, 0 if total is None else total.n_read, labels=labels, features=feature_names,
                             id=id, folds=folds, seed=seed)
            if id is not None:
                keys = batch.column(id).to_numpy(zero_copy_only=False)
                hashes.append(pd.util.hash_array(np.asarray(keys)).astype(np.uint64))
            total = part if total is None else total.merge(part)
            progress.update(batch.num_rows)
    if total is None:
        raise InputError(f"{table.name} has no rows")
    if id is not None and not total.n_missing_ids:
        _check_unique_ids(table, id, np.concatenate(hashes), rows)
    del hashes
    return finish_scan(total, table, labels=labels, features=feature_names, id=id, memory=memory, folds=folds,
                       seed=seed, drop_invalid=drop_invalid, budget=budget)


def finish_scan(total: ScanPart, table: Table | None, *, labels: str, features: list[str], id: str | None,
                memory: int, folds: int | None, seed: int, drop_invalid: bool, budget: int, name: str = "") -> Plan:
    """The checks on the merged scan, and the :class:`Plan` of the other passes."""
    name = table.name if table is not None else name
    if total.n_missing_ids:
        raise InputError(f"id: column {id!r} has missing values in rows "
                         f"{_listed(total.missing_ids, total.n_missing_ids)}")
    if total.invalid and not drop_invalid:
        parts = []
        if total.n_bad_features:
            parts.append(f"{total.n_bad_features} rows have NaN or infinite features (keys: "
                         f"{_listed(total.bad_features, total.n_bad_features)})")
        if total.n_bad_labels:
            parts.append(f"{total.n_bad_labels} rows have no label (keys: "
                         f"{_listed(total.bad_labels, total.n_bad_labels)})")
        raise InputError(f"{name}: {'; '.join(parts)}; leave them out with drop_invalid=True (--drop-invalid)")
    if total.n_read == 0:
        raise InputError(f"{name} has no rows")
    n_used, mean, M2 = total.moments
    try:
        classes = np.array(sorted(total.values))
    except TypeError:
        raise InputError(f"labels: column {labels!r} mixes types") from None
    if len(classes) < 2:
        raise InputError(f"labels: column {labels!r} holds {'no class' if not len(classes) else 'a single class'}"
                         + (f" ({plain_value(classes[0])!r})" if len(classes) else "")
                         + (" once rows without a label or with NaN/inf features are left out" if total.invalid
                            else "") + ": need at least two classes")
    if folds is not None and total.fold_counts.min() == 0:
        raise InputError(f"cv={folds}: a fold is empty ({n_used} rows)")
    scale = np.sqrt(M2 / max(n_used, 1))
    scale[~(scale > 1e-12 * np.maximum(np.abs(mean), 1.0))] = 1.0   # a constant column stays as it is
    return Plan(table, labels, features, id, classes, total.n_read, n_used, total.n_read - n_used, mean, scale,
                plan_memory(memory, len(features), len(classes), folds, budget), folds, seed,
                total.fold_counts.tolist() if folds else [n_used])


def _check_unique_ids(table: Table, id: str, hashes: np.ndarray, rows: int) -> None:
    """Duplicate ids: sort the 64-bit hashes; equal neighbours are re-read to quote the real keys (and rule
    out a hash collision)."""
    import pandas as pd

    hashes.sort()
    same = hashes[1:] == hashes[:-1]
    if not same.any():
        return
    suspects = set(np.unique(hashes[1:][same]).tolist())
    found: dict[Any, int] = {}
    for batch in table.batches([id], rows):
        keys = batch.column(id).to_numpy(zero_copy_only=False)
        h = pd.util.hash_array(np.asarray(keys)).astype(np.uint64)
        for key in keys[np.isin(h, np.fromiter(suspects, dtype=np.uint64))]:
            found[plain_value(key)] = found.get(plain_value(key), 0) + 1
    repeated = [k for k, count in found.items() if count > 1]
    if repeated:
        raise InputError(f"id: column {id!r} repeats keys: {_listed(repeated, len(repeated))} "
                         "(each row needs its own key)")


def make_chunk(batch: Any, plan: Plan, start: int, keys: bool) -> Chunk:
    """The valid rows of one record batch whose first row is input row ``start``: standardised features
    (float32), encoded labels, the keys (``keys``: the id column's values, else the row numbers), the folds."""
    import pyarrow as pa
    import pyarrow.compute as pc

    value_set = pa.array(plan.classes.tolist())
    m = batch.num_rows
    X = feature_matrix(batch, plan.features)
    label_col = batch.column(plan.labels)
    if label_col.type != value_set.type:
        label_col = label_col.cast(value_set.type)
    y = pc.index_in(label_col, value_set=value_set).to_numpy(zero_copy_only=False)
    valid = np.isfinite(X).all(1) & ~np.isnan(y.astype(np.float64))
    rows = np.arange(start, start + m, dtype=np.int64)
    if not valid.all():
        X, y, rows = X[valid], y[valid], rows[valid]
    Z = np.empty(X.shape, dtype=np.float32)
    np.subtract(X, plan.mean.astype(np.float32), out=Z)
    Z /= plan.scale.astype(np.float32)
    key = None
    if keys:
        key = rows if plan.id is None else batch.column(plan.id).to_numpy(zero_copy_only=False)[valid]
    fold = fold_of(rows, plan.folds, plan.seed) if plan.folds else None
    return Chunk(rows, torch.from_numpy(Z), y.astype(np.int64), key, fold)


def chunks(plan: Plan, *, keys: bool = False, desc: str = "pass") -> Iterator[Chunk]:
    """The valid rows of the table, batch by batch (:func:`make_chunk`)."""
    if plan.table is None:
        raise CincerError("this plan has no table to read (it was made on a cluster)")
    columns = [plan.labels, *plan.features] + ([plan.id] if plan.id is not None and keys else [])
    start = 0
    with Progress(plan.n_read, desc, unit="rows") as progress:
        for batch in plan.table.batches(columns, plan.batch_rows, tuple(plan.features)):
            yield make_chunk(batch, plan, start, keys)
            start += batch.num_rows
            progress.update(batch.num_rows)


def windows(source: Iterator[Chunk], size: int) -> Iterator[Chunk]:
    """Re-cut a stream of chunks into windows of the input rows ``[w size, (w + 1) size)``: the same windows
    whatever the batch size, so training does not depend on it."""
    pending: list[Chunk] = []
    current = 0

    def flush() -> Chunk:
        return Chunk(np.concatenate([c.rows for c in pending]), torch.cat([c.Z for c in pending]),
                     np.concatenate([c.y for c in pending]), None,
                     None if pending[0].fold is None else
                     np.concatenate([c.fold for c in pending if c.fold is not None]))

    for chunk in source:
        w = chunk.rows // size
        for window in np.unique(w):
            sel = np.flatnonzero(w == window)
            piece = Chunk(chunk.rows[sel], chunk.Z[torch.from_numpy(sel)], chunk.y[sel], None,
                          None if chunk.fold is None else chunk.fold[sel])
            if pending and window != current:
                yield flush()
                pending = []
            current = int(window)
            pending.append(piece)
    if pending:
        yield flush()


# --------------------------------------------------------------------------- pass (b): training

@dataclass
class Head:
    """A linear softmax head on the standardised features: ``softmax(Z W^T + b)``."""

    weight: torch.Tensor   # (C, d)
    bias: torch.Tensor     # (C,)

    def probs(self, Z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.addmm(self.bias.to(Z.dtype), Z, self.weight.to(Z.dtype).T), dim=1)


def batch_size_for(n: int) -> int:
    """The mini-batch: :data:`BATCH_SIZE` rows, fewer (down to 32) for a table of less than 64 batches."""
    return int(min(BATCH_SIZE, max(32, n // 64)))


def auto_epochs(n: int) -> int:
    """Enough epochs for about :data:`TARGET_STEPS` mini-batch steps, between 2 and 20."""
    return int(min(20, max(2, math.ceil(TARGET_STEPS * batch_size_for(n) / max(n, 1)))))


class Trainer:
    """Mini-batch Adam on the cross-entropy of one linear head, driven window by window.

    Adam rather than plain SGD: the gradient scale of a softmax head changes by orders of magnitude as it
    fits, and Adam's per-coordinate normalisation needs no tuning per data set for the few passes an
    out-of-core audit can afford; rather than full-batch L-BFGS (``optimizer="lbfgs"``, what
    :mod:`cincer.cluster` uses): out of core each evaluation is a read of the whole table, and L-BFGS needs
    tens of them where two or three epochs of mini-batches do. The learning rate decays linearly (to 5%)
    with the rows seen, so the last passes settle."""

    def __init__(self, d: int, C: int, total_rows: int, dtype: torch.dtype) -> None:
        self.linear = torch.nn.Linear(d, C, dtype=dtype)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)
        self.optimizer = torch.optim.Adam(self.linear.parameters(), lr=LEARNING_RATE)
        self.total, self.seen = max(total_rows, 1), 0

    def step(self, Z: torch.Tensor, y: torch.Tensor) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = LEARNING_RATE * max(0.05, 1.0 - self.seen / self.total)
        self.optimizer.zero_grad()
        torch.nn.functional.cross_entropy(self.linear(Z), y).backward()
        self.optimizer.step()
        self.seen += len(y)

    def head(self) -> Head:
        return Head(self.linear.weight.detach().clone(), self.linear.bias.detach().clone())


def train_heads(plan: Plan, *, epochs: int, dtype: torch.dtype) -> list[Head]:
    """Pass (b): one head (or one per fold, all in the same passes) by mini-batch Adam (:class:`Trainer`).

    The rows are visited in windows of :data:`WINDOW_ROWS` consecutive input rows, shuffled within each
    window by a generator seeded with ``(seed, epoch, window)``, then cut into mini-batches of
    :func:`batch_size_for` rows (a fold head skips its own fold's rows): the result is the same whatever the batch
    size the table is read in. Rows sorted by label should be shuffled on disk first (a window of one class
    biases the steps)."""
    d, C = len(plan.features), len(plan.classes)
    heads = plan.folds or 1
    batch = batch_size_for(plan.n_used)
    trainers = [Trainer(d, C, epochs * (plan.n_used - (plan.fold_counts[f] if plan.folds else 0)), dtype)
                for f in range(heads)]
    with torch.enable_grad():
        for epoch in range(epochs):
            for window in windows(chunks(plan, desc=f"train {epoch + 1}/{epochs}"), WINDOW_ROWS):
                w = int(window.rows[0] // WINDOW_ROWS)
                order = np.random.default_rng([plan.seed, epoch, w]).permutation(len(window.rows))
                Z, y = window.Z.to(dtype), torch.from_numpy(window.y)
                for f, trainer in enumerate(trainers):
                    mine = order if window.fold is None else order[window.fold[order] != f]
                    for s in range(0, len(mine), batch):
                        idx = torch.from_numpy(mine[s:s + batch])
                        trainer.step(Z[idx], y[idx])
    return [t.head() for t in trainers]


@dataclass
class GradientSum:
    """Each head's summed cross-entropy, its gradient and its row count over some rows; parts add up."""

    loss: torch.Tensor      # (heads,)
    gW: torch.Tensor        # (heads, C, d)
    gb: torch.Tensor        # (heads, C)
    count: torch.Tensor     # (heads,)

    def merge(self, other: GradientSum) -> GradientSum:
        return GradientSum(self.loss + other.loss, self.gW + other.gW, self.gb + other.gb, self.count + other.count)


def gradient_chunk(chunk: Chunk, heads: list[Head]) -> GradientSum:
    """The cross-entropy of every head summed over the rows of ``chunk`` it trains on, and its gradient
    ``(P - Y)^T [Z 1]`` (float64)."""
    Z = chunk.Z.double()
    y = torch.from_numpy(chunk.y)
    K, (C, d) = len(heads), heads[0].weight.shape
    out = GradientSum(torch.zeros(K, dtype=torch.float64), torch.zeros(K, C, d, dtype=torch.float64),
                      torch.zeros(K, C, dtype=torch.float64), torch.zeros(K, dtype=torch.float64))
    for f, head in enumerate(heads):
        rows = torch.arange(len(y)) if chunk.fold is None else torch.from_numpy(np.flatnonzero(chunk.fold != f))
        Zf, yf = Z[rows], y[rows]
        logp = torch.log_softmax(torch.addmm(head.bias.double(), Zf, head.weight.double().T), dim=1)
        R = logp.exp()
        R[torch.arange(len(yf)), yf] -= 1.0
        out.loss[f] = -logp.gather(1, yf[:, None]).sum()
        out.gW[f] = R.T @ Zf
        out.gb[f] = R.sum(0)
        out.count[f] = len(yf)
    return out


def fit_lbfgs(evaluate: Callable[[list[Head]], GradientSum], heads: int, C: int, d: int, *,
              iterations: int = LBFGS_ITERATIONS) -> tuple[list[Head], int]:
    """Full-batch L-BFGS (strong Wolfe line search) on the mean cross-entropy of each head plus
    ``LBFGS_L2 / 2 ||W||^2``, all heads at once (their objectives are independent, so the sum's minimum is
    each one's); ``evaluate(heads)`` returns the gradient sums over every row (one pass over the data).
    Returns the heads and the number of passes. The L2 term makes the minimum unique, so two summation
    orders (chunks, partitions) lead to the same head up to float rounding."""
    W = torch.zeros(heads, C, d, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(heads, C, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([W, b], lr=1.0, max_iter=iterations, max_eval=iterations, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")
    passes = 0

    def closure() -> torch.Tensor:
        nonlocal passes
        passes += 1
        g = evaluate([Head(W[f].detach().clone(), b[f].detach().clone()) for f in range(heads)])
        n = g.count.clamp_min(1)
        with torch.no_grad():
            W.grad = g.gW / n[:, None, None] + LBFGS_L2 * W
            b.grad = g.gb / n[:, None]
            return (g.loss / n).sum() + 0.5 * LBFGS_L2 * (W * W).sum()

    optimizer.step(closure)
    return [Head(W[f].detach().clone(), b[f].detach().clone()) for f in range(heads)], passes


def train_heads_lbfgs(plan: Plan, *, dtype: torch.dtype) -> tuple[list[Head], int]:
    """Pass (b) by full-batch L-BFGS (:func:`fit_lbfgs`): each evaluation a pass over the table."""
    def evaluate(heads: list[Head]) -> GradientSum:
        total: GradientSum | None = None
        for chunk in chunks(plan, desc="L-BFGS pass"):
            part = gradient_chunk(chunk, heads)
            total = part if total is None else total.merge(part)
        assert total is not None
        return total

    heads, passes = fit_lbfgs(evaluate, plan.folds or 1, len(plan.classes), len(plan.features))
    return [Head(h.weight.to(dtype), h.bias.to(dtype)) for h in heads], passes


# --------------------------------------------------------------------------- pass (c): probabilities, Fisher

def fisher_sum(Z: torch.Tensor, P: torch.Tensor, Q: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_i Q^T (diag p_i - p_i p_i^T) Q (x) z~_i z~_i^T`` over the rows (float64): the top-layer FIM times
    the row count, in the ``(C - 1)(d + 1)`` subspace holding its range (``TopLayerFisher.dense_sub``), by
    :func:`cincer.fisher.kron_sum` in the rows' precision, :data:`FISHER_ROWS` rows at a time; added to
    ``out`` when given (batches add up)."""
    size = Q.shape[1] * (Z.shape[1] + 1)
    total = torch.zeros((size, size), dtype=torch.float64) if out is None else out
    Qd = Q.to(P.dtype)
    for s in range(0, len(Z), FISHER_ROWS):  # float64 across blocks: the rows' precision within one only
        rows = len(Z[s:s + FISHER_ROWS])
        part = kron_sum(lambda Pc: Qd.T @ class_blocks(Pc) @ Qd, Z[s:s + FISHER_ROWS], P[s:s + FISHER_ROWS],
                        max_bytes=KRON_BYTES, progress=False)  # the pass shows its own progress
        total.add_(part, alpha=rows)
    return total


class AccumulatedTopLayerFisher(TopLayerFisher):
    """The exact top-layer FIM given by its accumulated subspace sum (:func:`fisher_sum` over every row), for
    :class:`cincer.fisher.FisherSolver` (dense route; ``project`` / ``lift`` are ``TopLayerFisher``'s)."""

    def __init__(self, S: torch.Tensor, n: int, C: int, A: int) -> None:  # no rows held: no super().__init__
        self.S, self.n, self.A, self.C = S, n, A, C
        self.Q = sum_free_basis(C, S.dtype)
        self.dim, self.sub_dim = C * A, (C - 1) * A
        self.rank_bound = n * (C - 1)

    def dense_sub(self) -> torch.Tensor:
        return self.S / max(self.n, 1)

    def dense(self) -> torch.Tensor:
        L = torch.kron(self.Q.contiguous(), torch.eye(self.A, dtype=self.S.dtype))
        return L @ self.dense_sub() @ L.T


def fisher_solver(S: torch.Tensor, n: int, C: int, A: int) -> FisherSolver:
    """``F^+`` (the paper's pseudo-inverse, as ``top_fisher``) from the accumulated sum, factorised once."""
    return FisherSolver(AccumulatedTopLayerFisher(S, n, C, A), rtol=DEFAULT_RTOL, method="dense")


@dataclass
class TopRows:
    """A running top-``size`` of rows by decreasing score (ties: lower row number first), with what the
    counter-example pass needs of each: standardised features, labels, probabilities, fold, key."""

    size: int
    score: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    Z: torch.Tensor | None = None
    P: torch.Tensor | None = None
    y: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    fold: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    keys: list[Any] = field(default_factory=list)

    def offer(self, score: np.ndarray, rows: np.ndarray, Z: torch.Tensor, P: torch.Tensor, y: np.ndarray,
              fold: np.ndarray, keys: np.ndarray) -> None:
        if not len(rows) or self.size == 0:
            return
        if len(rows) > self.size:   # the batch's own best first: what is merged stays small
            part = np.argpartition(-score, self.size - 1)[:self.size]
            score, rows, y, fold, keys = score[part], rows[part], y[part], fold[part], keys[part]
            Z, P = Z[torch.from_numpy(part)], P[torch.from_numpy(part)]
        all_score = np.concatenate([self.score, score])
        all_rows = np.concatenate([self.rows, rows])
        keep = np.lexsort((all_rows, -all_score))[:self.size]
        cat_Z = Z if self.Z is None else torch.cat([self.Z, Z])
        cat_P = P if self.P is None else torch.cat([self.P, P])
        take = torch.from_numpy(keep)
        self.score, self.rows = all_score[keep], all_rows[keep]
        self.Z, self.P = cat_Z[take], cat_P[take]
        self.y = np.concatenate([self.y, y])[keep]
        self.fold = np.concatenate([self.fold, fold])[keep]
        joined = self.keys + list(keys)
        self.keys = [joined[i] for i in keep]


def margins_of(P: torch.Tensor, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``P(predicted) - P(given)`` (the ``margin`` inspector's suspicion) and the prediction of every row."""
    Pn = P.double().numpy()
    pred = Pn.argmax(1)
    return Pn[np.arange(len(y)), pred] - Pn[np.arange(len(y)), y], pred


def row_probs(heads: list[Head], chunk: Chunk, dtype: torch.dtype) -> list[torch.Tensor]:
    Z = chunk.Z.to(dtype)
    return [h.probs(Z) for h in heads]


def own_probs(probs: list[torch.Tensor], fold: np.ndarray | None) -> torch.Tensor:
    """Each row's probabilities from the head that did not train on it (cv), else from the one head."""
    if fold is None:
        return probs[0]
    out = torch.empty_like(probs[0])
    for f, P in enumerate(probs):
        sel = torch.from_numpy(np.flatnonzero(fold == f))
        out[sel] = P[sel]
    return out


@dataclass
class Probed:
    """What pass (c) gathers: the queries, the FIM sum and row count of every head, the flagged rows and the
    rows whose prediction disagrees with the label. Parts merge (:meth:`merge`)."""

    queries: TopRows
    sums: list[torch.Tensor]
    counts: list[int]
    flagged: int = 0
    disagree: int = 0

    @classmethod
    def empty(cls, budget: int, heads: int, C: int, A: int) -> Probed:
        return cls(TopRows(budget), [torch.zeros(((C - 1) * A,) * 2, dtype=torch.float64) for _ in range(heads)],
                   [0] * heads)

    def merge(self, other: Probed) -> Probed:
        q = other.queries
        if len(q.rows):
            assert q.Z is not None and q.P is not None
            self.queries.offer(q.score, q.rows, q.Z, q.P, q.y, q.fold, np.asarray(q.keys, dtype=object))
        for mine, theirs in zip(self.sums, other.sums):
            mine += theirs
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.flagged += other.flagged
        self.disagree += other.disagree
        return self


def probe_chunk(state: Probed, chunk: Chunk, heads: list[Head], dtype: torch.dtype) -> None:
    """Pass (c) on one chunk: margins, flagged rows offered to the running top, each head's FIM sum over the
    rows it trained on."""
    C = heads[0].weight.shape[0]
    Q = sum_free_basis(C)
    probs = row_probs(heads, chunk, dtype)
    P = own_probs(probs, chunk.fold)
    margin, pred = margins_of(P, chunk.y)
    state.disagree += int((pred != chunk.y).sum())
    sel = np.flatnonzero(margin > MARGIN_THRESHOLD)
    state.flagged += len(sel)
    fold = chunk.fold if chunk.fold is not None else np.zeros(len(chunk.rows), dtype=np.int64)
    keys = chunk.rows if chunk.keys is None else np.asarray(chunk.keys)
    t = torch.from_numpy(sel)
    Z = chunk.Z.to(dtype)
    state.queries.offer(margin[sel], chunk.rows[sel], Z[t], P[t], chunk.y[sel], fold[sel], keys[sel])
    for f, Pf in enumerate(probs):
        if chunk.fold is None:
            fisher_sum(Z, Pf, Q, out=state.sums[f])
            state.counts[f] += len(Z)
        else:
            mine = torch.from_numpy(np.flatnonzero(chunk.fold != f))
            fisher_sum(Z[mine], Pf[mine], Q, out=state.sums[f])
            state.counts[f] += len(mine)


def probe(plan: Plan, heads: list[Head], budget: int, dtype: torch.dtype) -> Probed:
    """Pass (c) over the table (:func:`probe_chunk`)."""
    state = Probed.empty(budget, len(heads), len(plan.classes), len(plan.features) + 1)
    for chunk in chunks(plan, keys=True, desc="probabilities and Fisher"):
        probe_chunk(state, chunk, heads, dtype)
    return state


# --------------------------------------------------------------------------- pass (d): counter-examples

def query_vectors(solver: FisherSolver, Z: torch.Tensor, P: torch.Tensor, y: np.ndarray) -> torch.Tensor:
    """``F^+ g_t`` for every query (``(q, C, d + 1)``, float64), ``g_t`` the score of its given label."""
    g = top_layer_scores(Z.double(), P.double(), torch.from_numpy(y))
    q, C, A = g.shape
    return solver.solve(g.reshape(q, C * A).T).T.reshape(q, C, A)


def topk_supports(V: torch.Tensor, Z: torch.Tensor, P: torch.Tensor, y: np.ndarray, rows: np.ndarray, k: int,
                  weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best candidates of each query among the rows ``(Z, P, y)`` (all candidates of those queries):
    support ``-<F^+ g_t, g_k>`` (``top_fisher``'s sign) by :func:`cincer.fisher.top_layer_kernel`, times
    ``weight`` (one per row) if given, in blocks of rows small enough for :data:`SCORE_BYTES`. Returns
    ``(scores, rows)``, ``(q, min(k, n))`` each."""
    q, C, _ = V.shape
    n = len(Z)
    width = min(k, n)
    if not q or not width:
        return np.zeros((q, 0)), np.zeros((q, 0), dtype=np.int64)
    step = max(64, SCORE_BYTES // (Z.element_size() * q * (C + 1)))
    Vc = V.to(Z.dtype)
    yt = torch.from_numpy(y)
    best_s = np.full((q, 0), -np.inf)
    best_r = np.zeros((q, 0), dtype=np.int64)
    for s in range(0, n, step):
        support = -top_layer_kernel(Vc, Z[s:s + step], P[s:s + step], yt[s:s + step], chunk=step)
        if weight is not None:
            support = support * torch.from_numpy(weight[s:s + step]).to(support.dtype)
        w = min(k, support.shape[1])
        top = torch.topk(support, w, dim=1)
        best_s, best_r = merge_topk(best_s, best_r, top.values.double().numpy(), rows[s:s + step][top.indices.numpy()],
                                    k)
    return best_s, best_r


def merge_topk(sa: np.ndarray, ra: np.ndarray, sb: np.ndarray, rb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of two per-query lists (decreasing score, ties: lower row first; -inf / -1 padding)."""
    s = np.concatenate([sa, sb], axis=1)
    r = np.concatenate([ra, rb], axis=1)
    order = np.lexsort((r, -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)


@dataclass
class QuerySet:
    """The queries as pass (d) needs them: ``F^+ g_t`` of each (``V``), its prediction and fold, and the
    groups of queries sharing a head and a prediction (they share their candidates)."""

    V: torch.Tensor
    pred: np.ndarray
    fold: np.ndarray
    groups: list[tuple[int, int, np.ndarray]]

    def of_head(self, f: int) -> list[tuple[int, np.ndarray]]:
        return [(c, g) for h, c, g in self.groups if h == f]


def prepare_queries(queries: TopRows, solvers: list[FisherSolver], C: int, A: int) -> QuerySet:
    """``F^+ g_t`` of every query with its own head's FIM, once for pass (d)."""
    q = len(queries.rows)
    assert queries.Z is not None and queries.P is not None
    pred = queries.P.double().numpy().argmax(1) if q else np.zeros(0, dtype=np.int64)
    V = torch.zeros((q, C, A), dtype=torch.float64)
    for f, solver in enumerate(solvers):
        mine = np.flatnonzero(queries.fold == f)
        if len(mine):
            t = torch.from_numpy(mine)
            V[t] = query_vectors(solver, queries.Z[t], queries.P[t], queries.y[mine])
    groups = [(f, c, np.flatnonzero((queries.fold == f) & (pred == c))) for f in range(len(solvers)) for c in range(C)]
    return QuerySet(V, pred, queries.fold.copy(), [(f, c, g) for f, c, g in groups if len(g)])


@dataclass
class Supports:
    """The running top-``k`` candidates of every query: ``(q, k)`` scores and rows (-inf / -1 padding) and
    the keys of the rows seen in it. Parts merge (:meth:`merge`)."""

    scores: np.ndarray
    rows: np.ndarray
    keys: dict[int, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, q: int, k: int) -> Supports:
        return cls(np.full((q, k), -np.inf), np.full((q, k), -1, dtype=np.int64))

    def merge(self, other: Supports) -> Supports:
        k = self.scores.shape[1]
        self.scores, self.rows = merge_topk(self.scores, self.rows, other.scores, other.rows, k)
        self.keys.update(other.keys)
        wanted = set(self.rows.ravel().tolist())
        self.keys = {r: v for r, v in self.keys.items() if r in wanted}
        return self


def supports_chunk(state: Supports, chunk: Chunk, heads: list[Head], qs: QuerySet, k: int,
                   dtype: torch.dtype, suspect: bool = False) -> None:
    """Pass (d) on one chunk: each query's candidates in it (rows labelled with its prediction that its head
    trained on) scored and merged into its running top-``k``; with ``suspect``, each support times the row's
    own probability of being mislabelled (``1 - P(its label)``, out of fold with folds:
    :func:`cincer.select.weigh_by_suspicion`)."""
    Z = chunk.Z.to(dtype)
    probs, wrong = None, None
    if suspect:  # every head's probabilities once: each row's own (out of fold) and each head's candidates'
        probs = row_probs(heads, chunk, dtype)
        own = own_probs(probs, chunk.fold).double().numpy()
        wrong = 1.0 - own[np.arange(len(chunk.y)), chunk.y]
    for f, head in enumerate(heads):
        mine_f = qs.of_head(f)
        if not mine_f:
            continue
        rows_f = np.flatnonzero(chunk.fold != f) if chunk.fold is not None else np.arange(len(chunk.rows))
        index = torch.from_numpy(rows_f)
        P = probs[f][index] if probs is not None else head.probs(Z[index])
        for c, g in mine_f:
            cand = np.flatnonzero(chunk.y[rows_f] == c)
            if not len(cand):
                continue
            s, r = topk_supports(qs.V[torch.from_numpy(g)], Z[torch.from_numpy(rows_f[cand])],
                                 P[torch.from_numpy(cand)], chunk.y[rows_f[cand]], chunk.rows[rows_f[cand]], k,
                                 None if wrong is None else wrong[rows_f[cand]])
            state.scores[g], state.rows[g] = merge_topk(state.scores[g], state.rows[g], s, r, k)
    if chunk.keys is not None:
        wanted = np.isin(chunk.rows, state.rows)
        state.keys.update(zip(chunk.rows[wanted].tolist(), (plain_value(v) for v in np.asarray(chunk.keys)[wanted])))


def find_counterexamples(plan: Plan, heads: list[Head], queries: TopRows, solvers: list[FisherSolver], k: int,
                    dtype: torch.dtype, suspect: bool = False) -> tuple[np.ndarray, np.ndarray, dict[int, Any]]:
    """Pass (d) over the table (:func:`supports_chunk`): ``(scores, rows)`` of shape ``(q, k)`` and the keys of
    the rows in them."""
    qs = prepare_queries(queries, solvers, len(plan.classes), len(plan.features) + 1)
    state = Supports.empty(len(queries.rows), k)
    for chunk in chunks(plan, keys=plan.id is not None, desc="counter-examples"):
        supports_chunk(state, chunk, heads, qs, k, dtype, suspect)
    return state.scores, state.rows, state.keys


# --------------------------------------------------------------------------- the audit

def check_options(*, budget: int | None, k: int, cv: int | None, memory: int, seed: int,
                  counterexamples: str = "suspect") -> None:
    check_counterexample_order(counterexamples)

    def positive(name: str, value: Any, minimum: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise CincerError(f"{name} must be an integer >= {minimum}, got {value!r}")

    if budget is not None:
        positive("budget", budget, 0)
    positive("k", k, 0)
    if cv is not None:
        positive("cv", cv, 2)
    positive("memory", memory, 1)
    positive("seed", seed, 0)


def audit_table(path: str, *, labels: str, features: list[str] | None = None, id: str | None = None,
                budget: int | None = None, k: int = 3, cv: int | None = None, memory: int = 2 * 2**30,
                seed: int = 0, drop_invalid: bool = False, cluster: str | None = None, epochs: int | None = None,
                dtype: torch.dtype = torch.float32, optimizer: str | None = None,
                counterexamples: str = "suspect") -> tuple[Any, dict]:
    """The label issues of the table at ``path``, most suspicious first, streamed within ``memory`` bytes.

    ``labels``: the label column; ``features``: the feature columns (default: every numeric column but the
    label and ``id`` columns); ``id``: the key column (default: the 0-based row number in the input).
    ``budget``: at most this many issues, the rows with the largest margin above the ``margin``
    inspector's threshold (0.2); ``None``: every flagged row, at most :data:`DEFAULT_BUDGET` (1000). ``k``:
    counter-examples per issue. ``cv=K``: K fold heads, out-of-fold suspicion and counter-examples.
    ``memory``: the budget in bytes that sets the batch size (peak RSS stays about within it). ``seed``: the
    training order and the folds. ``drop_invalid``: leave out rows with NaN/inf features or no label
    (counted) instead of refusing them. ``cluster``: a Dask scheduler address or ``local:N`` (see
    :mod:`cincer.cluster`). ``epochs``: training passes (default :func:`auto_epochs`); ``dtype``: the
    precision of the head and the per-batch products (the FIM sums and their factorisation are float64).
    ``optimizer``: ``"adam"`` (one machine's default: mini-batch Adam, :func:`train_heads`) or ``"lbfgs"``
    (full-batch L-BFGS, one pass per evaluation, :func:`fit_lbfgs`: the cluster's only choice).
    ``counterexamples``: ``"support"`` or ``"suspect"`` (see :func:`cincer.find_label_issues`).

    Returns ``(table, summary)``: a pandas DataFrame with :func:`issue_columns` and a dict with ``rows``
    (read), ``rows_used``, ``rows_dropped``, ``classes``, ``class_names``, ``estimated_noise`` (the share of
    rows whose prediction disagrees with the label), ``flagged``, ``issues``, ``seconds``,
    ``peak_rss_bytes``, ``passes``, ``epochs``, ``batch_rows``.
    """
    check_options(budget=budget, k=k, cv=cv, memory=memory, seed=seed, counterexamples=counterexamples)
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise CincerError(f"epochs must be an integer >= 1, got {epochs!r}")
    if optimizer not in (None, "adam", "lbfgs"):
        raise CincerError(f"optimizer must be adam or lbfgs, got {optimizer!r}")
    if cluster is not None:
        if optimizer == "adam":
            raise CincerError("on a cluster the head is trained by full-batch L-BFGS (optimizer='lbfgs'): "
                              "mini-batch Adam is sequential")
        return audit_on_cluster(path, labels=labels, features=features, id=id, budget=budget, k=k, cv=cv,
                                memory=memory, seed=seed, drop_invalid=drop_invalid, cluster=cluster, dtype=dtype,
                                counterexamples=counterexamples)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return _audit(path, labels=labels, features=features, id=id, budget=budget, k=k, cv=cv, memory=memory,
                          seed=seed, drop_invalid=drop_invalid, epochs=epochs, dtype=dtype,
                          optimizer=optimizer or "adam", counterexamples=counterexamples)
    finally:
        torch.set_num_threads(threads)


def _audit(path: str, *, labels: str, features: list[str] | None, id: str | None, budget: int | None, k: int,
           cv: int | None, memory: int, seed: int, drop_invalid: bool, epochs: int | None,
           dtype: torch.dtype, optimizer: str, counterexamples: str) -> tuple[Any, dict]:
    start = time.perf_counter()
    size = DEFAULT_BUDGET if budget is None else budget
    table = open_table(path)
    clock: dict[str, float] = {}

    def lap(name: str) -> None:
        clock[name] = round(time.perf_counter() - start - sum(clock.values()), 3)

    plan = scan(table, labels=labels, features=features, id=id, memory=memory, folds=cv, seed=seed,
                drop_invalid=drop_invalid, budget=size)
    lap("scan")
    if optimizer == "lbfgs":
        heads, epochs = train_heads_lbfgs(plan, dtype=dtype)
    else:
        epochs = epochs or auto_epochs(plan.n_used)
        heads = train_heads(plan, epochs=epochs, dtype=dtype)
    lap("train")
    probed = probe(plan, heads, size, dtype)
    lap("probabilities_and_fisher")
    C, A = len(plan.classes), len(plan.features) + 1
    solvers = [fisher_solver(S, n, C, A) for S, n in zip(probed.sums, probed.counts)]
    probed.sums.clear()
    lap("factorise")
    passes = 1 + epochs + 1
    queries = probed.queries
    if k and len(queries.rows):
        scores, best, keys = find_counterexamples(plan, heads, queries, solvers, k, dtype, counterexamples == "suspect")
        passes += 1
    else:
        scores, best, keys = np.zeros((len(queries.rows), k)), np.full((len(queries.rows), k), -1), {}
    lap("counterexamples")
    frame = issue_table(plan, queries, scores, best, keys, k, out_of_fold=cv is not None)
    summary = {"rows": plan.n_read, "rows_used": plan.n_used, "rows_dropped": plan.n_dropped,
               "classes": len(plan.classes), "class_names": [plain_value(c) for c in plan.classes],
               "estimated_noise": probed.disagree / max(plan.n_used, 1), "flagged": probed.flagged,
               "issues": len(frame), "budget": size, "out_of_fold": cv is not None, "features": len(plan.features),
               "counterexamples": counterexamples,
               "optimizer": optimizer, "epochs": epochs, "batch_size": batch_size_for(plan.n_used),
               "passes": passes,
               "batch_rows": plan.batch_rows, "memory_bytes": memory,
               "fisher": f"exact top-layer FIM, {(C - 1) * A} x {(C - 1) * A} subspace, "
                         + "/".join(sorted({s.factorization for s in solvers})),
               "engine": "out-of-core", "seconds": round(time.perf_counter() - start, 3), "pass_seconds": clock,
               "peak_rss_bytes": peak_rss_bytes()}
    return frame, summary


def issue_table(plan: Plan, queries: TopRows, scores: np.ndarray, best: np.ndarray, keys: dict[int, Any], k: int,
                *, out_of_fold: bool) -> Any:
    """The issues as a DataFrame in the shared schema (:func:`issue_columns`)."""
    import pandas as pd

    classes = plan.classes
    q = len(queries.rows)
    pred = queries.P.double().numpy().argmax(1) if q and queries.P is not None else np.zeros(0, dtype=np.int64)
    data: dict[str, Any] = {
        "key": pd.Series(queries.keys if q else [], dtype=None if q else "int64"),
        "given_label": classes[queries.y] if q else classes[:0],
        "suggested_label": classes[pred] if q else classes[:0],
        "suspicion": queries.score.astype(np.float64),
        "out_of_fold": np.full(q, out_of_fold, dtype=bool),
    }
    for j in range(k):
        found = best[:, j] >= 0 if q else np.zeros(0, dtype=bool)
        key_col = [(keys.get(int(r), int(r)) if plan.id is not None else int(r)) if ok else None
                   for r, ok in zip(best[:, j], found)]
        label_col = [classes[p] if ok else None for p, ok in zip(pred, found)]
        data[f"counterexample_{j + 1}_key"] = pd.Series(key_col, dtype="Int64" if plan.id is None else object)
        data[f"counterexample_{j + 1}_label"] = pd.Series([plain_value(v) for v in label_col], dtype=object)
        data[f"counterexample_{j + 1}_score"] = np.where(found, scores[:, j], np.nan) if q else np.zeros(0)
    return pd.DataFrame(data, columns=issue_columns(k))


# --------------------------------------------------------------------------- on a Dask cluster

def _cluster_scan(frame: Any, start: int, columns: list[str], options: dict[str, Any]) -> ScanPart:
    from .cluster import record_batch

    return scan_part(record_batch(frame, columns), start, **options)


def _cluster_chunk(frame: Any, start: int, plan: Plan) -> Chunk:
    from .cluster import record_batch

    columns = [plan.labels, *plan.features] + ([plan.id] if plan.id is not None else [])
    return make_chunk(record_batch(frame, columns), plan, start, True)


def _cluster_gradient(chunk: Chunk, heads: list[Head]) -> GradientSum:
    torch.set_num_threads(1)
    return gradient_chunk(chunk, heads)


def _cluster_probe(chunk: Chunk, heads: list[Head], budget: int, dtype: torch.dtype) -> Probed:
    torch.set_num_threads(1)
    state = Probed.empty(budget, len(heads), int(heads[0].weight.shape[0]), chunk.Z.shape[1] + 1)
    probe_chunk(state, chunk, heads, dtype)
    return state


def _cluster_supports(chunk: Chunk, heads: list[Head], queries: QuerySet, k: int, id_keys: bool,
                      dtype: torch.dtype, suspect: bool) -> Supports:
    torch.set_num_threads(1)
    state = Supports.empty(len(queries.pred), k)
    supports_chunk(state, chunk if id_keys else Chunk(chunk.rows, chunk.Z, chunk.y, None, chunk.fold), heads,
                   queries, k, dtype, suspect)
    return state


def _merge(a: Any, b: Any) -> Any:
    return a.merge(b)


def audit_on_cluster(path: str, *, labels: str, features: list[str] | None, id: str | None, budget: int | None,
                     k: int, cv: int | None, memory: int, seed: int, drop_invalid: bool, cluster: str,
                     dtype: torch.dtype = torch.float32, counterexamples: str = "suspect") -> tuple[Any, dict]:
    """:func:`audit_table` on a Dask cluster (:mod:`cincer.cluster`): the same passes on the table's partitions,
    kept in the workers' memory, with the per-batch functions above; the head trained by full-batch L-BFGS
    (:func:`fit_lbfgs`, each evaluation a map of :func:`gradient_chunk` and a tree sum: mini-batch steps are
    sequential, a full-batch gradient is a sum computed where the rows are); the FIM sums, queries and top-k
    lists merged as trees; the FIM factorised here. The rows never leave the workers."""
    from .cluster import connect

    start = time.perf_counter()
    size = DEFAULT_BUDGET if budget is None else budget
    table = open_table(path)
    feature_names = check_schema(table, labels, features, id)
    client, local = connect(cluster)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return _audit_on_cluster(client, table, start, labels=labels, features=feature_names, id=id,
                                     budget=size, k=k, cv=cv, memory=memory, seed=seed, drop_invalid=drop_invalid,
                                     cluster=cluster, dtype=dtype, counterexamples=counterexamples)
    except (OSError, TimeoutError) as err:
        raise CincerError(f"cluster={cluster!r}: {one_line(err)}") from None
    finally:
        torch.set_num_threads(threads)
        client.close()
        if local is not None:
            local.close()


def _audit_on_cluster(client: Any, table: Table, start: float, *, labels: str, features: list[str], id: str | None,
                      budget: int, k: int, cv: int | None, memory: int, seed: int, drop_invalid: bool, cluster: str,
                      dtype: torch.dtype, counterexamples: str) -> tuple[Any, dict]:
    import dask

    from .cluster import partitions, repeated, tree

    columns = [labels, *features] + ([id] if id is not None else [])
    dtypes: dict[str, Any] = dict.fromkeys(features, "float64")   # a CSV read as one machine reads it
    for c in columns:
        if c not in dtypes:
            arrow = table.schema.field(c).type
            dtypes[c] = "object" if str(arrow) in ("string", "large_string") else arrow.to_pandas_dtype()
    frame, parts, offsets = partitions(client, table.files, table.delimiter, columns, dtypes)
    clock: dict[str, float] = {}

    def lap(name: str) -> None:
        clock[name] = round(time.perf_counter() - start - sum(clock.values()), 3)

    options = dict(labels=labels, features=features, id=id, folds=cv, seed=seed)
    total = tree(client, [dask.delayed(_cluster_scan)(p, o, columns, options) for p, o in zip(parts, offsets)],
                 _merge)
    if id is not None and not total.n_missing_ids:
        twice = repeated(client, frame, id)
        if len(twice):
            shown = [plain_value(v) for v in twice.index]
            raise InputError(f"id: column {id!r} repeats keys: {_listed(shown, len(shown))} (each row needs its "
                             "own key)")
    plan = finish_scan(total, None, labels=labels, features=features, id=id, memory=memory, folds=cv, seed=seed,
                       drop_invalid=drop_invalid, budget=budget, name=table.name)
    # the partitions become the passes' chunks once, in the workers' memory (the raw frames are let go)
    prepared = client.persist([dask.delayed(_cluster_chunk)(p, o, plan) for p, o in zip(parts, offsets)])
    del frame, parts
    lap("scan")
    C, A = len(plan.classes), len(features) + 1

    def evaluate(heads: list[Head]) -> GradientSum:
        return tree(client, [dask.delayed(_cluster_gradient)(c, heads) for c in prepared], _merge)

    heads64, evaluations = fit_lbfgs(evaluate, cv or 1, C, len(features))
    heads = [Head(h.weight.to(dtype), h.bias.to(dtype)) for h in heads64]
    lap("train")
    probed = tree(client, [dask.delayed(_cluster_probe)(c, heads, budget, dtype) for c in prepared], _merge)
    lap("probabilities_and_fisher")
    solvers = [fisher_solver(S, n, C, A) for S, n in zip(probed.sums, probed.counts)]
    probed.sums.clear()
    lap("factorise")
    queries = probed.queries
    passes = 1 + evaluations + 1
    keys: dict[int, Any] = {}
    if k and len(queries.rows):
        qs = client.scatter(prepare_queries(queries, solvers, C, A), broadcast=True)
        found = tree(client, [dask.delayed(_cluster_supports)(c, heads, qs, k, id is not None, dtype,
                                                              counterexamples == "suspect")
                              for c in prepared], _merge)
        scores, best, keys = found.scores, found.rows, found.keys
        passes += 1
    else:
        scores, best = np.zeros((len(queries.rows), k)), np.full((len(queries.rows), k), -1)
    lap("counterexamples")
    issues = issue_table(plan, queries, scores, best, keys, k, out_of_fold=cv is not None)
    workers = len(client.scheduler_info().get("workers", {}))
    summary = {"rows": plan.n_read, "rows_used": plan.n_used, "rows_dropped": plan.n_dropped,
               "classes": C, "class_names": [plain_value(c) for c in plan.classes],
               "estimated_noise": probed.disagree / max(plan.n_used, 1), "flagged": probed.flagged,
               "issues": len(issues), "budget": budget, "out_of_fold": cv is not None, "features": len(features),
               "counterexamples": counterexamples,
               "optimizer": "lbfgs", "epochs": evaluations, "passes": passes, "partitions": len(prepared),
               "workers": workers, "cluster": cluster,
               "fisher": f"exact top-layer FIM, {(C - 1) * A} x {(C - 1) * A} subspace, "
                         + "/".join(sorted({s.factorization for s in solvers})),
               "engine": "dask", "seconds": round(time.perf_counter() - start, 3), "pass_seconds": clock,
               "peak_rss_bytes": peak_rss_bytes()}
    return issues, summary
