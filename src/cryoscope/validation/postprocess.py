"""Post-processing of two gold-standard half-maps (RELION's PostProcess): the masked FSC corrected for the mask by
phase randomisation, the Guinier B-factor and the sharpened, FSC-weighted map.

- Mask correction (Chen et al. 2013): a mask multiplies both half-maps, and its own transform, convolved with the
  strong low-resolution signal they share, correlates their high frequencies. The half-maps are therefore also
  masked after their phases were randomised beyond the shell where the unmasked FSC falls below `randomize_at`
  (0.8). What that masked FSC of randomised maps still shows is the mask's doing, and beyond that shell
  FSC_true = (FSC_masked - FSC_random) / (1 - FSC_random).
- B-factor (Rosenthal & Henderson 2003): the shell-averaged amplitude of the masked full map falls as
  F(s) = F0 exp(-B s² / 4) (s = 1 / d, Å⁻¹); B is -4 x the least-squares slope of ln F against s² from `fit_from`
  (10 Å) to the FSC 0.143 resolution.
- Sharpening: the full map (the half-maps' average) times exp(-B_apply s² / 4), B_apply = -B (or a user's B_apply,
  negative to sharpen, RELION's --adhoc_bfac), weighted by
  sqrt(2 FSC_true / (1 + FSC_true)) per shell and cut beyond the FSC 0.143 resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.filters import frequency_magnitude, radial_average
from cryoscope.physics.fourier import fft3c, ifft3c, radial_index_3d
from cryoscope.validation.fsc import fsc, fsc_weighting, resolution_at


@dataclass
class PostProcessed:
    """Curves [N // 2 + 1] (shell i at i / N cycles/pixel), the shell whose phases were randomised and beyond, the
    corrected resolutions (cycles/pixel), the B-factor fitted (Å², None if the fit range holds < 3 shells) and applied,
    and the sharpened map [N, N, N] (unmasked; multiply by the mask for the masked one)."""

    fsc_unmasked: torch.Tensor
    fsc_masked: torch.Tensor
    fsc_randomized: torch.Tensor
    fsc_corrected: torch.Tensor
    randomize_shell: int | None
    resolution_0143: float
    resolution_05: float
    bfactor_fitted: float | None
    bfactor_applied: float
    sharpened: torch.Tensor


def randomize_phases(vol: torch.Tensor, from_shell: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`vol` [N, N, N] with the phases of shells >= `from_shell` replaced by random ones and the amplitudes kept.
    The phases are those of a white-noise map's transform, which is Hermitian, so the result stays real."""
    noise = torch.randn(vol.shape, generator=generator, dtype=vol.dtype).to(vol.device)
    P = fft3c(noise)
    F = fft3c(vol)
    random = F.abs() * P / P.abs().clamp_min(torch.finfo(vol.dtype).tiny)
    beyond = radial_index_3d(vol.shape[-1], vol.device) >= from_shell
    return ifft3c(torch.where(beyond, random, F)).real.to(vol.dtype)


def mask_corrected_fsc(
    half1: torch.Tensor, half2: torch.Tensor, mask: torch.Tensor, randomize_at: float = 0.8, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int | None]:
    """(unmasked, masked, masked phase-randomised, corrected) FSC curves and the randomisation shell: the first shell
    (from 1) where the unmasked FSC falls below `randomize_at`; None, and no correction, if it never does."""
    unmasked, masked = fsc(half1, half2), fsc(half1, half2, mask)
    below = torch.nonzero(unmasked[1:] < randomize_at).flatten()
    if below.numel() == 0:
        return unmasked, masked, torch.zeros_like(masked), masked.clone(), None
    shell = int(below[0]) + 1
    r1, r2 = randomize_phases(half1, shell, generator), randomize_phases(half2, shell, generator)
    randomized = fsc(r1, r2, mask)
    n = torch.arange(masked.numel(), device=masked.device)
    corrected = torch.where(n >= shell, (masked - randomized) / (1 - randomized).clamp_min(1e-6), masked)
    return unmasked, masked, randomized, corrected, shell


def guinier_bfactor(vol: torch.Tensor, voxel_size: float, fit_from: float, fit_to: float) -> float | None:
    """B (Å²) with shell-averaged amplitudes ∝ exp(-B s² / 4), fitted by least squares of ln F on s² over the shells
    between `fit_from` and `fit_to` Å (fit_from > fit_to); None if fewer than 3 shells lie there."""
    n = vol.shape[-1]
    s = torch.arange(n // 2 + 1, dtype=torch.float64) / (n * voxel_size)  # Å⁻¹
    amp = radial_average(fft3c(vol.double()).abs(), ndim=3).cpu()  # mean |F| per shell
    use = (s >= 1 / fit_from) & (s <= 1 / fit_to) & (amp > 0)
    if int(use.sum()) < 3:
        return None
    x, y = s[use] ** 2, amp[use].log()
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    return -4.0 * slope


def sharpen(vol: torch.Tensor, voxel_size: float, bfactor: float, weights: torch.Tensor, cutoff: float) -> torch.Tensor:
    """vol [N, N, N] times exp(-bfactor s² / 4) (negative `bfactor`, Å², sharpens) and the per-shell `weights`
    [N // 2 + 1], shells beyond `cutoff` (cycles/pixel) removed."""
    n = vol.shape[-1]
    s2 = (frequency_magnitude(n, 3, vol.device, torch.float64) / (n * voxel_size)) ** 2  # Å⁻²
    shell = radial_index_3d(n, vol.device)
    table = torch.cat([weights.to(torch.float64), weights.new_zeros(1, dtype=torch.float64)])
    filt = torch.exp(-bfactor * s2 / 4) * table[shell.clamp(max=weights.numel())] * (shell <= cutoff * n + 1e-9)
    return ifft3c(fft3c(vol) * filt).real.to(vol.dtype)


def postprocess(
    half1: torch.Tensor, half2: torch.Tensor, mask: torch.Tensor, voxel_size: float, bfactor: float | None = None,
    fit_from: float = 10.0, randomize_at: float = 0.8, generator: torch.Generator | None = None,
) -> PostProcessed:
    """Mask-corrected FSC, Guinier B-factor (or the given `bfactor`, Å², negative to sharpen) and the sharpened map of
    two half-maps [N, N, N] with a soft `mask` in [0, 1]. Without 3 shells between `fit_from` and the resolution there
    is no fit, and no B-factor is applied unless one is given."""
    if half1.shape != half2.shape or mask.shape != half1.shape or half1.dim() != 3 or len(set(half1.shape)) != 1:
        raise InvalidValueError(f"half-maps and mask must be cubic of one shape, got {tuple(half1.shape)}, {tuple(half2.shape)}, {tuple(mask.shape)}")
    h1, h2, m = half1.double(), half2.double(), mask.double()
    unmasked, masked, randomized, corrected, shell = mask_corrected_fsc(h1, h2, m, randomize_at, generator)
    n = half1.shape[-1]
    res = resolution_at(corrected, 0.143, n)[0]
    full = 0.5 * (h1 + h2)
    fitted = guinier_bfactor(full * m, voxel_size, fit_from, voxel_size / res) if res > 0 else None
    if bfactor is None:
        bfactor = 0.0 if fitted is None else -fitted
    sharpened = sharpen(full, voxel_size, bfactor, fsc_weighting(corrected), res)
    return PostProcessed(
        unmasked, masked, randomized, corrected, shell, res, resolution_at(corrected, 0.5, n)[0], fitted, bfactor,
        sharpened.to(half1.dtype),
    )
