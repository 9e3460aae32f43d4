"""Per-shell Gaussian noise model of particle images in Fourier space and its log-likelihood.

Images and models are centred transforms (`cryoscope.physics.fourier.fft2c`, unnormalised), so white
real-space noise of standard deviation s has E|F(k)|^2 = N^2 s^2 at every pixel. The noise spectrum
sigma2[shell] is the expected power E|Y(k) - M(k)|^2 of the residual per full-grid pixel, shell
round(|k|) (k in cycles per box, shell i at i / N cycles/pixel, `physics.filters.shell_index`).

Log-likelihood (this module's normalisation): over the pixels of the full N x N grid with
|k| / N <= cutoff,

    log p(Y | M) = -sum_k |Y(k) - M(k)|^2 / (2 sigma2[shell(k)])   (+ a constant free of M).

Each independent Fourier coefficient of a real image appears twice in the full grid (k and -k), so
this equals -sum over the Hermitian half of |Y - M|^2 / sigma2: the complex Gaussian
p = prod 1 / (pi sigma2) exp(-|Y - M|^2 / sigma2) with the pose- and map-independent
normaliser sum log(pi sigma2) dropped (RELION's convention, where its sigma2 is half ours).
"""

from __future__ import annotations

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.filters import shell_index


def n_shells(box: int) -> int:
    """Number of shells 0 .. N // 2 (frequencies 0 .. Nyquist)."""
    return box // 2 + 1


def shell_map(box: int, device=None) -> torch.Tensor:
    """[N, N] shell index round(|k|) of the centred grid, clamped to the last shell N // 2 (corners)."""
    return shell_index(box, 2, device).clamp(max=box // 2)


def shell_power_sums(residuals: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-shell sums of |residual|^2 and pixel counts for residual transforms [n, N, N].

    `weights` [n] (e.g. pose posteriors) multiply each image's contribution (default 1). Returns
    (power sums [N // 2 + 1], weighted pixel counts [N // 2 + 1]), to be accumulated over batches and
    divided in `noise_spectrum`. Corner pixels beyond Nyquist count in the Nyquist shell.
    """
    if residuals.dim() != 3 or residuals.shape[-1] != residuals.shape[-2]:
        raise InvalidValueError(f"residuals must be [n, N, N] transforms, got {tuple(residuals.shape)}")
    n, box = residuals.shape[0], residuals.shape[-1]
    real = residuals.real.dtype if residuals.is_complex() else residuals.dtype
    w = torch.ones(n, dtype=real, device=residuals.device) if weights is None else weights.to(residuals.device, real)
    power = (residuals.abs() ** 2).reshape(n, -1).to(real)
    idx = shell_map(box, residuals.device).reshape(-1)
    per_pixel = w @ power  # [N*N]
    sums = torch.zeros(n_shells(box), dtype=real, device=residuals.device).index_add_(0, idx, per_pixel)
    counts = torch.bincount(idx, minlength=n_shells(box)).to(real) * w.sum()
    return sums, counts


def noise_spectrum(sums: torch.Tensor, counts: torch.Tensor, floor: float = 1e-12) -> torch.Tensor:
    """sigma2 [N // 2 + 1] = sums / counts, floored at `floor` x the largest value (no zero variances)."""
    if not bool((counts > 0).all()):
        raise InvalidValueError("noise spectrum: some shells have no pixels (empty data)")
    s = sums / counts
    return s.clamp_min(float(s.max()) * floor if float(s.max()) > 0 else floor)


def estimate_noise_spectrum(
    images: torch.Tensor, models: torch.Tensor | None = None, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """sigma2 [N // 2 + 1] from image transforms [n, N, N] minus model transforms (CTF · shifted slices).

    Without `models` it is the image power spectrum, an upper bound used before any model exists
    (close to the noise spectrum at low SNR).
    """
    residuals = images if models is None else images - models
    return noise_spectrum(*shell_power_sums(residuals, weights))


def pixel_sigma2(sigma2: torch.Tensor, box: int) -> torch.Tensor:
    """Per-pixel variances [..., N, N] from a spectrum [..., N // 2 + 1] (one per image or shared)."""
    if sigma2.shape[-1] != n_shells(box):
        raise InvalidValueError(f"noise spectrum must have {n_shells(box)} shells for box {box}, got {sigma2.shape[-1]}")
    return sigma2[..., shell_map(box, sigma2.device)]


def cutoff_mask(box: int, cutoff: float | None, device=None) -> torch.Tensor:
    """[N, N] bool: pixels with |k| / N <= cutoff (cycles/pixel); all pixels when cutoff is None."""
    if cutoff is None:
        return torch.ones(box, box, dtype=torch.bool, device=device)
    k = torch.arange(box, device=device, dtype=torch.float64) - box // 2
    r2 = k[:, None] ** 2 + k[None, :] ** 2
    return r2.sqrt() <= cutoff * box + 1e-9


def gaussian_log_likelihood(
    images: torch.Tensor, models: torch.Tensor, sigma2: torch.Tensor, cutoff: float | None = None
) -> torch.Tensor:
    """log p(Y | M) [n] = -sum_{|k|/N <= cutoff} |Y - M|^2 / (2 sigma2[shell]) (module docstring).

    images, models: centred transforms [n, N, N] (models already CTF-multiplied and shifted);
    sigma2: [N // 2 + 1] or per image [n, N // 2 + 1]; cutoff in cycles/pixel (None: all pixels).
    """
    if images.shape != models.shape:
        raise InvalidValueError(f"images {tuple(images.shape)} and models {tuple(models.shape)} differ in shape")
    box = images.shape[-1]
    s2 = pixel_sigma2(sigma2.to(images.device), box)
    mask = cutoff_mask(box, cutoff, images.device)
    r2 = (images - models).abs() ** 2
    return -((r2 / (2 * s2)) * mask).flatten(-2).sum(-1)


__all__ = [
    "cutoff_mask",
    "estimate_noise_spectrum",
    "gaussian_log_likelihood",
    "n_shells",
    "noise_spectrum",
    "pixel_sigma2",
    "shell_map",
    "shell_power_sums",
]
