"""Write a folder of Parquet files of synthetic "embeddings" with planted label noise, for the out-of-core audit.

N rows x D float32 features drawn from a Gaussian mixture of C classes (class means of norm ``--separation``
in random directions, unit isotropic noise), an ``id`` column (int64) and a ``label`` column (int64), written
block by block (never all in memory): ``OUT/data/part-00000.parquet``, ... Then ``--noise`` of the labels
are flipped to another class drawn uniformly; the flipped rows go to ``OUT/flipped.parquet`` (id, true
label, given label) and the options to ``OUT/config.json``. Seeded: each block draws from
``numpy.random.default_rng([seed, block])``, so the data do not depend on the file layout.

    python scripts/make_embeddings.py --rows 1000000 --out /tmp/cincer_big/1e6
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BLOCK = 65_536


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True, help="rows to write")
    parser.add_argument("--out", type=Path, required=True, help="output folder (replaced)")
    parser.add_argument("--dim", type=int, default=384, help="features per row (default 384)")
    parser.add_argument("--classes", type=int, default=10, help="classes (default 10)")
    parser.add_argument("--noise", type=float, default=0.1, help="share of labels flipped (default 0.1)")
    parser.add_argument("--separation", type=float, default=3.5, help="norm of the class means (default 3.5)")
    parser.add_argument("--rows-per-file", type=int, default=1_048_576, help="rows per Parquet file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.rows < 1 or args.dim < 1 or args.classes < 2 or not 0 <= args.noise < 1:
        parser.error("need rows >= 1, dim >= 1, classes >= 2 and 0 <= noise < 1")
    start = time.perf_counter()
    tmp = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    directions = np.random.default_rng([args.seed, 2**31]).standard_normal((args.classes, args.dim))
    means = (args.separation * directions / np.linalg.norm(directions, axis=1, keepdims=True)).astype(np.float32)
    names = [f"e{j}" for j in range(args.dim)]
    schema = pa.schema([("id", pa.int64()), ("label", pa.int64())] + [(n, pa.float32()) for n in names])
    flipped_ids, flipped_true, flipped_given = [], [], []
    writer: pq.ParquetWriter | None = None
    file_index, in_file = 0, 0
    for block, first in enumerate(range(0, args.rows, BLOCK)):
        m = min(BLOCK, args.rows - first)
        rng = np.random.default_rng([args.seed, block])
        true = rng.integers(args.classes, size=m)
        X = rng.standard_normal((m, args.dim), dtype=np.float32)
        X += means[true]
        flip = rng.random(m) < args.noise
        given = true.copy()
        given[flip] = (true[flip] + rng.integers(1, args.classes, size=int(flip.sum()))) % args.classes
        ids = np.arange(first, first + m, dtype=np.int64) + 10**12  # ids that are not row numbers
        flipped_ids.append(ids[flip])
        flipped_true.append(true[flip])
        flipped_given.append(given[flip])
        columns = [pa.array(ids), pa.array(given.astype(np.int64))] + [pa.array(X[:, j]) for j in range(args.dim)]
        if writer is None or in_file >= args.rows_per_file:
            if writer is not None:
                writer.close()
            writer = pq.ParquetWriter(tmp / "data" / f"part-{file_index:05d}.parquet", schema, compression="none",
                                      use_dictionary=["id", "label"])
            file_index, in_file = file_index + 1, 0
        writer.write_batch(pa.record_batch(columns, schema=schema), row_group_size=BLOCK)
        in_file += m
        if block % 16 == 0:
            print(f"{first + m}/{args.rows} rows, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    if writer is not None:
        writer.close()
    pq.write_table(pa.table({"id": np.concatenate(flipped_ids), "true_label": np.concatenate(flipped_true),
                             "given_label": np.concatenate(flipped_given)}), tmp / "flipped.parquet")
    config = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "files": file_index, "flipped": int(sum(len(f) for f in flipped_ids)),
              "seconds": round(time.perf_counter() - start, 1)}
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp, args.out)
    print(json.dumps(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
