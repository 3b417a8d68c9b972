"""On-disk cache of preprocessed data sets: a compressed ``.npz`` plus a small JSON sidecar.

Arrays go in the ``.npz`` (read back with ``allow_pickle=False``, so a cache file can never run
code); names and shapes go in the sidecar, with the sha256 of the ``.npz``. A file whose checksum
does not match, or that cannot be read, is rebuilt rather than trusted.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .base import Dataset

ARRAYS = ("X_train", "y_train", "X_test", "y_test")
TEXTS = ("texts_train", "texts_test")


def cache_dir() -> Path:
    """``$CINCER_CACHE``, else ``~/.cache/cincer``."""
    return Path(os.environ.get("CINCER_CACHE") or Path.home() / ".cache" / "cincer")


def cache_key(name: str, version: int, seed: int | None, **params) -> str:
    """File stem naming one build: data set, preprocessing version, seed and any extra parameter."""
    extra = "" if seed is None else f"-seed{seed}"
    extra += "".join(f"-{k}{v}" for k, v in sorted(params.items()))
    return f"{name}-v{version}{extra}"


def datasets_dir() -> Path:
    """Where the cached data sets are: ``cache_dir()/datasets``."""
    return cache_dir() / "datasets"


def cache_paths(key: str) -> tuple[Path, Path]:
    """The ``.npz`` and its ``.json`` sidecar for ``key``."""
    folder = datasets_dir()
    return folder / f"{key}.npz", folder / f"{key}.json"  # not with_suffix: keys may hold dots


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pack_texts(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Texts as one UTF-8 byte array plus end offsets: no pickle, and no fixed-width padding
    (a ``<U`` array pads every text to the longest one)."""
    encoded = [t.encode("utf-8") for t in texts]
    ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), ends


def unpack_texts(data: np.ndarray, ends: np.ndarray) -> list[str]:
    raw = data.tobytes()
    starts = np.concatenate([[0], ends[:-1]])
    return [raw[s:e].decode("utf-8") for s, e in zip(starts, ends)]


def save(dataset: Dataset, key: str) -> None:
    """Write ``dataset`` under ``key``; the sidecar is written last, so a crash leaves no valid entry."""
    npz_path, json_path = cache_paths(key)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {a: getattr(dataset, a) for a in ARRAYS}
    for t in TEXTS:
        if getattr(dataset, t) is not None:
            arrays[f"{t}_data"], arrays[f"{t}_ends"] = pack_texts(getattr(dataset, t))
    # per-process temporary names: parallel runs may build the same entry at once
    tmp = npz_path.parent / f"{key}.{os.getpid()}.tmp.npz"  # savez insists on the .npz ending
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, npz_path)
    sidecar = {
        "name": dataset.name,
        "key": key,
        "sha256": sha256(npz_path),
        "class_names": dataset.class_names,
        "feature_names": dataset.feature_names,
        "image_shape": list(dataset.image_shape) if dataset.image_shape else None,
        "n_train": len(dataset.y_train),
        "n_test": len(dataset.y_test),
        "meta": dataset.meta,
    }
    tmp = json_path.parent / f"{key}.{os.getpid()}.tmp.json"
    tmp.write_text(json.dumps(sidecar, indent=1))
    os.replace(tmp, json_path)


def read_sidecar(key: str) -> dict | None:
    """The sidecar of a valid entry (checksum verified), or ``None``."""
    npz_path, json_path = cache_paths(key)
    try:
        sidecar = json.loads(json_path.read_text())
        return sidecar if sidecar["sha256"] == sha256(npz_path) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load(key: str) -> Dataset | None:
    """The cached data set under ``key``, or ``None`` when absent, corrupted or unreadable."""
    sidecar = read_sidecar(key)
    if sidecar is None:
        return None
    try:
        with np.load(cache_paths(key)[0], allow_pickle=False) as npz:
            arrays = {a: npz[a] for a in ARRAYS}
            texts = {t: unpack_texts(npz[f"{t}_data"], npz[f"{t}_ends"]) if f"{t}_data" in npz else None
                     for t in TEXTS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    shape = sidecar["image_shape"]
    return Dataset(
        sidecar["name"], **arrays, texts_train=texts["texts_train"], texts_test=texts["texts_test"],
        class_names=sidecar["class_names"], feature_names=sidecar["feature_names"],
        image_shape=tuple(shape) if shape else None, meta=sidecar["meta"],
    )


def cached(name: str, *, version: int, uses_seed: bool = True) -> Callable:
    """Decorate a loader ``f(*, seed, **params) -> Dataset`` so its result is cached on disk.

    Bump ``version`` whenever the loader's preprocessing changes: old entries are then ignored.
    ``uses_seed=False`` (a fixed official split) shares one entry across seeds.
    The wrapper exposes ``cache_key(seed=0, **params)`` so tools can inspect the cache.
    """

    def decorate(loader: Callable[..., Dataset]) -> Callable[..., Dataset]:
        signature = inspect.signature(loader)

        def key_for(**kwargs) -> str:
            # bind + defaults: load(seed=0) and load() share one entry
            bound = signature.bind(**kwargs)
            bound.apply_defaults()
            params = dict(bound.arguments)
            seed = params.pop("seed")
            return cache_key(name, version, seed if uses_seed else None, **params)

        @functools.wraps(loader)
        def wrapper(**kwargs) -> Dataset:
            key = key_for(**kwargs)
            dataset = load(key)
            if dataset is None:
                dataset = loader(**kwargs)
                save(dataset, key)
            return dataset

        wrapper.cache_key = key_for  # type: ignore[attr-defined]
        return wrapper

    return decorate
