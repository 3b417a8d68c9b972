"""Learners: a model together with how it is (re)trained, behind one contract the loop relies on.

:class:`Learner` is that contract. Two adapters implement it, both made by :func:`make_learner`:

* :class:`TorchLearner` wraps any ``nn.Module`` whose last linear layer produces the logits (the
  paper's networks, or a user's own): the penultimate features are that layer's input, read with a
  forward hook; training is :func:`cincer.models.train` (or the user's ``train_fn``), from the
  initial weights every time unless warm-started.
* :class:`SklearnLearner` wraps a scikit-learn linear classifier with ``predict_proba``
  (``LogisticRegression``, ``SGDClassifier(loss="log_loss")``), alone or as the last step of a
  ``Pipeline``: the top layer is that classifier, the features are ``X`` transformed by the steps
  before it (``X`` itself for a bare classifier).

Both can be snapshotted in memory (``snapshot`` / ``restore``: what a transaction puts back) and
exported to open formats (``export_state`` / ``import_state``: tensors, arrays and JSON, no pickle).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from .errors import CincerError, InputError, ModelError, one_line
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
        try:
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
        except CincerError:
            raise
        except Exception as err:  # the model (or the user's train_fn) failed on this data: one line, cause kept
            what = "train_fn" if self.train_fn is not None else "training"
            raise ModelError(f"{what} failed on {len(labels)} examples: {one_line(err)}") from err
        finally:
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
        me = threading.get_ident()  # another thread's forward pass (the app serves while it retrains) is not ours

        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if threading.get_ident() == me:
                seen.append(inputs[0])
        handle = self.head.register_forward_hook(record)
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

    # ----------------------------------------------------------------- state
    def snapshot(self) -> dict[str, Any]:
        """What :meth:`restore` puts back: the weights, the fit count and the warm-start optimizer."""
        optimizer = self.optimizer_
        return {"weights": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "n_fits": self.n_fits_, "optimizer": optimizer,
                "optimizer_state": None if optimizer is None else copy.deepcopy(optimizer.state_dict())}

    def restore(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.model.load_state_dict(state["weights"])
        self.model.eval()
        self.n_fits_, self.optimizer_ = state["n_fits"], state["optimizer"]
        if self.optimizer_ is not None:
            self.optimizer_.load_state_dict(state["optimizer_state"])

    def export_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, np.ndarray]]:
        """``(json, tensors, arrays)`` of the trained state in open formats: the weights, the initial weights
        every cold retrain starts from, the fit count (it seeds the next fit) and Adam's state when warm."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"initial.{k}": v for k, v in self.initial_state.items()})
        meta: dict[str, Any] = {"kind": "torch", "n_fits": self.n_fits_, "optimizer": None}
        if self.optimizer_ is not None:
            saved = self.optimizer_.state_dict()
            scalars: dict[str, dict[str, Any]] = {}
            for pid, values in saved["state"].items():
                for key, value in values.items():
                    if isinstance(value, torch.Tensor):
                        tensors[f"optimizer.{pid}.{key}"] = value
                    else:
                        scalars.setdefault(str(pid), {})[key] = value
            kept = {str(pid): sorted(k for k, v in values.items() if isinstance(v, torch.Tensor))
                    for pid, values in saved["state"].items()}
            meta["optimizer"] = {"param_groups": saved["param_groups"], "scalars": scalars, "tensors": kept}
        return meta, tensors, {}

    def import_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor],
                     arrays: dict[str, np.ndarray]) -> None:
        device = next(self.model.parameters()).device
        weights = {k[len("model."):]: v.to(device) for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as err:
            raise ModelError(f"the model given does not match the saved weights: {one_line(err)}") from None
        self.model.eval()
        self.initial_state = {k[len("initial."):]: v.to(device) for k, v in tensors.items()
                              if k.startswith("initial.")}
        self.n_fits_ = int(meta["n_fits"])
        self.optimizer_ = None
        if meta.get("optimizer") is not None:
            opt = meta["optimizer"]
            state: dict[int, dict[str, Any]] = {}
            for pid, keys in opt["tensors"].items():
                state[int(pid)] = {key: tensors[f"optimizer.{pid}.{key}"].to(device) for key in keys}
            for pid, values in opt["scalars"].items():
                state.setdefault(int(pid), {}).update(values)
            self.optimizer_ = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)
            self.optimizer_.load_state_dict({"state": state, "param_groups": opt["param_groups"]})

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
    """A scikit-learn linear classifier with ``predict_proba``, alone or as the last step of a ``Pipeline``.

    The top layer is that classifier (``LogisticRegression``, or ``SGDClassifier(loss="log_loss")``,
    whose multiclass probabilities are one-vs-rest); the features are ``X`` (flattened) transformed by
    the pipeline's other steps (``X`` itself for a bare classifier). Probabilities come from
    ``predict_proba``, expanded to all ``n_classes`` columns. A binary model has one coefficient row
    ``w``; its equivalent 2-class softmax layer is ``W = [[0], [w]]``, ``b = [0, b]`` (:meth:`top_layer`).
    ``fit`` trains a clone, so the estimator given is never changed; :meth:`fitted` wraps one already
    trained (its ``classes_`` are then the label values, in column order).
    """

    dtype = torch.float64

    def __init__(self, estimator: Any, n_classes: int, *, external: bool = False) -> None:
        linear_top(estimator)
        self.estimator, self.n_classes = estimator, n_classes
        self.model = estimator
        self.external = external  # fitted elsewhere: columns follow its classes_, not our class indices
        self.n_fits_ = 0

    @classmethod
    def fitted(cls, estimator: Any) -> SklearnLearner:
        if not hasattr(estimator, "classes_"):
            raise ModelError(f"the {type(estimator).__name__} is not fitted")
        return cls(estimator, len(estimator.classes_), external=True)

    @property
    def name(self) -> str:
        return type(self.estimator).__name__

    @property
    def top(self) -> Any:
        """The fitted classifier that is the top layer (the pipeline's last step)."""
        return linear_top(self.model)

    def fit(self, X: torch.Tensor, y: Any) -> SklearnLearner:
        from sklearn.base import clone

        y = np.asarray(y, dtype=np.int64)
        if len(np.unique(y)) < 2:
            raise InputError(f"{self.name} needs examples of at least two classes to fit")
        try:
            self.model = clone(self.estimator).fit(_flat_numpy(X), y)
        except CincerError:
            raise
        except Exception as err:  # e.g. a parameter value scikit-learn refuses
            raise ModelError(f"{self.name}.fit failed: {one_line(err)}") from err
        self.external = False
        self.n_fits_ += 1
        return self

    def features(self, X: torch.Tensor | np.ndarray) -> np.ndarray:
        """The top layer's input: ``X`` through every step but the last."""
        X = _flat_numpy(X)
        steps = getattr(self.model, "steps", None)
        if steps is not None and len(steps) > 1:
            X = self.model[:-1].transform(X)
            X = X.toarray() if hasattr(X, "toarray") else X
        return np.asarray(X, dtype=np.float64)

    def _columns(self) -> np.ndarray:
        classes = np.asarray(self.top.classes_)
        return np.arange(len(classes)) if self.external else classes.astype(np.int64)

    def _expand(self, proba: np.ndarray) -> np.ndarray:
        out = np.zeros((len(proba), self.n_classes))
        out[:, self._columns()] = proba
        return out

    def predict_proba(self, X: torch.Tensor) -> np.ndarray:
        return self._expand(self.top.predict_proba(self.features(X)))

    def features_and_probs(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        H = self.features(X)
        return torch.as_tensor(H), torch.as_tensor(self._expand(self.top.predict_proba(H)), dtype=torch.float64)

    def fit_head(self, H: torch.Tensor, y: Any) -> SklearnLearner:
        """Refit the top layer alone on features ``H``, from its current coefficients (the other steps of a
        pipeline stay as they are)."""
        y = np.asarray(y, dtype=np.int64)
        if len(np.unique(y)) < 2:
            raise InputError(f"{self.name} needs examples of at least two classes to fit")
        try:
            self.top.set_params(warm_start=True).fit(_flat_numpy(H), y)
        except CincerError:
            raise
        except Exception as err:
            raise ModelError(f"{self.name}: refitting the top layer failed: {one_line(err)}") from err
        return self

    def head_probs(self, H: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self._expand(self.top.predict_proba(_flat_numpy(H))), dtype=H.dtype)

    def top_layer(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` of the softmax layer equivalent to the fitted model, ``W`` of shape ``(C, d)``."""
        top = self.top
        coef, intercept = top.coef_, top.intercept_
        cls = self._columns()
        W, b = np.zeros((self.n_classes, coef.shape[1])), np.zeros(self.n_classes)
        if len(cls) == 2 and coef.shape[0] == 1:  # sigmoid(w x + b) == softmax([0, w x + b])[1]
            W[cls[1]], b[cls[1]] = coef[0], intercept[0]
        else:
            W[cls], b[cls] = coef, intercept
        return W, b

    # ----------------------------------------------------------------- state
    def snapshot(self) -> dict[str, Any]:
        """What :meth:`restore` puts back: the fitted estimator (a copy: a head refit changes it in place)."""
        return {"model": copy.deepcopy(self.model), "n_fits": self.n_fits_, "external": self.external}

    def restore(self, state: dict[str, Any]) -> None:
        self.model, self.n_fits_, self.external = state["model"], state["n_fits"], state["external"]

    def export_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, np.ndarray]]:
        """``(json, tensors, arrays)``: the fitted attributes of every step (``coef_``, ``intercept_``,
        ``classes_``, a scaler's ``mean_`` and ``scale_``, ...) as arrays and JSON values. An attribute
        with no such form is refused: a checkpoint never holds a pickle."""
        fitted: dict[str, Any] = {}
        arrays: dict[str, np.ndarray] = {}
        for i, step in enumerate(_steps(self.model)):
            values: dict[str, Any] = {}
            for name, value in vars(step).items():
                if not name.endswith("_") or name.startswith("_"):
                    continue
                if isinstance(value, (np.ndarray, np.generic)) and np.asarray(value).dtype.kind in "biufU":
                    arrays[f"sk.{i}.{name}"] = np.asarray(value)
                    values[name] = {"array": f"sk.{i}.{name}", "scalar": isinstance(value, np.generic)}
                elif _plain(value):
                    values[name] = {"value": value}
                else:
                    raise ModelError(f"cannot save the fitted {type(step).__name__}: its attribute {name} "
                                     f"({type(value).__name__}) has no open format (a checkpoint never pickles)")
            fitted[str(i)] = values
        params = [{k: v for k, v in step.get_params(deep=False).items() if _plain(v)}
                  for step in _steps(self.estimator)]
        return {"kind": "sklearn", "n_fits": self.n_fits_, "steps": fitted, "params": params}, {}, arrays

    def import_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor],
                     arrays: dict[str, np.ndarray]) -> None:
        from sklearn.base import clone

        model = clone(self.estimator)
        steps = _steps(model)
        if len(steps) != len(meta["steps"]):
            raise ModelError(f"the model given has {len(steps)} estimator(s), the saved one {len(meta['steps'])}")
        for step, saved in zip(steps, meta.get("params", [{}] * len(steps))):  # the same hyperparameters
            given = step.get_params(deep=False)
            for name, value in saved.items():
                if name not in given or given[name] != value:
                    raise ModelError(f"the model given differs from the saved one: {type(step).__name__}({name}="
                                     f"{given.get(name)!r}), saved {name}={value!r}")
        for i, step in enumerate(steps):
            for name, spec in meta["steps"][str(i)].items():
                if "array" in spec:
                    value = arrays[spec["array"]]
                    setattr(step, name, value[()] if spec["scalar"] else value)
                else:
                    setattr(step, name, spec["value"])
        self.model, self.n_fits_, self.external = model, int(meta["n_fits"]), False


def make_learner(model: Any, *, n_classes: int | None = None, config: TrainConfig | None = None,
                 train_fn: Callable | None = None, head: str | None = None, seed: int = 0,
                 feature_dtype: torch.dtype | None = None) -> TorchLearner | SklearnLearner:
    """The learner for ``model``: a PyTorch ``nn.Module`` ending in a linear layer, or a scikit-learn linear
    classifier with ``predict_proba`` (or a ``Pipeline`` ending in one; ``n_classes`` columns of
    probabilities; ``None``: an estimator already fitted)."""
    check_model(model, train_fn=train_fn)
    if isinstance(model, nn.Module):
        return TorchLearner(model, config, head=head, train_fn=train_fn, seed=seed, feature_dtype=feature_dtype)
    if n_classes is None:
        return SklearnLearner.fitted(model)
    return SklearnLearner(model, n_classes)


def check_model(model: Any, *, train_fn: Callable | None = None) -> None:
    """A model cincer can wrap (see :func:`make_learner`), else a one-line :class:`ModelError`."""
    if isinstance(model, nn.Module):
        if not any(True for _ in model.parameters()):
            raise ModelError("the model has no parameters")
        return
    if hasattr(model, "get_params") and not isinstance(model, type):
        linear_top(model)
        if train_fn is not None:
            raise ModelError("train_fn applies to PyTorch models; a scikit-learn model is trained with fit")
        return
    raise ModelError(f"unsupported model type {type(model).__name__}: pass a torch nn.Module or a "
                     f"scikit-learn linear classifier ({LINEAR_MODELS})")


LINEAR_MODELS = "LogisticRegression, SGDClassifier(loss='log_loss'), or a Pipeline ending in one"


def linear_top(estimator: Any) -> Any:
    """The step of a scikit-learn model that is CINCER's top layer: the estimator itself, or the last step
    of a ``Pipeline`` (whose other steps must transform). Anything else is a :class:`ModelError`."""
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.pipeline import Pipeline

    last = estimator
    if isinstance(estimator, Pipeline):
        steps = estimator.steps
        if not steps:
            raise ModelError("the Pipeline has no steps")
        for name, step in steps[:-1]:
            if step not in (None, "passthrough") and not hasattr(step, "transform"):
                raise ModelError(f"step {name!r} of the Pipeline ({type(step).__name__}) has no transform: every "
                                 "step but the last must transform the features")
        last = steps[-1][1]
    if isinstance(last, SGDClassifier):
        if last.loss != "log_loss":
            raise ModelError(f"SGDClassifier(loss={last.loss!r}) gives no probabilities: CINCER needs "
                             "loss='log_loss' (a logistic top layer)")
    elif not isinstance(last, LogisticRegression):
        raise ModelError(f"unsupported scikit-learn model {type(last).__name__}: CINCER needs a linear top layer "
                         f"with predict_proba ({LINEAR_MODELS}), or a PyTorch model ending in nn.Linear")
    return last


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


def _steps(estimator: Any) -> list[Any]:
    """The estimators of a model with fitted state: a pipeline's steps (not ``passthrough``), or itself."""
    steps = getattr(estimator, "steps", None)
    if steps is None:
        return [estimator]
    return [step for _, step in steps if step not in (None, "passthrough")]


def _plain(value: Any) -> bool:
    """A value JSON keeps as it is: ``None``, a bool, int, float or str, or a list of them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, list) and all(_plain(v) for v in value)
