"""Score vectors, Fisher information matrices and Fisher kernels.

Notation (CINCER.md): the score of an example is ``g = grad_theta log P(y | x; theta)``; the Fisher
kernel is ``K(t, k) = g_t^T F^{-1} g_k``. Every FIM here has the form ``F = U U^T / n`` with a known
factor ``U`` (one column per example and class, weighted by ``sqrt(p)``), so the same
:class:`FisherSolver` inverts it either densely (``d x d``) or in the ``m x m`` Gram space of ``U``,
whichever is smaller, with the pseudo-inverse (paper) or a damped inverse (Woodbury).

Top layer (logits ``z = W h + b``), closed form, no autograd:
``g = (e_y - p) (x) [h; 1]`` and ``F = mean_i (diag p_i - p_i p_i^T) (x) h~_i h~_i^T``.
Top-layer vectors are stored as ``(C, H + 1)`` matrices ``[dW | db]`` (flattened row-major).

All parameters (torch.func): per-example and per-class scores, the dense FIM (:func:`full_fisher`), and two
approximations built one chunk of examples at a time without holding the factor: its diagonal
(:func:`fisher_diagonal`, :class:`DiagonalFisherSolver`) and its layer-wise diagonal blocks
(:func:`layer_blocks`, :func:`fisher_blocks`, :class:`BlockFisherSolver`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Protocol, TypeGuard

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from .errors import CincerError
from .progress import Progress

DEFAULT_RTOL = 1e-10  # eigenvalues below rtol * largest are treated as zero by the pseudo-inverse
# the product's pseudo-inverse drops eigendirections below this fraction of the FIM's mean eigenvalue:
# chosen by the ranking study of docs/REPRODUCTION.md (issue #16); 0 is the paper's pseudo-inverse
DEFAULT_TRUNCATE = 0.1
DEFAULT_CHUNK = 8192


# --------------------------------------------------------------------------- top layer, closed form

def augment(H: torch.Tensor) -> torch.Tensor:
    """``[h; 1]``: the bias is a weight on a constant feature."""
    return torch.cat([H, H.new_ones(len(H), 1)], dim=1)


def residuals(P: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``e_y - p`` for each row: the gradient of log P(y|x) with respect to the logits."""
    R = -P.clone()
    R[torch.arange(len(y), device=y.device), y] += 1.0
    return R


