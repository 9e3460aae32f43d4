"""Analytic first and second moments of the Gaussian-blurred density of a thermally fluctuating elastic network
(thesis ch. 4, Sec. 4.7.4-4.7.5), in real space and in Fourier space.

The density is ρ_q(x) = Σ_α f_α N(x_α + δ_α, q² I)(x) (Eq. 4.7) with displacements δ ~ N(0, C), C = kT U⁺ [3N, 3N] Å².
Positions x0 [N, 3] (Å) are relative to the origin of whatever frame the caller uses; frequencies k [M, 3] are in
1/Å and the Fourier transform is F(k) = ∫ ρ(x) exp(-2πi k·x) dx (docs/conventions.md). With g_α(k) =
f_α exp(-2πi k·x_α - 2π² kᵀ(C_αα + q² I)k),

    E F(k) = Σ_α g_α(k)                                                      (Eqs. 4.151-4.153)
    E F(ka) F(kb) = Σ_α,α' g_α(ka) g_α'(kb) exp(-4π² kaᵀ C_αα' kb)           (Eq. 4.176, corrected)

where the α = α' terms (Eq. 4.165) are the same formula with C_αα' = C_αα; the thesis prints their phase as
exp(+iπ x·(na + nb)/R), the conjugate of what the forward transform gives (docs/hetero.md, "Mechanical model").
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def covariance_blocks(cov: torch.Tensor) -> torch.Tensor:
    """3 x 3 blocks [N, N, 3, 3] of a displacement covariance [3N, 3N]."""
    n = cov.shape[0] // 3
    return cov.reshape(n, 3, n, 3).permute(0, 2, 1, 3)


def _self_blocks(cov: torch.Tensor) -> torch.Tensor:
    n = cov.shape[0] // 3
    idx = torch.arange(n, device=cov.device)
    return covariance_blocks(cov)[idx, idx]


def _log_gauss(d: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """log N(0, s)(d) for d [..., D] and covariances s [..., D, D] (broadcast)."""
    chol = torch.linalg.cholesky(s)
    z = torch.linalg.solve_triangular(chol, d.unsqueeze(-1).expand(*torch.broadcast_shapes(d.shape, s.shape[:-1]), 1), upper=False)
    logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * (z.squeeze(-1) ** 2).sum(-1) - 0.5 * logdet - 0.5 * d.shape[-1] * LOG_2PI


def mean_density(points: torch.Tensor, x0: torch.Tensor, cov: torch.Tensor, f: torch.Tensor, q: float) -> torch.Tensor:
    """ρ̄_q at points [P, 3] (Eq. 4.81): Σ_α f_α N(x_α, C_αα + q² I)(x)."""
    s = _self_blocks(cov) + q**2 * torch.eye(3, dtype=cov.dtype, device=cov.device)
    d = points[:, None, :] - x0[None]
    return (f * _log_gauss(d, s[None]).exp()).sum(-1)


def second_moment(xa: torch.Tensor, xb: torch.Tensor, x0: torch.Tensor, cov: torch.Tensor, f: torch.Tensor, q: float,
                  chunk: int = 64) -> torch.Tensor:
    """E[ρ_q(xa) ρ_q(xb)] at point pairs xa, xb [P, 3] (Eq. 4.130): the α = α' terms by Eq. 4.122, the others by Eq. 4.128."""
    eye3 = torch.eye(3, dtype=cov.dtype, device=cov.device)
    n = x0.shape[0]
    s_self = _self_blocks(cov) + 0.5 * q**2 * eye3
    diag = _log_gauss(xb - xa, 2 * q**2 * eye3).exp() * (
        f**2 * _log_gauss(0.5 * (xa + xb)[:, None, :] - x0[None], s_self[None]).exp()).sum(-1)
    blocks = covariance_blocks(cov)
    xab = torch.cat([xa, xb], -1)  # [P, 6]
    total = diag
    for a0 in range(0, n, chunk):
        a = torch.arange(a0, min(a0 + chunk, n), device=x0.device)
        bl = blocks[a]  # [c, N, 3, 3]
        w = torch.cat([torch.cat([blocks[a, a][:, None].expand_as(bl), bl], -1),
                       torch.cat([bl.transpose(-1, -2), _self_blocks(cov)[None].expand_as(bl)], -1)], -2)
        w = w + q**2 * torch.eye(6, dtype=cov.dtype, device=cov.device)
        mu = torch.cat([x0[a][:, None, :].expand(-1, n, 3), x0[None].expand(len(a), n, 3)], -1)  # [c, N, 6]
        logp = _log_gauss(xab[:, None, None, :] - mu[None], w[None])  # [P, c, N]
        weight = f[a][:, None] * f[None, :] * (a[:, None] != torch.arange(n, device=x0.device)[None])
        total = total + (weight * logp.exp()).sum((-1, -2))
    return total


