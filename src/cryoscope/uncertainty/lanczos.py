"""Smallest eigenpairs and log-determinant of a symmetric positive semi-definite operator given as a matrix-vector
product: the softest modes of the Hessian of the log-likelihood (Rangan et al.).

The operator H [n, n] is only ever applied to vectors. Directions known in advance to be soft for a trivial reason
(e.g. rigid rotations) are removed by deflation: the solvers work on P H P with P = I - Q Q^T, restricted to the
complement of span Q (dimension n - d). `lanczos_smallest` runs Lanczos with full re-orthogonalisation (classical
Gram-Schmidt, twice) and keeps the Ritz values of every iteration for convergence plots; `eigsh_smallest` is an
independent cross-check through ARPACK; `logdet_slq` estimates log det H on the complement by stochastic Lanczos
quadrature.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from cryoscope.errors import InvalidValueError

MatVec = Callable[[torch.Tensor], torch.Tensor]  # v [n] -> H v [n]


@dataclass
class LanczosResult:
    """The k smallest Ritz pairs of P H P on the complement of the deflated subspace."""

    eigenvalues: torch.Tensor  # [k] ascending Ritz values (the k smallest)
    eigenvectors: torch.Tensor  # [n, k] orthonormal Ritz vectors, orthogonal to the deflated subspace
    residuals: torch.Tensor  # [k] ||P H P x - theta x|| for each returned pair
    ritz_history: list[torch.Tensor]  # ascending Ritz values [m] after iteration m = 1, 2, ... (paper Fig. 23)
    iterations: int
    converged: bool


def deflation_basis(vectors: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis [n, d] of the span of the columns of `vectors` [n, d'] (rank-revealing: drop columns with
    relative singular value < 1e-10)."""
    if vectors.dim() != 2:
        raise InvalidValueError(f"deflation vectors must be a matrix [n, d], got shape {tuple(vectors.shape)}")
    u, s, _ = torch.linalg.svd(vectors, full_matrices=False)
    if s.numel() == 0 or s[0] == 0:
        return u[:, :0]
    return u[:, s >= 1e-10 * s[0]]


