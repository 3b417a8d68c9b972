"""logreg, kernel_logreg, fullnet and convnet of the paper, each split into ``body`` (features) and ``head`` (last
linear layer).

CINCER's top-layer Fisher kernel only needs the penultimate features ``body(x)`` and the head's
softmax output, so every model exposes both.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..errors import CincerError
from ..registry import Registry

# kernel_logreg's largest feature count d * d. Up to 1e6 features (MNIST's 784 pixels give 614,656) the model
# is workable on a laptop in float64: 10 classes make 1e7 head weights (80 MB, 320 MB with Adam's moments), a
# training batch of 32 holds 256 MB of features, a 512-row chunk of learner.features_and_probs 4 GB, and the
# top-layer Fisher kernel works in the Gram space of the known set (its cached features: 2.4 GB for 300
# examples). CIFAR-10's 3,072 values would give 9.4e6 features: 38 GB for one such chunk.
MAX_KERNEL_FEATURES = 1_000_000

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


class OuterProduct(nn.Module):
    """The flattened outer product ``x x^T`` of each flattened input: all degree-2 monomials (``d * d`` values)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)
        return (z[:, :, None] * z[:, None, :]).flatten(1)


@MODELS.register("kernel_logreg")
def kernel_logreg(input_shape: tuple[int, ...], n_classes: int) -> Classifier:
    """Softmax regression on the flattened outer product ``x x^T`` (a quadratic kernel, explicitly)."""
    d = _numel(input_shape)
    if d * d > MAX_KERNEL_FEATURES:
        raise CincerError(f"kernel_logreg on inputs of {d:,} values would need {d * d:,} features (at most "
                          f"{MAX_KERNEL_FEATURES:,}: inputs of up to {math.isqrt(MAX_KERNEL_FEATURES):,} values)")
    return Classifier(OuterProduct(), nn.Linear(d * d, n_classes))


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