def fourier_factors(freqs: torch.Tensor, x0: torch.Tensor, cov: torch.Tensor, f: torch.Tensor, q: float) -> torch.Tensor:
    """g_α(k) [M, N] complex: f_α exp(-2πi k·x_α - 2π² kᵀ(C_αα + q² I)k); their sum over α is E F(k) (Eq. 4.151)."""
    s = _self_blocks(cov) + q**2 * torch.eye(3, dtype=cov.dtype, device=cov.device)
    quad = torch.einsum("mi,nij,mj->mn", freqs, s, freqs)
    phase = -2 * math.pi * (freqs @ x0.T)
    return f * torch.polar(torch.exp(-2 * math.pi**2 * quad), phase)


def fourier_mean(freqs: torch.Tensor, x0: torch.Tensor, cov: torch.Tensor, f: torch.Tensor, q: float) -> torch.Tensor:
    """E F(k) [M] complex at frequencies [M, 3] 1/Å (Eq. 4.151-4.153 before the basis normalisation)."""
    return fourier_factors(freqs, x0, cov, f, q).sum(-1)


def fourier_second_moment(ka: torch.Tensor, kb: torch.Tensor, x0: torch.Tensor, cov: torch.Tensor, f: torch.Tensor,
                          q: float, centred: bool = False, chunk: int = 16) -> torch.Tensor:
    """E F(ka) F(kb) [Ma, Mb] complex (Eq. 4.176 with the corrected α = α' phase), summed exactly over mass pairs;
    `centred` subtracts E F(ka) E F(kb) (the covariance). Cost N² Ma Mb: the reference for `covariance_series`."""
    ga, gb = fourier_factors(ka, x0, cov, f, q), fourier_factors(kb, x0, cov, f, q)
    blocks = covariance_blocks(cov)
    n = x0.shape[0]
    out = torch.zeros(ka.shape[0], kb.shape[0], dtype=ga.dtype, device=ga.device)
    for a0 in range(0, n, chunk):
        a = slice(a0, min(a0 + chunk, n))
        cross = torch.einsum("xi,anij,yj->anxy", ka, blocks[a], kb)  # [c, N, Ma, Mb]
        e = torch.exp(-4 * math.pi**2 * cross)
        out += torch.einsum("xa,anxy,yn->xy", ga[:, a], (e - 1 if centred else e).to(ga.dtype), gb)
    return out


def _exponents(m: int) -> list[tuple[int, int, int]]:
    return [(i, j, m - i - j) for i in range(m, -1, -1) for j in range(m - i, -1, -1)]


def series_order(freqs: torch.Tensor, cov: torch.Tensor, tol: float = 1e-10) -> tuple[int, float]:
    """Order of `covariance_series` for a truncation error below `tol` relative to the largest first-order term,
    and x = max (2π|k|)² ‖C_αα‖₂, the largest value of |4π² kaᵀ C_αα' kb| (the series converges like e^x)."""
    kappa2 = float(((2 * math.pi * freqs) ** 2).sum(-1).max())
    x = kappa2 * float(torch.linalg.eigvalsh(_self_blocks(cov))[:, -1].max())
    order, term = 1, x
    while term * x / (order + 1) * math.exp(x) > tol * x and order < 64:
        order += 1
        term *= x / order
    return order, x


