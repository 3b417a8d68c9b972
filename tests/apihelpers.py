"""Test helpers for the Python API: a full snapshot of a Cleaner's state, and its comparison."""

from __future__ import annotations

import copy

import numpy as np
import torch

from cincer.learners import linear_top


def model_weights(model) -> dict:
    """A PyTorch model's state_dict, or a scikit-learn model's fitted arrays (every step of a pipeline)."""
    if isinstance(model, torch.nn.Module):
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    steps = [step for _, step in model.steps] if hasattr(model, "steps") else [model]
    linear_top(model)
    return {f"{i}.{name}": copy.deepcopy(value) for i, step in enumerate(steps) if hasattr(step, "__dict__")
            for name, value in vars(step).items() if name.endswith("_") and not name.startswith("_")}


def state_of(cleaner) -> dict:
    """Everything a public method may change: parameters, and when fitted the pool, labels, D, checked
    examples, random state, pending queries, history, counters, model version and weights (of the folds too)."""
    params = {k: v for k, v in cleaner.get_params(deep=True).items() if k != "model"}
    if not cleaner.__sklearn_is_fitted__():
        return {"fitted": False, "params": params, "vars": sorted(vars(cleaner))}
    loops = [cleaner.loop_, *cleaner.folds_]
    return {
        "fitted": True, "params": params, "vars": sorted(vars(cleaner)), "uid": cleaner.uid_,
        "classes": cleaner.classes_.copy(), "n_queries": cleaner.n_queries_, "stale": cleaner.stale_,
        "pending": {qid: (q.index, q.raw.label) for qid, q in cleaner.pending_.items()},
        "history": copy.deepcopy(cleaner.history_),
        "loops": [{"X": loop.X.detach().cpu().clone(), "labels": loop.labels.copy(), "known": loop.known,
                   "checked": loop.checked, "rng": loop.rng.bit_generator.state, "version": loop.model_version,
                   "weights": model_weights(loop.learner.model), "fits": loop.learner.n_fits_} for loop in loops],
    }


def assert_same_state(before: dict, after: dict) -> None:
    _same(before, after, "state")


def _same(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, np.ndarray):
        same = a.shape == getattr(b, "shape", None) and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        assert isinstance(b, np.ndarray) and same, f"{where} differs"
    else:
        assert a is b or a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"
