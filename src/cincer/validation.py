"""Checks of user data at the API boundary: features, labels and datasets in, typed errors out.

Features go through scikit-learn's ``check_array`` (numeric, dense, writable; any number of dimensions
for images) and labels through ``type_of_target``, with messages that name the problem: a continuous
or multi-output target, missing labels (``None``, NaN), labels of mixed types.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

from .errors import InputError, one_line


def as_features(X: Any, *, name: str = "X") -> np.ndarray:
    """numpy / pandas / torch tensor / nested lists -> a finite, writable float array (rows = examples)."""
    from sklearn.utils.validation import check_array

    if isinstance(X, torch.utils.data.DataLoader):
        raise InputError(f"{name} is a torch DataLoader: pass its dataset ({name}.dataset, a Dataset of (x, y) "
                         "pairs) or arrays X and y")
    if hasattr(X, "toarray") or hasattr(X, "tocsr"):
        raise InputError(f"{name} is a sparse matrix: pass a dense array ({name}.toarray())")
    if hasattr(X, "to_numpy"):  # pandas
        try:
            X = X.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise InputError(f"{name}: every column must be numeric ({one_line(err)})") from None
    elif isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    if X is None or isinstance(X, (str, bytes, dict)):
        raise InputError(f"{name} must be an array of examples, got {type(X).__name__}")
    try:
        ndim = np.ndim(X)
    except ValueError as err:  # ragged nested lists
        raise InputError(f"{name}: not a rectangular array ({one_line(err)})") from None
    if ndim < 2:
        raise InputError(f"{name} must have one row per example (2 or more dimensions), got shape {np.shape(X)}")
    try:
        X = check_array(X, dtype="numeric", allow_nd=True, ensure_all_finite=False, force_writeable=True,
                        input_name=name)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name}: not a numeric array ({one_line(err)})") from None
    if X.dtype.kind != "f":
        X = X.astype(np.float64)
    if not np.all(np.isfinite(X)):
        bad = np.flatnonzero(~np.isfinite(X.reshape(len(X), -1)).all(axis=1))
        raise InputError(f"{name} has NaN or infinite values in {len(bad)} rows (first: row {bad[0]})")
    return X


def one_row(x: Any, *, name: str = "x") -> np.ndarray:
    """One example (array, tensor, pandas Series, a DataFrame of one row) -> a batch of one."""
    if isinstance(x, torch.utils.data.DataLoader):
        raise InputError(f"{name} is a torch DataLoader: pass one example")
    if hasattr(x, "to_numpy") and getattr(x, "ndim", 1) == 2:  # a DataFrame: one row of it
        if len(x) != 1:
            raise InputError(f"{name} must be one example, got a DataFrame of {len(x)} rows")
        return x.to_numpy()
    if hasattr(x, "to_numpy"):
        x = x.to_numpy()
    elif isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)[None]
    except ValueError as err:
        raise InputError(f"{name}: not a rectangular array ({one_line(err)})") from None


def split_dataset(data: Any) -> tuple[np.ndarray, np.ndarray]:
    """A torch ``Dataset`` of ``(x, y)`` pairs -> ``(X, y)`` arrays."""
    try:
        items = [data[i] for i in range(len(data))]
    except TypeError as err:  # e.g. an IterableDataset has no len
        raise InputError(f"the torch Dataset must have a length and be indexable ({one_line(err)})") from None
    if not items or not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
        raise InputError("a torch Dataset must yield (x, y) pairs (and hold at least one)")
    try:
        X = np.stack([np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x) for x, _ in items])
    except ValueError as err:
        raise InputError(f"the Dataset's examples differ in shape ({one_line(err)})") from None
    y = [v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v for _, v in items]
    labels = np.empty(len(y), dtype=object)  # checked by the caller (check_labels), as given
    try:
        labels[:] = y
    except ValueError:
        raise InputError("the Dataset's labels must be one value per example") from None
    return X, labels


def check_labels(y: Any, *, name: str = "y", classes_given: bool = False) -> np.ndarray:
    """Labels -> a 1-D array, or an :class:`InputError` that names the problem: missing labels (``None``,
    NaN), labels of mixed types (``0`` and ``"1"`` would silently become the same string), a multi-output
    target, or (unless the classes are declared) continuous values."""
    from sklearn.utils.multiclass import type_of_target

    if isinstance(y, torch.utils.data.DataLoader):
        raise InputError(f"{name} is a torch DataLoader: pass an array of labels")
    if hasattr(y, "to_numpy"):  # pandas
        y = y.to_numpy()
    elif isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    if y is None or isinstance(y, (str, bytes)) or np.ndim(y) == 0:
        raise InputError(f"{name} must hold one label per example, got {type(y).__name__}")
    try:
        arr = y if isinstance(y, np.ndarray) else np.asarray(y, dtype=object)
    except ValueError as err:
        raise InputError(f"{name}: not one label per example ({one_line(err)})") from None
    if arr.ndim != 1:
        several = arr.ndim == 2 and arr.shape[1] > 1
        raise InputError(f"{name} must be one label per example (1-D), got shape {arr.shape}"
                         + (": a multi-output target (CINCER cleans one label per example)" if several else ""))
    if arr.dtype == object:
        arr = _typed(arr, name)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        first = int(np.flatnonzero(~np.isfinite(arr))[0])
        what = "NaN (a missing label)" if np.isnan(arr[first]) else "infinite"
        raise InputError(f"{name}[{first}] is {what}: every example needs a label")
    if len(arr) and arr.dtype.kind in "biuf":
        try:
            target = type_of_target(arr, input_name=name)
        except ValueError as err:
            raise InputError(f"{name}: {one_line(err)}") from None
        if target == "continuous" and not classes_given:
            value = arr[np.flatnonzero(arr != np.round(arr))[0]].item()
            raise InputError(f"{name} holds continuous values (e.g. {value!r}): CINCER cleans class labels "
                             "(declare them with classes=[...] if these values are the classes)")
    return arr


def _typed(arr: np.ndarray, name: str) -> np.ndarray:
    """An object array of labels -> an array of their one type (refusing ``None`` and mixed types)."""
    kinds: dict[str, int] = {}
    for i, value in enumerate(arr):
        if value is None or type(value).__name__ == "NAType" or isinstance(value, float) and value != value:
            raise InputError(f"{name}[{i}] is {_missing(value)} (a missing label): every example needs a label")
        kind = ("str" if isinstance(value, (str, np.str_)) else
                "number" if isinstance(value, (numbers.Number, np.number, np.bool_)) else type(value).__name__)
        kinds.setdefault(kind, i)
    if len(kinds) > 1:
        (a, i), (b, j) = sorted(kinds.items(), key=lambda kv: kv[1])[:2]
        raise InputError(f"{name} mixes label types: {name}[{i}] = {arr[i]!r} ({a}) and {name}[{j}] = {arr[j]!r} "
                         f"({b}); use one type for every label")
    if set(kinds) <= {"str", "number"}:
        return np.asarray(arr.tolist())
    return arr


def _missing(value: Any) -> str:
    return "None" if value is None else "NaN" if isinstance(value, float) else str(value)


def encode_labels(y: Any, classes: np.ndarray, *, name: str = "y") -> np.ndarray:
    """Labels -> class indices; every label must be one of ``classes``."""
    y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
    if y.ndim != 1:
        raise InputError(f"{name} must be one label per example (1-D), got shape {y.shape}")
    lookup = _lookup(classes)
    try:
        values, inverse = np.unique(y, return_inverse=True)  # a dictionary lookup per distinct label only
    except TypeError:  # labels of mixed types cannot be sorted: one lookup per label
        values, inverse = y, np.arange(len(y))
    codes = np.empty(len(values), dtype=np.int64)
    for j, v in enumerate(values):
        key = _key(v)
        if not _hashable(key) or key not in lookup:
            first = int(np.flatnonzero(inverse == j)[0])
            raise InputError(f"{name}[{first}] = {key!r} is not one of the declared classes {_listed(classes)}")
        codes[j] = lookup[key]
    return codes[inverse.reshape(-1)]


def encode_label(value: Any, classes: np.ndarray, *, name: str = "y") -> int:
    """One label -> its class index."""
    key = _key(value)
    lookup = _lookup(classes)
    if not _hashable(key) or isinstance(key, float) and np.isnan(key) or key not in lookup:
        raise InputError(f"{name} = {key!r} is not one of the declared classes {_listed(classes)}")
    return int(lookup[key])


def _lookup(classes: np.ndarray) -> dict:
    return {_key(c): i for i, c in enumerate(classes)}


def _listed(classes: Any, limit: int = 12) -> str:
    values = [_key(c) for c in classes]
    if len(values) <= limit:
        return repr(values)
    return f"[{', '.join(map(repr, values[:limit - 2]))}, ..., {values[-1]!r}] ({len(values)} classes)"


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _key(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
