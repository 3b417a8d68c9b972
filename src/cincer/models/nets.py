"""logreg, fullnet and convnet of the paper, each split into ``body`` (features) and ``head`` (last linear layer).

CINCER's top-layer Fisher kernel only needs the penultimate features ``body(x)`` and the head's
softmax output, so every model exposes both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..registry import Registry

MODELS: Registry[Callable[..., Classifier]] = Registry("model")


class Classifier(nn.Module):
    """``logits = head(body(x))`` with ``head`` an ``nn.Linear``."""

    def __init__(self, body: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations h, the input of the last linear layer."""
        return self.body(x)


@MODELS.register("logreg")
def logreg(input_shape: tuple[int, ...], n_classes: int) -> Classifier:
    """Softmax regression on the flattened input."""
    return Classifier(nn.Flatten(), nn.Linear(_numel(input_shape), n_classes))


@MODELS.register("fullnet")
def fullnet(input_shape: tuple[int, ...], n_classes: int) -> Classifier:
    """Dense 64 ReLU, Dropout 0.2, Dense 32 ReLU, Dropout 0.2, Dense C."""
    body = nn.Sequential(
        nn.Flatten(),
        nn.Linear(_numel(input_shape), 64), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2),
    )
    return Classifier(body, nn.Linear(32, n_classes))


@MODELS.register("convnet")
def convnet(input_shape: tuple[int, ...], n_classes: int) -> Classifier:
    """Conv 32 3x3 ReLU, MaxPool 2, Conv 64 3x3 ReLU, Flatten, Dense 64 ReLU, Dropout 0.2, Dense C."""
    if len(input_shape) != 3:
        from ..errors import CincerError

        raise CincerError(f"convnet needs image input (channels, height, width), got shape {tuple(input_shape)}")
    channels, height, width = input_shape
    conv = nn.Sequential(
        nn.Conv2d(channels, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Flatten(),
    )
    with torch.no_grad():
        n_flat = conv(torch.zeros(1, channels, height, width)).shape[1]
    body = nn.Sequential(conv, nn.Linear(n_flat, 64), nn.ReLU(), nn.Dropout(0.2))
    return Classifier(body, nn.Linear(64, n_classes))


def build_model(name: str, input_shape: tuple[int, ...], n_classes: int, *, seed: int,
                dtype: torch.dtype = torch.float64) -> Classifier:
    """A freshly initialised model; the same seed gives the same initial weights."""
    factory = MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory(tuple(input_shape), n_classes)
    model = model.to(dtype)
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        # oneDNN's NHWC convolutions: with predict_proba's small chunks, 2.5-5x faster CNN evaluation on a CPU
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
