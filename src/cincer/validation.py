"""Checks of user data at the API boundary: features, labels and datasets in, typed errors out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import InputError


def as_features(X: Any, *, name: str = "X") -> np.ndarray:
    """numpy / pandas / torch tensor -> a finite float array (rows = examples)."""
    if hasattr(X, "to_numpy"):  # pandas
        try:
            X = X.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise InputError(f"{name}: every column must be numeric ({err})") from None
    elif isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    try:
        X = np.asarray(X, dtype=np.float64 if np.asarray(X).dtype.kind not in "f" else None)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name}: not a numeric array ({err})") from None
    if X.ndim < 2:
        raise InputError(f"{name} must have one row per example (2 or more dimensions), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        bad = np.flatnonzero(~np.isfinite(X.reshape(len(X), -1)).all(axis=1))
        raise InputError(f"{name} has NaN or infinite values in {len(bad)} rows (first: row {bad[0]})")
    return X


def one_row(x: Any) -> np.ndarray:
    """One example (array, tensor, pandas Series) -> a batch of one."""
    if hasattr(x, "to_numpy"):
        x = x.to_numpy()
    elif isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)[None]


def split_dataset(data: Any) -> tuple[np.ndarray, np.ndarray]:
    """A torch ``Dataset`` of ``(x, y)`` pairs -> ``(X, y)`` arrays."""
    items = [data[i] for i in range(len(data))]
    if not items or not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
        raise InputError("a torch Dataset must yield (x, y) pairs (and hold at least one)")
    X = np.stack([np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x) for x, _ in items])
    y = np.asarray([int(v) if isinstance(v, torch.Tensor) else v for _, v in items])
    return X, y


def encode_labels(y: Any, classes: np.ndarray, *, name: str = "y") -> np.ndarray:
    """Labels -> class indices; every label must be one of ``classes``."""
    y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
    if y.ndim != 1:
        raise InputError(f"{name} must be one label per example (1-D), got shape {y.shape}")
    lookup = {_key(c): i for i, c in enumerate(classes)}
    try:
        values, inverse = np.unique(y, return_inverse=True)  # a dictionary lookup per distinct label only
    except TypeError:  # labels of mixed types cannot be sorted: one lookup per label
        values, inverse = y, np.arange(len(y))
    codes = np.empty(len(values), dtype=np.int64)
    for j, v in enumerate(values):
        key = _key(v)
        if key not in lookup:
            first = int(np.flatnonzero(inverse == j)[0])
            raise InputError(f"{name}[{first}] = {key!r} is not one of the declared classes {list(lookup)}")
        codes[j] = lookup[key]
    return codes[inverse.reshape(-1)]


def _key(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
