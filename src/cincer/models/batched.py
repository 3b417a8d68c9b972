"""Training several models of one architecture together, as one batched model.

The simulated protocol retrains every repeat's model from its initial weights every round; the repeats and
methods of an experiment do the same work on tiny batches, so most of the time goes to per-step overhead.
:func:`train_together` stacks the members' parameters (``torch.func.stack_module_state``) and takes each
optimisation step for all of them at once: one forward and backward (each ``nn.Linear`` a batched matrix
product, each ``nn.Conv2d`` a grouped convolution; other layers through ``torch.func.vmap``) and one Adam
update on the stacked tensors. Each member keeps what :func:`cincer.models.train` would give it alone: its own
data, its batch order and dropout masks (drawn from its seed in the same order), its own Adam state and step
count (a member with fewer batches in an epoch skips the remaining steps). The weights agree with training
alone to float tolerance (in float32 Adam amplifies rounding on near-zero gradients: equivalent, not equal).

:class:`Lockstep` lets unchanged sequential code use it: each job (one repeat) runs in its own thread,
one at a time, and its learner's ``train_fn`` hands the model over and waits; when every unfinished job is
waiting, the batch trains and the jobs resume in order. Execution stays deterministic and sequential: only
the training is shared.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.optim.adam import adam

from ..errors import CincerError
from .train import TrainConfig, batch_bounds, has_batchnorm

T = TypeVar("T")
BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as cincer.models.train uses them


@dataclass
class Member:
    """One model to train on ``(X, y)`` from its current weights; ``seed`` draws its batch order and
    dropout masks exactly as :func:`cincer.models.train` does with that seed."""

    model: nn.Module
    X: torch.Tensor
    y: torch.Tensor
    seed: int


class _MaskDropout(nn.Module):
    """``nn.Dropout`` with its mask given (a buffer the vmapped call fills per member and step)."""

    mask: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", torch.empty(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


def check_batchable(model: nn.Module) -> None:
    """Batched training handles any architecture whose training-mode randomness is ``nn.Dropout``
    and that has no batch statistics; anything else is a one-line :class:`CincerError`."""
    if has_batchnorm(model):
        raise CincerError("batched training does not support BatchNorm (its batch statistics are per member)")
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and type(module) is not nn.Dropout:
            raise CincerError(f"batched training supports nn.Dropout only, not {type(module).__name__} ({name})")


def train_together(members: Sequence[Member], config: TrainConfig) -> None:
    """Train every member in place (from its current weights) for ``config.epochs`` epochs of Adam, as
    :func:`cincer.models.train` would one by one. All members share one architecture and device."""
    if not members:
        return
    first, M = members[0].model, len(members)
    check_batchable(first)
    dropouts = _dropout_layers(first, members[0].X[:1])
    params = {k: v.detach().requires_grad_() for k, v in stack_module_state([m.model for m in members])[0].items()}
    forward = stacked_forward(first, params) or vmapped_forward(first, [m.model for m in members], dropouts)
    optimizer = _StackedAdam(params, M, config.lr)
    orders = [torch.Generator().manual_seed(m.seed) for m in members]  # as cincer.models.train draws them
    masks = [torch.Generator().manual_seed(m.seed) for m in members]
    bounds = [batch_bounds(len(m.y), config.batch_size) for m in members]
    steps = max(len(b) for b in bounds)
    width = max((end - start for b in bounds for start, end in b), default=0)
    if steps == 0:  # no member has a row: nothing to train, as cincer.models.train
        return
    X0, device, dtype = members[0].X, members[0].X.device, members[0].X.dtype
    n_max = max(len(m.y) for m in members)
    X = X0.new_zeros((M, n_max, *X0.shape[1:]))  # every member's rows, padded to the longest
    y = torch.zeros((M, n_max), dtype=torch.long, device=device)
    for i, m in enumerate(members):
        X[i, :len(m.y)], y[i, :len(m.y)] = m.X, m.y.to(device)
    rows = torch.arange(M, device=device)[:, None]
    sizes = torch.zeros((M, steps), dtype=dtype)
    for i, b in enumerate(bounds):
        sizes[i, :len(b)] = torch.tensor([end - start for start, end in b], dtype=dtype)
    active = (sizes > 0).to(device)
    real = torch.arange(width) < sizes[..., None]  # padding rows weigh nothing
    weight = (real.to(dtype) / sizes.clamp_min(1)[..., None]).to(device)
    # each epoch's dropout masks, drawn in place; a member's slots are in the order cincer.models.train draws
    # them (each step's masks in forward order; nn.Dropout draws nothing for p = 0 or 1)
    keep = {name: torch.full((M, steps, width, *shape), float(p < 1), dtype=dtype) for name, (shape, p) in dropouts}
    slots = [[(keep[name][i, step, :end - start], 1 - p) for step, (start, end) in enumerate(b)
              for name, (_, p) in dropouts if 0 < p < 1] for i, b in enumerate(bounds)]
    for _ in range(config.epochs):
        # the epoch's batches: a member's batches are consecutive slices of its permutation (drawn first, as
        # cincer.models.train draws it), so the permutation fills its padded rows
        index = torch.zeros((M, steps * width), dtype=torch.long)
        for i, m in enumerate(members):
            index[i, :len(m.y)] = torch.randperm(len(m.y), generator=orders[i])
            for slot, p_keep in slots[i]:
                slot.bernoulli_(p_keep, generator=masks[i])
        batches = index.view(M, steps, width).to(device)
        drop = {name: (keep[name] / (1 - p) if p < 1 else keep[name]).to(device) for name, (_, p) in dropouts}
        for step in range(steps):
            batch = batches[:, step]
            logits = forward(params, X[rows, batch], {k: v[:, step] for k, v in drop.items()})
            losses = nn.functional.cross_entropy(logits.flatten(0, 1), y[rows, batch].flatten(), reduction="none")
            for p in params.values():
                p.grad = None
            (losses.view(M, width) * weight[:, step]).sum().backward()  # each member's mean loss over its batch
            optimizer.step({k: p.grad for k, p in params.items()}, active[:, step])
    with torch.no_grad():
        for i, m in enumerate(members):
            for name, w in m.model.named_parameters():
                w.copy_(params[name][i])


Forward = Callable[[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]
# parameter-free layers that act on each example alone: applied to all members' batches at once
PER_EXAMPLE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Identity, nn.Flatten,
               nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)


def stacked_forward(model: nn.Module, params: dict[str, torch.Tensor]) -> Forward | None:
    """``(params, x, masks) -> logits`` of all members at once (``x``: members x batch x ...): each
    ``nn.Linear`` as one batched matrix product, each ``nn.Conv2d`` as one grouped convolution, per-example
    layers on the merged batch, dropout as the given masks. ``None`` when the model has a layer this does not
    cover (then :func:`vmapped_forward` serves it)."""
    from .nets import Classifier, OuterProduct

    def build(module: nn.Module, prefix: str) -> Forward | None:
        if type(module) is nn.Sequential:
            parts = [build(child, f"{prefix}{name}.") for name, child in module.named_children()]
            if any(part is None for part in parts):
                return None
            return lambda P, x, D: _chain(parts, P, x, D)  # type: ignore[arg-type]
        if type(module) is Classifier:
            body, head = build(module.body, f"{prefix}body."), build(module.head, f"{prefix}head.")
            if body is None or head is None:
                return None
            return lambda P, x, D: head(P, body(P, x, D), D)
        if type(module) is nn.Linear:
            return _linear(prefix, module.bias is not None)
        if type(module) is nn.Conv2d and module.padding_mode == "zeros" and isinstance(module.padding, tuple):
            return _conv2d(prefix, module)
        if type(module) is nn.Dropout:
            name = prefix[:-1]
            return lambda P, x, D: x * D[name]
        if isinstance(module, nn.Flatten) and module.start_dim != 1:  # would merge examples
            return None
        if isinstance(module, (*PER_EXAMPLE, OuterProduct)) and not any(True for _ in module.parameters()):
            return lambda P, x, D: module(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return None

    forward = build(model, "")
    return forward if forward is not None and set(params) == {n for n, _ in model.named_parameters()} else None


def _chain(parts: list[Forward], P: dict, x: torch.Tensor, D: dict) -> torch.Tensor:
    for part in parts:
        x = part(P, x, D)
    return x


def _linear(prefix: str, bias: bool) -> Forward:
    def forward(P: dict, x: torch.Tensor, D: dict) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        w = P[f"{prefix}weight"].transpose(1, 2)
        out = torch.baddbmm(P[f"{prefix}bias"][:, None, :], flat, w) if bias else torch.bmm(flat, w)
        return out.reshape(*x.shape[:-1], out.shape[-1])
    return forward


def _conv2d(prefix: str, conv: nn.Conv2d) -> Forward:
    def forward(P: dict, x: torch.Tensor, D: dict) -> torch.Tensor:
        M, B = x.shape[:2]
        w = P[f"{prefix}weight"]
        b = P.get(f"{prefix}bias")
        merged = x.transpose(0, 1).reshape(B, M * x.shape[2], *x.shape[3:])  # members as channel groups
        out = nn.functional.conv2d(merged, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1),
                                   conv.stride, conv.padding, conv.dilation, conv.groups * M)
        return out.reshape(B, M, -1, *out.shape[2:]).transpose(0, 1)
    return forward


def vmapped_forward(model: nn.Module, models: list[nn.Module],
                    dropouts: list[tuple[str, tuple[tuple[int, ...], float]]]) -> Forward:
    """The generic route: ``torch.func.functional_call`` of one stateless copy, vmapped over the members
    (their buffers stacked), with each ``nn.Dropout`` replaced by the given masks."""
    stateless = copy.deepcopy(model).to("meta")
    for name, _ in dropouts:
        stateless.set_submodule(name, _MaskDropout())
    buffers = stack_module_state(models)[1]
    call = vmap(lambda p, b, x: functional_call(stateless, (p, b), (x,)))
    return lambda P, x, D: call(P, {**buffers, **{f"{k}.mask": v for k, v in D.items()}}, x)


def _dropout_layers(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[tuple[int, ...], float]]]:
    """The ``nn.Dropout`` layers in the order a forward pass runs them, with their per-example input shape."""
    names = {id(module): name for name, module in model.named_modules()}
    seen: list[tuple[str, tuple[tuple[int, ...], float]]] = []
    handles = [module.register_forward_hook(
        lambda mod, inp, out: seen.append((names[id(mod)], (tuple(inp[0].shape[1:]), float(mod.p)))))
        for module in model.modules() if isinstance(module, nn.Dropout)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if len({name for name, _ in seen}) != len(seen):
        raise CincerError("batched training needs each dropout layer to run once per forward pass")
    return seen


class _StackedAdam:
    """Adam on stacked parameters (member first), with a step count per member: a member inactive at a
    step keeps its parameters and moments. The update is torch.optim.Adam's: its fused kernel when every
    member steps (equal to the step-by-step update to rounding), term for term otherwise."""

    def __init__(self, params: dict[str, torch.Tensor], n: int, lr: float) -> None:
        self.params, self.lr = params, lr
        self.exp_avg = {k: torch.zeros_like(v) for k, v in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in params.items()}
        self.steps = torch.zeros(n, dtype=torch.float64)

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor | None], active: torch.Tensor) -> None:
        beta1, beta2 = BETAS
        self.steps += active.to(self.steps.device, self.steps.dtype)
        grads_or_zeros = {name: _gradient(grads[name], p) for name, p in self.params.items()}
        if bool(active.all()) and bool((self.steps == self.steps[0]).all()):  # the usual case: one fused kernel
            state_steps = [p.new_full((), float(self.steps[0]) - 1, dtype=torch.float32)  # adam adds the step
                           for p in self.params.values()]
            adam(list(self.params.values()), list(grads_or_zeros.values()), list(self.exp_avg.values()),
                 list(self.exp_avg_sq.values()), [], state_steps, fused=True, amsgrad=False, beta1=beta1,
                 beta2=beta2, lr=self.lr, weight_decay=0.0, eps=EPS, maximize=False)
            return
        steps = self.steps.clamp_min(1)
        bias1, bias2 = 1 - beta1 ** steps, 1 - beta2 ** steps
        for name, p in self.params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            on = active.reshape(shape)
            g = grads_or_zeros[name]
            exp_avg = torch.where(on, self.exp_avg[name].lerp(g, 1 - beta1), self.exp_avg[name])
            exp_avg_sq = torch.where(on, (self.exp_avg_sq[name] * beta2).addcmul_(g, g, value=1 - beta2),
                                     self.exp_avg_sq[name])
            step_size = (self.lr / bias1).to(p.device, p.dtype).reshape(shape)
            denom = exp_avg_sq.sqrt() / bias2.sqrt().to(p.device, p.dtype).reshape(shape) + EPS
            p.copy_(torch.where(on, p + (-step_size * exp_avg) / denom, p))
            self.exp_avg[name], self.exp_avg_sq[name] = exp_avg, exp_avg_sq


def _gradient(g: torch.Tensor | None, p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p) if g is None else g  # None: the loss does not depend on p


class Lockstep:
    """Runs jobs that each train models now and then, sharing their training: each job gets a
    ``train_fn(model, X, y)`` for :class:`cincer.learners.TorchLearner` (which calls it after resetting the
    weights and seeding PyTorch with the fit's seed); when every unfinished job waits in it, the waiting
    models train together (:func:`train_together`). Jobs run one at a time, in order, in their own threads,
    so the run is as deterministic as running them one after another."""

    def __init__(self, config: TrainConfig) -> None:
        if config.warm_start:
            raise CincerError("batched training retrains from the initial weights: it excludes warm_start")
        self.config = config
        self._cond = threading.Condition()
        self._turn: int | None = None
        self._alive: list[int] = []
        self._waiting: dict[int, Member] = {}
        self._error: Exception | None = None
        self.batches: list[int] = []  # members per batched training, for reports and tests

    def run(self, jobs: Sequence[Callable[[Callable], T]]) -> list[T]:
        """``job(train_fn)`` for every job; their results in order, or the first job's error."""
        results: list[Any] = [None] * len(jobs)
        errors: list[tuple[int, BaseException]] = []
        self._alive = list(range(len(jobs)))
        threads_per_op = torch.get_num_threads()

        def body(i: int) -> None:
            torch.set_num_threads(threads_per_op)  # OpenMP's setting is per thread: keep the caller's
            with self._cond:
                self._cond.wait_for(lambda: self._turn == i)
            try:
                results[i] = jobs[i](self._train_fn(i))
            except BaseException as err:  # the others still finish; the first error is raised below
                errors.append((i, err))
            finally:
                with self._cond:
                    self._alive.remove(i)
                    self._pass_turn()
        threads = [threading.Thread(target=body, args=(i,), name=f"lockstep-{i}", daemon=True)
                   for i in range(len(jobs))]
        for thread in threads:
            thread.start()
        with self._cond:
            self._turn = self._alive[0] if self._alive else None
            self._cond.notify_all()
        for thread in threads:
            thread.join()
        if errors:
            raise min(errors, key=lambda e: e[0])[1]
        return results

    def _train_fn(self, i: int) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], None]:
        def train_fn(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> None:
            member = Member(model, X, y, torch.initial_seed())  # TorchLearner.fit seeded this fit
            with self._cond:
                self._waiting[i] = member
                self._pass_turn()
                self._cond.wait_for(lambda: self._turn == i and i not in self._waiting)
                if self._error is not None:  # the batch this model was in failed: every job stops
                    raise self._error
        return train_fn

    def _pass_turn(self) -> None:
        """Hand the turn to the next unfinished job that is not waiting; if all wait, train them first.
        Called with the lock held."""
        ready = [j for j in self._alive if j not in self._waiting]
        if not ready and self._waiting:
            waiting = [self._waiting[j] for j in sorted(self._waiting)]
            self.batches.append(len(waiting))
            if self._error is None:
                try:
                    train_together(waiting, self.config)
                except Exception as err:  # raised by each waiting job's train_fn, not here
                    self._error = err
            self._waiting.clear()
            ready = list(self._alive)
        self._turn = ready[0] if ready else None
        self._cond.notify_all()
