"""Simulate a particle dataset: projections of one or more maps through the physics core, with noise.

Writes `particles.mrcs`, `particles.star` (RELION 3.1, what the reconstruction commands read),
`ground_truth.star` (pose, class, latent and clean-image SNR per particle), the true maps, and
`params.json` / `metrics.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import starfile
import torch
from tqdm import tqdm

from cryoscope.errors import InvalidValueError
from cryoscope.io.atomic import atomic_path
from cryoscope.io.metadata import ParticleMetadata
from cryoscope.io.mrc import Map, write_map
from cryoscope.io.runinfo import write_metrics_json, write_params_json
from cryoscope.io.stack_writer import StackWriter
from cryoscope.io.star import write_star
from cryoscope.physics import noise as noise_models
from cryoscope.physics.ctf import CTFParams, compute_ctf
from cryoscope.physics.forward import ImageFormation
from cryoscope.representations.voxel import VoxelMap
from cryoscope.simulation import draws
from cryoscope.simulation.config import SimulationConfig


@dataclass
class SimulatedDataset:
    """Paths of a simulated dataset and its noise level."""

    star: Path
    stack: Path
    ground_truth: Path
    maps: list[Path]
    noise_std: float
    mask_radius: float


def mass_radius(volume: torch.Tensor, fraction: float = 0.99) -> float:
    """Radius (pixels, from the box centre N//2) enclosing `fraction` of the positive density."""
    n = volume.shape[-1]
    k = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    r = torch.sqrt(x**2 + y**2 + z**2).reshape(-1)
    w = volume.to(torch.float64).clamp_min(0).reshape(-1)
    if not float(w.sum()) > 0:
        raise InvalidValueError("map has no positive density")
    order = torch.argsort(r)
    cum = torch.cumsum(w[order], 0) / w.sum()
    return float(r[order][int(torch.searchsorted(cum, torch.tensor(fraction, dtype=torch.float64)))])


def _mixture(config: SimulationConfig, n_maps: int, trajectory: bool, g: torch.Generator):
    """Per particle: the two maps blended (index a, b) and the weight of b; plus class and latent."""
    if trajectory:
        latent = draws.draw_latents(config, g)
        t = latent * (n_maps - 1)
        a = t.floor().long().clamp(max=n_maps - 2)
        return a, a + 1, (t - a).to(torch.float64), None, latent
    cls = draws.draw_classes(config, n_maps, g)
    return cls, cls, torch.zeros(config.n_particles, dtype=torch.float64), cls, None


def simulate(
    maps: list[Map],
    config: SimulationConfig,
    out_dir: str | Path,
    trajectory: bool = False,
    map_names: list[str] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> SimulatedDataset:
    """Simulate `config.n_particles` images of `maps` and write the dataset to `out_dir`.

    `maps` share one box and voxel size. Discrete states: each particle shows one map, drawn with
    `config.fractions`. `trajectory=True`: `maps` are frames along a continuous motion and a particle
    with latent z in [0, 1] is the linear blend of the two frames around z (its image is the same blend).
    """
    if not maps:
        raise InvalidValueError("no maps to simulate from")
    box, voxel = maps[0].data.shape[-1], maps[0].voxel_size
    for m in maps:
        if m.data.shape != (box, box, box) or abs(m.voxel_size - voxel) > 1e-6 * voxel:
            raise InvalidValueError("all maps must share one cubic box and voxel size")
    if trajectory and len(maps) < 2:
        raise InvalidValueError("a trajectory needs at least two frames")
    if config.n_particles < 1:
        raise InvalidValueError(f"need at least one particle, got {config.n_particles}")
    device = torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(config.seed)

    rotations = draws.draw_rotations(config, g)
    origins = draws.draw_origins(config, g)
    ctf_cols = draws.draw_ctf(config, g)
    a_idx, b_idx, weight, classes, latent = _mixture(config, len(maps), trajectory, g)
    ctf_params = CTFParams.create(**ctf_cols, dtype=torch.float32)

    radius = config.mask_radius or min(mass_radius(maps[0].data), box / 2 - 1)
    mask = noise_models.particle_mask(box, radius, device=device)
    reps = [VoxelMap(m.data.to(device), voxel) for m in maps]
    model = ImageFormation()
    n, bs = config.n_particles, config.batch_size

    def clean_batch(sl: slice) -> torch.Tensor:
        rot = rotations[sl].to(device, torch.float32)
        ctf = compute_ctf(ctf_params[sl].to(device), box, voxel) if config.ctf else None
        o = origins[sl].to(device, torch.float32)
        img = torch.zeros(rot.shape[0], box, box, device=device)
        w = weight[sl].to(device, torch.float32)
        for which, wt in ((a_idx[sl], 1 - w), (b_idx[sl], w)):
            for k in which.unique().tolist():
                sel = ((which == k).to(device)) & (wt > 0)
                if bool(sel.any()):
                    part = model(reps[k], rot[sel], origins_px=o[sel], ctf=None if ctf is None else ctf[sel])
                    img[sel] += wt[sel, None, None] * part
        return img

    # The noise level is fixed once, from the mean masked signal variance of the first particles.
    pilot = clean_batch(slice(0, min(n, 1024)))
    noise_std = float(noise_models.noise_std_for_snr(pilot, config.snr, mask, db=config.snr_db))
    background = noise_models.load_background_patches(config.background) if config.noise == "background" else None
    spectrum = _spectrum(config)

    snr_clean = torch.empty(n, dtype=torch.float64)
    stack_path = out / "particles.mrcs"
    with StackWriter(stack_path, n, box, voxel) as writer:
        for start in tqdm(range(0, n, bs), desc="simulate", unit="batch", disable=not progress):
            sl = slice(start, min(n, start + bs))
            clean = clean_batch(sl)
            m = clean.shape[0]
            if config.noise == "white":
                noise = torch.randn(m, box, box, generator=g).to(device)
            elif config.noise == "coloured":
                noise = noise_models.coloured_noise(m, box, spectrum, generator=g).to(device)
            elif config.noise == "background":
                noise = background.sample(m, box, voxel, generator=g).to(device)
            else:
                raise InvalidValueError(f"unknown noise model {config.noise!r} (white, coloured, background)")
            snr_clean[sl] = (noise_models.masked_variance(clean, mask) / noise_std**2).double().cpu()
            writer.write(start, clean + noise_std * noise)

    meta = ParticleMetadata(
        n=n,
        rotations=rotations,
        shifts_A=origins * voxel,
        **({k: v for k, v in ctf_cols.items()} if config.ctf else {}),
        pixel_size=torch.full((n,), voxel, dtype=torch.float64),
        box=box,
        class_number=None if classes is None else classes + 1,
        image_names=[("particles.mrcs", i) for i in range(n)],
        root=out,
    )
    star_path = out / "particles.star"
    write_star(star_path, meta)
    truth_path = out / "ground_truth.star"
    _write_truth(truth_path, meta, classes, latent, snr_clean)
    names = map_names or [f"truth_{i + 1}" for i in range(len(maps))]
    map_paths = []
    for name, mp in zip(names, maps):
        map_paths.append(out / f"{name}.mrc")
        write_map(map_paths[-1], mp.data, voxel)
    write_params_json(out / "params.json", {"command": "simulate", **config.to_dict(), "trajectory": trajectory, "box": box, "voxel_size": voxel})
    write_metrics_json(
        out / "metrics.json",
        {"noise_std": noise_std, "mask_radius_px": radius, "mean_clean_snr": float(snr_clean.mean()), "n_particles": n},
    )
    return SimulatedDataset(star_path, stack_path, truth_path, map_paths, noise_std, radius)


def _spectrum(config: SimulationConfig) -> torch.Tensor | None:
    if config.noise != "coloured":
        return None
    if not config.noise_spectrum:
        raise InvalidValueError("coloured noise needs a noise spectrum (power per shell)")
    p = torch.as_tensor(config.noise_spectrum, dtype=torch.float64)
    return p / p.mean()  # unit mean power; scaled to the SNR by noise_std


def _write_truth(path: Path, meta: ParticleMetadata, classes, latent, snr_clean: torch.Tensor) -> None:
    euler = meta.euler.numpy()
    table = {
        "rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(meta.n)],
        "rlnAngleRot": euler[:, 0],
        "rlnAngleTilt": euler[:, 1],
        "rlnAnglePsi": euler[:, 2],
        "rlnOriginXAngst": meta.shifts_A[:, 0].numpy(),
        "rlnOriginYAngst": meta.shifts_A[:, 1].numpy(),
        "rlnClassNumber": (classes + 1).numpy() if classes is not None else [1] * meta.n,
        "cryoscopeLatent": latent.numpy() if latent is not None else [0.0] * meta.n,
        "cryoscopeCleanSNR": snr_clean.numpy(),
    }
    with atomic_path(path) as tmp:
        starfile.write({"particles": pd.DataFrame(table)}, tmp, overwrite=True)
