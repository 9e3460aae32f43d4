"""What the estimated mean and covariance say (dissertation §2.6.5): FSC and energy in coefficient space, the hand,
gain matching of two datasets, spherically averaged standard deviations and per-atom standard deviations.

Lengths are in pixels and frequencies in cycles per pixel (multiply by the voxel size / divide for Å).
"""

from __future__ import annotations

import math

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.hetero.moments_basis import realify
from cryoscope.physics.fourier import centered_coords
from cryoscope.representations.spherical_basis import SphericalBasis, quadratic_form


def shell_amplitudes(basis: SphericalBasis, coeffs: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """a_{l,n}(k) = Σ_p c_{l,n,p} H_{l,p}(k) [n_k, n_angular]: P(k u) = Σ_{l,n} (-i)^l a_{l,n}(k) Ψ_{l,n}(u)."""
    H = basis.hankel(k.to(coeffs)) * coeffs  # [n_k, N_c]
    out = coeffs.new_zeros(k.shape[0], basis.n_angular)
    return out.index_add_(1, basis.angular_index.to(coeffs.device), H)


def shell_correlation(basis: SphericalBasis, c1: torch.Tensor, c2: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(FSC(k), S_11(k), S_22(k)) of two means (Eq. 2.15–2.18): S_12(k) = ∫ P_1(k u) conj P_2(k u) dΩ exactly, the
    energies S_ii being the FSC denominators. k [n_k] in cycles/pixel."""
    a1, a2 = shell_amplitudes(basis, c1, k), shell_amplitudes(basis, c2, k)
    s12, s11, s22 = (a1 * a2).sum(1), a1.pow(2).sum(1), a2.pow(2).sum(1)
    return s12 / torch.sqrt(s11 * s22).clamp_min(1e-300), s11, s22


def flip_hand(basis: SphericalBasis, mean: torch.Tensor, covariance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The other hand ρ'(x) = ρ(-x) (Eq. 2.12): odd-l coefficients change sign; a full covariance becomes S V S
    (S = diag((-1)^l)) and a diagonal one is unchanged."""
    sign = (1 - 2 * (basis.l % 2)).to(mean)
    if covariance is None or covariance.dim() == mean.dim():
        return mean * sign, covariance
    return mean * sign, covariance * sign[..., :, None] * sign[..., None, :]


def capsid_region(maps: list[torch.Tensor], r_min: float, r_max: float, fraction: float = 0.1) -> torch.Tensor:
    """Region C of §2.6.5: voxels within r_min <= r <= r_max (pixels) whose mean exceeds `fraction` of the peak
    in that annulus, in every map; boolean [N, N, N]."""
    box = maps[0].shape[-1]
    c = centered_coords(box, maps[0].device, torch.float64)
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    r = torch.sqrt(x * x + y * y + z * z)
    region = (r >= r_min) & (r <= r_max)
    if not bool(region.any()):
        raise InvalidValueError(f"no voxels between radii {r_min} and {r_max} pixels")
    out = region.clone()
    for m in maps:
        out &= m > fraction * m[region].max()
    return out


def gain(reference: torch.Tensor, other: torch.Tensor, region: torch.Tensor) -> float:
    """g = Σ_C ρ0 ρ1 / Σ_C ρ1² (Eq. 2.14): scale `other` to `reference` over region C. Apply g to a mean, g² to a
    variance and |g| to a standard deviation."""
    den = float((other[region] ** 2).sum())
    if den <= 0:
        raise InvalidValueError("the map to scale is zero over the comparison region")
    return float((reference[region] * other[region]).sum()) / den


def radial_variance(basis: SphericalBasis, covariance: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Spherical average (1/4π) ∫ v(r u) dΩ [n_r] of the variance map at radii r (pixels), exactly:
    (1/4π) Σ_{l,n} Σ_{p,p'} V_{lnp,lnp'} h_{l,p}(r) h_{l,p'}(r) (Ψ orthonormal on the sphere)."""
    h = basis.radial(r.to(covariance))  # [n_r, N_c]
    if covariance.dim() == 1:
        return (h * h * covariance).sum(1) / (4 * math.pi)
    same = basis.angular_index[:, None] == basis.angular_index[None, :]
    return torch.einsum("ra,ab,rb->r", h, covariance * same.to(covariance), h) / (4 * math.pi)


def radial_sd(basis: SphericalBasis, covariance: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """s̄(r) = sqrt of the spherically averaged variance (Eq. 2.19)."""
    return radial_variance(basis, covariance, r).clamp_min(0).sqrt()


def fractional_difference(s1: torch.Tensor, s2: torch.Tensor, r: torch.Tensor, r1: float, r2: float) -> torch.Tensor:
    """d̄(r) = (s̄1(r) - s̄2(r)) / mean of s̄2 over r1 <= r <= r2 (Eq. 2.20, taking its denominator as the radial
    average of s̄2, which makes d̄ dimensionless; the printed equation's extra factor x would give it units of length).
    r [n_r] must be increasing; the average is by the trapezoid rule."""
    inside = (r >= r1) & (r <= r2)
    if int(inside.sum()) < 2:
        raise InvalidValueError(f"need at least two radii between {r1} and {r2}")
    rr, ss = r[inside], s2[inside]
    average = torch.trapezoid(ss, rr) / (rr[-1] - rr[0])
    return (s1 - s2) / average


def sd_at_points(basis: SphericalBasis, covariance: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Standard deviation s(x) = sqrt(φ(x)^T V φ(x)) at points [n, 3] (pixels from the centre, x y z)."""
    return quadratic_form(basis.functions(points.to(covariance)), covariance).clamp_min(0).sqrt()


def to_rectangular(basis: SphericalBasis, rect, pixel_size: float) -> torch.Tensor:
    """B [n_rect, N_c]: the coefficients, in a box or sine basis of the mechanical model (`hetero.moments_basis`,
    lengths in Å, real representation), of each spherical basis function (Eqs. 4.184–4.202 solved exactly: the
    spherical functions vanish outside the ball, so the integrals over the cube are Fourier transforms).

    Density values are kept (ρ_Å(x) = ρ(x / pixel size)), so F_Å(k) = pixel_size³ P(k · pixel_size); the particle
    centre is the origin of the mechanical frame. Then ĉ_rect = B c̄ and V̂_rect = B V Bᵀ.
    """
    freqs, weights = rect.fourier_terms()  # k [M, 3] in 1/Å; φ_c(x + centre) = Σ_k w[c, k] e^{-2πi k·x}
    centre = torch.tensor(rect.centre, dtype=torch.float64, device=freqs.device)
    F = basis.fourier(freqs * pixel_size) * pixel_size**3 * torch.exp(2j * math.pi * (freqs @ centre))[:, None]  # of ρ(x + centre)
    return realify((weights @ F).T, rect).T
