"""A batch of particles with known poses, the unit the reconstruction solvers stream over."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.fourier import fft2c
from cryoscope.physics.shift import translate


@dataclass
class ParticleBatch:
    """Particles with known poses.

    images [n, N, N] real images (or centred transforms when `fourier` is True); rotations
    [n, 3, 3] RELION matrices; origins_px [n, 2] (x, y) RELION origins in pixels (Å / pixel size);
    ctf [n, N, N] real, centred-FFT layout; half [n] half-set ids (0 or 1).
    """

    images: torch.Tensor
    rotations: torch.Tensor
    origins_px: torch.Tensor | None = None
    ctf: torch.Tensor | None = None
    half: torch.Tensor | None = None
    fourier: bool = False

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dim() != 3 or self.images.shape[1] != self.images.shape[2]:
            raise InvalidValueError(f"particle images must be [n, N, N], got {tuple(self.images.shape)}")
        if self.rotations.shape != (n, 3, 3):
            raise InvalidValueError(f"rotations must be [{n}, 3, 3], got {tuple(self.rotations.shape)}")
        if self.origins_px is not None and self.origins_px.shape != (n, 2):
            raise InvalidValueError(f"origins must be [{n}, 2], got {tuple(self.origins_px.shape)}")
        if self.ctf is not None and self.ctf.shape != self.images.shape:
            raise InvalidValueError(f"CTF must be {tuple(self.images.shape)}, got {tuple(self.ctf.shape)}")
        if self.half is not None and self.half.shape != (n,):
            raise InvalidValueError(f"half-set ids must be [{n}], got {tuple(self.half.shape)}")

    def corrected_transforms(self, dtype: torch.dtype) -> torch.Tensor:
        """CTF · T_o F: centred transforms with the origin shift undone and multiplied by the CTF."""
        F = self.images if self.fourier else fft2c(self.images.to(dtype))
        if self.origins_px is not None:
            F = translate(F, self.origins_px.to(dtype))
        return F if self.ctf is None else F * self.ctf.to(dtype)
