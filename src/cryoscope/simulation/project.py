"""Projections of a map at each particle's pose and origin (optionally with its CTF), like `relion_project`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from cryoscope.errors import InvalidValueError
from cryoscope.io.metadata import ParticleMetadata
from cryoscope.io.mrc import Map
from cryoscope.io.stack_writer import StackWriter
from cryoscope.io.star import write_star
from cryoscope.particles import ctf_params
from cryoscope.physics.ctf import compute_ctf
from cryoscope.physics.forward import ImageFormation
from cryoscope.representations.voxel import VoxelMap


def project_particles(
    volume: Map,
    meta: ParticleMetadata,
    out_stack: str | Path,
    use_ctf: bool = False,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    protect: tuple[str | Path, ...] = (),
    progress: bool = True,
) -> Path:
    """Write projections [n, N, N] of `volume` to `out_stack` and a STAR file beside it; returns the STAR path.

    Each image is T_{-origin} (CTF · P_A V) with the particle's RELION angles and origin (Å, converted
    with the particle's pixel size), exactly the `relion_project --ctf` image model.
    """
    if not meta.has_poses:
        raise InvalidValueError("particles have no angles (rlnAngleRot/Tilt/Psi) to project at", meta.source)
    if use_ctf and not meta.has_ctf:
        raise InvalidValueError("--ctf given but the STAR file has no CTF columns", meta.source)
    px = meta.require_pixel_size()
    box = volume.data.shape[-1]
    device = torch.device(device)
    rep = VoxelMap(volume.data.to(device), float(px[0]))
    model = ImageFormation()
    ctf = ctf_params(meta) if use_ctf else None
    out_stack = Path(out_stack)
    with StackWriter(out_stack, meta.n, box, float(px[0]), protect=protect) as writer:
        for start in tqdm(range(0, meta.n, batch_size), desc="project", unit="batch", disable=not progress):
            idx = torch.arange(start, min(meta.n, start + batch_size))
            origins = None if meta.shifts_A is None else (meta.shifts_A[idx] / px[idx, None]).to(device, torch.float32)
            c = None if ctf is None else compute_ctf(ctf[idx].to(device), box, float(px[0]))
            with torch.no_grad():
                images = model(rep, meta.rotations[idx].to(device, torch.float32), origins_px=origins, ctf=c)
            writer.write(start, images)
    star = out_stack.with_suffix(".star")
    out_meta = replace(meta, image_names=[(out_stack.name, i) for i in range(meta.n)], root=out_stack.parent, box=box)
    write_star(star, out_meta, protect=protect)
    return star
