"""Isotropic Gaussian mixtures: density, voxel rendering, exact projections and their Fourier transforms.

A mixture has centres c_m (Å, (x, y, z) about the box centre, i.e. voxel N // 2 is the origin),
amplitudes a_m (integrated mass of each Gaussian) and widths sigma_m (Å):

    V(r) = sum_m a_m (2 pi sigma_m^2)^(-3/2) exp(-|r - c_m|^2 / (2 sigma_m^2))      (mass per Å^3)

Sampled arrays hold mass per voxel/pixel: the density at the voxel centre times voxel_size^d. Then
summing a rendered map along z is the projection, sums over the box are total mass, and the centred
DFT of a rendered image equals the continuous transform at k / (N voxel_size) (up to aliasing).

Projection with RELION matrix A (docs/conventions.md): image(x, y) = ∫ V(A^T (x, y, z)) dz, a sum of 2-D
Gaussians of the same a_m and sigma_m centred at (A c_m)_xy, whose centred transform is

    F(k) = sum_m a_m exp(-2 pi^2 sigma_m^2 |k|^2) exp(-2 pi i k . (A c_m)_xy),   k in 1/Å.

Centres, amplitudes and sigmas may be shared ([M, 3], [M], [M]) or per particle ([n, M, 3], [n, M], [n, M]).
"""

from __future__ import annotations

import math

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.fourier import centered_coords

# Bounds on the elements of one transient factor in rendering: [chunk, box, box] for volumes (few passes over the
# output), [chunk, M, box] for images (cache-sized: 6-7x faster than 2^24 for 1000-5000 projections at K = 100-1000,
# where the large blocks went to fresh pages on every call).
_RENDER_CHUNK = 1 << 24
_PROJECT_CHUNK = 1 << 18


def _check(centres: torch.Tensor, amplitudes: torch.Tensor, sigmas: torch.Tensor) -> None:
    if centres.shape[-1] != 3 or centres.dim() not in (2, 3):
        raise InvalidValueError(f"Gaussian centres must have shape [M, 3] or [n, M, 3], got {tuple(centres.shape)}")
    if amplitudes.shape[-1] != centres.shape[-2] or sigmas.shape[-1] != centres.shape[-2]:
        raise InvalidValueError(
            f"{centres.shape[-2]} Gaussian centres but {amplitudes.shape[-1]} amplitudes and {sigmas.shape[-1]} widths"
        )


def density(points: torch.Tensor, centres: torch.Tensor, amplitudes: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Mixture density (mass per Å^3) at points [..., 3] (x, y, z) Å, for a shared mixture [M, 3] -> [...]."""
    _check(centres, amplitudes, sigmas)
    d2 = ((points[..., None, :] - centres) ** 2).sum(-1)
    norm = amplitudes * (2 * math.pi * sigmas**2) ** -1.5
    return (norm * torch.exp(-d2 / (2 * sigmas**2))).sum(-1)


def _gauss_1d(x: torch.Tensor, centre: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """exp(-(x - c)^2 / (2 sigma^2)) / (sqrt(2 pi) sigma): centre, sigma [..., M], x [N] -> [..., M, N]."""
    s = sigma[..., None]
    return torch.exp(-((x - centre[..., None]) ** 2) / (2 * s * s)) / (math.sqrt(2 * math.pi) * s)


def render_volume(centres: torch.Tensor, amplitudes: torch.Tensor, sigmas: torch.Tensor, box: int, voxel_size: float) -> torch.Tensor:
    """Map [box, box, box] ([z, y, x]; [n, ...] for per-particle mixtures) of mass per voxel.

    Separable evaluation: a sum over M of outer products of 1-D Gaussians (exact, no truncation).
    """
    _check(centres, amplitudes, sigmas)
    x = centered_coords(box, centres.device, centres.dtype) * voxel_size
    m = centres.shape[-2]
    chunk = max(1, _RENDER_CHUNK // box**2)
    out = None
    for i in range(0, m, chunk):
        c, a, s = centres[..., i : i + chunk, :], amplitudes[..., i : i + chunk], sigmas[..., i : i + chunk]
        gx, gy, gz = (_gauss_1d(x, c[..., j], s) * voxel_size for j in range(3))
        part = torch.einsum("...mz,...my,...mx->...zyx", gz * a[..., None], gy, gx)
        out = part if out is None else out + part
    return out


def _rotated_xy(centres: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """(A c_m)_xy for matrices [n, 3, 3] -> [n, M, 2]."""
    pattern = "nij,mj->nmi" if centres.dim() == 2 else "nij,nmj->nmi"
    return torch.einsum(pattern, rotations[:, :2, :].to(centres.dtype), centres)


def _per_image(c2: torch.Tensor, amplitudes: torch.Tensor, sigmas: torch.Tensor, box: int, kernel) -> torch.Tensor:
    """Sum over Gaussians of separable images, in chunks of particles bounding the [chunk, M, box] factors."""
    n, m = c2.shape[:2]
    a = amplitudes.expand(n, -1)
    s = sigmas.expand(n, -1)
    chunk = max(1, _PROJECT_CHUNK // (m * box))
    out = []
    for i in range(0, n, chunk):
        fy, fx = kernel(c2[i : i + chunk], s[i : i + chunk])
        out.append(torch.einsum("nm,nmy,nmx->nyx", a[i : i + chunk].to(fx.dtype), fy, fx))
    return torch.cat(out)


def project(
    centres: torch.Tensor, amplitudes: torch.Tensor, sigmas: torch.Tensor, rotations: torch.Tensor, box: int, pixel_size: float,
    shifts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact projections [n, box, box] (mass per pixel) along z of the mixture rotated by matrices [n, 3, 3], each
    translated in-plane by `shifts` [n, 2] (x, y; Å) if given."""
    _check(centres, amplitudes, sigmas)
    x = centered_coords(box, centres.device, centres.dtype) * pixel_size

    def kernel(c2, s):
        return _gauss_1d(x, c2[..., 1], s) * pixel_size, _gauss_1d(x, c2[..., 0], s) * pixel_size

    c2 = _rotated_xy(centres, rotations)
    if shifts is not None:
        c2 = c2 + shifts.to(c2.dtype)[:, None, :]
    return _per_image(c2, amplitudes, sigmas, box, kernel)


def fourier_slice(
    centres: torch.Tensor, amplitudes: torch.Tensor, sigmas: torch.Tensor, rotations: torch.Tensor, box: int, pixel_size: float
) -> torch.Tensor:
    """Analytic centred transforms [n, box, box] (complex) of `project`, on the grid of `fourier.fft2c`.

    F(k) = sum_m a_m exp(-2 pi^2 sigma_m^2 |k|^2) exp(-2 pi i k . (A c_m)_xy), k = (index - box // 2) / (box * pixel_size).
    Equals fft2c(project(...)) for Gaussians well inside the box and wider than about a pixel.
    """
    _check(centres, amplitudes, sigmas)
    k = centered_coords(box, centres.device, centres.dtype) / (box * pixel_size)

    def kernel(c2, s):
        envelope = torch.exp(-2 * math.pi**2 * (s[..., None] * k) ** 2)
        return (torch.polar(envelope, -2 * math.pi * c2[..., i : i + 1] * k) for i in (1, 0))

    return _per_image(_rotated_xy(centres, rotations), amplitudes, sigmas, box, kernel)
