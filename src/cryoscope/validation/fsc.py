"""Fourier shell / ring correlation and resolution estimates.

Shells have width 1 in cycles per box: shell index round(|k|), |k| in cycles/box
(`cryoscope.physics.fourier.radial_index_3d`). Shell `i` of a box of size N has
frequency i / N cycles/pixel; shells 0 .. N // 2 are returned (corners beyond Nyquist are dropped).
"""

from __future__ import annotations

import math

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.fourier import fft2c, fft3c, radial_index_2d, radial_index_3d


def shell_frequencies(box: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """[box // 2 + 1] shell frequencies in cycles/pixel (shell / box)."""
    return torch.arange(box // 2 + 1, device=device, dtype=dtype) / box


def _shell_sums(x: torch.Tensor, index: torch.Tensor, n_shells: int) -> torch.Tensor:
    """Sum `x` [..., *grid] over shells given by `index` [*grid] -> [..., n_shells]."""
    flat = x.reshape(*x.shape[: x.dim() - index.dim()], -1)
    idx = index.reshape(-1)
    keep = idx < n_shells
    out = flat.new_zeros(*flat.shape[:-1], n_shells)
    return out.index_add_(-1, idx[keep], flat[..., keep])


def _correlate_shells(F1: torch.Tensor, F2: torch.Tensor, index: torch.Tensor, n_shells: int) -> torch.Tensor:
    num = _shell_sums((F1 * F2.conj()).real, index, n_shells)
    p1 = _shell_sums(F1.real**2 + F1.imag**2, index, n_shells)
    p2 = _shell_sums(F2.real**2 + F2.imag**2, index, n_shells)
    den = torch.sqrt(p1 * p2)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))


def _check_pair(a: torch.Tensor, b: torch.Tensor, ndim: int, what: str) -> None:
    if a.shape != b.shape:
        raise InvalidValueError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() < ndim or len(set(a.shape[-ndim:])) != 1:
        raise InvalidValueError(f"{what}: expected cubic/square arrays in the last {ndim} axes, got {tuple(a.shape)}")


def fsc(vol1: torch.Tensor, vol2: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Fourier shell correlation of volumes [..., N, N, N] -> [..., N // 2 + 1] (shell i at i / N cycles/pixel).

    A (soft) real-space `mask` [N, N, N] in [0, 1] multiplies both maps first.
    """
    _check_pair(vol1, vol2, 3, "FSC")
    if mask is not None:
        vol1, vol2 = vol1 * mask, vol2 * mask
    n = vol1.shape[-1]
    index = radial_index_3d(n, vol1.device)
    return _correlate_shells(fft3c(vol1), fft3c(vol2), index, n // 2 + 1)


def frc(img1: torch.Tensor, img2: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Fourier ring correlation of images [..., N, N] (batched) -> [..., N // 2 + 1]."""
    _check_pair(img1, img2, 2, "FRC")
    if mask is not None:
        img1, img2 = img1 * mask, img2 * mask
    n = img1.shape[-1]
    index = radial_index_2d(n, img1.device)
    return _correlate_shells(fft2c(img1), fft2c(img2), index, n // 2 + 1)


def resolution_at(
    curve: torch.Tensor, threshold: float, box: int, voxel_size: float | None = None
) -> tuple[float, float | None]:
    """Resolution where a 1-D FSC/FRC curve first drops below `threshold`.

    Linear interpolation between the last shell at or above the threshold and the first below
    (searched from shell 1). Returns (frequency in cycles/pixel, resolution in Å or None without
    `voxel_size`). A curve that never crosses gives the last shell (Nyquist, 0.5 for even boxes);
    one already below at shell 0 gives frequency 0 (resolution inf).
    """
    c = curve.detach().to("cpu", torch.float64).reshape(-1)
    if c.numel() < 2:
        raise InvalidValueError(f"FSC curve needs at least 2 shells, got {c.numel()}")
    freqs = shell_frequencies(box)[: c.numel()]
    below = torch.nonzero(c[1:] < threshold).flatten()
    if below.numel() == 0:
        f = float(freqs[-1])
    else:
        i = int(below[0]) + 1
        hi, lo = float(c[i - 1]), float(c[i])
        if hi < threshold:
            f = 0.0
        else:
            t = (hi - threshold) / (hi - lo)
            f = float(freqs[i - 1]) + t * float(freqs[i] - freqs[i - 1])
    if voxel_size is None:
        return f, None
    return f, (voxel_size / f if f > 0 else math.inf)


def fsc_truth_from_half(fsc_half: torch.Tensor) -> torch.Tensor:
    """FSC of the full map against the truth from the half-map FSC: sqrt(2 FSC / (1 + FSC)), 0 where FSC <= 0.

    Rosenthal & Henderson (2003), the C_ref weighting.
    """
    f = fsc_half.clamp(min=0.0, max=1.0)
    return torch.sqrt(2 * f / (1 + f))


def fsc_weighting(fsc_curve: torch.Tensor) -> torch.Tensor:
    """Per-shell filter weight sqrt(2 FSC / (1 + FSC)) for a half-map FSC, clipped at 0."""
    return fsc_truth_from_half(fsc_curve)
