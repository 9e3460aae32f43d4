"""Noise models for simulated particle images: white, coloured (from a radial spectrum) and real background.

SNR definition: the variance of the clean signal inside the particle mask (a soft circular mask,
`filters.soft_mask`, radius and cosine edge in pixels) over the noise variance,

    SNR = var_w(clean) / sigma_noise^2,   var_w(x) = sum w (x - mean_w)^2 / sum w,  mean_w = sum w x / sum w,

with w the mask. One noise level is used for a whole stack: var_w is averaged over its images
(`noise_std_for_snr`), so all particles share the same noise, as on a real micrograph. SNR in dB is 10 log10(ratio).

Noise power spectra are per Fourier coefficient of the centred DFT and normalised by the number of
pixels, P(k) = E|fft2c(noise)[k]|^2 / N^2, so white noise of variance sigma^2 has P = sigma^2 and the
per-pixel variance is the mean of P over the N x N grid. They are stored as radial profiles [N // 2 + 1]
(shell i at i / N cycles/pixel). All sampling uses a `torch.Generator` for reproducibility.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from cryoscope.errors import InputFormatError, InvalidValueError, MissingDataError
from cryoscope.physics.filters import (
    fourier_resize,
    radial_average,
    radial_to_grid,
    soft_mask,
)
from cryoscope.physics.fourier import fft2c, ifft2c


def snr_ratio(snr: float, db: bool = False) -> float:
    """SNR as a power ratio; `db=True` converts from decibels (10 log10 ratio)."""
    ratio = 10 ** (snr / 10) if db else float(snr)
    if not ratio > 0 or not math.isfinite(ratio):
        raise InvalidValueError(f"SNR must be a positive finite ratio, got {snr}{' dB' if db else ''}")
    return ratio


def particle_mask(box: int, radius: float, edge_width: float = 3.0, device=None, dtype=torch.float32) -> torch.Tensor:
    """Soft circular particle mask [box, box]: 1 within `radius` pixels, cosine edge of `edge_width` pixels."""
    return soft_mask(box, radius, edge_width, ndim=2, device=device, dtype=dtype)


def masked_variance(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Weighted variance [n] of images [n, N, N] with weights `mask` [N, N] (see the module docstring)."""
    w = mask.to(images.dtype)
    total = w.sum()
    if not float(total) > 0:
        raise InvalidValueError("mask is empty: its weights sum to zero")
    mean = (images * w).sum((-1, -2), keepdim=True) / total
    return (w * (images - mean) ** 2).sum((-1, -2)) / total


def noise_std_for_snr(clean: torch.Tensor, snr: float, mask: torch.Tensor, db: bool = False) -> torch.Tensor:
    """Noise standard deviation (scalar tensor) giving `snr` for the clean stack [n, N, N] inside `mask`."""
    return torch.sqrt(masked_variance(clean, mask).mean() / snr_ratio(snr, db))


def add_white_noise(
    clean: torch.Tensor, snr: float, radius: float, edge_width: float = 3.0, db: bool = False, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean images [n, N, N] plus white Gaussian noise at `snr` inside a particle mask of `radius` pixels.

    Returns (noisy images, noise standard deviation).
    """
    mask = particle_mask(clean.shape[-1], radius, edge_width, clean.device, clean.dtype)
    std = noise_std_for_snr(clean, snr, mask, db)
    noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype, device=clean.device)
    return clean + std * noise, std


def coloured_noise(
    n: int, box: int, spectrum: torch.Tensor, generator: torch.Generator | None = None, dtype=torch.float32, device=None
) -> torch.Tensor:
    """Real Gaussian noise [n, box, box] with radial power spectrum `spectrum` [S] (per shell, module normalisation).

    White Gaussian noise is Fourier transformed, multiplied by sqrt(P(|k|)) (linear interpolation
    between shells, the last value held beyond shell S-1) and transformed back: exactly Hermitian, so real.
    """
    p = torch.as_tensor(spectrum, dtype=torch.float64, device=device)
    if p.dim() != 1 or p.numel() == 0 or bool((p < 0).any()) or not bool(torch.isfinite(p).all()):
        raise InvalidValueError("noise spectrum must be a non-empty 1-D array of finite non-negative powers")
    white = torch.randn(n, box, box, generator=generator, dtype=torch.float64, device=device)
    F = fft2c(white) * torch.sqrt(radial_to_grid(p, box))
    return ifft2c(F).real.to(dtype)


def estimate_noise_spectrum(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Radial noise power spectrum [N // 2 + 1] from the background of images [n, N, N] (outside the particle mask).

    The background weight is 1 - mask; each image's weighted background mean is removed and the
    spectrum of the windowed images is divided by sum (1 - mask)^2, which makes it unbiased for white
    noise (coloured spectra come out smoothed by the window's transform). Removing the mean leaves
    no information at k = 0, so shell 0 repeats shell 1.
    """
    b = (1 - mask).to(images.dtype)
    norm = (b * b).sum()
    if not float(norm) > 0:
        raise InvalidValueError("particle mask leaves no background to estimate noise from")
    mean = (images * b).sum((-1, -2), keepdim=True) / b.sum()
    F = fft2c((images - mean) * b)
    spectrum = radial_average((F.real**2 + F.imag**2).mean(0)) / norm
    spectrum[0] = spectrum[1]
    return spectrum


@dataclass
class BackgroundPatches:
    """Real micrograph background patches (2-D tensors, any sizes) with their pixel size in Å."""

    patches: list[torch.Tensor]
    pixel_size: float

    def sample(
        self, n: int, box: int, pixel_size: float, generator: torch.Generator | None = None, dtype=torch.float32, device=None
    ) -> torch.Tensor:
        """n random box x box crops [n, box, box], each with zero mean and unit variance.

        Patches are first Fourier-resampled (`filters.fourier_resize`) from their pixel size to `pixel_size` Å.
        """
        if not pixel_size > 0:
            raise InvalidValueError(f"pixel size must be positive, got {pixel_size} Å")
        factor = self.pixel_size / pixel_size
        scaled = []
        for p in self.patches:
            shape = tuple(max(1, round(s * factor)) for s in p.shape)
            if min(shape) < box:
                raise InvalidValueError(
                    f"background patch of {tuple(p.shape)} px at {self.pixel_size} Å is {shape} px at {pixel_size} Å, smaller than the box {box}"
                )
            p = p.to(device=device, dtype=torch.float64)
            scaled.append(p if shape == tuple(p.shape) else fourier_resize(p, shape))
        which = torch.randint(len(scaled), (n,), generator=generator).tolist()
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64).tolist()
        out = []
        for i, (uy, ux) in zip(which, u):
            h, w = scaled[i].shape
            y0, x0 = int(uy * (h - box + 1)), int(ux * (w - box + 1))
            crop = scaled[i][y0 : y0 + box, x0 : x0 + box]
            out.append((crop - crop.mean()) / crop.std(unbiased=False).clamp_min(1e-30))
        return torch.stack(out).to(dtype)


