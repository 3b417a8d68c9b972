"""Dask plumbing for the audit on a cluster: ``audit_table(..., cluster="local:N" | "tcp://scheduler:8786")``.

:func:`cincer.outofcore.audit_table` runs its pipeline on a Dask cluster with the helpers here: a client
(:func:`connect`), the table as ``dask.dataframe`` partitions kept in the workers' memory with each
partition's first row number (:func:`partitions`), pairwise tree reductions computed on the workers
(:func:`tree`) and the repeated values of a column by a hash-partitioned ``value_counts``
(:func:`repeated`). The per-partition steps are the one-machine engine's per-batch functions (a partition
is a batch); this module never imports the engine, which drives it (see docs/SCALE.md: what runs where
and what moves over the network).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CincerError, InputError, one_line

CSV_BLOCKSIZE = 64 * 2**20   # bytes of CSV text per partition


def connect(cluster: str) -> tuple[Any, Any]:
    """``(client, local_cluster_or_None)``: ``local:N`` starts N single-threaded worker processes here; anything
    else is a scheduler address (``tcp://host:8786``, or a ``LocalCluster``'s ``scheduler_address``)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise CincerError("cluster: needs the dask and distributed packages (pip install 'cincer[cluster]')") from None
    if cluster.startswith("local:"):
        try:
            workers = int(cluster.split(":", 1)[1])
        except ValueError:
            workers = 0
        if workers < 1:
            raise CincerError(f"cluster={cluster!r}: write local:N with N >= 1 workers")
        local = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0")
        return Client(local), local
    try:
        return Client(cluster, timeout=30), None
    except (OSError, TimeoutError, ValueError) as err:
        raise CincerError(f"cluster={cluster!r}: cannot reach the scheduler ({one_line(err)})") from None


def partitions(client: Any, files: list[Path], delimiter: str | None, columns: list[str],
               dtypes: dict[str, Any]) -> tuple[Any, list[Any], list[int]]:
    """The table's ``columns`` as a ``dask.dataframe`` persisted on the workers (Parquet files: by row group;
    a CSV file: :data:`CSV_BLOCKSIZE` bytes a partition, read with ``dtypes``), in file order: ``(frame,
    partitions as delayed pandas frames, first input row number of each)``."""
    import dask.dataframe as dd

    try:
        if delimiter is None:
            frame = dd.read_parquet([str(f) for f in files], columns=columns, split_row_groups=True)
        else:
            frame = dd.read_csv(str(files[0]), sep=delimiter, usecols=columns, dtype=dtypes, blocksize=CSV_BLOCKSIZE)
        frame = client.persist(frame)
        lengths = client.compute(frame.map_partitions(len), sync=True).tolist()
    except (ValueError, TypeError, OSError) as err:
        raise InputError(f"{files[0].name}: cannot read it on the cluster ({one_line(err)})") from None
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
    return frame, frame.to_delayed(), offsets


def tree(client: Any, parts: list[Any], merge: Callable[[Any, Any], Any]) -> Any:
    """Reduce ``parts`` (delayed values) pairwise, as a tree computed on the workers; only the root comes back."""
    import dask

    if not parts:
        raise CincerError("the table has no partitions")
    while len(parts) > 1:
        parts = [dask.delayed(merge)(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return client.compute(parts[0], sync=True)


def repeated(client: Any, frame: Any, column: str) -> Any:
    """The values of ``column`` found more than once, with their counts (a pandas Series): a hash-partitioned
    ``value_counts``, so the ids move among the workers and only the repeated ones reach the client."""
    counts = frame[column].value_counts(split_out=max(1, frame.npartitions))
    return client.compute(counts[counts > 1], sync=True)


def record_batch(frame: Any, columns: list[str]) -> Any:
    """A pandas partition as a ``pyarrow.RecordBatch`` of ``columns`` (what the per-batch steps read); one torch
    thread on the worker."""
    import pyarrow as pa
    import torch

    torch.set_num_threads(1)
    return pa.RecordBatch.from_pandas(frame[columns], preserve_index=False)
