"""Stream particles from metadata and a stack as device batches (images, poses, origins, CTFs)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.io.metadata import ParticleMetadata
from cryoscope.physics.ctf import CTFParams, compute_ctf
from cryoscope.reconstruction.batch import ParticleBatch


def ctf_params(meta: ParticleMetadata) -> CTFParams:
    """CTF parameters of all particles (float32); phase shift, B-factor and scale default to 0, 0, 1."""
    cols = {
        name: getattr(meta, name)
        for name in ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast", "phase_shift", "bfactor", "scale")
        if getattr(meta, name) is not None
    }
    return CTFParams.create(**cols)


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
