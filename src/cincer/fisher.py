"""Score vectors, Fisher information matrices and Fisher kernels.

Notation (CINCER.md): the score of an example is ``g = grad_theta log P(y | x; theta)``; the Fisher
kernel is ``K(t, k) = g_t^T F^{-1} g_k``. Every FIM here has the form ``F = U U^T / n`` with a known
factor ``U`` (one column per example and class, weighted by ``sqrt(p)``), so the same
:class:`FisherSolver` inverts it either densely (``d x d``) or in the ``m x m`` Gram space of ``U``,
whichever is smaller, with the pseudo-inverse (paper) or a damped inverse (Woodbury).

Top layer (logits ``z = W h + b``), closed form, no autograd:
``g = (e_y - p) (x) [h; 1]`` and ``F = mean_i (diag p_i - p_i p_i^T) (x) h~_i h~_i^T``.
Top-layer vectors are stored as ``(C, H + 1)`` matrices ``[dW | db]`` (flattened row-major).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

DEFAULT_RTOL = 1e-10  # eigenvalues below rtol * largest are treated as zero by the pseudo-inverse
DEFAULT_CHUNK = 65536


# --------------------------------------------------------------------------- top layer, closed form

def augment(H: torch.Tensor) -> torch.Tensor:
    """``[h; 1]``: the bias is a weight on a constant feature."""
    return torch.cat([H, H.new_ones(len(H), 1)], dim=1)


def residuals(P: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``e_y - p`` for each row: the gradient of log P(y|x) with respect to the logits."""
    R = -P.clone()
    R[torch.arange(len(y)), y] += 1.0
    return R


