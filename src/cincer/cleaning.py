"""The settings of a cleaning round, shared by every client, and the objects they build.

:class:`CleaningConfig` names the model and its training, the suspicion test and the
counter-example ranking with their options; simulated runs, the cleanlab comparison and the app's
sessions extend it. Stage options reach only the stages that take them: an option set to something
other than its default for a stage that does not take it is an error, not a silent no-op.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .config import Config, at_least, flag_of, option, registered
from .errors import CincerError
from .fisher import DEFAULT_TRUNCATE
from .influence import InfluenceConfig
from .inspect import INSPECTORS, Inspector
from .learners import TorchLearner, make_learner
from .loop import CleaningLoop
from .models import MODELS, TrainConfig, build_model
from .select import SELECTORS, Selector

# config field -> the factory parameter it feeds
INSPECTOR_OPTIONS = {"threshold": "threshold", "p_query": "p_query", "influence": "config"}
SELECTOR_OPTIONS = {"fim_samples": "fim_samples", "damping": "damping", "relative_damping": "relative_damping",
                    "truncate": "truncate",
                    "full_fisher_max_params": "max_params",
                    "nfisher_radius": "radius", "n_nearest": "n_nearest", "block_damping": "block_damping",
                    "max_block": "max_block", "influence": "config"}


@dataclass
class CleaningConfig(Config):
    """How one cleans: the model, its training, the inspector and the selector (paper defaults)."""

    model: str = option("fullnet", "model: logreg | kernel_logreg | fullnet | convnet", check=registered(MODELS))
    inspector: str = option("margin", "suspicion test: margin | always | never | random | cleanlab | gradient | "
                            "fisher | influence", check=registered(INSPECTORS))
    threshold: float | None = option(None, "the inspector's threshold (default: the inspector's own; margin: "
                                     "tau = 0.2, the paper; cleanlab: label quality 0.5; gradient, fisher, "
                                     "influence: a score, see cincer.inspect)")
    p_query: float | None = option(None, "random inspector: probability of querying an example (default 0.5)")
    selector: str = option("top_fisher", "counter-example ranking: top_fisher | full_fisher | practical_fisher | "
                           "influence | nearest | nearest_fisher | nearest_if | approx_fisher | block_fisher | "
                           "random | none | drop_ce", check=registered(SELECTORS))
    fim_samples: int | None = option(None, "known examples in the FIM of the Fisher selectors (paper: 30 for the "
                                     "top layer; default: all)")
    damping: float = option(0.0, "FIM damping of top_fisher, nearest_fisher, drop_ce, full_fisher and approx_fisher "
                            "(F + damping I); 0 = pseudo-inverse (paper)")
    relative_damping: float = option(0.0, "top_fisher, drop_ce: FIM damping as a fraction of its mean eigenvalue "
                                     "(scale-free; excludes --damping); 0 = none", check=at_least(0))
    truncate: float | None = option(None, "top_fisher, drop_ce: the pseudo-inverse ignores the FIM's eigendirections "
                                    f"below this fraction of its mean eigenvalue (scale-free); default "
                                    f"{DEFAULT_TRUNCATE:g} unless damped (chosen by evidence: docs/REPRODUCTION.md); "
                                    "0 = the paper's pseudo-inverse", check=at_least(0))
    full_fisher_max_params: int = option(20_000, "largest network full_fisher accepts", check=at_least(1))
    nfisher_radius: float | None = option(None, "nearest_fisher: top_fisher over the candidates within this "
                                          "Euclidean distance in input space (the nearest alone if none); an "
                                          "absolute distance, not the original's fraction of the largest one; "
                                          "None = no limit", check=at_least(0))
    n_nearest: int = option(100, "nearest_if: influence over this many nearest candidates", check=at_least(1))
    block_damping: float = option(0.01, "block_fisher: damping added to each layer's FIM block; 0 = pseudo-inverse",
                                  check=at_least(0))
    max_block: int = option(10_000, "largest layer (weight + bias parameters) block_fisher accepts",
                            check=at_least(1))
    influence: InfluenceConfig = option(default_factory=InfluenceConfig)
    train: TrainConfig = option(default_factory=TrainConfig)
    seed: int = option(0, "random seed")

    def validate(self) -> None:
        super().validate()
        unused = self._unused()
        if unused:
            raise CincerError(f"{', '.join(unused)}: not an option of inspector {self.inspector!r} or selector "
                              f"{self.selector!r} (leave it at its default)")
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

    def _unused(self) -> list[str]:
        """The flags of the stage options set away from their defaults that neither stage takes."""
        defaults, out = type(self)(), []
        fields = {f.name: f for f in dataclasses.fields(self)}
        for name in self._not_taken():
            value, default = getattr(self, name), getattr(defaults, name)
            if value == default:
                continue
            if isinstance(value, Config):  # a nested configuration: the flags of what was changed
                out += [flag_of(f) for f in dataclasses.fields(value)  # type: ignore[arg-type]
                        if getattr(value, f.name) != getattr(default, f.name)]
            else:
                out.append(flag_of(fields[name]))
        return out

    def without_unused(self) -> Any:
        """A copy with the options its stages do not take back at their defaults."""
        defaults = type(self)()
        return dataclasses.replace(self, **{f: getattr(defaults, f) for f in self._not_taken()})

    def _not_taken(self) -> list[str]:
        """The stage options that neither this inspector nor this selector takes."""
        taken = {f for options, registry, name in ((INSPECTOR_OPTIONS, INSPECTORS, self.inspector),
                                                   (SELECTOR_OPTIONS, SELECTORS, self.selector))
                 for f, param in options.items() if registry.accepts(name, param)}
        return [f for f in {**INSPECTOR_OPTIONS, **SELECTOR_OPTIONS} if f not in taken]

    # ------------------------------------------------------------------- objects
    def new_learner(self, input_shape: tuple[int, ...], n_classes: int, *, seed: int, dtype: torch.dtype,
                    device: torch.device | str | None = None, train_fn: Callable | None = None) -> TorchLearner:
        """A fresh model of ``self.model`` (the same seed gives the same initial weights) and its trainer
        (``train_fn``: see :class:`cincer.learners.TorchLearner`; default :func:`cincer.models.train`)."""
        model = build_model(self.model, input_shape, n_classes, seed=seed, dtype=dtype)
        if device is not None:
            model = model.to(device)  # built on the CPU: the same initial weights anywhere
        learner = make_learner(model, config=self.train, seed=seed, train_fn=train_fn)
        assert isinstance(learner, TorchLearner)
        return learner

    def new_loop(self, learner: Any, X: torch.Tensor, labels: np.ndarray, known: Any, rng: np.random.Generator,
                 **options: Any) -> CleaningLoop:
        """The loop of this round (``options``: ``skip_checked``, ``checked`` of :class:`CleaningLoop`)."""
        return CleaningLoop(learner, X, labels, known, inspect=self.make_inspector(), select=self.make_selector(),
                            rng=rng, **options)


def _params(registry: Any, name: str, options: dict[str, str], config: Config) -> dict:
    """The options the factory ``name`` takes; ``None`` means "the factory's own default" and is not passed."""
    return {param: getattr(config, field_name) for field_name, param in options.items()
            if registry.accepts(name, param) and getattr(config, field_name) is not None}
