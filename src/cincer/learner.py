"""A model together with how it is (re)trained: the learner the cleaning loop retrains every round."""

from __future__ import annotations

import copy

import numpy as np
import torch

from .models import Classifier, TrainConfig, predict_proba, train


class Learner:
    """Wraps a :class:`Classifier`; remembers its initial weights so each retrain can restart from them."""

    def __init__(self, model: Classifier, config: TrainConfig | None = None, *, seed: int = 0) -> None:
        self.model = model
        self.config = config or TrainConfig()
        self.seed = seed
        self.initial_state = copy.deepcopy(model.state_dict())
        self.n_fits_ = 0
        self.optimizer_: torch.optim.Optimizer | None = None  # kept across warm retrains

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def fit(self, X: torch.Tensor, y: np.ndarray | torch.Tensor) -> "Learner":
        """Train on ``(X, y)``: from the initial weights (paper), or warm-started after the first fit."""
        warm = self.config.warm_start and self.n_fits_ > 0
        if self.config.warm_start and self.optimizer_ is None:
            self.optimizer_ = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)
        train(self.model, X, torch.as_tensor(y, dtype=torch.long), self.config,
              seed=self.seed + self.n_fits_, initial_state=self.initial_state, warm=warm,
              optimizer=self.optimizer_)
        self.n_fits_ += 1
        return self

    def predict_proba(self, X: torch.Tensor) -> np.ndarray:
        return predict_proba(self.model, X)

    @torch.no_grad()
    def features_and_probs(self, X: torch.Tensor, *, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate features ``h`` and softmax outputs ``p``: all the top-layer Fisher kernel needs."""
        self.model.eval()
        H = torch.cat([self.model.features(X[i:i + chunk]) for i in range(0, len(X), chunk)])
        return H, torch.softmax(self.model.head(H), dim=1)
