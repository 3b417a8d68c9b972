"""Closed forms and fast solvers of cincer.fisher against autograd and brute force (float64)."""

import pytest
import torch

from cincer import CincerError
from cincer.fisher import (
    ExplicitFisher,
    FisherSolver,
    TopLayerFisher,
    full_fisher,
    per_class_scores,
    per_example_scores,
    top_layer_kernel,
    top_layer_scores,
)
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


def test_per_example_scores_of_a_channels_last_convnet_match_autograd():
    # convnets are built in channels_last memory format (faster on a CPU); the scores must not notice
    model = build_model("convnet", (2, 10, 10), 3, seed=0).eval()
    assert model.body[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    X = torch.randn(5, 2, 10, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(5) % 3
    torch.testing.assert_close(per_example_scores(model, X, y, chunk=2), autograd_scores(model, X, y),
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


# --------------------------------------------------------------------------- fast paths added for speed

from cincer.fisher import (  # noqa: E402
    KroneckerFisherSolver,
    class_blocks,
    head_kernel,
    kron_sum,
    reduced_fisher_blocks,
    sqrt_fisher_blocks,
    sum_free_basis,
)


@pytest.mark.parametrize("n_classes", [2, 3, 10])
def test_reduced_blocks_factor_the_class_covariance_even_with_zero_probabilities(n_classes):
    g = torch.Generator().manual_seed(n_classes)
    P = torch.softmax(3 * torch.randn(6, n_classes, generator=g, dtype=torch.float64), dim=1)
    P[0] = 0.0
    P[0, 1] = 1.0                                   # a one-hot prediction: its block is exactly 0
    Q = sum_free_basis(n_classes)
    torch.testing.assert_close(Q.T @ Q, torch.eye(n_classes - 1, dtype=torch.float64), atol=1e-14, rtol=0)
    torch.testing.assert_close(Q.sum(0), torch.zeros(n_classes - 1, dtype=torch.float64), atol=1e-14, rtol=0)
    R = reduced_fisher_blocks(P, Q)
    L = Q @ R.transpose(1, 2)
    expected = torch.diag_embed(P) - P[:, :, None] * P[:, None, :]
    torch.testing.assert_close(L @ L.transpose(1, 2), expected, atol=TOL, rtol=0)
    full = sqrt_fisher_blocks(P)
    torch.testing.assert_close(full @ full.transpose(1, 2), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("method", ["dense", "gram"])
@pytest.mark.parametrize("damping", [0.0, 0.2])
def test_cholesky_certified_pinv_equals_eigh_and_direct_pinv(method, damping):
    """Well-conditioned FIM: the Cholesky route is taken and agrees with eigh and with torch.linalg.pinv."""
    n, hidden = (40, 4) if method == "dense" else (5, 30)   # dense: d_sub < n(C-1); gram: the opposite
    H, W, b, y = random_top_layer(4, n=n, hidden=hidden, seed=3)
    P = torch.softmax((H @ W.T + b) / 4, dim=1).detach()   # moderately confident: no eigenvalue near the cut-off
    fisher = TopLayerFisher(H, P)
    F = fisher.dense()
    F_inv = (torch.linalg.pinv(F, rtol=1e-10, hermitian=True) if damping == 0
             else torch.linalg.inv(F + damping * torch.eye(fisher.dim, dtype=F.dtype)))
    G = top_layer_scores(H, P, y).reshape(n, -1)
    expected = F_inv @ G[:3].T
    fast = FisherSolver(fisher, damping=damping)
    slow = FisherSolver(fisher, damping=damping, factorization="eigh")
    assert fast.method == method and fast.factorization == "cholesky"
    assert slow.factorization == ("eigh" if damping == 0 else "cholesky")
    scale = expected.abs().max().item()
    torch.testing.assert_close(fast.solve(G[:3].T), expected, atol=TOL * scale, rtol=0)
    torch.testing.assert_close(slow.solve(G[:3].T), expected, atol=TOL * scale, rtol=0)
    torch.testing.assert_close(fast.solve(G[0]), expected[:, 0], atol=TOL * scale, rtol=0)


@pytest.mark.parametrize("method", ["dense", "gram"])
def test_singular_fisher_falls_back_to_eigh_pseudo_inverse(method):
    """Duplicated known examples make the Gram matrix singular; too few make the dense one singular."""
    n, hidden = (3, 6) if method == "dense" else (4, 30)
    H, W, b, y = random_top_layer(3, n=n, hidden=hidden, seed=4)
    if method == "gram":
        H = torch.cat([H, H])                       # Gram matrix of rank <= half its size
    P = torch.softmax(H @ W.T + b, dim=1).detach()
    fisher = TopLayerFisher(H, P)
    solver = FisherSolver(fisher, method=method)
    assert solver.factorization == "eigh"
    g = top_layer_scores(H[:1], P[:1], y[:1])[0].reshape(-1)
    expected = torch.linalg.pinv(fisher.dense(), rtol=1e-10, hermitian=True) @ g
    torch.testing.assert_close(solver.solve(g), expected, atol=TOL * expected.abs().max().item(), rtol=0)


def test_head_kernel_computes_probabilities_on_the_fly():
    H, W, b, y = random_top_layer(5, n=40, hidden=6, seed=5)
    W, b = W.detach(), b.detach()
    P = torch.softmax(H @ W.T + b, dim=1)
    V = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    expected = top_layer_scores(H, P, y).reshape(40, -1) @ V.reshape(-1)
    torch.testing.assert_close(head_kernel(V, H, W, b, y, chunk=9), expected, atol=TOL, rtol=0)
    torch.testing.assert_close(top_layer_kernel(V, H, P, y, chunk=9), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("n_classes", [2, 5])
def test_chunked_fim_equals_the_per_example_kronecker_sum(n_classes):
    """The one-pass accumulation (any chunk size) equals mean_i A_i (x) h~_i h~_i^T built example by example."""
    H, W, b, _ = random_top_layer(n_classes, n=37, hidden=5)
    P = torch.softmax(H @ W.T + b, dim=1).detach()
    Ht = torch.cat([H, torch.ones(len(H), 1, dtype=H.dtype)], dim=1)
    brute = sum(torch.kron(torch.diag(p) - torch.outer(p, p), torch.outer(h, h)) for p, h in zip(P, Ht)) / len(H)
    fisher = TopLayerFisher(H, P)
    Q = fisher.Q
    for max_bytes in (1, 500, 2**26):  # one row per chunk, a few rows, everything at once
        torch.testing.assert_close(kron_sum(class_blocks, H, P, max_bytes=max_bytes), brute, atol=TOL, rtol=0)
        sub = kron_sum(lambda P: Q.T @ class_blocks(P) @ Q, H, P, max_bytes=max_bytes)
        eye = torch.eye(H.shape[1] + 1, dtype=H.dtype)
        lift = (Q[:, None, :, None] * eye[None, :, None, :]).reshape(n_classes * len(eye), -1)  # Q (x) I
        torch.testing.assert_close(lift @ sub @ lift.T, brute, atol=TOL, rtol=0)
    torch.testing.assert_close(fisher.dense(), brute, atol=TOL, rtol=0)


@pytest.mark.parametrize("damping", [0.0, 0.2])
def test_kronecker_solvers_are_exact_when_the_fim_is_a_kronecker_product(damping):
    """With the same p for every example, F = A (x) mean h~h~^T exactly: K-FAC and EK-FAC solve it exactly."""
    H, W, b, y = random_top_layer(4, n=20, hidden=3)
    p = torch.softmax(torch.tensor([0.3, -1.0, 0.5, 0.0], dtype=torch.float64), 0)
    P = p.expand(20, 4).clone()
    F = TopLayerFisher(H, P).dense()
    F_inv = (torch.linalg.pinv(F, rtol=1e-10, hermitian=True) if damping == 0
             else torch.linalg.inv(F + damping * torch.eye(len(F), dtype=F.dtype)))
    V = top_layer_scores(H, P, y).reshape(20, -1).T  # score vectors: in the range of F
    for corrected in (True, False):
        solver = KroneckerFisherSolver(H, P, damping=damping, eigenvalue_corrected=corrected)
        torch.testing.assert_close(solver.solve(V), F_inv @ V, atol=1e-8, rtol=1e-8)


def test_ekfac_scale_is_the_exact_diagonal_in_the_kronecker_eigenbasis():
    H, W, b, _ = random_top_layer(3, n=25, hidden=4)
    P = torch.softmax(H @ W.T + b, dim=1).detach()
    solver = KroneckerFisherSolver(H, P, damping=1e-3)
    U = torch.kron(solver.U_G.contiguous(), solver.U_S.contiguous())
    exact_diag = torch.diagonal(U.T @ TopLayerFisher(H, P).dense() @ U).reshape(3, -1)
    torch.testing.assert_close(1.0 / solver.inv_scale - 1e-3, exact_diag, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_relative_damping_is_a_fraction_of_the_mean_eigenvalue_and_scale_free(n_classes):
    """Brute force: (F + r tr(F)/((C-1)(H+1)) I)^{-1} on the dense F, by both routes; EK-FAC's damping from
    its own diagonal the same way."""
    from cincer.fisher import KroneckerFisherSolver, check_damping

    for n in (3, 30):
        H, W, b, y = random_top_layer(n_classes, n=n, hidden=6)
        P = torch.softmax(H @ W.T + b, dim=1).detach()
        fisher = TopLayerFisher(H, P)
        F = fisher.dense()
        sub_dim = (n_classes - 1) * (H.shape[1] + 1)
        lam = 0.1 * torch.trace(F) / sub_dim
        v = top_layer_scores(H, P, y)[0].reshape(-1)
        expected = torch.linalg.solve(F + lam * torch.eye(len(F), dtype=F.dtype), v)
        for method in ("dense", "gram"):
            solver = FisherSolver(fisher, relative_damping=0.1, method=method)
            assert solver.damping == pytest.approx(lam.item(), rel=1e-10)
            torch.testing.assert_close(solver.solve(v), expected, atol=1e-8 * expected.abs().max().item(), rtol=0)
        kron = KroneckerFisherSolver(H, P, relative_damping=0.1)
        assert kron.damping == pytest.approx((1.0 / kron.inv_scale - kron.damping).sum().item() / sub_dim * 0.1,
                                             rel=1e-8)
    with pytest.raises(CincerError, match="exclude each other"):
        check_damping(0.1, 0.1)
    with pytest.raises(CincerError, match="relative_damping must be >= 0"):
        FisherSolver(fisher, relative_damping=-1.0)


def brute_truncated_pinv(F, v, truncate, mean):
    """``F^+ v`` over the eigendirections of the dense F with eigenvalue >= truncate * mean."""
    vals, vecs = torch.linalg.eigh(F)
    keep = (vals >= truncate * mean) & (vals > 1e-10 * vals.max())
    return vecs[:, keep] @ ((vecs[:, keep].T @ v) / vals[keep])


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("truncate", [0.0, 0.05, 0.3, 1.0])
def test_truncated_pseudo_inverse_matches_the_dense_eigendecomposition(n_classes, truncate):
    """Both routes (parameter space and Gram space, Cholesky shortcut allowed) against eigh of the dense F,
    the mean eigenvalue taken over the directions that can hold F's range: (C-1)(H+1), or n(C-1) when the
    n examples span fewer (n = 3 here); truncate=0 is the pinv."""
    for n in (3, 30):
        H, W, b, y = random_top_layer(n_classes, n=n, hidden=6, seed=n)
        P = torch.softmax(H @ W.T + b, dim=1).detach()
        fisher = TopLayerFisher(H, P)
        F = fisher.dense()
        mean = torch.trace(F) / min((n_classes - 1) * (H.shape[1] + 1), n * (n_classes - 1))
        v = top_layer_scores(H, P, y)[0].reshape(-1)
        expected = brute_truncated_pinv(F, v, truncate, mean)
        for method in ("dense", "gram"):
            solver = FisherSolver(fisher, truncate=truncate, method=method)
            torch.testing.assert_close(solver.solve(v), expected, atol=1e-7 * expected.abs().max().item(), rtol=0)
        if truncate == 0:
            torch.testing.assert_close(expected, torch.linalg.pinv(F, rtol=1e-10, hermitian=True) @ v,
                                       atol=1e-7 * expected.abs().max().item(), rtol=0)


def test_truncation_is_scale_free_and_excludes_damping():
    """Scaling the scores by c scales F by c^2: the same directions are kept and the solve scales by 1/c^2."""
    from cincer.fisher import check_damping, resolve_truncate

    g = torch.Generator().manual_seed(3)
    U = torch.randn(20, 8, generator=g, dtype=torch.float64) * torch.logspace(0, -4, 8, dtype=torch.float64)
    v = torch.randn(20, generator=g, dtype=torch.float64)
    for method in ("dense", "gram"):
        base = FisherSolver(ExplicitFisher(U, 8), truncate=0.1, method=method).solve(v)
        scaled = FisherSolver(ExplicitFisher(1e3 * U, 8), truncate=0.1, method=method).solve(v)
        torch.testing.assert_close(scaled * 1e6, base, atol=1e-8 * base.abs().max().item(), rtol=0)
    full = FisherSolver(ExplicitFisher(U, 8), method="dense").solve(v)
    assert (full - base).abs().max() > 1e-3 * full.abs().max()  # truncation dropped something here
    with pytest.raises(CincerError, match="truncate applies to the pseudo-inverse"):
        check_damping(1.0, 0.0, 0.1)
    with pytest.raises(CincerError, match="truncate must be >= 0"):
        FisherSolver(ExplicitFisher(U, 8), truncate=-0.1)
    assert resolve_truncate(None, 0.0, 0.0) > 0 and resolve_truncate(None, 1.0, 0.0) == 0
    assert resolve_truncate(None, 0.0, 1.0) == 0 and resolve_truncate(0.0, 0.0, 0.0) == 0


def test_ekfac_truncation_keeps_the_diagonal_above_a_fraction_of_its_mean():
    from cincer.fisher import KroneckerFisherSolver

    H, W, b, _ = random_top_layer(3, n=25, hidden=4)
    P = torch.softmax(H @ W.T + b, dim=1).detach()
    scale = 1.0 / KroneckerFisherSolver(H, P, damping=1e-3).inv_scale - 1e-3
    mean = scale.sum() / (2 * 5)  # (C-1)(H+1) = 10 directions, fewer than the n(C-1) = 50 the data span
    keep = (scale >= 0.5 * mean) & (scale > 1e-10 * scale.max())
    expected = torch.where(keep, 1.0 / scale, torch.zeros_like(scale))
    torch.testing.assert_close(KroneckerFisherSolver(H, P, truncate=0.5).inv_scale, expected, atol=0, rtol=1e-6)
    assert 0 < int(keep.sum()) < int((scale > 1e-10 * scale.max()).sum())
