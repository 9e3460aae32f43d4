"""Sub-pixel image translation by Fourier phase ramps.

Convention (docs/conventions.md): `T_s f(x) = f(x - s)` translates an image by `+s` pixels,
i.e. multiplies its centred transform by `exp(-2 pi i k.s / N)`, k in cycles per box.
Shifts are `(x, y)` pairs in pixels.
"""

from __future__ import annotations

import math

import torch

from cryoscope.physics.fourier import centered_coords, fft2c, ifft2c


def phase_ramp(shifts: torch.Tensor, box: int) -> torch.Tensor:
    """Phase factors exp(-2 pi i k.s / N), shifts [..., 2] (x, y) in pixels -> complex [..., N, N] (centred)."""
    real = shifts.dtype if shifts.is_floating_point() else torch.get_default_dtype()
    k = centered_coords(box, shifts.device, real) * (-2 * math.pi / box)
    sx, sy = shifts[..., 0, None], shifts[..., 1, None]
    ramp_x = torch.polar(torch.ones_like(k * sx), k * sx)  # [..., N] over kx
    ramp_y = torch.polar(torch.ones_like(k * sy), k * sy)  # [..., N] over ky
    return ramp_y[..., :, None] * ramp_x[..., None, :]


def translate(F: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Translate images given by their centred transforms F [..., N, N] by `shifts` [..., 2] (x, y) pixels.

    Returns the transform of T_s f (the image moved by +s); the adjoint (and inverse) is translate(F, -s).
    """
    return F * phase_ramp(shifts, F.shape[-1])


def translate_images(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Real images [..., N, N] moved by `shifts` [..., 2] (x, y) pixels, sub-pixel and periodic (Fourier phase ramp)."""
    return ifft2c(translate(fft2c(images), shifts)).real
