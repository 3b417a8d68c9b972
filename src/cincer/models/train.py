"""Training as in the paper: Adam, mini-batches, optionally from the initial weights every time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import Config, at_least, option, positive


@dataclass
class TrainConfig(Config):
    """Paper defaults (ref. code): Adam lr 1e-3, 100 epochs, batch 32, retrain from the initial weights."""

    epochs: int = option(100, "training epochs of each (re)fit", check=at_least(1))
    batch_size: int = option(32, "mini-batch size", check=at_least(1))
    lr: float = option(1e-3, "Adam learning rate", check=positive)
    warm_start: bool = option(False, "retrain from the last model, keeping Adam's state (fast mode)")
    warm_epochs: int | None = option(None, "epochs of a warm-started retrain (default: --epochs)", check=at_least(1))


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, config: TrainConfig, *, seed: int,
          initial_state: dict | None = None, warm: bool = False,
          optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
    """Fit ``model`` in place on ``(X, y)`` and return it.

    With ``initial_state`` and not ``warm``, weights are reset to it first, so every retrain
    starts from the same point (the paper's protocol) and the result depends only on the data.
    A warm retrain may pass the previous ``optimizer`` so Adam's moment estimates carry over.
    """
    if initial_state is not None and not warm:
        model.load_state_dict(initial_state)
    epochs = config.warm_epochs if warm and config.warm_epochs is not None else config.epochs
    generator = torch.Generator().manual_seed(seed)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = nn.CrossEntropyLoss()
    y = y.to(X.device)  # labels often arrive as a CPU tensor from NumPy
    n = len(y)
    # a last batch of one joins the previous one only for a model with BatchNorm (which cannot train on one
    # example); any other model keeps the batches of the paper's runs, so their traces stay bit for bit
    bounds = batch_bounds(n, config.batch_size, merge_single=has_batchnorm(model))
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout masks
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for start, end in bounds:
                batch = order[start:end]
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(X[batch]), y[batch]).backward()
                optimizer.step()
    model.eval()
    return model


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a batch-normalisation layer (which cannot train on a batch of one example)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def batch_bounds(n: int, batch_size: int, *, merge_single: bool = False) -> list[tuple[int, int]]:
    """``(start, end)`` of each mini-batch of an epoch over ``n`` examples. With ``merge_single`` a last
    batch of one example joins the one before it: BatchNorm refuses a batch of one in training. Only
    then: for other models a batch of one is harmless, and merging would change the paper's runs (their
    traces are checked bit for bit)."""
    starts = list(range(0, n, batch_size))
    if merge_single and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [(start, starts[i + 1] if i + 1 < len(starts) else n) for i, start in enumerate(starts)]


@torch.no_grad()
def predict_proba(model: nn.Module, X: torch.Tensor, *, chunk: int = 128) -> np.ndarray:
    # small chunks keep a CNN's activations in cache (10,000 MNIST images: 2-4x faster than chunks of 4,096)
    model.eval()
    out = [torch.softmax(model(X[i:i + chunk]), dim=1) for i in range(0, len(X), chunk)]
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0))