def _deflation(deflate: torch.Tensor | None, dim: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Checked Q [dim, d] (d = 0 without deflation) with orthonormal columns."""
    if deflate is None:
        return torch.zeros(dim, 0, dtype=dtype, device=device)
    if deflate.dim() != 2 or deflate.shape[0] != dim:
        raise InvalidValueError(f"deflate must have shape [{dim}, d], got {tuple(deflate.shape)}")
    q = deflate.to(dtype=dtype, device=device)
    eye = torch.eye(q.shape[1], dtype=dtype, device=device)
    if q.shape[1] and torch.linalg.matrix_norm(q.T @ q - eye) > max(1e-8, 1e3 * torch.finfo(dtype).eps):
        raise InvalidValueError("deflate must have orthonormal columns (use deflation_basis)")
    return q


def _project(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """x minus its component in span(basis), classical Gram-Schmidt applied twice."""
    for _ in range(2):
        x = x - basis @ (basis.T @ x)
    return x


def _deflated(matvec: MatVec, q: torch.Tensor) -> MatVec:
    """v -> P H P v with P = I - Q Q^T."""
    return lambda v: _project(matvec(_project(v, q)), q)


def _lanczos_steps(op: MatVec, v0: torch.Tensor, q: torch.Tensor,
                   steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]]:
    """Lanczos with full re-orthogonalisation from the unit vector v0 [n] (orthogonal to Q). After step m yields
    (V [n, m] Lanczos vectors, T [m, m] tridiagonal, beta_m the norm of the next residual, breakdown), so that
    op V = V T + beta_m v_{m+1} e_m^T; stops after `steps` steps or at an invariant subspace (breakdown:
    beta_m <= max(1e-14, eps) * ||T||, estimated by the row-sum norm)."""
    threshold = max(1e-14, torch.finfo(v0.dtype).eps)
    v_all = v0.new_zeros(v0.shape[0], steps)
    alpha, beta = v0.new_zeros(steps), v0.new_zeros(steps)
    v = v0
    for j in range(steps):
        v_all[:, j] = v
        w = op(v)
        alpha[j] = v @ w
        w = _project(_project(w, v_all[:, : j + 1]), q)
        beta[j] = torch.linalg.vector_norm(w)
        t = torch.diag(alpha[: j + 1]) + torch.diag(beta[:j], 1) + torch.diag(beta[:j], -1)
        breakdown = bool(beta[j] <= threshold * torch.linalg.matrix_norm(t, ord=torch.inf))
        yield v_all[:, : j + 1], t, beta[j], breakdown
        if breakdown:
            return
        v = w / beta[j]


def lanczos_smallest(matvec: MatVec, dim: int, k: int, *, deflate: torch.Tensor | None = None, max_iter: int = 200,
                     tol: float = 1e-10, start: torch.Tensor | None = None, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float64, device=None,
                     callback: Callable[[int, torch.Tensor], None] | None = None) -> LanczosResult:
    """The k smallest eigenpairs of P H P on the complement of span(deflate) (Q [dim, d], orthonormal columns).

    Runs Lanczos with full re-orthogonalisation from `start` [dim] (default: standard normal from `generator`),
    projected off Q, until the k smallest Ritz pairs have residual |beta_m s_{m,i}| <= tol * max|theta|, or the
    Krylov subspace is invariant (the Ritz pairs are then exact; a start vector deficient in some eigenvectors can
    miss them), or after min(max_iter, dim - d) iterations (`converged` is False only if max_iter ran out).
    `callback(m, ritz_values [m])` is called after each iteration m = 1, 2, ...
    """
    if device is None:
        device = start.device if start is not None else deflate.device if deflate is not None else None
    q = _deflation(deflate, dim, dtype, device)
    n_free = dim - q.shape[1]
    if not 1 <= k <= n_free:
        raise InvalidValueError(f"k must be in [1, {n_free}] (dim - deflated dimensions), got {k}")
    if max_iter < k:
        raise InvalidValueError(f"max_iter ({max_iter}) must be at least k ({k})")
    if start is None:
        start = torch.randn(dim, generator=generator, dtype=dtype, device=device)
    elif start.shape != (dim,):
        raise InvalidValueError(f"start must have shape [{dim}], got {tuple(start.shape)}")
    v0 = _project(start.to(dtype=dtype, device=device), q)
    norm = torch.linalg.vector_norm(v0)
    if norm == 0:
        raise InvalidValueError("start vector lies in the deflated subspace")
    op = _deflated(matvec, q)
    steps = min(max_iter, n_free)
    tiny = torch.finfo(dtype).tiny
    history: list[torch.Tensor] = []
    for v_all, t, beta, breakdown in _lanczos_steps(op, v0 / norm, q, steps):
        m = t.shape[0]
        theta, s = torch.linalg.eigh(t)
        history.append(theta)
        if callback is not None:
            callback(m, theta)
        scale = max(theta.abs().max().item(), tiny)
        converged = breakdown or m == n_free or (m >= k and bool((beta * s[-1, :k]).abs().max() <= tol * scale))
        if converged:
            break
    if m < k:
        raise InvalidValueError(f"start vector spans an invariant subspace of dimension {m} < k = {k}")
    vectors = v_all @ s[:, :k]
    residuals = torch.stack([torch.linalg.vector_norm(op(x) - lam * x) for lam, x in zip(theta[:k], vectors.T)])
    return LanczosResult(theta[:k], vectors, residuals, history, m, converged)


def eigsh_smallest(matvec: MatVec, dim: int, k: int, *, deflate: torch.Tensor | None = None, tol: float = 0.0,
                   dtype: torch.dtype = torch.float64, seed: int = 0,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-check of `lanczos_smallest` through ARPACK (`scipy.sparse.linalg.eigsh`, which="SA", float64 numpy):
    ascending eigenvalues [k] and eigenvectors [dim, k] of P H P on the complement of span(deflate). The deflated
    directions, eigenvalue 0 under P H P, are moved to the top of the spectrum by adding shift * Q Q^T with shift
    = 10 * (largest eigenvalue of P H P). Tensors are on `device` (default: deflate's device, else the CPU). ARPACK
    starts from a vector drawn with `seed`, so runs (and the processes of a distributed run) apply the same matvec
    sequence."""
    if device is None:
        device = deflate.device if deflate is not None else torch.device("cpu")
    q = _deflation(deflate, dim, dtype, device)
    if not 1 <= k <= min(dim - q.shape[1], dim - 1):
        raise InvalidValueError(f"k must be in [1, {min(dim - q.shape[1], dim - 1)}] for ARPACK, got {k}")
    op = _deflated(matvec, q)

    def apply(x: np.ndarray, shift: float) -> np.ndarray:
        v = torch.as_tensor(x.reshape(-1), dtype=dtype, device=device)
        return (op(v) + shift * (q @ (q.T @ v))).double().cpu().numpy()

    def operator(shift: float) -> LinearOperator:
        return LinearOperator((dim, dim), matvec=lambda x: apply(x, shift), dtype=np.float64)

    v0 = np.random.default_rng(seed).standard_normal(dim)
    shift = 0.0
    if q.shape[1]:
        top = float(eigsh(operator(0.0), k=1, which="LA", tol=1e-3, v0=v0, return_eigenvectors=False)[0])
        shift = 10 * top if top > 0 else 1.0
    values, vectors = eigsh(operator(shift), k=k, which="SA", tol=tol, v0=v0)
    order = np.argsort(values)
    return (torch.as_tensor(values[order], dtype=dtype, device=device),
            torch.as_tensor(vectors[:, order], dtype=dtype, device=device))


def logdet_slq(matvec: MatVec, dim: int, *, n_probes: int = 16, n_iter: int = 40, deflate: torch.Tensor | None = None,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
               device=None) -> tuple[float, float]:
    """Stochastic Lanczos quadrature: (estimate, standard error over probes) of log det of P H P restricted to the
    complement of span(deflate), i.e. trace(log H) there (dimension dim - d); H must be positive definite there.

    Each Rademacher probe z [dim] is projected, z <- P z, and Lanczos (full re-orthogonalisation) from z / ||z||
    runs min(n_iter, dim - d) steps; with T = S diag(theta) S^T, z^T log(H) z ~ ||z||^2 sum_i S[0, i]^2 log theta_i
    (Gauss quadrature), an unbiased estimate of trace(P log(H) P) since E[P z z^T P] = P.
    """
    if device is None and deflate is not None:
        device = deflate.device
    q = _deflation(deflate, dim, dtype, device)
    n_free = dim - q.shape[1]
    if n_free < 1:
        raise InvalidValueError("deflate spans the whole space: nothing left to take the log-determinant of")
    if n_probes < 2 or n_iter < 1:
        raise InvalidValueError(f"need n_probes >= 2 and n_iter >= 1, got {n_probes} and {n_iter}")
    op = _deflated(matvec, q)
    samples = []
    for _ in range(n_probes):
        signs = torch.randint(0, 2, (dim,), generator=generator, device=device)
        z = _project(2 * signs.to(dtype) - 1, q)
        z_norm2 = z @ z
        *_, (_, t, _, _) = _lanczos_steps(op, z / z_norm2.sqrt(), q, min(n_iter, n_free))
        theta, s = torch.linalg.eigh(t)
        if theta[0] <= 0:
            raise InvalidValueError(f"operator is not positive definite on the complement of deflate "
                                    f"(Ritz value {theta[0].item():.3g} <= 0)")
        samples.append(z_norm2 * (s[0] ** 2 @ torch.log(theta)))
    samples_t = torch.stack(samples)
    return samples_t.mean().item(), (samples_t.std() / n_probes ** 0.5).item()
