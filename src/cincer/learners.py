"""Learners: a model together with how it is (re)trained, behind one contract the loop relies on.

:class:`Learner` is that contract. Two adapters implement it, both made by :func:`make_learner`:

* :class:`TorchLearner` wraps any ``nn.Module`` whose last linear layer produces the logits (the
  paper's networks, or a user's own): the penultimate features are that layer's input, read with a
  forward hook; training is :func:`cincer.models.train` (or the user's ``train_fn``), from the
  initial weights every time unless warm-started.
* :class:`SklearnLearner` wraps a scikit-learn ``LogisticRegression``: its top layer is the whole
  model (features = X, probabilities from ``predict_proba``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from .errors import InputError, ModelError
from .models import TrainConfig, predict_proba, train
from .progress import Progress


@runtime_checkable
class Learner(Protocol):
    """What the cleaning loop and the selectors need of a model."""

    model: Any
    n_fits_: int

    @property
    def dtype(self) -> torch.dtype: ...

    def fit(self, X: torch.Tensor, y: Any) -> Learner: ...

    def predict_proba(self, X: torch.Tensor) -> np.ndarray: ...

    def features_and_probs(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate features ``h`` and softmax outputs ``p``: all the top-layer Fisher kernel needs."""
        ...

    def fit_head(self, H: torch.Tensor, y: Any) -> Learner:
        """Refit the last layer alone on penultimate features ``H`` (``retrain="head"``)."""
        ...

    def head_probs(self, H: torch.Tensor) -> torch.Tensor:
        """Softmax outputs of the last layer on penultimate features ``H``."""
        ...


