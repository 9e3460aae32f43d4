"""Centred discrete Fourier transforms and frequency grids.

Convention: arrays are centred at index N // 2 in real and Fourier space, and
F[k] = sum_x f[x] exp(-2 pi i k.x / N), i.e. fftshift(fftn(ifftshift(f))).
Frequencies are in cycles per box (integers k, |k| <= N // 2); divide by N * voxel_size for 1/Å.
"""

from __future__ import annotations

import torch


def fft2c(img: torch.Tensor) -> torch.Tensor:
    """Centred 2-D DFT over the last two axes ([..., y, x])."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(img, dim=(-2, -1))), dim=(-2, -1))


def ifft2c(F: torch.Tensor) -> torch.Tensor:
    """Inverse of `fft2c` (complex output; take .real for real images)."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(F, dim=(-2, -1))), dim=(-2, -1))


def fft3c(vol: torch.Tensor) -> torch.Tensor:
    """Centred 3-D DFT over the last three axes ([..., z, y, x])."""
    dims = (-3, -2, -1)
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(vol, dim=dims), dim=dims), dim=dims)


def ifft3c(F: torch.Tensor) -> torch.Tensor:
    """Inverse of `fft3c`."""
    dims = (-3, -2, -1)
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(F, dim=dims), dim=dims), dim=dims)


def centered_coords(n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Integer coordinates -N//2 ... (N-1)//2 (pixels, or cycles per box in Fourier space)."""
    return torch.arange(n, device=device, dtype=dtype) - n // 2


def freq_grid_2d(n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[n, n, 2] grid of (kx, ky) in cycles per box, centred at index n // 2."""
    k = centered_coords(n, device, dtype)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    return torch.stack([kx, ky], -1)


def radial_index_2d(n: int, device=None) -> torch.Tensor:
    """[n, n] integer shell index round(|k|) in cycles per box."""
    return freq_grid_2d(n, device, torch.float64).norm(dim=-1).round().long()


def radial_index_3d(n: int, device=None) -> torch.Tensor:
    """[n, n, n] integer shell index round(|k|) in cycles per box."""
    k = centered_coords(n, device, torch.float64)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    return torch.sqrt(kx**2 + ky**2 + kz**2).round().long()
