"""Image formation: model image = T_{-origin} (CTF · P_A V), and its adjoint.

A representation provides `slice(rotations, cutoff) -> [n, N, N]` (centred transforms of its
projections, e.g. `cryoscope.representations.voxel.VoxelMap`) and, for the adjoint,
`slice_adjoint(slices, rotations, cutoff) -> parameters`. Origins follow RELION
(docs/conventions.md): the particle centre sits at -origin from the box centre.
"""

from __future__ import annotations

from typing import Protocol

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.fourier import fft2c, ifft2c
from cryoscope.physics.shift import translate


class Representation(Protocol):
    """What `ImageFormation` needs from a map representation."""

    voxel_size: float

    def slice(self, rotations: torch.Tensor, cutoff: float | None = None) -> torch.Tensor: ...


def origins_in_pixels(
    n: int, origins_px: torch.Tensor | None, origins_angst: torch.Tensor | None, pixel_size: float
) -> torch.Tensor | None:
    """Per-particle origins [n, 2] (x, y) in pixels from either pixels or Å (divided by `pixel_size`)."""
    if origins_px is not None and origins_angst is not None:
        raise InvalidValueError("give origins in pixels or in Å, not both")
    o = origins_px if origins_angst is None else origins_angst / pixel_size
    if o is not None and o.shape != (n, 2):
        raise InvalidValueError(f"origins must have shape [{n}, 2] (x, y), got {tuple(o.shape)}")
    return o


class ImageFormation(torch.nn.Module):
    """Forward model of particle images and its adjoint.

    `cutoff` (cycles/pixel) limits the frequencies simulated; `ctf` arguments are real tensors
    [n, N, N] in the centred-FFT layout (e.g. from `cryoscope.physics.ctf`), or None for no CTF.
    """

    def __init__(self, cutoff: float | None = None):
        super().__init__()
        self.cutoff = cutoff

    def forward(
        self,
        rep: Representation,
        rotations: torch.Tensor,
        origins_px: torch.Tensor | None = None,
        origins_angst: torch.Tensor | None = None,
        ctf: torch.Tensor | None = None,
        fourier: bool = False,
    ) -> torch.Tensor:
        """Model images [n, N, N] (real, or centred transforms with `fourier=True`)."""
        F = rep.slice(rotations, self.cutoff)
        n, box = F.shape[0], F.shape[-1]
        if ctf is not None:
            F = F * _check_ctf(ctf, n, box)
        o = origins_in_pixels(n, origins_px, origins_angst, rep.voxel_size)
        if o is not None:
            F = translate(F, -o)
        return F if fourier else ifft2c(F).real

    def adjoint(
        self,
        rep: Representation,
        images: torch.Tensor,
        rotations: torch.Tensor,
        origins_px: torch.Tensor | None = None,
        origins_angst: torch.Tensor | None = None,
        ctf: torch.Tensor | None = None,
        fourier: bool = False,
    ) -> torch.Tensor:
        """Adjoint of `forward` with respect to the representation's parameters (real inner product)."""
        n, box = images.shape[0], images.shape[-1]
        F = images if fourier else fft2c(images.to(rotations.dtype)) / box**2
        o = origins_in_pixels(n, origins_px, origins_angst, rep.voxel_size)
        if o is not None:
            F = translate(F, o)
        if ctf is not None:
            F = F * _check_ctf(ctf, n, box)
        return rep.slice_adjoint(F, rotations, self.cutoff)


def _check_ctf(ctf: torch.Tensor, n: int, box: int) -> torch.Tensor:
    if ctf.shape[-2:] != (box, box) or ctf.dim() not in (2, 3) or (ctf.dim() == 3 and ctf.shape[0] not in (1, n)):
        raise InvalidValueError(f"CTF must have shape [{n}, {box}, {box}] or [{box}, {box}], got {tuple(ctf.shape)}")
    return ctf