class TorchLearner:
    """A PyTorch classifier whose last linear layer ``head`` produces the logits.

    ``train_fn(model, X, y)``, when given, trains the model in place (after a reset to the initial
    weights unless ``config.warm_start``); else :func:`cincer.models.train` with ``config``.
    ``feature_dtype`` casts the features and probabilities (e.g. float64 for a float32 user model, so
    the Fisher algebra runs in double precision); ``None`` keeps the model's dtype.
    """

    def __init__(self, model: nn.Module, config: TrainConfig | None = None, *, head: nn.Linear | str | None = None,
                 train_fn: Callable | None = None, seed: int = 0, feature_dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.head = head if isinstance(head, nn.Linear) else find_head(model, head)
        self.config = config or TrainConfig()
        self.train_fn, self.seed, self.feature_dtype = train_fn, seed, feature_dtype
        self.initial_state = copy.deepcopy(model.state_dict())
        self.n_fits_ = 0
        self.optimizer_: torch.optim.Optimizer | None = None  # kept across warm retrains

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def fit(self, X: torch.Tensor, y: Any) -> TorchLearner:
        """Train on ``(X, y)``: from the initial weights (paper), or warm-started after the first fit."""
        warm = self.config.warm_start and self.n_fits_ > 0
        labels = torch.as_tensor(y, dtype=torch.long)
        if self.train_fn is None:
            if self.config.warm_start and self.optimizer_ is None:
                self.optimizer_ = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)
            train(self.model, X, labels, self.config, seed=self.seed + self.n_fits_,
                  initial_state=self.initial_state, warm=warm, optimizer=self.optimizer_)
        else:
            if not warm:
                self.model.load_state_dict(self.initial_state)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + self.n_fits_)
                self.model.train()
                self.train_fn(self.model, X, labels.to(X.device))
            self.model.eval()
        self.n_fits_ += 1
        return self

    def predict_proba(self, X: torch.Tensor) -> np.ndarray:
        return predict_proba(self.model, X)

    @torch.no_grad()
    def features_and_probs(self, X: torch.Tensor, *, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        # chunks of a few hundred keep a CNN's activations in cache (60k MNIST images: 0.55 s vs 1.7 s at 8192);
        # the results are written into preallocated tensors, so nothing of size n is held twice
        self.model.eval()
        dtype = self.feature_dtype or self.dtype
        H = X.new_empty((len(X), self.head.in_features), dtype=dtype)
        P = X.new_empty((len(X), self.head.out_features), dtype=dtype)
        seen: list[torch.Tensor] = []
        handle = self.head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
        try:
            with Progress(len(X), "features", unit="rows") as progress:
                for i in range(0, len(X), chunk):
                    seen.clear()
                    out = self.model(X[i:i + chunk])
                    if len(seen) != 1:
                        raise ModelError(f"the head layer ran {len(seen)} times in one forward pass (expected once)")
                    H[i:i + chunk] = seen[0].reshape(len(out), -1)
                    P[i:i + chunk] = torch.softmax(out.to(dtype), dim=1)
                    progress.update(len(out))
        finally:
            handle.remove()
        return H, P

    def fit_head(self, H: torch.Tensor, y: Any, *, max_iter: int = 5) -> TorchLearner:
        """Refit only the last layer on fixed penultimate features ``H`` (a convex problem: multinomial
        logistic regression), from its current weights by a few L-BFGS steps in the head's precision;
        the body stays as it is. Loss and gradient in closed form: ``(P - Y)^T [H 1] / n``."""
        W, b = (p.detach().clone() for p in (self.head.weight, self.head.bias))
        Hd = H.detach().to(W.dtype)
        labels = torch.as_tensor(y, dtype=torch.long, device=H.device)
        rows = torch.arange(len(labels), device=H.device)
        W.grad, b.grad = grad_W, grad_b = torch.zeros_like(W), torch.zeros_like(b)
        optimizer = torch.optim.LBFGS([W, b], max_iter=max_iter, line_search_fn="strong_wolfe")

        def loss() -> torch.Tensor:
            log_p = torch.log_softmax(torch.addmm(b, Hd, W.T), dim=1)
            R = log_p.exp()
            R[rows, labels] -= 1.0                              # P - Y
            torch.mm(R.T, Hd, out=grad_W).div_(len(labels))
            torch.mean(R, dim=0, out=grad_b)
            return -log_p[rows, labels].mean()

        with torch.no_grad():
            optimizer.step(loss)
            self.head.weight.copy_(W)
            self.head.bias.copy_(b)
        return self

    def head_probs(self, H: torch.Tensor) -> torch.Tensor:
        """Softmax outputs of the head on penultimate features ``H`` (in ``H``'s dtype)."""
        with torch.no_grad():
            return torch.softmax(torch.addmm(self.head.bias.to(H.dtype), H, self.head.weight.to(H.dtype).T), dim=1)

    def check(self, X: torch.Tensor, n_classes: int) -> None:
        """The model's output must be its head's output (no layer after it) with one logit per class."""
        model, head = self.model, self.head
        model.eval()
        seen: list[torch.Tensor] = []
        handle = head.register_forward_hook(lambda mod, inp, out: seen.append(out))
        try:
            with torch.no_grad():
                out = model(X[:4])
        except Exception as err:  # the user's forward failed on their own data: report it on one line
            raise ModelError(f"the model's forward pass failed on the data: {type(err).__name__}: {err}") from None
        finally:
            handle.remove()
        if len(seen) != 1:
            raise ModelError(f"the head layer ran {len(seen)} times in a forward pass; name the last linear layer "
                             "with head='attr.path'")
        if not isinstance(out, torch.Tensor) or out.shape != seen[0].shape or not torch.equal(out, seen[0]):
            raise ModelError("the model's last layer is not linear: its output is not the output of the head "
                             f"{type(head).__name__}({head.in_features}, {head.out_features}) (remove any softmax or "
                             "activation after it, or name the right layer with head='attr.path')")
        if out.dim() != 2 or out.shape[1] != n_classes:
            raise ModelError(f"the model outputs {tuple(out.shape[1:])} logits per example, expected {n_classes} "
                             "(one per class)")


class SklearnLearner:
    """A scikit-learn ``LogisticRegression``: the top layer is the whole model.

    Features are ``X`` (flattened), probabilities come from ``predict_proba`` (expanded to all
    ``n_classes`` columns). A binary model has one coefficient row ``w``; its equivalent 2-class softmax
    layer is ``W = [[0], [w]]``, ``b = [0, b]`` (:meth:`top_layer`). ``fit`` trains a clone, so the
    estimator given is never changed; :meth:`fitted` wraps one already trained.
    """

    dtype = torch.float64

    def __init__(self, estimator: Any, n_classes: int) -> None:
        self.estimator, self.n_classes = estimator, n_classes
        self.model = estimator
        self.n_fits_ = 0

    @classmethod
    def fitted(cls, estimator: Any) -> SklearnLearner:
        if not hasattr(estimator, "classes_"):
            raise ModelError(f"the {type(estimator).__name__} is not fitted")
        return cls(estimator, len(estimator.classes_))

    def fit(self, X: torch.Tensor, y: Any) -> SklearnLearner:
        from sklearn.base import clone

        y = np.asarray(y, dtype=np.int64)
        if len(np.unique(y)) < 2:
            raise InputError("LogisticRegression needs examples of at least two classes to fit")
        self.model = clone(self.estimator).fit(_flat_numpy(X), y)
        self.n_fits_ += 1
        return self

    def predict_proba(self, X: torch.Tensor) -> np.ndarray:
        proba = self.model.predict_proba(_flat_numpy(X))
        out = np.zeros((len(proba), self.n_classes))
        out[:, np.asarray(self.model.classes_, dtype=np.int64)] = proba
        return out

    def features_and_probs(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.as_tensor(_flat_numpy(X), dtype=torch.float64),
                torch.as_tensor(self.predict_proba(X), dtype=torch.float64))

    def fit_head(self, H: torch.Tensor, y: Any) -> SklearnLearner:
        """The whole model is the head: refit it on ``H`` (= X), from its current coefficients."""
        y = np.asarray(y, dtype=np.int64)
        if len(np.unique(y)) < 2:
            raise InputError("LogisticRegression needs examples of at least two classes to fit")
        self.model.set_params(warm_start=True).fit(_flat_numpy(H), y)
        return self

    def head_probs(self, H: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.predict_proba(H), dtype=H.dtype)

    def top_layer(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` of the softmax layer equivalent to the fitted model, ``W`` of shape ``(C, d)``."""
        coef, intercept = self.model.coef_, self.model.intercept_
        cls = np.asarray(self.model.classes_, dtype=np.int64)
        W, b = np.zeros((self.n_classes, coef.shape[1])), np.zeros(self.n_classes)
        if len(cls) == 2 and coef.shape[0] == 1:  # sigmoid(w x + b) == softmax([0, w x + b])[1]
            W[cls[1]], b[cls[1]] = coef[0], intercept[0]
        else:
            W[cls], b[cls] = coef, intercept
        return W, b


def make_learner(model: Any, *, n_classes: int | None = None, config: TrainConfig | None = None,
                 train_fn: Callable | None = None, head: str | None = None, seed: int = 0,
                 feature_dtype: torch.dtype | None = None) -> TorchLearner | SklearnLearner:
    """The learner for ``model``: a PyTorch ``nn.Module`` ending in a linear layer, or a scikit-learn
    ``LogisticRegression`` (``n_classes`` columns of probabilities)."""
    if isinstance(model, nn.Module):
        if not any(True for _ in model.parameters()):
            raise ModelError("the model has no parameters")
        return TorchLearner(model, config, head=head, train_fn=train_fn, seed=seed, feature_dtype=feature_dtype)
    if hasattr(model, "get_params"):
        from sklearn.linear_model import LogisticRegression

        if not isinstance(model, LogisticRegression):
            raise ModelError(f"unsupported scikit-learn model {type(model).__name__}: CINCER needs a linear top "
                             "layer (use LogisticRegression, or a PyTorch model ending in nn.Linear)")
        if train_fn is not None:
            raise ModelError("train_fn applies to PyTorch models; a scikit-learn model is trained with fit")
        if n_classes is None:
            return SklearnLearner.fitted(model)
        return SklearnLearner(model, n_classes)
    raise ModelError(f"unsupported model type {type(model).__name__}: pass a torch nn.Module or a "
                     "scikit-learn LogisticRegression")


def find_head(model: nn.Module, head: str | None = None) -> nn.Linear:
    """The last linear layer: ``model.get_submodule(head)`` when named, else the last ``nn.Linear``."""
    if head is not None:
        try:
            layer = model.get_submodule(head)
        except AttributeError as err:
            raise ModelError(f"head={head!r}: no such submodule in {type(model).__name__} ({err})") from None
        if not isinstance(layer, nn.Linear):
            raise ModelError(f"head={head!r} is a {type(layer).__name__}, not an nn.Linear")
        return layer
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"{type(model).__name__} has no nn.Linear layer: CINCER needs a linear last layer "
                         "producing the logits")
    return linears[-1]


def _flat_numpy(X: Any) -> np.ndarray:
    X = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    return X.reshape(len(X), -1)
