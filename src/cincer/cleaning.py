"""The settings of a cleaning round, shared by every client, and the objects they build.

:class:`CleaningConfig` names the model and its training, the suspicion test and the
counter-example ranking with their options; simulated runs, the cleanlab comparison and the app's
sessions extend it. Stage options reach only the stages that take them: an option set to something
other than its default for a stage that does not take it is an error, not a silent no-op.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .config import Config, at_least, option, registered
from .errors import CincerError
from .influence import InfluenceConfig
from .inspect import INSPECTORS, Inspector
from .learners import TorchLearner, make_learner
from .loop import CleaningLoop
from .models import MODELS, TrainConfig, build_model
from .select import SELECTORS, Selector

# config field -> the factory parameter it feeds
INSPECTOR_OPTIONS = {"threshold": "threshold"}
SELECTOR_OPTIONS = {"fim_samples": "fim_samples", "damping": "damping", "full_fisher_max_params": "max_params",
                    "influence": "config"}


@dataclass
class CleaningConfig(Config):
    """How one cleans: the model, its training, the inspector and the selector (paper defaults)."""

    model: str = option("fullnet", "model: logreg | fullnet | convnet", check=registered(MODELS))
    inspector: str = option("margin", "suspicion test: margin | always | never | random | cleanlab",
                            check=registered(INSPECTORS))
    threshold: float = option(0.2, "the inspector's threshold (margin: tau; cleanlab: label quality)")
    selector: str = option("top_fisher", "counter-example ranking: top_fisher | full_fisher | practical_fisher | "
                           "influence | nearest | random | none | drop_ce", check=registered(SELECTORS))
    fim_samples: int | None = option(None, "known examples in the top-layer FIM (paper: 30; default: all)")
    damping: float = option(0.0, "top-layer FIM damping; 0 = pseudo-inverse (paper)")
    full_fisher_max_params: int = option(20_000, "largest network full_fisher accepts", check=at_least(1))
    influence: InfluenceConfig = option(default_factory=InfluenceConfig)
    train: TrainConfig = option(default_factory=TrainConfig)
    seed: int = option(0, "random seed")

    def validate(self) -> None:
        super().validate()
        for field_name, kind, name in self._unused():
            flag = "--" + field_name.replace("_", "-")
            raise CincerError(f"{flag} is not an option of {kind} {name!r} (leave it at its default)")
        self.make_inspector()  # each stage checks its own options
        self.make_selector()

    # ------------------------------------------------------------------- stages
    def inspector_params(self) -> dict:
        return _params(INSPECTORS, self.inspector, INSPECTOR_OPTIONS, self)

    def selector_params(self) -> dict:
        return _params(SELECTORS, self.selector, SELECTOR_OPTIONS, self)

    def make_inspector(self) -> Inspector:
        return INSPECTORS.create(self.inspector, **self.inspector_params())

    def make_selector(self) -> Selector:
        return SELECTORS.create(self.selector, **self.selector_params())

    def _unused(self) -> list[tuple[str, str, str]]:
        """``(field, stage kind, stage name)`` of every option set away from its default for a stage that
        does not take it."""
        defaults = type(self)()
        return [(field_name, registry.kind, name)
                for options, registry, name in ((INSPECTOR_OPTIONS, INSPECTORS, self.inspector),
                                                (SELECTOR_OPTIONS, SELECTORS, self.selector))
                for field_name, param in options.items()
                if getattr(self, field_name) != getattr(defaults, field_name) and not registry.accepts(name, param)]

    def without_unused(self) -> Any:
        """A copy with the options its stages do not take back at their defaults."""
        defaults = type(self)()
        return dataclasses.replace(self, **{f: getattr(defaults, f) for f, _, _ in self._unused()})

    # ------------------------------------------------------------------- objects
    def new_learner(self, input_shape: tuple[int, ...], n_classes: int, *, seed: int, dtype: torch.dtype,
                    device: torch.device | str | None = None) -> TorchLearner:
        """A fresh model of ``self.model`` (the same seed gives the same initial weights) and its trainer."""
        model = build_model(self.model, input_shape, n_classes, seed=seed, dtype=dtype)
        if device is not None:
            model = model.to(device)  # built on the CPU: the same initial weights anywhere
        learner = make_learner(model, config=self.train, seed=seed)
        assert isinstance(learner, TorchLearner)
        return learner

    def new_loop(self, learner: Any, X: torch.Tensor, labels: np.ndarray, known: Any, rng: np.random.Generator,
                 **options: Any) -> CleaningLoop:
        """The loop of this round (``options``: ``skip_checked``, ``checked`` of :class:`CleaningLoop`)."""
        return CleaningLoop(learner, X, labels, known, inspect=self.make_inspector(), select=self.make_selector(),
                            rng=rng, **options)


def _params(registry: Any, name: str, options: dict[str, str], config: Config) -> dict:
    return {param: getattr(config, field_name) for field_name, param in options.items()
            if registry.accepts(name, param)}