def resample_background(background: BackgroundPatches, pixel_size: float) -> BackgroundPatches:
    """The patches Fourier-resampled once to `pixel_size` Å, so that repeated `sample` calls at that size are cheap."""
    factor = background.pixel_size / pixel_size
    return BackgroundPatches(
        [fourier_resize(p.double(), tuple(max(1, round(s * factor)) for s in p.shape)).float() for p in background.patches], pixel_size
    )


def load_background_patches(paths: list[str | Path], pixel_size: float | None = None) -> BackgroundPatches:
    """Read 2-D MRC background patches (or stacks of them). `pixel_size` (Å) overrides the headers.

    All files must share one pixel size; a header without one (0) needs `pixel_size`.
    """
    import mrcfile
    import numpy as np

    if not paths:
        raise MissingDataError("no background patch files given")
    patches, sizes = [], set()
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise MissingDataError("background patch file not found", path)
        try:
            with mrcfile.open(path, permissive=True) as mrc:
                if mrc.data is None:
                    raise InputFormatError("not a readable MRC file", path)
                data = np.asarray(mrc.data, dtype=np.float32)
                header_px = float(mrc.voxel_size.x)
        except (ValueError, OSError) as exc:
            raise InputFormatError(f"not a readable MRC file ({exc})", path) from None
        if data.ndim not in (2, 3) or min(data.shape) < 2:
            raise InputFormatError(f"expected a 2-D patch or a stack of patches, got shape {data.shape}", path)
        if not np.isfinite(data).all():
            raise InvalidValueError("background patch contains NaN or Inf", path)
        if pixel_size is None:
            if not header_px > 0:
                raise MissingDataError("no pixel size in the MRC header; give pixel_size", path)
            sizes.add(round(header_px, 4))
        patches.extend(torch.from_numpy(d.copy()) for d in (data[None] if data.ndim == 2 else data))
    if pixel_size is None and len(sizes) > 1:
        raise InvalidValueError(f"background patches have different pixel sizes {sorted(sizes)} Å; give pixel_size")
    px = float(pixel_size) if pixel_size is not None else sizes.pop()
    if not px > 0:
        raise InvalidValueError(f"pixel size must be positive, got {px} Å")
    return BackgroundPatches(patches, px)


def add_background_noise(
    clean: torch.Tensor,
    background: BackgroundPatches,
    snr: float,
    pixel_size: float,
    radius: float,
    edge_width: float = 3.0,
    db: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean images [n, N, N] (pixel size Å) plus real background crops scaled to `snr` in a mask of `radius` px.

    Returns (noisy images, noise standard deviation); each crop has exactly that standard deviation.
    """
    n, box = clean.shape[0], clean.shape[-1]
    mask = particle_mask(box, radius, edge_width, clean.device, clean.dtype)
    std = noise_std_for_snr(clean, snr, mask, db)
    noise = background.sample(n, box, pixel_size, generator, clean.dtype, clean.device)
    return clean + std * noise, std
