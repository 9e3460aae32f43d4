"""Particle rings for the soft-mode engine: from particle images, or simulated from a map (Rangan et al. §18)."""

from __future__ import annotations

import math

import torch

from cryoscope.physics.ctf import CTFParams
from cryoscope.physics.polar import polar_ctf, polar_transform, shift_phases
from cryoscope.representations.shells import ShellBasis
from cryoscope.uncertainty.data import ParticleRings, polar_grid_of
from cryoscope.uncertainty.likelihood import RingLikelihood


def rings_from_images(
    images: torch.Tensor, rotations: torch.Tensor, basis: ShellBasis, n_psi: int, ctf: CTFParams | None = None,
    origins_px: torch.Tensor | None = None, pixel_size: float = 1.0,
) -> ParticleRings:
    """Images [J, N, N] (N = basis.box) with RELION rotations [J, 3, 3], CTF parameters and origins (pixels)."""
    grid = polar_grid_of(basis, n_psi)
    dtype, device = basis.k.dtype, basis.k.device
    rings = polar_transform(images.to(device, dtype), grid)
    ctf_rings = None if ctf is None else polar_ctf(ctf.to(device), grid, basis.box, pixel_size).to(dtype)
    phases = None if origins_px is None else shift_phases(origins_px.to(device, dtype), grid, basis.box)
    return ParticleRings(rings, rotations.to(device, dtype), ctf_rings, phases)


def simulate_rings(basis: ShellBasis, x: torch.Tensor, rotations: torch.Tensor, n_psi: int, ctf: CTFParams | None = None,
                   pixel_size: float = 1.0, chunk: int = 32) -> ParticleRings:
    """Noiseless synthetic images (templates of the shell map x, the low-temperature limit of §18.1)."""
    grid = polar_grid_of(basis, n_psi)
    ctf = None if ctf is None else ctf.to(basis.k.device)
    ctf_rings = None if ctf is None else polar_ctf(ctf, grid, basis.box, pixel_size).to(basis.k.dtype)
    empty = torch.zeros(rotations.shape[0], basis.n_shells, n_psi, dtype=torch.complex64 if basis.k.dtype == torch.float32 else torch.complex128,
                        device=basis.k.device)
    data = ParticleRings(empty, rotations.to(basis.k.device, basis.k.dtype), ctf_rings)
    lik = RingLikelihood(basis, data, chunk=chunk)
    with torch.no_grad():
        rings = torch.cat([lik.templates(x, s) for s in lik.chunks()])
    return data.with_rings(rings)


def disc_dof(k_max: float) -> float:
    """Independent real values per image inside |k| < k_max (cycles per box): the disc's area in Fourier pixels."""
    return math.pi * k_max**2


def temperature_from_residuals(ell: torch.Tensor, k_max: float) -> float:
    """σ̂² from per-image residuals ℓ_j = ½ ∫ |Â - Ŝ|² d²k: white noise of variance σ̂² per Fourier pixel gives
    E ℓ = ½ π k_max² σ̂²."""
    return float(2 * ell.mean() / disc_dof(k_max))


def temperature_from_snr(signal_ell: torch.Tensor, k_max: float, snr: float) -> float:
    """σ̂² that gives the images a signal-to-noise power ratio `snr` inside the band (signal_ell = ½ ∫ |Ŝ|² d²k)."""
    return float(2 * signal_ell.mean() / (disc_dof(k_max) * snr))
