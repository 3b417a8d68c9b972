"""The data set registry."""

from __future__ import annotations

from collections.abc import Callable

from ..registry import Registry
from .base import Dataset

DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")


def load_dataset(name: str, *, seed: int = 0) -> Dataset:
    """Load a registered data set; ``seed`` fixes any split or subsampling the loader makes."""
    return DATASETS[name](seed=seed)
