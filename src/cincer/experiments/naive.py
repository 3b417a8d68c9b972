"""Naive baselines: each formula the way the paper's code computed it, one autograd call per candidate.

They are slow on purpose: :mod:`cincer.experiments.bench` times them against the fast paths of
:mod:`cincer.fisher` / :mod:`cincer.select` in the same run, and the tests check both agree.
"""

from __future__ import annotations

import torch

from ..influence import InfluenceConfig


def head_params(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return weight.detach().clone().requires_grad_(True), bias.detach().clone().requires_grad_(True)


def naive_top_score(weight: torch.Tensor, bias: torch.Tensor, h: torch.Tensor, label: int) -> torch.Tensor:
    """``grad log P(label | h)`` over the head by autograd, flattened like :func:`top_layer_scores`."""
    logp = torch.log_softmax(h @ weight.T + bias, dim=0)[label]
    gW, gb = torch.autograd.grad(logp, (weight, bias))
    return torch.cat([gW, gb[:, None]], dim=1).reshape(-1)


def naive_top_fisher_vector(weight: torch.Tensor, bias: torch.Tensor, H_known: torch.Tensor,
                            h_t: torch.Tensor, y_t: int, *, rtol: float = 1e-10) -> torch.Tensor:
    """The paper's way to get ``F^+ g_t``: dense FIM from autograd scores of every (example, class),
    then ``pinv``."""
    W, b = head_params(weight, bias)
    F = naive_dense_fim(W, b, H_known)
    return torch.linalg.pinv(F, rtol=rtol, hermitian=True) @ naive_top_score(W, b, h_t, y_t)


def naive_top_kernel(weight: torch.Tensor, bias: torch.Tensor, v: torch.Tensor, H: torch.Tensor,
                     y: torch.Tensor) -> torch.Tensor:
    """``g_k^T v`` by one autograd call per candidate."""
    W, b = head_params(weight, bias)
    return torch.stack([naive_top_score(W, b, h, int(label)) @ v for h, label in zip(H, y)])


def naive_scores_dot(model: torch.nn.Module, v: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``g_k^T v`` over all parameters, one ``torch.autograd.grad`` per candidate."""
    model.eval()
    params = list(model.parameters())
    out = []
    for x, label in zip(X, y):
        logp = torch.log_softmax(model(x[None])[0], dim=0)[label]
        out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(logp, params)]) @ v)
    return torch.stack(out) if out else v.new_zeros(0)


def naive_score(model: torch.nn.Module, x: torch.Tensor, label: int) -> torch.Tensor:
    model.eval()
    logp = torch.log_softmax(model(x[None])[0], dim=0)[label]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(logp, list(model.parameters()))])


def naive_lissa(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, v: torch.Tensor,
                config: InfluenceConfig) -> torch.Tensor:
    """LiSSA with Hessian-vector products by double backward (``create_graph=True``), as in Koh & Liang."""
    model.eval()
    params = list(model.parameters())

    def hvp(vec: torch.Tensor) -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(model(X), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        return torch.cat([h.reshape(-1) for h in torch.autograd.grad(flat @ vec, params)])

    estimates = []
    for _ in range(config.samples):
        h = v.clone()
        for _ in range(config.depth):
            h = v + (1.0 - config.damping) * h - hvp(h) / config.scale
        estimates.append(h / config.scale)
    return torch.stack(estimates).mean(0)


def naive_dense_fim(W: torch.Tensor, b: torch.Tensor, H_known: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        P = torch.softmax(H_known @ W.T + b, dim=1)
    d = W.numel() + b.numel()
    F = torch.zeros(d, d, dtype=H_known.dtype)
    for i, h in enumerate(H_known):
        for c in range(P.shape[1]):
            s = naive_top_score(W, b, h, c)
            F += P[i, c] * torch.outer(s, s)
    return F / len(H_known)