def top_layer_scores(H: torch.Tensor, P: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Score vectors of the last linear layer, shape ``(n, C, H + 1)``."""
    return residuals(P, y)[:, :, None] * augment(H)[:, None, :]


def top_layer_kernel(V: torch.Tensor, H: torch.Tensor, P: torch.Tensor, y: torch.Tensor,
                     *, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """``<V, g_k>`` for every row k of ``(H, P, y)`` without forming the ``g_k``.

    ``V`` is ``(C, H + 1)`` (one query) or ``(q, C, H + 1)`` (q queries, result ``(q, N)``).
    ``<V, (e_y - p) (x) h~> = (e_y - p)^T V h~``: one matrix product, a gather and a row-wise dot per
    chunk, so memory beyond the result stays at one chunk of ``(chunk, q C)`` whatever ``N`` is.
    """
    single = V.dim() == 2
    Vq = V[None] if single else V
    q, C, A = Vq.shape
    Wt = Vq[:, :, :-1].reshape(q * C, A - 1).T.contiguous()   # (H, qC)
    b = Vq[:, :, -1].reshape(q * C)
    out = H.new_empty(q, len(H))
    for start in range(0, len(H), chunk):
        stop = min(start + chunk, len(H))
        Z = torch.addmm(b, H[start:stop], Wt)                   # V h~ for every (candidate, query)
        Pc, yc = P[start:stop], y[start:stop]
        if q == 1:
            picked = Z.gather(1, yc[:, None])[:, 0]             # (e_y)^T V h~
            torch.sub(picked, (Z * Pc).sum(1), out=out[0, start:stop])   # minus p^T V h~
        else:
            Z = Z.view(stop - start, q, C)
            picked = Z.gather(2, yc.view(-1, 1, 1).expand(-1, q, 1))[:, :, 0]
            out[:, start:stop] = (picked - torch.bmm(Z, Pc[:, :, None])[:, :, 0]).T
    return out[0] if single else out


def head_kernel(V: torch.Tensor, H: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, y: torch.Tensor,
                *, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """``<V, g_k>`` for every row of the cached features ``H``, computing ``p_k`` on the fly.

    One pass over ``H``: per chunk a single matrix product with ``[weight; V_W]`` gives the logits and
    ``V h~`` together, so nothing of size ``(N, C)`` outlives a chunk and no score vector is formed.
    ``V`` is ``(C, H + 1)``; ``weight``/``bias`` are the head's (``(C, H)``, ``(C,)``). Result ``(N,)``.
    """
    C = weight.shape[0]
    stacked = torch.cat([weight, V[:, :-1]]).T.contiguous()   # (H, 2C)
    offset = torch.cat([bias, V[:, -1]])
    out = H.new_empty(len(H))
    for start in range(0, len(H), chunk):
        stop = min(start + chunk, len(H))
        Z = torch.addmm(offset, H[start:stop], stacked)        # [logits | V h~]
        E = Z[:, :C]
        E = (E - E.amax(1, keepdim=True)).exp_()              # unnormalised softmax
        proj = Z[:, C:]
        picked = proj.gather(1, y[start:stop, None])[:, 0]
        torch.sub(picked, (E * proj).sum(1) / E.sum(1), out=out[start:stop])
    return out


def sqrt_fisher_blocks(P: torch.Tensor) -> torch.Tensor:
    """``L_i`` with ``L_i L_i^T = diag(p_i) - p_i p_i^T``: ``L = diag(sqrt p) - p sqrt(p)^T`` (uses sum p = 1)."""
    s = P.clamp_min(0).sqrt()
    return torch.diag_embed(s) - P[:, :, None] * s[:, None, :]


def sum_free_basis(C: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(C, C - 1)`` orthonormal basis of the vectors whose entries sum to 0 (``1^perp``).

    Every ``diag p - p p^T`` maps ``1`` to 0, so the top-layer FIM lives in ``1^perp (x) R^(H+1)``.
    """
    centred = torch.eye(C, dtype=torch.float64) - 1.0 / C
    return torch.linalg.qr(centred[:, :C - 1]).Q.to(dtype)


def reduced_fisher_blocks(P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """``R_i`` (``(C-1) x (C-1)``, upper triangular) with ``R_i^T R_i = Q^T (diag p_i - p_i p_i^T) Q``.

    From a QR of ``(Q^T L_i)^T``: no eigendecomposition, exact even when ``p_i`` has zeros.
    """
    B = Q.T @ sqrt_fisher_blocks(P)                       # (n, C-1, C), B B^T = Q^T A_i Q
    return torch.linalg.qr(B.transpose(1, 2), mode="r").R


class FisherFactor(Protocol):
    """``F = U U^T / n`` given through ``U``'s actions; ``U`` is ``dim x rank_bound``."""

    n: int
    dim: int
    rank_bound: int

    def rmatvec(self, v: torch.Tensor) -> torch.Tensor: ...  # U^T v, v of shape (dim,) or (dim, q)
    def matvec(self, w: torch.Tensor) -> torch.Tensor: ...  # U w
    def gram(self) -> torch.Tensor: ...  # U^T U
    def dense(self) -> torch.Tensor: ...  # F itself


class SubspaceFisherFactor(FisherFactor, Protocol):
    """A factor whose ``F`` has its whole range in a known ``sub_dim``-dimensional subspace."""

    sub_dim: int

    def project(self, v: torch.Tensor) -> torch.Tensor: ...  # coordinates in the subspace
    def lift(self, w: torch.Tensor) -> torch.Tensor: ...  # back to the full space
    def dense_sub(self) -> torch.Tensor: ...  # F restricted to the subspace


def _has_subspace(factor: FisherFactor) -> TypeGuard[SubspaceFisherFactor]:
    return hasattr(factor, "project")


class TopLayerFisher:
    """The true FIM of the last linear layer, in factored (Kronecker-sum) form; nothing ``d x d`` is built
    unless the dense route is the cheaper one, and nothing per example beyond one chunk when it is.

    The factor uses ``C - 1`` columns per example (``L_i = Q R_i^T``, see :func:`reduced_fisher_blocks`),
    because ``1`` is in the null space of every class block; :meth:`project` / :meth:`lift` map to and
    from the ``(C - 1)(H + 1)``-dimensional subspace that contains the whole range of ``F``. The
    per-example factors are only formed for the Gram route (few examples); the dense matrices are
    accumulated chunk by chunk from ``H`` and ``P`` (:func:`kron_sum`).
    """

    def __init__(self, H: torch.Tensor, P: torch.Tensor) -> None:
        self.H, self.P = H, P
        self.n, self.A = len(H), H.shape[1] + 1
        self.C = P.shape[1]
        self.Q = sum_free_basis(self.C, P.dtype).to(P.device)  # (C, C-1)
        self.dim = self.C * self.A
        self.sub_dim = (self.C - 1) * self.A
        self.rank_bound = self.n * (self.C - 1)

    @functools.cached_property
    def Ht(self) -> torch.Tensor:
        return augment(self.H)  # (n, A)

    @functools.cached_property
    def L(self) -> torch.Tensor:
        """``(n, C, C-1)`` with ``L_i L_i^T = diag p_i - p_i p_i^T``."""
        return self.Q @ reduced_fisher_blocks(self.P, self.Q).transpose(1, 2)

    def rmatvec(self, v: torch.Tensor) -> torch.Tensor:
        Z = torch.einsum("na,caq->ncq", self.Ht, v.reshape(self.C, self.A, -1))  # V h~_i
        out = torch.einsum("ncr,ncq->nrq", self.L, Z).reshape(self.rank_bound, -1)  # L_i^T V h~_i
        return out[:, 0] if v.dim() == 1 else out

    def matvec(self, w: torch.Tensor) -> torch.Tensor:
        Wq = w.reshape(self.n, self.C - 1, -1)
        LW = torch.einsum("ncr,nrq->ncq", self.L, Wq)          # L_i w_i
        out = torch.einsum("ncq,na->caq", LW, self.Ht).reshape(self.dim, -1)
        return out[:, 0] if w.dim() == 1 else out

    def gram(self) -> torch.Tensor:
        LL = torch.einsum("icr,jcs->irjs", self.L, self.L)
        K = self.Ht @ self.Ht.T
        m = self.rank_bound
        return (LL * K[:, None, :, None]).reshape(m, m)

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """``(Q^T (x) I) v``: coordinates in the subspace holding the range of ``F``."""
        out = torch.einsum("cr,caq->raq", self.Q, v.reshape(self.C, self.A, -1)).reshape(self.sub_dim, -1)
        return out[:, 0] if v.dim() == 1 else out

    def lift(self, w: torch.Tensor) -> torch.Tensor:
        """``(Q (x) I) w``, the inverse of :meth:`project` on that subspace."""
        out = torch.einsum("cr,raq->caq", self.Q, w.reshape(self.C - 1, self.A, -1)).reshape(self.dim, -1)
        return out[:, 0] if w.dim() == 1 else out

    def dense_sub(self) -> torch.Tensor:
        """``(Q^T (x) I) F (Q (x) I) = mean_i Q^T A_i Q (x) h~_i h~_i^T``, ``(C-1)(H+1)`` square."""
        Q = self.Q
        return kron_sum(lambda P: Q.T @ class_blocks(P) @ Q, self.H, self.P)

    def dense(self) -> torch.Tensor:
        return kron_sum(class_blocks, self.H, self.P)


def class_blocks(P: torch.Tensor) -> torch.Tensor:
    """``A_i = diag p_i - p_i p_i^T`` for every row: the Fisher information of the logits."""
    return torch.diag_embed(P) - P[:, :, None] * P[:, None, :]


def kron_sum(blocks_of: Callable[[torch.Tensor], torch.Tensor], H: torch.Tensor, P: torch.Tensor, *,
             max_bytes: int = 2**24, progress: bool = True) -> torch.Tensor:
    """``mean_i B_i (x) h~_i h~_i^T`` as a dense ``cA x cA`` matrix (class-major, like the score vectors),
    with ``B_i = blocks_of(P)[i]`` (``c x c``, symmetric) and ``h~_i = [h_i; 1]``.

    One pass over the rows in chunks: each chunk adds ``H~^T [w_1 * H~, ..., w_m * H~]``, the
    weighted Gram matrices ``H~^T diag(w) H~`` of the ``m = c(c+1)/2`` class pairs (``w`` = that entry
    of the ``B_i``) in one matrix product; the other pairs are their mirror images. Memory is ``O(d^2)``
    plus one chunk of at most ``max_bytes``, whatever the number of rows. ``progress=False``: no progress
    lines (a caller that reports its own).
    """
    n, A = len(H), H.shape[1] + 1
    c = blocks_of(P[:1]).shape[1]
    upper = torch.triu_indices(c, c, device=H.device)
    pairs = upper.shape[1]
    chunk = max(1, min(n, max_bytes // (H.element_size() * pairs * A)))
    S = H.new_zeros(A, pairs * A)
    with Progress(n, "Fisher matrix", unit="rows", disable=not progress) as bar:
        for start in range(0, n, chunk):
            Ht = augment(H[start:start + chunk])
            W = blocks_of(P[start:start + chunk])[:, upper[0], upper[1]]
            S.addmm_(Ht.T, (W[:, :, None] * Ht[:, None, :]).reshape(len(Ht), pairs * A))
            bar.update(len(Ht))
    T = S.reshape(A, pairs, A).transpose(0, 1)   # T[k] = sum_i w_ik h~_i h~_i^T
    F = H.new_empty(c, c, A, A)
    F[upper[0], upper[1]] = T
    F[upper[1], upper[0]] = T
    return F.permute(0, 2, 1, 3).reshape(c * A, c * A) / max(n, 1)


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


def check_damping(damping: float, relative_damping: float, truncate: float = 0.0) -> None:
    """``damping`` (absolute, added to F) or ``relative_damping`` (a fraction of F's mean eigenvalue over the
    subspace that holds its range: the same for data in any units), not both; 0 = pseudo-inverse, which
    ``truncate`` (a fraction of the same mean eigenvalue) cuts below."""
    for name, value in (("damping", damping), ("relative_damping", relative_damping), ("truncate", truncate)):
        if not value >= 0:
            raise CincerError(f"{name} must be >= 0, got {value}")
    if damping > 0 and relative_damping > 0:
        raise CincerError("damping and relative_damping exclude each other: give one")
    if truncate > 0 and (damping > 0 or relative_damping > 0):
        raise CincerError("truncate applies to the pseudo-inverse: give it or a damping, not both")


def resolve_truncate(truncate: float | None, damping: float, relative_damping: float) -> float:
    """``truncate=None``: :data:`DEFAULT_TRUNCATE` for the pseudo-inverse, 0 when the FIM is damped."""
    if truncate is None:
        return 0.0 if damping > 0 or relative_damping > 0 else DEFAULT_TRUNCATE
    return truncate


class FisherSolver:
    """Applies ``F^+`` (``damping == 0``, the paper's pseudo-inverse) or ``(F + damping I)^{-1}``;
    ``relative_damping=r`` sets ``damping = r tr(F) / d``, ``d`` the dimension of the subspace that holds F's
    range (``.damping`` is then the value used); ``truncate=k`` drops from the pseudo-inverse the
    eigendirections whose eigenvalue is below ``k tr(F) / r``, ``r = min(d, rank bound)`` (the mean over the
    directions the data can span: ``n(C-1)`` examples' scores span at most that many; why:
    docs/REPRODUCTION.md, issue #16).

    Factorises once in whichever space is smaller: the parameters (``d x d``; for the top layer the
    ``(C-1)(H+1)`` subspace that holds the range of ``F``) or the Gram matrix of the factor
    (``m x m``, Woodbury). The pseudo-inverse needs an eigendecomposition only when the matrix is
    (numerically) singular: ``factorization="auto"`` first tries to certify with two Cholesky
    factorisations that every eigenvalue is above the cut-off, in which case ``S^+ = S^{-1}``
    (about ten times cheaper than ``eigh``); ``"eigh"`` always decomposes.
    """

    def __init__(self, factor: FisherFactor, *, damping: float = 0.0, rtol: float = DEFAULT_RTOL,
                 method: str = "auto", factorization: str = "auto", relative_damping: float = 0.0,
                 truncate: float = 0.0) -> None:
        check_damping(damping, relative_damping, truncate)
        if factorization not in ("auto", "eigh"):
            raise CincerError(f"unknown factorization {factorization!r} (auto, eigh)")
        self.factor, self.damping, self.rtol = factor, damping, rtol
        # set when the range of F lies in a known subspace
        self._sub: SubspaceFisherFactor | None = factor if _has_subspace(factor) else None
        dim = self._sub.sub_dim if self._sub is not None else factor.dim
        self.method = ("dense" if dim <= factor.rank_bound else "gram") if method == "auto" else method
        # truncate's mean eigenvalue: over the directions the data can span (rank <= both), whichever route
        span = max(min(dim, factor.rank_bound), 1)
        if self.method == "dense":
            S = self._sub.dense_sub() if self._sub is not None else factor.dense()
            if relative_damping > 0:  # a fraction of the mean eigenvalue over the subspace that holds F's range
                damping = self.damping = relative_damping * float(torch.diagonal(S).sum()) / max(dim, 1)
            if damping > 0:
                self._inv = _Inverse.cholesky(S + damping * torch.eye(len(S), dtype=S.dtype, device=S.device))
            else:
                floor = truncate * float(torch.diagonal(S).sum()) / span
                self._inv = _Inverse.pinv(S, rtol, factorization, floor=floor)
        elif self.method == "gram":
            M = factor.gram()
            if relative_damping > 0:  # tr F = tr M / n
                damping = self.damping = relative_damping * float(torch.diagonal(M).sum()) / (factor.n * max(dim, 1))
            if damping > 0:  # (UU^T/n + l I)^{-1} = (I - U (n l I + M)^{-1} U^T) / l
                eye = torch.eye(len(M), dtype=M.dtype, device=M.device)
                self._inv = _Inverse.cholesky(M + factor.n * damping * eye)
            else:            # (UU^T/n)^+ = n U (M^+)^2 U^T; M's eigenvalues are n times F's
                floor = truncate * float(torch.diagonal(M).sum()) / span
                self._inv = _Inverse.pinv(M, rtol, factorization, floor=floor)
        else:
            raise CincerError(f"unknown method {method!r}")

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """``F^{-1} v`` for ``v`` of shape ``(d,)`` or ``(d, q)``."""
        f = self.factor
        if self.method == "dense":
            sub = self._sub
            if sub is None:
                return self._inv(v)
            w = sub.project(v)
            out = sub.lift(self._inv(w))
            if self.damping > 0:   # F is 0 on the complement of the subspace
                out = out + (v - sub.lift(w)) / self.damping
            return out
        if self.damping > 0:
            return (v - f.matvec(self._inv(f.rmatvec(v)))) / self.damping
        return f.n * f.matvec(self._inv(self._inv(f.rmatvec(v))))

    @property
    def factorization(self) -> str:
        """``"cholesky"`` or ``"eigh"``: what the inverse actually used."""
        return self._inv.kind


class KroneckerFisherSolver:
    """Applies the inverse of a Kronecker-factored approximation of the top-layer FIM, for heads too big
    for the exact one: ``F ~ (U_G (x) U_S) diag(s) (U_G (x) U_S)^T`` with ``U_G``, ``U_S`` the eigenvectors
    of ``G = mean_i A_i`` and ``S = mean_i h~_i h~_i^T``.

    ``eigenvalue_corrected=True`` (EK-FAC, George et al. 2018) takes ``s`` as the exact diagonal of the
    true FIM in that basis, ``s_ck = mean_i (U_G^T A_i U_G)_cc ((U_S^T h~_i)_k)^2``; ``False`` (K-FAC,
    Martens & Grosse 2015) takes the products of the two factors' eigenvalues. Pseudo-inverse
    (``damping == 0``: ``s`` below ``rtol * max s``, or below ``truncate`` times their mean over F's range,
    count as zero) or damped. Cost: one pass over the rows
    with ``O(n A^2)`` work and ``O(A^2 + C^2)`` memory beyond a chunk; each solve is two small products.
    """

    def __init__(self, H: torch.Tensor, P: torch.Tensor, *, damping: float = 0.0, rtol: float = DEFAULT_RTOL,
                 eigenvalue_corrected: bool = True, chunk: int = DEFAULT_CHUNK, relative_damping: float = 0.0,
                 truncate: float = 0.0) -> None:
        check_damping(damping, relative_damping, truncate)
        n, C, A = len(H), P.shape[1], H.shape[1] + 1
        work = torch.float64  # eigendecompositions in double precision whatever the model's dtype
        G, S = P.new_zeros(C, C, dtype=work), H.new_zeros(A, A, dtype=work)
        progress = Progress(2 * n if eigenvalue_corrected else n, "Kronecker factors", unit="rows")
        for start in range(0, n, chunk):
            Pc, Ht = P[start:start + chunk].to(work), augment(H[start:start + chunk]).to(work)
            G += class_blocks(Pc).sum(0)
            S += Ht.T @ Ht
            progress.update(len(Ht))
        g_vals, self.U_G = torch.linalg.eigh(G / max(n, 1))
        s_vals, self.U_S = torch.linalg.eigh(S / max(n, 1))
        if eigenvalue_corrected:
            scale = G.new_zeros(C, A)
            U2 = self.U_G * self.U_G
            for start in range(0, n, chunk):
                Pc, Ht = P[start:start + chunk].to(work), augment(H[start:start + chunk]).to(work)
                diag_G = Pc @ U2 - (Pc @ self.U_G) ** 2          # (U_G^T A_i U_G)_cc for every row
                scale += diag_G.T @ (Ht @ self.U_S) ** 2
                progress.update(len(Ht))
            scale /= max(n, 1)
        else:
            scale = g_vals.clamp_min(0)[:, None] * s_vals.clamp_min(0)[None, :]
        progress.close()
        trace = float(scale.sum())
        span = max(min((C - 1) * A, n * (C - 1)), 1)  # the directions that hold F's range and the data can span
        if relative_damping > 0:  # the mean over the (C-1) A directions that hold F's range
            damping = relative_damping * trace / max((C - 1) * A, 1)
        self.damping = damping
        if damping > 0:
            self.inv_scale = 1.0 / (scale + damping)
        else:
            keep = (scale > rtol * scale.max()) & (scale >= truncate * trace / span)
            self.inv_scale = torch.where(keep, 1.0 / torch.where(keep, scale, 1.0), 0.0)
        self.C, self.A, self.dtype = C, A, H.dtype
        self.method = "ekfac" if eigenvalue_corrected else "kfac"
        self.factorization = "eigh"

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """``F^{-1} v`` for ``v`` of shape ``(d,)`` or ``(d, q)`` (class-major, like the score vectors)."""
        V = v.to(self.U_G.dtype).reshape(self.C, self.A, -1)
        inner = torch.einsum("ck,caq,ab->kbq", self.U_G, V, self.U_S) * self.inv_scale[:, :, None]
        out = torch.einsum("ck,kbq,ab->caq", self.U_G, inner, self.U_S).reshape(self.C * self.A, -1)
        out = out.to(self.dtype)
        return out[:, 0] if v.dim() == 1 else out


CURVATURES = ("auto", "exact", "ekfac", "kfac")
EXACT_FIM_BUDGET = 5e10  # multiply-adds; "auto" takes the exact FIM up to this (about 2 s on one core, float64)


def top_layer_solver(H: torch.Tensor, P: torch.Tensor, *, damping: float = 0.0, factorization: str = "auto",
                     curvature: str = "auto", relative_damping: float = 0.0,
                     truncate: float = 0.0) -> FisherSolver | KroneckerFisherSolver:
    """The inverse of the top-layer FIM over the rows of ``(H, P)``: exact (:class:`FisherSolver`), or
    EK-FAC / K-FAC (:class:`KroneckerFisherSolver`); ``"auto"`` is exact unless building it would take
    more than :data:`EXACT_FIM_BUDGET` multiply-adds, then EK-FAC. ``.method`` says which was used."""
    if curvature not in CURVATURES:
        raise CincerError(f"curvature must be one of {', '.join(CURVATURES)}, got {curvature!r}")
    if curvature == "auto":
        curvature = "exact" if exact_fim_cost(len(H), P.shape[1], H.shape[1] + 1) <= EXACT_FIM_BUDGET else "ekfac"
    if curvature == "exact":
        return FisherSolver(TopLayerFisher(H, P), damping=damping, factorization=factorization,
                            relative_damping=relative_damping, truncate=truncate)
    return KroneckerFisherSolver(H, P, damping=damping, eigenvalue_corrected=curvature == "ekfac",
                                 relative_damping=relative_damping, truncate=truncate)


def exact_fim_cost(n: int, C: int, A: int) -> float:
    """Multiply-adds to build and factorise the exact top-layer FIM, by the cheaper of its two routes: the
    dense one (:func:`kron_sum`, then a ``d x d`` factorisation) or the Gram one (``m x m``, ``m = n(C-1)``).
    A singular matrix needs an eigendecomposition, about ``1.5 d^3`` on this scale."""
    d, m = (C - 1) * A, n * (C - 1)
    dense = n * C * (C - 1) / 2 * A * A + 1.5 * d**3
    gram = m * m * A + 1.5 * m**3
    return min(dense, gram)


class _Inverse:
    """``S^{-1}`` or ``S^+`` of a symmetric PSD matrix, from a Cholesky factor or an eigendecomposition."""

    def __init__(self, kind: str, data: tuple[torch.Tensor, ...]) -> None:
        self.kind, self.data = kind, data

    @classmethod
    def cholesky(cls, S: torch.Tensor) -> _Inverse:
        return cls("cholesky", (torch.linalg.cholesky(S),))

    @classmethod
    def pinv(cls, S: torch.Tensor, rtol: float, factorization: str = "auto", floor: float = 0.0) -> _Inverse:
        """The pseudo-inverse with eigenvalues below ``rtol * lambda_max`` or ``floor`` counted as zero.
        Certified fast path: if ``S - tau I`` is positive definite with ``tau = max(2 rtol trace(S), floor)``
        (``trace >= lambda_max``), no eigenvalue falls below the cut-off and ``S^+ = S^{-1}``; otherwise
        (or when asked) eigendecompose."""
        if factorization == "auto" and len(S):
            tau = (2.0 * rtol * torch.diagonal(S).sum()).clamp_min(floor)
            eye = torch.eye(len(S), dtype=S.dtype, device=S.device)
            _, shifted_info = torch.linalg.cholesky_ex(S - tau * eye)
            if int(shifted_info) == 0:
                chol, info = torch.linalg.cholesky_ex(S)
                if int(info) == 0:
                    return cls("cholesky", (chol,))
        return cls("eigh", _pinv_eig(S, rtol, floor))

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if self.kind == "cholesky":
            return _chol_solve(self.data[0], v)
        return _apply_eig(self.data, v)


def _pinv_eig(S: torch.Tensor, rtol: float, floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse eigenvalues (0 below ``rtol`` times the largest or below ``floor``) and eigenvectors of a
    symmetric PSD matrix.

    Decomposed in float64 whatever the model's precision: LAPACK's float32 ``syevd`` fails to
    converge on the nearly singular FIMs of confident float32 models."""
    vals, vecs = torch.linalg.eigh(S.double())
    keep = (vals > rtol * vals.abs().max().clamp_min(torch.finfo(vals.dtype).tiny)) & (vals >= floor)
    inv_vals = torch.where(keep, 1.0 / torch.where(keep, vals, 1.0), 0.0)
    return inv_vals.to(S.dtype), vecs.to(S.dtype)


def _apply_eig(eig: tuple[torch.Tensor, ...], v: torch.Tensor) -> torch.Tensor:
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


# --------------------------------------------------------------------------- all parameters: diagonal and block FIMs

SCORE_CHUNK_ELEMENTS = 2**22  # per-class score rows of one chunk hold at most this many entries per class


def layer_blocks(model: nn.Module) -> list[tuple[str, slice]]:
    """The layers of ``model`` as slices of the flattened parameter vector (the order of
    :func:`per_example_scores`): one block per module that owns parameters, its weight and bias together,
    named after the module (``"head"``, ``"body.1"``)."""
    blocks: list[tuple[str, slice]] = []
    start = 0
    for name, p in model.named_parameters():
        layer = name.rpartition(".")[0]
        if blocks and blocks[-1][0] == layer and blocks[-1][1].stop == start:
            blocks[-1] = (layer, slice(blocks[-1][1].start, start + p.numel()))
        else:
            blocks.append((layer, slice(start, start + p.numel())))
        start += p.numel()
    return blocks


def _fisher_columns(model: nn.Module, X: torch.Tensor, chunk: int | None) -> Iterator[torch.Tensor]:
    """The factor of the full FIM one chunk of rows at a time: ``(m C, n_params)``, rows ``sqrt(p_ic) g_ic``
    (the columns of :func:`full_fisher`'s ``U``), so nothing of size ``n x C x n_params`` is ever held."""
    rows = chunk or max(1, min(256, SCORE_CHUNK_ELEMENTS // max(n_parameters(model), 1)))
    with Progress(len(X), "Fisher matrix", unit="rows") as progress:
        for start in range(0, len(X), rows):
            scores, probs = per_class_scores(model, X[start:start + rows], chunk=rows)
            yield (probs.sqrt()[:, :, None] * scores).reshape(-1, scores.shape[-1])
            progress.update(len(probs))


def fisher_diagonal(model: nn.Module, X: torch.Tensor, *, chunk: int | None = None) -> torch.Tensor:
    """The diagonal of the true FIM over all parameters, ``mean_i sum_c p_ic g_ic**2`` (the diagonal of
    :func:`full_fisher`'s matrix), accumulated one chunk of rows at a time: ``O(n_params)`` memory beyond it."""
    diag = next(iter(parameters_of(model).values())).new_zeros(n_parameters(model))
    for U in _fisher_columns(model, X, chunk):
        diag += (U * U).sum(0)
    return diag / max(len(X), 1)


def fisher_blocks(model: nn.Module, X: torch.Tensor, blocks: list[tuple[str, slice]], *,
                  chunk: int | None = None) -> list[torch.Tensor]:
    """The diagonal blocks ``F[s, s]`` of the true FIM over all parameters, one dense ``b x b`` matrix per
    slice ``s`` of ``blocks`` (e.g. :func:`layer_blocks`), accumulated one chunk of rows at a time: memory is
    ``sum b^2`` beyond a chunk, whatever the number of rows."""
    like = next(iter(parameters_of(model).values()))
    out = [like.new_zeros(s.stop - s.start, s.stop - s.start) for _, s in blocks]
    for U in _fisher_columns(model, X, chunk):
        for F, (_, s) in zip(out, blocks):
            F.addmm_(U[:, s].T, U[:, s])
    return [F / max(len(X), 1) for F in out]


class DiagonalFisherSolver:
    """Applies the inverse of a diagonal approximation of the FIM: ``1 / diag`` with the entries below
    ``rtol * max`` counted as zero (``damping == 0``, the pseudo-inverse: their inverse is 0), or
    ``1 / (diag + damping)``."""

    method = "diagonal"
    factorization = "diagonal"

    def __init__(self, diag: torch.Tensor, *, damping: float = 0.0, rtol: float = DEFAULT_RTOL) -> None:
        if damping < 0:
            raise CincerError(f"damping must be >= 0, got {damping}")
        self.diag = diag
        if damping > 0:
            self.inv_diag = 1.0 / (diag + damping)
        else:
            keep = diag > rtol * diag.abs().max().clamp_min(torch.finfo(diag.dtype).tiny) if len(diag) else diag > 0
            self.inv_diag = torch.where(keep, 1.0 / torch.where(keep, diag, 1.0), 0.0)

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """``F^{-1} v`` for ``v`` of shape ``(d,)`` or ``(d, q)``."""
        return self.inv_diag * v if v.dim() == 1 else self.inv_diag[:, None] * v

    def dense(self) -> torch.Tensor:
        return torch.diag(self.diag)


class BlockFisherSolver:
    """Applies the inverse of a block-diagonal approximation of the FIM, each block ``F_b`` inverted on its
    own: ``(F_b + damping I)^{-1}`` (Cholesky), or the pseudo-inverse ``F_b^+`` when ``damping == 0``
    (certified Cholesky or eigendecomposition, as :class:`FisherSolver`, the cut-off relative to each
    block's largest eigenvalue). ``blocks`` are ``(name, slice)`` pairs covering the parameter vector."""

    method = "block"

    def __init__(self, blocks: list[tuple[str, slice]], matrices: list[torch.Tensor], *, damping: float = 0.0,
                 rtol: float = DEFAULT_RTOL, factorization: str = "auto") -> None:
        if damping < 0:
            raise CincerError(f"damping must be >= 0, got {damping}")
        if factorization not in ("auto", "eigh"):
            raise CincerError(f"unknown factorization {factorization!r} (auto, eigh)")
        if len(blocks) != len(matrices):
            raise CincerError(f"{len(blocks)} blocks but {len(matrices)} matrices")
        self.blocks, self.matrices, self.damping = blocks, matrices, damping
        self._inv = []
        for (name, s), F in zip(blocks, matrices):
            if F.shape != (s.stop - s.start, s.stop - s.start):
                raise CincerError(f"block {name!r} spans {s.stop - s.start} parameters but its matrix is "
                                  f"{tuple(F.shape)}")
            if damping > 0:
                self._inv.append(_Inverse.cholesky(F + damping * torch.eye(len(F), dtype=F.dtype, device=F.device)))
            else:
                self._inv.append(_Inverse.pinv(F, rtol, factorization))

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """``F^{-1} v`` for ``v`` of shape ``(d,)`` or ``(d, q)``."""
        out = torch.zeros_like(v)
        for (_, s), inv in zip(self.blocks, self._inv):
            out[s] = inv(v[s])
        return out

    @property
    def factorization(self) -> str:
        """``"cholesky"``, ``"eigh"``, or ``"cholesky+eigh"`` when the blocks differ."""
        return "+".join(sorted({inv.kind for inv in self._inv}))

    def dense(self) -> torch.Tensor:
        return torch.block_diag(*self.matrices)
