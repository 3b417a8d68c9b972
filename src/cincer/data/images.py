"""MNIST and Fashion-MNIST from their raw IDX files, with the official train/test split."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike

from ..errors import CincerError
from .base import Dataset
from .cache import cached
from .registry import DATASETS
from .sources import FASHION, MNIST, Source, locate

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IDX_DTYPES: dict[int, DTypeLike] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (plain or gzipped): 2 zero bytes, a dtype code, the number of dimensions,
    one big-endian int32 per dimension, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] not in IDX_DTYPES:
        raise CincerError(f"{path}: not an IDX file")
    ndim = raw[3]
    shape = tuple(np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    return np.frombuffer(raw, dtype=IDX_DTYPES[raw[2]], offset=4 + 4 * ndim).reshape(shape)


def find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    raise CincerError(f"{folder}: missing {stem}; the raw files are incomplete")


def idx_dataset(name: str, source: Source, class_names: list[str]) -> Dataset:
    """Pixels scaled to [-0.5, 0.5] as in the paper; float32 keeps MNIST at 190 MB, not 380."""
    folder = locate(name, source)

    def split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        images = read_idx(find_idx(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(find_idx(folder, f"{prefix}-labels-idx1-ubyte"))
        X = (images.astype(np.float32) / 255.0 - 0.5)[:, None, :, :]
        return X, labels.astype(np.int64)

    (X_tr, y_tr), (X_te, y_te) = split("train"), split("t10k")
    height, width = X_tr.shape[2:]
    return Dataset(
        name, X_tr, y_tr, X_te, y_te, class_names=class_names,
        feature_names=[f"pixel_{r}_{c}" for r in range(height) for c in range(width)],
        image_shape=(1, height, width), meta={"source": source.label},
    )


@DATASETS.register("mnist")
@cached("mnist", version=1, uses_seed=False)
def load_mnist(*, seed: int = 0) -> Dataset:
    """MNIST handwritten digits: 60000 train / 10000 test images, 1x28x28, 10 classes.

    ``seed`` is unused (the split is the official one) but keeps the loader signature uniform.
    """
    return idx_dataset("mnist", MNIST, [str(d) for d in range(10)])


@DATASETS.register("fashion_mnist")
@cached("fashion_mnist", version=1, uses_seed=False)
def load_fashion_mnist(*, seed: int = 0) -> Dataset:
    """Fashion-MNIST (Zalando): 60000 train / 10000 test images, 1x28x28, 10 clothing classes."""
    return idx_dataset("fashion_mnist", FASHION, FASHION_CLASSES)
