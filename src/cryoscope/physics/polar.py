"""Particle images on polar Fourier grids (rings) and their Fourier–Bessel coefficients.

As in Rangan et al.'s likelihood/Hessian formulation, an image transform Â(k, ψ) is sampled on rings of
radius k (Gauss–Legendre nodes on (0, k_max)) at n_psi equispaced angles ψ_q = 2π q / n_psi. Frequencies
are in cycles per box of N pixels (divide by N · pixel_size for 1/Å), with the centred DFT convention of
`cryoscope.physics.fourier`: Â(k) = Σ_x A(x) exp(-2πi k·x / N), x = index - N // 2.

The model ring of a particle is CTF(k) · T(k) · Ŝ(k) with `polar_ctf` and `shift_phases`; for a RELION origin o
(pixels) the particle centre sits at -o (`cryoscope.physics.forward`), so T(k) = exp(+2πi k·o / N).
Fourier–Bessel coefficients Ǎ(k, q) = (1/2π) ∫ Â(k, ψ) e^{-iqψ} dψ are the ring DFT / n_psi; an in-plane
rotation Â(k, ψ) ↦ Â(k, ψ - γ) multiplies them by e^{-iqγ}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.ctf import CTFParams, ctf_at
from cryoscope.physics.fourier import centered_coords

# Kernel block of `polar_transform`: at most this many [N*N, nodes] entries (cos and sin, 2 x 32 MB in float64).
_KERNEL_ENTRIES = 1 << 22


@dataclass(frozen=True, eq=False)
class PolarGrid:
    """Polar Fourier grid: rings `k` [n_k] (cycles per box) with Gauss–Legendre `radial_weights` [n_k] for
    ∫_0^k_max f(k) dk, and `n_psi` angles ψ_q = 2π q / n_psi per ring."""

    k: torch.Tensor
    radial_weights: torch.Tensor
    n_psi: int
    k_max: float

    def __post_init__(self):
        if self.k.dim() != 1 or self.radial_weights.shape != self.k.shape:
            shapes = f"{tuple(self.k.shape)} and {tuple(self.radial_weights.shape)}"
            raise InvalidValueError(f"ring radii and weights must be 1-D of equal length, got {shapes}")
        if self.n_psi < 1:
            raise InvalidValueError(f"n_psi must be >= 1, got {self.n_psi}")

    @property
    def psi(self) -> torch.Tensor:
        """[n_psi] ring angles in radians, 2π q / n_psi."""
        return torch.arange(self.n_psi, dtype=self.k.dtype, device=self.k.device) * (2 * math.pi / self.n_psi)

    def points(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Node coordinates kx, ky [n_k, n_psi] in cycles per box."""
        psi = self.psi
        return self.k[:, None] * torch.cos(psi), self.k[:, None] * torch.sin(psi)

    def area_weights(self) -> torch.Tensor:
        """[n_k] weights with Σ_{n,q} w[n] f(k_n, ψ_q) ≈ ∫∫_{|k|<k_max} f d²k, in (cycles per box)²."""
        return self.radial_weights * self.k * (2 * math.pi / self.n_psi)

    def inner(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Quadrature of Re conj(a) b over the disc: rings [..., n_k, n_psi] -> [...]."""
        shape = (self.k.shape[0], self.n_psi)
        if a.shape[-2:] != shape or b.shape[-2:] != shape:
            raise InvalidValueError(f"rings must end in {shape} (n_k, n_psi), got {tuple(a.shape)} and {tuple(b.shape)}")
        return ((a.conj() * b).real * self.area_weights()[:, None]).sum((-2, -1))


def polar_grid(k_max: float, n_shells: int, n_psi: int, dtype: torch.dtype = torch.float64, device=None) -> PolarGrid:
    """`n_shells` Gauss–Legendre rings on (0, k_max) (cycles per box) with `n_psi` angles each."""
    if not k_max > 0 or n_shells < 1:
        raise InvalidValueError(f"polar grid needs k_max > 0 and n_shells >= 1, got {k_max} and {n_shells}")
    x, w = np.polynomial.legendre.leggauss(n_shells)
    k = torch.as_tensor((x + 1) * (k_max / 2), dtype=dtype, device=device)
    weights = torch.as_tensor(w * (k_max / 2), dtype=dtype, device=device)
    return PolarGrid(k, weights, int(n_psi), float(k_max))


def polar_transform(images: torch.Tensor, grid: PolarGrid, chunk: int = 256) -> torch.Tensor:
    """Exact DFT Â(k) = Σ_x A(x) exp(-2πi k·x / N) of real images [J, N, N] ([y, x], x = index - N // 2) at the
    grid nodes -> complex [J, n_k, n_psi]; equals `fft2c` where a node is an integer frequency.

    A matmul of the flattened images with the [N*N, nodes] kernel, built in node blocks (phases in float64)
    and applied to `chunk` images at a time.
    """
    if images.dim() != 3 or images.shape[-1] != images.shape[-2]:
        raise InvalidValueError(f"images must be square [J, N, N], got shape {tuple(images.shape)}")
    if images.is_complex() or not images.is_floating_point():
        raise InvalidValueError(f"images must be real floating point, got {images.dtype}")
    box = images.shape[-1]
    if grid.k_max > box / 2:
        raise InvalidValueError(f"grid k_max {grid.k_max} exceeds Nyquist {box / 2} cycles per box for N = {box}")
    if chunk < 1:
        raise InvalidValueError(f"chunk must be >= 1, got {chunk}")
    kx, ky = (c.reshape(-1).to(images.device, torch.float64) for c in grid.points())
    x = centered_coords(box, images.device, torch.float64) * (-2 * math.pi / box)
    flat = images.reshape(images.shape[0], -1)
    out = images.new_empty(images.shape[0], kx.shape[0], dtype=torch.promote_types(images.dtype, torch.complex64))
    block = max(1, _KERNEL_ENTRIES // box**2)
    for p in range(0, kx.shape[0], block):
        phase = (x[:, None, None] * ky[p : p + block] + x[None, :, None] * kx[p : p + block]).reshape(box * box, -1)
        cos, sin = torch.cos(phase).to(images.dtype), torch.sin(phase).to(images.dtype)
        for j in range(0, flat.shape[0], chunk):
            out[j : j + chunk, p : p + block] = torch.complex(flat[j : j + chunk] @ cos, flat[j : j + chunk] @ sin)
    return out.reshape(images.shape[0], grid.k.shape[0], grid.n_psi)


def polar_ctf(params: CTFParams, grid: PolarGrid, box: int, pixel_size: float) -> torch.Tensor:
    """CTF of each particle at the grid nodes (k / (box · pixel_size) in 1/Å) -> real [J, n_k, n_psi] (grid dtype)."""
    if pixel_size <= 0:
        raise InvalidValueError(f"pixel size must be positive, got {pixel_size} Å")
    kx, ky = grid.points()
    scale = 1 / (box * pixel_size)
    return ctf_at(params, kx * scale, ky * scale)


def shift_phases(origins_px: torch.Tensor, grid: PolarGrid, box: int) -> torch.Tensor:
    """Phases exp(+2πi (kx ox + ky oy) / N) [J, n_k, n_psi] (complex, grid dtype) for RELION origins [J, 2] (x, y)
    in pixels: the transform of the particle moved to -o from the box centre (`ImageFormation`) is this phase times
    the transform of the centred one (exactly at integer frequencies; a continuous shift at other nodes)."""
    if origins_px.dim() != 2 or origins_px.shape[-1] != 2:
        raise InvalidValueError(f"origins must have shape [J, 2] (x, y), got {tuple(origins_px.shape)}")
    kx, ky = grid.points()
    o = origins_px.to(kx.dtype) * (2 * math.pi / box)
    angle = o[:, 0, None, None] * kx + o[:, 1, None, None] * ky
    return torch.polar(torch.ones_like(angle), angle)


def fourier_bessel(rings: torch.Tensor) -> torch.Tensor:
    """Fourier–Bessel coefficients Ǎ(k, q) = (1/n_psi) Σ_q' Â(ψ_q') e^{-iqψ_q'} of rings [..., n_psi] -> [..., n_psi],
    q in FFT order (0, 1, .., -1)."""
    return torch.fft.fft(rings, dim=-1, norm="forward")


def rings_from_fourier_bessel(coeffs: torch.Tensor) -> torch.Tensor:
    """Inverse of `fourier_bessel`: Â(ψ_q') = Σ_q Ǎ(q) e^{iqψ_q'}, [..., n_psi] -> [..., n_psi] complex."""
    return torch.fft.ifft(coeffs, dim=-1, norm="forward")


def rotate_rings(rings: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """In-plane rotation R_γ Â(k, ψ) = Â(k, ψ - γ) of rings [J, ..., n_psi] by angles gamma [J] (or a scalar), radians.

    Multiplies the Fourier–Bessel coefficients by e^{-iqγ}; for even n_psi the unpaired q = n_psi / 2 term is read
    as cos(n_psi ψ / 2) and multiplied by cos(n_psi γ / 2). Exact for rings that are trigonometric polynomials of
    degree < n_psi / 2 (plus that cosine), and a cyclic roll for γ = 2π m / n_psi. Returns complex rings.
    """
    if gamma.dim() > 1 or (gamma.dim() == 1 and (rings.dim() < 2 or gamma.shape[0] != rings.shape[0])):
        shapes = f"{tuple(gamma.shape)} and {tuple(rings.shape)}"
        raise InvalidValueError(f"gamma must be a scalar or [J] for rings [J, ..., n_psi], got {shapes}")
    n = rings.shape[-1]
    real = torch.promote_types(gamma.dtype, rings.real.dtype)
    q = torch.fft.fftfreq(n, 1 / n, dtype=real, device=rings.device)
    angle = -gamma.to(real).reshape(gamma.shape + (1,) * (rings.dim() - gamma.dim())) * q
    phase = torch.complex(torch.cos(angle), torch.sin(angle) * (q.abs() != n / 2))  # Nyquist: cos(n γ / 2)
    return rings_from_fourier_bessel(fourier_bessel(rings) * phase)
