"""Tables and the model inputs made from them, shared by ``cincer audit`` (:mod:`cincer.issues`) and
``cincer project init`` (:mod:`cincer.app.project`).

A table is a CSV / TSV file (compressed too), a Parquet file, or a folder of Parquet files read in the
sorted order of their paths; its rows are numbered from 0 in that order (the keys of a table without an
id column). A text column becomes TF-IDF + truncated SVD features (:func:`text_features`), a column of
image file names 28x28 gray pixels (:func:`read_images`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CincerError, InputError, one_line

TABLE_SUFFIXES = {".csv": ",", ".txt": ",", ".tsv": "\t", ".tab": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")
COMPRESSED = (".gz", ".bz2", ".zip", ".xz", ".zst")
MEMORY_FACTOR = 4  # an in-memory audit holds the frame, the feature matrix, the cleaner's pool and its cache
IMAGE_SIZE = 28


def _kind(path: Path) -> str:
    """``parquet``, ``folder`` or a CSV separator, from the path (an unknown extension is an error)."""
    if path.is_dir():
        return "folder"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in PARQUET_SUFFIXES:
        return "parquet"
    if last in TABLE_SUFFIXES:
        return TABLE_SUFFIXES[last]
    raise InputError(f"{path.name}: unknown table format {last or '(no extension)'!r} "
                     "(use .csv, .tsv, .parquet, or a folder of .parquet files)")


def parquet_files(folder: Path) -> list[Path]:
    """The Parquet files of a folder (and its sub-folders), in the sorted order of their paths: the order
    of the rows (and so of the row-number keys) of the table they make."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PARQUET_SUFFIXES
                   and not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts))
    if not files:
        raise InputError(f"{folder}: a folder holding no .parquet files")
    return files


def check_source(path: str | Path) -> Path:
    """The path of a readable table, or an :class:`InputError` (no such file, unknown extension)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    kind = _kind(path)
    if kind == "folder":
        parquet_files(path)
    return path


def read_table(path: str | Path, columns: list[str] | None = None) -> Any:
    """A CSV / TSV / Parquet file, or a folder of Parquet files (concatenated in the sorted order of their
    paths), as a pandas DataFrame with a fresh 0-based index: the row numbers that key it."""
    import pandas as pd

    path = check_source(path)
    kind = _kind(path)
    try:
        if kind == "folder":
            parts = [pd.read_parquet(f, columns=columns) for f in parquet_files(path)]
            return pd.concat(parts, ignore_index=True)
        if kind == "parquet":
            return pd.read_parquet(path, columns=columns).reset_index(drop=True)
        return pd.read_csv(path, sep=kind, usecols=columns)
    except ImportError as err:
        raise InputError(f"reading {path.name} needs an optional package: {one_line(err)}") from None
    except Exception as err:  # pandas and pyarrow raise many types for malformed files
        raise InputError(f"cannot read {path}: {one_line(err)}") from None


def table_bytes(path: str | Path) -> int:
    """The table's size as data (not as stored): a Parquet file's uncompressed size from its metadata, a
    CSV's file size (times 4 when compressed); the sum over a folder's files."""
    import pyarrow.parquet as pq

    path = check_source(path)
    kind = _kind(path)
    files = parquet_files(path) if kind == "folder" else [path]
    total = 0
    for f in files:
        if kind in ("folder", "parquet"):
            try:
                meta = pq.ParquetFile(f).metadata
            except Exception as err:  # not a Parquet file after all
                raise InputError(f"cannot read {f}: {one_line(err)}") from None
            total += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        else:
            total += f.stat().st_size * (4 if f.suffix.lower() in COMPRESSED else 1)
    return total


def memory_estimate(path: str | Path) -> int:
    """Bytes an in-memory audit of the table needs, roughly: :data:`MEMORY_FACTOR` times :func:`table_bytes`."""
    return MEMORY_FACTOR * table_bytes(path)


SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b?)\s*$", re.I)


def parse_size(text: str) -> int:
    """``"2GB"``, ``"500MB"``, ``"1.5g"``, ``"4096"`` -> bytes (binary units: 1 GB = 2**30 bytes)."""
    match = SIZE.match(str(text))
    if match is None:
        raise CincerError(f"--memory: expected a size such as 2GB or 500MB, got {text!r}")
    value = float(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " ")
    if value < 1:
        raise CincerError(f"--memory must be positive, got {text!r}")
    return int(value)


def default_memory(fraction: float = 0.25) -> int:
    """A quarter of this machine's physical memory (what ``--memory`` defaults to)."""
    import os

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX
        total = 8 * 1024 ** 3
    return int(total * fraction)


def format_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def text_features(texts: list[str], *, seed: int = 0, dim: int = 64) -> np.ndarray:
    """TF-IDF then TruncatedSVD (LSA), standardised: a numeric input without the optional embedding model."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        tfidf = TfidfVectorizer(min_df=1, sublinear_tf=True).fit_transform(texts)
    except ValueError as err:
        raise CincerError(f"--text: cannot build features ({err})") from None
    k = max(1, min(dim, tfidf.shape[1] - 1, len(texts) - 1))
    Z = TruncatedSVD(n_components=k, random_state=seed).fit_transform(tfidf) if k < tfidf.shape[1] else tfidf.toarray()
    Z = (Z - Z.mean(axis=0)) / np.where(Z.std(axis=0) > 0, Z.std(axis=0), 1.0)
    return Z.astype(np.float32)


def read_images(frame: Any, folder: Path, files: str, *, copies: Path | None = None) -> np.ndarray:
    """The images named in column ``files`` (paths inside ``folder``) as ``(n, 1, 28, 28)`` gray pixels in
    [-0.5, 0.5]; ``copies``: a folder that receives a PNG copy of each (at most 256 px), named by row."""
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise CincerError(f"--images {folder}: no such folder")
    if copies is not None:
        copies.mkdir(parents=True, exist_ok=True)
    folder_resolved = folder.resolve()
    X = np.zeros((len(frame), 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i, name in enumerate(frame[files].astype(str)):
        path = (folder / name).resolve()
        if folder_resolved not in path.parents or not path.is_file():
            raise CincerError(f"image {name!r} (row {i}) is not a file inside {folder}")
        try:
            with Image.open(path) as img:
                img.load()
                if copies is not None:
                    shown = img.convert("RGB")
                    shown.thumbnail((256, 256))
                    shown.save(copies / f"{i:06d}.png", format="PNG")
                gray = img.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE))
        except (UnidentifiedImageError, OSError) as err:
            raise CincerError(f"cannot read image {name!r}: {err}") from None
        X[i, 0] = np.asarray(gray, dtype=np.float32) / 255.0 - 0.5
    return X


