"""MNIST (all ten digits, or 4 vs 9) and Fashion-MNIST from their raw IDX files, and CIFAR-10 from
its official binary archive, all with the official train/test split."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike

from ..errors import CincerError
from .base import Dataset
from .cache import cached
from .registry import DATASETS
from .sources import (
    CIFAR10,
    CIFAR10_FILES,
    FASHION,
    MNIST,
    Source,
    cifar10_missing,
    find_cifar10,
    is_cifar10_folder,
    locate,
)

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_SHAPE = (3, 32, 32)
CIFAR10_RECORD = 1 + 3 * 32 * 32  # a label byte, then 1024 red, 1024 green, 1024 blue bytes, row-major
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


def scale_pixels(pixels: np.ndarray) -> np.ndarray:
    """Bytes 0..255 to float32 in [-0.5, 0.5], as in the paper; float32 keeps MNIST at 190 MB, not 380."""
    return pixels.astype(np.float32) / 255.0 - 0.5


def idx_dataset(name: str, source: Source, class_names: list[str]) -> Dataset:
    """Pixels scaled by :func:`scale_pixels`, shape ``(n, 1, height, width)``."""
    folder = locate(name, source)

    def split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        images = read_idx(find_idx(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(find_idx(folder, f"{prefix}-labels-idx1-ubyte"))
        return scale_pixels(images)[:, None, :, :], labels.astype(np.int64)

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


@DATASETS.register("mnist49")
@cached("mnist49", version=1, uses_seed=False)
def load_mnist49(*, seed: int = 0) -> Dataset:
    """MNIST's 4s and 9s only, relabelled 0 (four) and 1 (nine): the paper's binary image task.

    11791 train / 1991 test images of the official split, in their original order.
    """
    full = idx_dataset("mnist49", MNIST, [str(d) for d in range(10)])

    def keep(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.isin(y, (4, 9))
        return X[rows], (y[rows] == 9).astype(np.int64)

    (X_tr, y_tr), (X_te, y_te) = keep(full.X_train, full.y_train), keep(full.X_test, full.y_test)
    return Dataset("mnist49", X_tr, y_tr, X_te, y_te, class_names=["4", "9"], feature_names=full.feature_names,
                   image_shape=full.image_shape, meta={**full.meta, "digits": [4, 9]})


def parse_cifar10(raw: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch file: records of a label byte and 3072 pixel bytes (channel, row, column)."""
    if not raw or len(raw) % CIFAR10_RECORD:
        raise CincerError(f"{what}: {len(raw)} bytes is not a whole number of {CIFAR10_RECORD}-byte CIFAR-10 records")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(CIFAR10_CLASSES):
        raise CincerError(f"{what}: label {labels.max()} out of range 0..9; not a CIFAR-10 batch file")
    return records[:, 1:].reshape(-1, *CIFAR10_SHAPE), labels


def read_cifar10_files(path: Path) -> dict[str, bytes]:
    """The six batch files, from the unpacked folder or straight out of the archive (nothing extracted)."""
    if path.is_dir():
        if not is_cifar10_folder(path):
            raise CincerError(f"{path}: missing some of {', '.join(CIFAR10_FILES)}")
        return {name: (path / name).read_bytes() for name in CIFAR10_FILES}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:  # one pass: a gzipped archive is read in order
                name = Path(member.name).name
                if member.isfile() and name in CIFAR10_FILES and name not in found:
                    f = tar.extractfile(member)
                    if f is not None:
                        found[name] = f.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CincerError(f"{path}: cannot read it as the CIFAR-10 archive ({e})") from None
    missing = [name for name in CIFAR10_FILES if name not in found]
    if missing:
        raise CincerError(f"{path}: not the CIFAR-10 binary archive, it lacks {', '.join(missing)}")
    return found


def read_cifar10(path: Path) -> Dataset:
    """CIFAR-10 from ``path`` (the archive or the unpacked folder): train = data_batch_1..5 in order,
    test = test_batch; pixels scaled by :func:`scale_pixels`, shape ``(n, 3, 32, 32)``."""
    files = read_cifar10_files(path)
    parts = [parse_cifar10(files[name], f"{path}: {name}") for name in CIFAR10_FILES]
    X_tr = scale_pixels(np.concatenate([X for X, _ in parts[:-1]]))
    y_tr = np.concatenate([y for _, y in parts[:-1]])
    X_te, y_te = scale_pixels(parts[-1][0]), parts[-1][1]
    _, height, width = CIFAR10_SHAPE
    return Dataset(
        "cifar10", X_tr, y_tr, X_te, y_te, class_names=list(CIFAR10_CLASSES),
        feature_names=[f"{color}_{r}_{c}" for color in ("red", "green", "blue")
                       for r in range(height) for c in range(width)],
        image_shape=CIFAR10_SHAPE, meta={"source": CIFAR10.label},
    )


@DATASETS.register("cifar10")
@cached("cifar10", version=1, uses_seed=False)
def load_cifar10(*, seed: int = 0) -> Dataset:
    """CIFAR-10: 50000 train / 10000 test colour images, 3x32x32, 10 classes, from the official
    binary archive (``$CINCER_CIFAR10``, else the raw folder; never downloaded, never unpickled)."""
    path = find_cifar10()
    if path is None:
        raise CincerError(cifar10_missing())
    return read_cifar10(path)
