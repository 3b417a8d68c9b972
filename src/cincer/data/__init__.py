"""Data sets by name, and label noise.

Adding a data set is one function registered in ``DATASETS``: it takes ``seed`` and returns a
:class:`Dataset` (clean labels, train/test split, preprocessing done). A user's own table becomes one with
:func:`add_table` (``cincer data add``).
"""

from __future__ import annotations

from . import images as _images  # noqa: F401
from . import sklearn_sets as _sklearn_sets  # noqa: F401  (registers the loaders)
from . import text as _text  # noqa: F401
from . import uci as _uci  # noqa: F401
from .base import Dataset
from .noise import MARGIN_KINDS, NOISE_KINDS, NOISE_NEEDS, flip_labels, probability_margins
from .registry import DATASETS, load_dataset
from .user import add_table, register_saved, remove_table

register_saved()  # the tables a user added (cincer data add), after the built-in names

__all__ = ["DATASETS", "Dataset", "MARGIN_KINDS", "NOISE_KINDS", "NOISE_NEEDS", "add_table", "flip_labels",
           "load_dataset", "probability_margins", "remove_table"]
