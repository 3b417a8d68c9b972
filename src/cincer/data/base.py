"""The dataset object every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import CincerError


@dataclass
class Dataset:
    """Train/test arrays with clean labels, plus what a person needs to display an example.

    ``X_*`` are float arrays: ``(n, d)`` for tabular/embedded data, ``(n, 1, H, W)`` for images.
    ``y_*`` are integer class indices in ``range(len(class_names))``.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    feature_names: list[str] | None = None
    image_shape: tuple[int, ...] | None = None
    texts_train: list[str] | None = None
    texts_test: list[str] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_features(self) -> int:
        return int(np.prod(self.X_train.shape[1:]))

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            X, y = getattr(self, f"X_{split}"), getattr(self, f"y_{split}")
            if len(X) != len(y):
                raise CincerError(f"{self.name}: X_{split} has {len(X)} rows but y_{split} has {len(y)}")
        self.y_train = np.asarray(self.y_train, dtype=np.int64)
        self.y_test = np.asarray(self.y_test, dtype=np.int64)
