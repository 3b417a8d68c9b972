"""Inverse-Hessian-vector products: LiSSA and CG converge to the exact solve on a small logreg."""

import torch

from cincer.fisher import per_example_scores
from cincer.influence import InfluenceConfig, conjugate_gradient, exact_hessian, exact_solve, hvp_fn, inverse_hvp, lissa
from cincer.learners import TorchLearner
from cincer.models import TrainConfig, build_model


def trained_logreg():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 5, generator=g, dtype=torch.float64)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long() + (X[:, 2] > 1).long()
    learner = TorchLearner(build_model("logreg", (5,), 3, seed=0), TrainConfig(epochs=30), seed=0).fit(X, y)
    return learner.model, X, y


def test_hvp_matches_dense_hessian():
    model, X, y = trained_logreg()
    H = exact_hessian(model, X, y)
    v = torch.randn(len(H), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hvp = hvp_fn(model, X, y)
    torch.testing.assert_close(hvp(v), H @ v, atol=1e-10, rtol=0)
    torch.testing.assert_close(hvp(2 * v), 2 * H @ v, atol=1e-10, rtol=0)   # the pullback is reusable
    torch.testing.assert_close(hvp_fn(model, X, y, mode="fwd")(v), H @ v, atol=1e-10, rtol=0)
    torch.testing.assert_close(H, H.T, atol=1e-12, rtol=0)


def test_hvp_of_a_channels_last_convnet_matches_double_backward():
    # too many parameters for a dense Hessian: compare with autograd's grad-of-(grad . v) on the module
    model = build_model("convnet", (1, 10, 10), 2, seed=0).eval()
    X = torch.randn(4, 1, 10, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    params = list(model.parameters())
    v = torch.randn(sum(p.numel() for p in params), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss = torch.nn.functional.cross_entropy(model(X), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gv = torch.cat([g.reshape(-1) for g in grads]) @ v
    expected = torch.cat([h.reshape(-1) for h in torch.autograd.grad(gv, params)])
    torch.testing.assert_close(hvp_fn(model, X, y)(v), expected, atol=1e-10, rtol=0)


def test_lissa_and_cg_converge_to_exact_solve():
    model, X, y = trained_logreg()
    H = exact_hessian(model, X, y)
    v = per_example_scores(model, X[:1], y[:1])[0]
    hvp = hvp_fn(model, X, y)
    scale = 2.0 * torch.linalg.eigvalsh(H).max().item()  # keeps the LiSSA recursion contractive
    damping = 0.01
    exact = exact_solve(H, v, damping=damping * scale)
    approx = lissa(hvp, v, damping=damping, depth=3000, scale=scale)
    torch.testing.assert_close(approx, exact, atol=1e-8 * exact.abs().max().item(), rtol=0)
    cg = conjugate_gradient(hvp, v, damping=damping * scale, tol=1e-12)
    torch.testing.assert_close(cg, exact, atol=1e-8 * exact.abs().max().item(), rtol=0)


def test_lissa_error_shrinks_with_depth():
    model, X, y = trained_logreg()
    H = exact_hessian(model, X, y)
    v = per_example_scores(model, X[:1], y[:1])[0]
    exact = exact_solve(H, v, damping=1.0)  # the paper's setting: damping 1, scale 1
    errors = [(inverse_hvp(model, X, y, v, InfluenceConfig(depth=d)) - exact).norm().item() for d in (1, 10, 100)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-6 * exact.norm().item()


def test_exact_and_cg_solvers_agree_through_config():
    model, X, y = trained_logreg()
    v = per_example_scores(model, X[:1], y[:1])[0]
    exact = inverse_hvp(model, X, y, v, InfluenceConfig(solver="exact", damping=0.1))
    cg = inverse_hvp(model, X, y, v, InfluenceConfig(solver="cg", damping=0.1))
    torch.testing.assert_close(cg, exact, atol=1e-7 * exact.abs().max().item(), rtol=0)
