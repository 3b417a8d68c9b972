"""Closed forms and fast solvers of cincer.fisher against autograd and brute force (float64)."""

import numpy as np
import pytest
import torch
from torch.func import functional_call

from cincer.fisher import (ExplicitFisher, FisherSolver, TopLayerFisher, full_fisher, per_class_scores,
                           per_example_scores, top_layer_kernel, top_layer_scores)
from cincer.models import build_model

TOL = 1e-8


def random_top_layer(n_classes, n=12, hidden=5, seed=0):
    """Penultimate features, a random head and the autograd score of every example."""
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(n, hidden, generator=g, dtype=torch.float64)
    W = torch.randn(n_classes, hidden, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n_classes, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(n_classes, (n,), generator=g)
    return H, W, b, y


def autograd_top_scores(H, W, b, y, labels=None):
    out = []
    for i in range(len(H)):
        label = y[i] if labels is None else labels
        logp = torch.log_softmax(H[i] @ W.T + b, dim=0)[label]
        gW, gb = torch.autograd.grad(logp, (W, b))
        out.append(torch.cat([gW, gb[:, None]], dim=1).reshape(-1))
    return torch.stack(out)


@pytest.mark.parametrize("n_classes", [2, 3, 7])
def test_top_layer_scores_match_autograd(n_classes):
    H, W, b, y = random_top_layer(n_classes)
    P = torch.softmax(H @ W.T + b, dim=1).detach()
    closed = top_layer_scores(H, P, y).reshape(len(H), -1)
    torch.testing.assert_close(closed, autograd_top_scores(H, W, b, y), atol=TOL, rtol=0)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_top_layer_fim_matches_expectation_over_model_labels(n_classes):
    H, W, b, y = random_top_layer(n_classes)
    P = torch.softmax(H @ W.T + b, dim=1).detach()
    # brute force: F = mean_i sum_c p_ic g_ic g_ic^T with autograd scores for every class
    F = sum(P[i, c] * torch.outer(s, s)
            for c in range(n_classes)
            for i, s in enumerate(autograd_top_scores(H, W, b, y, labels=c))) / len(H)
    torch.testing.assert_close(TopLayerFisher(H, P).dense(), F, atol=TOL, rtol=0)


@pytest.mark.parametrize("n_classes", [2, 5])
@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_fisher_kernel_dense_and_gram_routes_match_pinv(n_classes, damping):
    """Wide and narrow factors: the Gram (Woodbury) route equals the dense pseudo-inverse/solve."""
    for n in (3, 30):  # n * C below and above the number of top-layer parameters
        H, W, b, y = random_top_layer(n_classes, n=n, hidden=6)
        P = torch.softmax(H @ W.T + b, dim=1).detach()
        fisher = TopLayerFisher(H, P)
        F = fisher.dense()
        d = fisher.dim
        F_inv = (torch.linalg.pinv(F, rtol=1e-10, hermitian=True) if damping == 0
                 else torch.linalg.inv(F + damping * torch.eye(d, dtype=F.dtype)))
        G = top_layer_scores(H, P, y)
        expected = G[0].reshape(-1) @ F_inv @ G.reshape(n, -1).T
        for method in ("dense", "gram"):
            V = FisherSolver(fisher, damping=damping, method=method).solve(G[0].reshape(-1))
            got = top_layer_kernel(V.reshape(G[0].shape), H, P, y, chunk=4)
            torch.testing.assert_close(got, expected, atol=TOL * max(1.0, expected.abs().max().item()), rtol=0)


def test_top_layer_kernel_batches_queries_and_chunks():
    H, W, b, y = random_top_layer(3, n=50)
    P = torch.softmax(H @ W.T + b, dim=1).detach()
    G = top_layer_scores(H, P, y)
    V = torch.randn(4, *G.shape[1:], dtype=torch.float64)
    expected = torch.einsum("qca,nca->qn", V, G)
    torch.testing.assert_close(top_layer_kernel(V, H, P, y, chunk=7), expected, atol=TOL, rtol=0)
    torch.testing.assert_close(top_layer_kernel(V[1], H, P, y), expected[1], atol=TOL, rtol=0)


def small_net(seed=0, n_classes=3):
    model = build_model("fullnet", (4,), n_classes, seed=seed)
    X = torch.randn(9, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = torch.arange(9) % n_classes
    return model.eval(), X, y


def autograd_scores(model, X, y):
    rows = []
    for x, label in zip(X, y):
        logp = torch.log_softmax(model(x[None])[0], dim=0)[label]
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(logp, list(model.parameters()))]))
    return torch.stack(rows)


def test_per_example_scores_match_autograd():
    model, X, y = small_net()
    torch.testing.assert_close(per_example_scores(model, X, y, chunk=4), autograd_scores(model, X, y),
                               atol=TOL, rtol=0)


def test_full_fisher_matches_brute_force_and_top_block():
    model, X, y = small_net(n_classes=3)
    probs = torch.softmax(model(X), dim=1).detach()
    F = sum(probs[i, c] * torch.outer(s, s)
            for c in range(3) for i, s in enumerate(autograd_scores(model, X, torch.full((len(X),), c))))
    F = F / len(X)
    fisher = full_fisher(model, X)
    torch.testing.assert_close(fisher.dense(), F, atol=TOL, rtol=0)
    # the last-layer block of the full FIM is the top-layer FIM (head weights then bias, reordered)
    H = model.features(X).detach()
    top = TopLayerFisher(H, probs).dense()
    n_head = model.head.weight.numel() + model.head.bias.numel()
    block = F[-n_head:, -n_head:]
    C, A = 3, H.shape[1] + 1
    order = torch.tensor([c * (A - 1) + a if a < A - 1 else C * (A - 1) + c for c in range(C) for a in range(A)])
    torch.testing.assert_close(block[order][:, order], top, atol=TOL, rtol=0)


def test_explicit_fisher_solver_routes_agree():
    model, X, y = small_net()
    fisher = full_fisher(model, X)
    v = per_example_scores(model, X[:1], y[:1])[0]
    dense = FisherSolver(fisher, method="dense").solve(v)
    gram = FisherSolver(fisher, method="gram").solve(v)
    torch.testing.assert_close(gram, dense, atol=1e-7 * dense.abs().max().item(), rtol=0)
    assert isinstance(fisher, ExplicitFisher)


def test_per_class_scores_shape_and_probs():
    model, X, _ = small_net()
    scores, probs = per_class_scores(model, X, chunk=4)
    assert scores.shape == (len(X), 3, sum(p.numel() for p in model.parameters()))
    torch.testing.assert_close(probs.sum(1), torch.ones(len(X), dtype=torch.float64))