def covariance_series(weights: torch.Tensor, split: bool, freqs: torch.Tensor, x0: torch.Tensor, cov: torch.Tensor,
                      f: torch.Tensor, q: float, max_order: int, tol: float = 1e-10, chunk: int = 32) -> torch.Tensor:
    """Covariance of the real coefficients c = realify(weights @ F(freqs)) by the series
    exp(-4π² kaᵀ C kb) - 1 = Σ_m≥1 ((iκa)ᵀ C (iκb))^m / m!, κ = 2πk: terms are added until one changes the sum by
    less than `tol` (Frobenius, relative) or `max_order` (from `series_order`) is reached.

    weights [R, M] complex map Fourier values to coefficients; realify takes the real part (`split` False: the
    coefficients are real, e.g. a sine basis) or interleaves (Re, Im) (`split` True: 2R reals, Eq. 4.177-4.181).
    Term m is A_m T_m A_mᵀ with A_m[c, (α, p)] = realify(Σ_k weights[c, k] g_α(k) (iκ)^p) over the monomials p of
    degree m and T_m[(α, p), (α', p')] the coefficients of (uᵀ C_αα' v)^m, built from T_m-1 by two small matrix
    products per order (no loops over mass pairs; memory N² n_m², n_m = (m+1)(m+2)/2). Every term is positive
    semi-definite. Returns [n, n] with n = R or 2R.
    """
    n_mass = x0.shape[0]
    g = fourier_factors(freqs, x0, cov, f, q)  # [M, N]
    kappa = 2 * math.pi * freqs
    blocks = covariance_blocks(cov)
    t = torch.ones(n_mass, n_mass, 1, 1, dtype=cov.dtype, device=cov.device)
    prev = _exponents(0)
    out = None
    for m in range(1, max_order + 1):
        exps = _exponents(m)
        pos = {e: i for i, e in enumerate(exps)}
        up = torch.zeros(len(prev), len(exps), 3, dtype=cov.dtype, device=cov.device)  # up[q, p, i] = [p = q + e_i]
        for qi, e in enumerate(prev):
            for i in range(3):
                up[qi, pos[tuple(e[d] + (d == i) for d in range(3))], i] = 1
        pw = torch.tensor(exps, dtype=kappa.dtype, device=kappa.device)
        mono = (1j) ** m * torch.prod(kappa[:, None, :] ** pw[None], -1)  # [M, n_m]: (iκ)^p
        a = weights @ (g[:, :, None] * mono[:, None, :]).reshape(freqs.shape[0], -1)  # [R, N n_m]
        a = torch.stack([a.real, a.imag], 1).reshape(-1, a.shape[-1]) if split else a.real
        rows, n_m = a.shape[0], len(exps)
        nxt = torch.empty(n_mass, n_mass, n_m, n_m, dtype=cov.dtype, device=cov.device)
        y = torch.zeros(rows, n_mass * n_m, dtype=cov.dtype, device=cov.device)
        cols = a.reshape(rows, n_mass, n_m)
        for a0 in range(0, n_mass, chunk):
            sl = slice(a0, min(a0 + chunk, n_mass))
            z = (t[sl] @ up.reshape(len(prev), -1)).reshape(*t[sl].shape[:3], n_m, 3)  # right factor v: p' = q' + e_j
            w = torch.einsum("abqsj,abij->abiqs", z, blocks[sl])  # times C_ij
            nxt[sl] = up.permute(1, 2, 0).reshape(n_m, -1) @ w.reshape(*w.shape[:2], -1, n_m)  # left factor u: p = q + e_i
            y += torch.einsum("rap,abps->rbs", cols[:, sl], nxt[sl]).reshape(rows, -1)
        term = (y @ a.T) / math.factorial(m)
        out = term if out is None else out + term
        t, prev = nxt, exps
        if float(term.norm()) <= tol * float(out.norm()):
            break
    return 0.5 * (out + out.T)