def top_layer_scores(H: torch.Tensor, P: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Score vectors of the last linear layer, shape ``(n, C, H + 1)``."""
    return residuals(P, y)[:, :, None] * augment(H)[:, None, :]


def top_layer_kernel(V: torch.Tensor, H: torch.Tensor, P: torch.Tensor, y: torch.Tensor,
                     *, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """``<V, g_k>`` for every row k of ``(H, P, y)`` without forming the ``g_k``.

    ``V`` is ``(C, H + 1)`` (one query) or ``(q, C, H + 1)`` (q queries, result ``(q, N)``).
    ``<V, (e_y - p) (x) h~> = (e_y - p)^T V h~``: two small matrix products per chunk, so memory
    stays at one chunk of ``(N, C)`` whatever the number of candidates.
    """
    single = V.dim() == 2
    Vq = V[None] if single else V
    q, C, A = Vq.shape
    W, b = Vq[:, :, :-1].reshape(q * C, A - 1), Vq[:, :, -1].reshape(q * C)
    out = []
    for start in range(0, len(H), chunk):
        Hc, Pc, yc = H[start:start + chunk], P[start:start + chunk], y[start:start + chunk]
        Z = (Hc @ W.T + b).view(len(Hc), q, C)           # V h~ for every (candidate, query)
        picked = Z[torch.arange(len(Hc)), :, yc]           # (n, q): (e_y)^T V h~
        expected = torch.einsum("nqc,nc->nq", Z, Pc)       # p^T V h~
        out.append(picked - expected)
    K = torch.cat(out).T if out else H.new_zeros(q, 0)
    return K[0] if single else K


def sqrt_fisher_blocks(P: torch.Tensor) -> torch.Tensor:
    """``L_i`` with ``L_i L_i^T = diag(p_i) - p_i p_i^T``: ``L = diag(sqrt p) - p sqrt(p)^T`` (uses sum p = 1)."""
    s = P.clamp_min(0).sqrt()
    return torch.diag_embed(s) - P[:, :, None] * s[:, None, :]


class FisherFactor(Protocol):
    """``F = U U^T / n`` given through ``U``'s actions; ``U`` is ``dim x rank_bound``."""

    n: int
    dim: int
    rank_bound: int

    def rmatvec(self, v: torch.Tensor) -> torch.Tensor: ...  # U^T v, v of shape (dim,) or (dim, q)
    def matvec(self, w: torch.Tensor) -> torch.Tensor: ...  # U w
    def gram(self) -> torch.Tensor: ...  # U^T U
    def dense(self) -> torch.Tensor: ...  # F itself


class TopLayerFisher:
    """The true FIM of the last linear layer, in factored (Kronecker-sum) form; nothing ``d x d`` is built
    unless the dense route is the cheaper one."""

    def __init__(self, H: torch.Tensor, P: torch.Tensor) -> None:
        self.Ht = augment(H)                 # (n, A)
        self.L = sqrt_fisher_blocks(P)       # (n, C, C)
        self.n, self.A = self.Ht.shape
        self.C = P.shape[1]
        self.dim = self.C * self.A
        self.rank_bound = self.n * self.C

    def rmatvec(self, v: torch.Tensor) -> torch.Tensor:
        Z = torch.einsum("na,caq->ncq", self.Ht, v.reshape(self.C, self.A, -1))  # V h~_i
        out = torch.einsum("nec,neq->ncq", self.L, Z).reshape(self.rank_bound, -1)  # L_i^T V h~_i
        return out[:, 0] if v.dim() == 1 else out

    def matvec(self, w: torch.Tensor) -> torch.Tensor:
        Wq = w.reshape(self.n, self.C, -1)
        LW = torch.einsum("nce,neq->ncq", self.L, Wq)          # L_i w_i
        out = torch.einsum("ncq,na->caq", LW, self.Ht).reshape(self.dim, -1)
        return out[:, 0] if w.dim() == 1 else out

    def gram(self) -> torch.Tensor:
        LL = torch.einsum("iec,jed->icjd", self.L, self.L)
        K = self.Ht @ self.Ht.T
        return (LL * K[:, None, :, None]).reshape(self.rank_bound, self.rank_bound)

    def dense(self) -> torch.Tensor:
        A = self.L @ self.L.transpose(1, 2)                                   # diag p - p p^T
        outer = (self.Ht[:, :, None] * self.Ht[:, None, :]).reshape(self.n, -1)
        F = (A.reshape(self.n, -1).T @ outer).reshape(self.C, self.C, self.A, self.A)
        return F.permute(0, 2, 1, 3).reshape(self.dim, self.dim) / self.n


class ExplicitFisher:
    """A FIM whose factor ``U`` (``dim x m``) is held as a matrix, e.g. full-network per-class scores."""

    def __init__(self, U: torch.Tensor, n: int) -> None:
        self.U, self.n = U, n
        self.dim, self.rank_bound = U.shape

    def rmatvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.U.T @ v

    def matvec(self, w: torch.Tensor) -> torch.Tensor:
        return self.U @ w

    def gram(self) -> torch.Tensor:
        return self.U.T @ self.U

    def dense(self) -> torch.Tensor:
        return self.U @ self.U.T / self.n


class FisherSolver:
    """Applies ``F^+`` (``damping == 0``, the paper's pseudo-inverse) or ``(F + damping I)^{-1}``.

    Factorises once (an eigendecomposition, or a Cholesky for the damped case) in whichever space is
    smaller: the parameters (``d x d``) or the Gram matrix of the factor (``m x m``, Woodbury).
    """

    def __init__(self, factor: FisherFactor, *, damping: float = 0.0, rtol: float = DEFAULT_RTOL,
                 method: str = "auto") -> None:
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        self.factor, self.damping, self.rtol = factor, damping, rtol
        self.method = ("dense" if factor.dim <= factor.rank_bound else "gram") if method == "auto" else method
        if self.method == "dense":
            F = factor.dense()
            if damping > 0:
                self._chol = torch.linalg.cholesky(F + damping * torch.eye(len(F), dtype=F.dtype))
            else:
                self._eig = _pinv_eig(F, rtol)
        elif self.method == "gram":
            M = factor.gram()
            if damping > 0:  # (UU^T/n + l I)^{-1} = (I - U (n l I + M)^{-1} U^T) / l
                self._chol = torch.linalg.cholesky(M + factor.n * damping * torch.eye(len(M), dtype=M.dtype))
            else:            # (UU^T/n)^+ = n U (M^+)^2 U^T
                vals, vecs = _pinv_eig(M, rtol)
                self._eig = (vals ** 2, vecs)
        else:
            raise ValueError(f"unknown method {method!r}")

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """``F^{-1} v`` for ``v`` of shape ``(d,)`` or ``(d, q)``."""
        if self.method == "dense":
            if self.damping > 0:
                return _chol_solve(self._chol, v)
            return _apply_eig(self._eig, v)
        f = self.factor
        if self.damping > 0:
            return (v - f.matvec(_chol_solve(self._chol, f.rmatvec(v)))) / self.damping
        return f.n * f.matvec(_apply_eig(self._eig, f.rmatvec(v)))


def _pinv_eig(S: torch.Tensor, rtol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse eigenvalues (0 below the cut-off) and eigenvectors of a symmetric PSD matrix."""
    vals, vecs = torch.linalg.eigh(S)
    keep = vals > rtol * vals.abs().max().clamp_min(torch.finfo(S.dtype).tiny)
    return torch.where(keep, 1.0 / torch.where(keep, vals, 1.0), 0.0), vecs


def _apply_eig(eig: tuple[torch.Tensor, torch.Tensor], v: torch.Tensor) -> torch.Tensor:
    inv_vals, vecs = eig
    coeff = vecs.T @ v
    return vecs @ (inv_vals[:, None] * coeff if v.dim() == 2 else inv_vals * coeff)


def _chol_solve(chol: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = torch.cholesky_solve(v[:, None] if v.dim() == 1 else v, chol)
    return out[:, 0] if v.dim() == 1 else out


# --------------------------------------------------------------------------- all parameters, torch.func

def parameters_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters()}


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _flat(tree: dict[str, torch.Tensor], batch_dims: int) -> torch.Tensor:
    return torch.cat([t.reshape(*t.shape[:batch_dims], -1) for t in tree.values()], dim=-1)


def per_example_scores(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *,
                       chunk: int = 1024) -> torch.Tensor:
    """``grad_theta log P(y_i | x_i)`` for every row, shape ``(n, n_params)`` (vmap over grad)."""
    params = parameters_of(model)

    def log_lik(p, x, label):
        logits = functional_call(model, p, (x[None],))[0]
        return torch.log_softmax(logits, dim=0).gather(0, label[None])[0]

    per_example = vmap(grad(log_lik), in_dims=(None, 0, 0))
    model.eval()
    return torch.cat([_flat(per_example(params, X[s:s + chunk], y[s:s + chunk]), 1)
                      for s in range(0, len(X), chunk)]) if len(X) else X.new_zeros(0, n_parameters(model))


def per_class_scores(model: nn.Module, X: torch.Tensor, *, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores for every class, ``(n, C, n_params)``, and the probabilities ``(n, C)`` (vmap over jacrev)."""
    params = parameters_of(model)

    def log_probs(p, x):
        out = torch.log_softmax(functional_call(model, p, (x[None],))[0], dim=0)
        return out, out

    per_example = vmap(jacrev(log_probs, has_aux=True), in_dims=(None, 0))
    model.eval()
    scores, probs = [], []
    for s in range(0, len(X), chunk):
        jac, logp = per_example(params, X[s:s + chunk])
        scores.append(_flat(jac, 2))
        probs.append(logp.exp())
    return torch.cat(scores), torch.cat(probs)


def full_fisher(model: nn.Module, X: torch.Tensor) -> ExplicitFisher:
    """True FIM over all parameters: ``mean_i sum_c p_ic g_ic g_ic^T`` with factor columns ``sqrt(p_ic) g_ic``."""
    scores, probs = per_class_scores(model, X)
    U = (probs.sqrt()[:, :, None] * scores).reshape(-1, scores.shape[-1]).T
    return ExplicitFisher(U, n=len(X))


def scores_dot(model: nn.Module, v: torch.Tensor, X: torch.Tensor, y: torch.Tensor, *,
               chunk: int = 1024) -> torch.Tensor:
    """``g_k^T v`` for every row, computing per-example scores one chunk at a time."""
    return torch.cat([per_example_scores(model, X[s:s + chunk], y[s:s + chunk], chunk=chunk) @ v
                      for s in range(0, len(X), chunk)]) if len(X) else v.new_zeros(0)
