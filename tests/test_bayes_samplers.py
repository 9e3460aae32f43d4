"""Samplers of the Bayesian engine against independent references: matrix Fisher vs Metropolis-Hastings,
Gamma / Dirichlet draws vs their moments."""

from __future__ import annotations

import torch

from cryoscope.bayes.draws import dirichlet, gamma
from cryoscope.geometry.matrix_fisher import proper_svd, sample_matrix_fisher
from cryoscope.geometry.rotations import axis_angle_to_matrix


def _mh_matrix_fisher(F: torch.Tensor, chains: int, steps: int, burn: int, step_rad: float, g: torch.Generator) -> torch.Tensor:
    """Random-walk Metropolis-Hastings on SO(3) (symmetric left perturbations) for p(R) ∝ exp(tr(Fᵀ R))."""
    R = torch.eye(3, dtype=F.dtype).expand(chains, 3, 3).clone()
    kept = []
    for t in range(steps):
        prop = axis_angle_to_matrix(torch.randn(chains, 3, generator=g, dtype=F.dtype) * step_rad) @ R
        log_a = ((F * prop).sum((-1, -2)) - (F * R).sum((-1, -2)))
        accept = torch.log(torch.rand(chains, generator=g, dtype=F.dtype)) < log_a
        R = torch.where(accept[:, None, None], prop, R)
        if t >= burn:
            kept.append(R)
    return torch.cat(kept)


def test_matrix_fisher_draws_match_metropolis_hastings_moments():
    g = torch.Generator().manual_seed(3)
    Q = axis_angle_to_matrix(torch.tensor([0.3, -1.1, 0.7], dtype=torch.float64))
    P = axis_angle_to_matrix(torch.tensor([-2.0, 0.4, 0.1], dtype=torch.float64))
    for d in ([4.0, 2.0, -1.0], [30.0, 12.0, 5.0], [0.5, 0.2, 0.1]):  # det F < 0, concentrated, near uniform
        F = Q @ torch.diag(torch.tensor(d, dtype=torch.float64)) @ P.T
        exact = sample_matrix_fisher(F.expand(20000, 3, 3), g)
        assert torch.allclose(exact.transpose(-1, -2) @ exact, torch.eye(3, dtype=F.dtype).expand(20000, 3, 3), atol=1e-10)
        assert bool((torch.det(exact) > 0).all())
        mh = _mh_matrix_fisher(F, chains=400, steps=600, burn=200, step_rad=0.5 / (1 + max(d)) ** 0.5, g=g)
        err = (exact.mean(0) - mh.mean(0)).abs().max()
        assert err < 0.03, (d, float(err))
    # the proper SVD reconstructs F with rotations
    U, dd, V = proper_svd(F)
    assert torch.allclose(U @ torch.diag(dd) @ V.T, F, atol=1e-12)
    assert torch.allclose(torch.det(U), torch.ones((), dtype=F.dtype)) and torch.allclose(torch.det(V), torch.ones((), dtype=F.dtype))


def test_gamma_and_dirichlet_draws_have_their_moments():
    g = torch.Generator().manual_seed(0)
    for shape, rate in ((0.4, 2.0), (3.0, 0.5), (150.0, 10.0)):
        x = gamma(torch.full((100000,), shape, dtype=torch.float64), rate, g)
        assert abs(float(x.mean()) - shape / rate) < 4 * (shape**0.5 / rate) / 100000**0.5
        assert abs(float(x.var()) / (shape / rate**2) - 1) < 0.05
    alpha = torch.tensor([0.5, 2.0, 7.5], dtype=torch.float64)
    w = dirichlet(alpha.expand(100000, 3), g)
    assert torch.allclose(w.sum(-1), torch.ones(100000, dtype=torch.float64))
    assert torch.allclose(w.mean(0), alpha / alpha.sum(), atol=3e-3)


def test_chordal_mean_of_rotations_spread_symmetrically_about_r_is_r():
    from cryoscope.geometry.matrix_fisher import chordal_mean
    from cryoscope.geometry.sampling import random_rotations

    g = torch.Generator().manual_seed(0)
    r = random_rotations(2, g, dtype=torch.float64)
    v = torch.randn(50, 2, 3, generator=g, dtype=torch.float64) * 0.3
    spread = torch.cat([axis_angle_to_matrix(v), axis_angle_to_matrix(-v)]) @ r  # pairs exp(±v) R
    assert torch.allclose(chordal_mean(spread), r, atol=1e-12)


def test_bingham_envelope_parameter_solves_its_equation():
    # Kent et al.'s optimal b: Σ_i 1 / (b + 2 λ_i) = 1, with one λ = 0 and the others from 0 to 1e6
    from cryoscope.geometry.matrix_fisher import _acg_parameter

    g = torch.Generator().manual_seed(4)
    lam = torch.rand(20_000, 4, generator=g, dtype=torch.float64) * 10 ** (6 * torch.rand(20_000, 1, generator=g, dtype=torch.float64))
    lam[:, 0] = 0
    lam[:100, 1:] = 0  # uniform: b = 4
    b = _acg_parameter(lam)
    assert ((1 / (b[:, None] + 2 * lam)).sum(-1) - 1).abs().max() < 1e-12
    assert torch.allclose(b[:100], torch.full((100,), 4.0, dtype=torch.float64))
