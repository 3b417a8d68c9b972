"""CINCER: interactive label cleaning with example-based explanations (Teso et al., NeurIPS 2021).

The round is inspect -> select -> ask -> update; each stage is a small callable found by name in
``INSPECTORS`` / ``SELECTORS``, and :class:`CleaningLoop` runs it. The experiment harnesses
(``RunConfig``, ``run``) load on first use: ``import cincer`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from .api import Cleaner, LabelQuery, counterexamples
from .data import DATASETS, Dataset, flip_labels, load_dataset
from .errors import CincerError, ConflictError, InputError, ModelError, NotFoundError, QueryError
from .inspect import INSPECTORS, Inspector, ModelView
from .issues import find_label_issues
from .learners import Learner, SklearnLearner, TorchLearner, make_learner
from .loop import Answer, CleaningLoop, OracleAnnotator, Query
from .models import MODELS, TrainConfig, build_model
from .plugins import load_plugins, register_inspector, register_selector
from .select import SELECTORS, Ranking, Selector

_HARNESS = {"RunConfig": "cincer.experiments.simulate", "run": "cincer.experiments.simulate"}

__all__ = [
    "Answer", "CincerError", "Cleaner", "CleaningLoop", "ConflictError", "DATASETS", "Dataset", "INSPECTORS",
    "InputError", "Inspector", "LabelQuery", "Learner", "MODELS", "ModelError", "ModelView", "NotFoundError",
    "OracleAnnotator", "Query", "QueryError", "Ranking", "RunConfig", "SELECTORS", "Selector", "SklearnLearner",
    "TorchLearner", "TrainConfig", "build_model", "counterexamples", "find_label_issues", "flip_labels", "load_dataset",
    "load_plugins",
    "make_learner", "register_inspector", "register_selector", "run",
]


def __getattr__(name: str) -> Any:
    if name in _HARNESS:
        import importlib

        return getattr(importlib.import_module(_HARNESS[name]), name)
    raise AttributeError(f"module 'cincer' has no attribute {name!r}")
