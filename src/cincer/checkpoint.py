"""Checkpoints in open formats: a folder that any tool can read, and that never holds a pickle.

``state.json`` holds what has a JSON form (parameters, counters, history, random states),
``arrays.npz`` the NumPy arrays (pool, labels, known set, ...; read back with ``allow_pickle=False``)
and ``weights.safetensors`` the tensors (a PyTorch model's weights). What goes in is the caller's
(:meth:`cincer.Cleaner.save`); this module only writes and reads the three files, refusing anything
that would need pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CincerError, one_line

FORMAT = "cincer.checkpoint"
VERSION = 1
STATE, ARRAYS, WEIGHTS = "state.json", "arrays.npz", "weights.safetensors"


def write_checkpoint(path: str | os.PathLike, state: dict[str, Any], arrays: dict[str, np.ndarray],
                     tensors: dict[str, torch.Tensor]) -> Path:
    """Write the three files into folder ``path`` (created if needed; an existing checkpoint there is
    replaced, anything else is refused). Each file is written aside and moved into place."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CincerError(f"cannot save to {str(folder)!r}: it is a file (a checkpoint is a folder)")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / STATE).exists():
        raise CincerError(f"cannot save to {str(folder)!r}: the folder holds other files (use a new folder)")
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biufcU":
            kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise CincerError(f"cannot save {key!r}: an array of {kind} has no open format (checkpoints never pickle)")
    try:
        text = json.dumps({"format": FORMAT, "version": VERSION, **state}, default=_plain, indent=1)
    except (TypeError, ValueError) as err:
        raise CincerError(f"cannot save the state as JSON: {one_line(err)}") from None
    folder.mkdir(parents=True, exist_ok=True)
    _replace(folder / ARRAYS, lambda aside: _savez(aside, arrays))
    if tensors:
        from safetensors.torch import save_file

        plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        _replace(folder / WEIGHTS, lambda aside: save_file(plain, str(aside), metadata={"format": FORMAT}))
    elif (folder / WEIGHTS).exists():
        (folder / WEIGHTS).unlink()
    _replace(folder / STATE, lambda aside: aside.write_text(text))  # last: a folder with state.json is complete
    return folder


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """``(state, arrays, tensors)`` of the checkpoint in folder ``path``."""
    folder = Path(path)
    if not (folder / STATE).is_file():
        raise CincerError(f"no cincer checkpoint at {str(folder)!r} ({STATE} is missing)")
    try:
        state = json.loads((folder / STATE).read_text())
    except (OSError, ValueError) as err:
        raise CincerError(f"cannot read {str(folder / STATE)!r}: {one_line(err)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CincerError(f"{str(folder / STATE)!r} is not a cincer checkpoint")
    if state.get("version") != VERSION:
        raise CincerError(f"checkpoint version {state.get('version')!r} is not supported (this cincer reads {VERSION})")
    try:
        with np.load(folder / ARRAYS, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as err:
        raise CincerError(f"cannot read {str(folder / ARRAYS)!r}: {one_line(err)}") from None
    tensors: dict[str, torch.Tensor] = {}
    if (folder / WEIGHTS).exists():
        from safetensors.torch import load_file

        try:
            tensors = load_file(folder / WEIGHTS)
        except Exception as err:  # safetensors raises its own error types
            raise CincerError(f"cannot read {str(folder / WEIGHTS)!r}: {one_line(err)}") from None
    return state, arrays, tensors


def _replace(target: Path, write: Any) -> None:
    """``write(aside)`` then move ``aside`` onto ``target``: a crash never leaves half a file in place."""
    aside = target.with_name(target.name + ".partial")
    write(aside)
    os.replace(aside, target)


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append .npz to a name
        np.savez(f, allow_pickle=False, **arrays)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"a value of type {type(value).__name__} has no JSON form")
