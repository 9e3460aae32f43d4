"""Particle batches (images, poses, origins, CTFs, half-sets), streamed from metadata and a stack."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.io.metadata import ParticleMetadata
from cryoscope.physics.ctf import CTFParams, compute_ctf
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


def ctf_params(meta: ParticleMetadata) -> CTFParams:
    """CTF parameters of all particles (float32, on the CPU like the metadata); phase shift, B-factor and scale default
    to 0, 0, 1."""
    cols = {
        name: getattr(meta, name)
        for name in ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast", "phase_shift", "bfactor", "scale")
        if getattr(meta, name) is not None
    }
    return CTFParams.create(**cols, device="cpu")


def iter_batches(
    meta: ParticleMetadata,
    stack,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    use_ctf: bool = True,
    half: torch.Tensor | None = None,
    indices: torch.Tensor | None = None,
) -> Iterator[ParticleBatch]:
    """Yield `ParticleBatch`es of `batch_size` particles (in `indices` order, default all).

    Origins are converted from Å to pixels with the per-particle pixel size; the CTF is computed
    on the device when `use_ctf` and the metadata have CTF columns. `half` gives half-set ids [n].
    """
    if not meta.has_poses:
        raise InvalidValueError("particles have no poses (rlnAngleRot/Tilt/Psi)", meta.source)
    if len(stack) != meta.n:
        raise InvalidValueError(f"{meta.n} particles in the metadata but {len(stack)} images", meta.source)
    px = meta.require_pixel_size()
    ctf = ctf_params(meta) if use_ctf and meta.has_ctf else None
    order = torch.arange(meta.n) if indices is None else indices
    device = torch.device(device)
    for start in range(0, order.numel(), batch_size):
        idx = order[start : start + batch_size]
        images = stack[idx.numpy()].to(device)
        box = images.shape[-1]
        origins = None
        if meta.shifts_A is not None:
            origins = (meta.shifts_A[idx] / px[idx, None]).to(device, torch.float32)
        yield ParticleBatch(
            images=images,
            rotations=meta.rotations[idx].to(device, torch.float32),
            origins_px=origins,
            ctf=None if ctf is None else compute_ctf(ctf[idx].to(device), box, float(px[idx[0]])),
            half=None if half is None else half[idx].to(device),
        )
