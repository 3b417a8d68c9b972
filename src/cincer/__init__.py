"""CINCER: interactive label cleaning with example-based explanations (Teso et al., NeurIPS 2021).

The round is inspect -> select -> ask -> update; each stage is a small callable found by name in
``INSPECTORS`` / ``SELECTORS``, and :class:`CleaningLoop` runs it.
"""

__version__ = "0.1.0"

from .data import DATASETS, Dataset, flip_labels, load_dataset
from .errors import CincerError
from .inspect import INSPECTORS
from .learner import Learner
from .loop import Answer, CleaningLoop, OracleAnnotator, Query
from .models import MODELS, TrainConfig, build_model
from .select import SELECTORS, Ranking
from .simulate import RunConfig, run
from .api import Cleaner, counterexamples, load_plugins, register_inspector, register_selector
from . import compare as _compare  # noqa: F401,E402  (registers the cleanlab inspector)

__all__ = [
    "Cleaner", "counterexamples", "load_plugins", "register_inspector", "register_selector",
    "DATASETS", "INSPECTORS", "MODELS", "SELECTORS", "Answer", "CincerError", "CleaningLoop", "Dataset",
    "Learner", "OracleAnnotator", "Query", "Ranking", "RunConfig", "TrainConfig", "build_model",
    "flip_labels", "load_dataset", "run",
]
