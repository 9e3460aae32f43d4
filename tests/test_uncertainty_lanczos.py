"""Lanczos softest modes, deflation, the ARPACK cross-check and the SLQ log-determinant on dense float64 matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.uncertainty.lanczos import deflation_basis, eigsh_smallest, lanczos_smallest, logdet_slq


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return u


def _matrix(eigenvalues: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    h = basis @ torch.diag(eigenvalues) @ basis.T
    return (h + h.T) / 2


def _soft_pairs(h: torch.Tensor, q: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: the k smallest eigenpairs of P H P, discarding eigenvectors in span(q)."""
    p = torch.eye(h.shape[0], dtype=h.dtype) - q @ q.T
    values, vectors = np.linalg.eigh((p @ h @ p).numpy())
    keep = np.linalg.norm(q.numpy().T @ vectors, axis=0) < 0.5
    return values[keep][:k], vectors[:, keep][:, :k]


def test_smallest_eigenpairs_match_dense_eigh():
    n, k = 120, 5
    h = _matrix(torch.logspace(-3, 2, n, dtype=torch.float64), _orthogonal(n, 1))
    result = lanczos_smallest(lambda v: h @ v, n, k, generator=torch.Generator().manual_seed(2))
    values, vectors = np.linalg.eigh(h.numpy())
    np.testing.assert_allclose(result.eigenvalues.numpy(), values[:k], rtol=1e-8, atol=0)
    overlaps = np.abs(np.sum(result.eigenvectors.numpy() * vectors[:, :k], axis=0))
    assert np.all(overlaps > 1 - 1e-8), overlaps
    assert result.converged and result.eigenvectors.shape == (n, k)
    assert torch.all(result.residuals <= 1e-8 * values[-1])


def test_deflation_removes_null_space():
    n, k = 90, 4
    basis = _orthogonal(n, 3)
    lam = torch.cat([torch.zeros(3, dtype=torch.float64), torch.logspace(-2, 1, n - 3, dtype=torch.float64)])
    h = _matrix(lam, basis)
    mixed = basis[:, :3] @ torch.randn(3, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    q = deflation_basis(mixed)  # rank 3 from 5 dependent columns
    assert q.shape == (n, 3)
    result = lanczos_smallest(lambda v: h @ v, n, k, deflate=q, generator=torch.Generator().manual_seed(5))
    ref_values, _ = _soft_pairs(h, q, k)
    np.testing.assert_allclose(result.eigenvalues.numpy(), ref_values, rtol=1e-8, atol=0)
    np.testing.assert_allclose(ref_values, lam[3 : 3 + k].numpy(), rtol=1e-10)
    assert torch.linalg.matrix_norm(q.T @ result.eigenvectors) <= 1e-10


def test_eigsh_agrees_with_lanczos_on_deflated_problem():
    n, k = 60, 4
    h = _matrix(torch.logspace(-1, 1, n, dtype=torch.float64), _orthogonal(n, 6))
    q = deflation_basis(torch.randn(n, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    result = lanczos_smallest(lambda v: h @ v, n, k, deflate=q, generator=torch.Generator().manual_seed(8))
    values, vectors = eigsh_smallest(lambda v: h @ v, n, k, deflate=q)
    np.testing.assert_allclose(values.numpy(), result.eigenvalues.numpy(), rtol=1e-8, atol=0)
    np.testing.assert_allclose(values.numpy(), _soft_pairs(h, q, k)[0], rtol=1e-8, atol=0)
    overlaps = torch.abs(torch.sum(vectors * result.eigenvectors, dim=0))
    assert torch.all(overlaps > 1 - 1e-8), overlaps


def test_logdet_slq_matches_slogdet():
    n = 200
    h = _matrix(torch.linspace(0.5, 20.0, n, dtype=torch.float64), _orthogonal(n, 9))
    estimate, stderr = logdet_slq(lambda v: h @ v, n, n_probes=64, generator=torch.Generator().manual_seed(10))
    sign, exact = torch.linalg.slogdet(h)
    assert sign == 1
    assert abs(estimate - exact.item()) <= 3 * stderr
    assert abs(estimate - exact.item()) <= 0.05 * abs(exact.item())
    assert 0 < stderr < 0.05 * abs(exact.item())
    q = deflation_basis(torch.randn(n, 20, generator=torch.Generator().manual_seed(15), dtype=torch.float64))
    g = torch.Generator().manual_seed(16)
    estimate, stderr = logdet_slq(lambda v: h @ v, n, n_probes=64, deflate=q, generator=g)
    exact = np.sum(np.log(_soft_pairs(h, q, n - 20)[0]))  # log det on the complement of span q
    assert abs(estimate - exact) <= 3 * stderr
    assert abs(estimate - exact) <= 0.05 * abs(exact)


def test_invalid_operator_and_arguments():
    n = 50
    lam = torch.linspace(0.5, 20.0, n, dtype=torch.float64)
    lam[0] = -5.0
    h = _matrix(lam, _orthogonal(n, 11))
    with pytest.raises(InvalidValueError, match="not positive definite"):
        logdet_slq(lambda v: h @ v, n, generator=torch.Generator().manual_seed(12))
    q = deflation_basis(torch.randn(n, 2, dtype=torch.float64))
    with pytest.raises(InvalidValueError, match="k must be"):
        lanczos_smallest(lambda v: h @ v, n, 0)
    with pytest.raises(InvalidValueError, match="k must be"):
        lanczos_smallest(lambda v: h @ v, n, n - 1, deflate=q)
    with pytest.raises(InvalidValueError, match="max_iter"):
        lanczos_smallest(lambda v: h @ v, n, 5, max_iter=3)
    with pytest.raises(InvalidValueError, match="deflate must have shape"):
        lanczos_smallest(lambda v: h @ v, n + 1, 3, deflate=q)
    with pytest.raises(InvalidValueError, match="orthonormal"):
        lanczos_smallest(lambda v: h @ v, n, 3, deflate=2 * q)


def test_ritz_history_is_monotone():
    n, k = 80, 3
    h = _matrix(torch.logspace(-2, 2, n, dtype=torch.float64), _orthogonal(n, 13))
    seen = []
    result = lanczos_smallest(lambda v: h @ v, n, k, max_iter=40, generator=torch.Generator().manual_seed(14),
                              callback=lambda m, theta: seen.append((m, theta)))
    assert result.iterations == 40 and not result.converged
    assert len(result.ritz_history) == result.iterations == len(seen)
    assert [m for m, _ in seen] == list(range(1, 41))
    assert all(theta.shape == (m + 1,) for m, theta in enumerate(result.ritz_history))
    smallest = torch.stack([theta[0] for theta in result.ritz_history])
    assert torch.all(smallest[1:] <= smallest[:-1] + 1e-12)
    assert smallest[-1] >= 1e-2 - 1e-12  # Ritz values never pass below the smallest eigenvalue


def test_invariant_subspace_breakdown():
    h = torch.diag(torch.linspace(1.0, 10.0, 20, dtype=torch.float64))
    start = torch.zeros(20, dtype=torch.float64)
    start[:2] = 1.0  # spans the invariant subspace of the eigenvalues 1 and 1.47
    result = lanczos_smallest(lambda v: h @ v, 20, 2, start=start)
    assert result.iterations == 2 and result.converged
    np.testing.assert_allclose(result.eigenvalues.numpy(), [1.0, 1.0 + 9.0 / 19.0], rtol=1e-12)
    with pytest.raises(InvalidValueError, match="invariant subspace"):
        lanczos_smallest(lambda v: h @ v, 20, 3, start=start)
