"""Known-pose reconstruction of a particle dataset: half-maps, FSC, FSC-weighted map, optional truth comparison."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from cryoscope.errors import InvalidValueError
from cryoscope.io.metadata import ParticleMetadata
from cryoscope.io.mrc import write_map
from cryoscope.particles import iter_batches
from cryoscope.physics.filters import soft_mask
from cryoscope.reconstruction.direct import DirectReconstructor
from cryoscope.reconstruction.halfmaps import half_sets, masked_half_maps
from cryoscope.reconstruction.iterative import reconstruct_cg
from cryoscope.validation.fsc import fsc, resolution_at


@dataclass
class Reconstruction:
    """Half-maps (masked, FSC-filtered), the FSC-weighted map, the half-map FSC and (with a reference) the FSC against
    it; `unfiltered`: the least-squares half-maps, unmasked (RELION's *_unfil, for post-processing)."""

    half1: torch.Tensor
    half2: torch.Tensor
    final: torch.Tensor
    fsc_half: torch.Tensor
    voxel_size: float
    fsc_truth: torch.Tensor | None = None
    unfiltered: tuple[torch.Tensor, torch.Tensor] | None = None
    metrics: dict = field(default_factory=dict)


def _direct_half_maps(meta, stack, half, batch_size, device, use_ctf, progress: bool):
    rec = DirectReconstructor(stack.box, n_halves=2, device=device)
    batches = iter_batches(meta, stack, batch_size, device, use_ctf, half)
    for batch in tqdm(batches, total=-(-meta.n // batch_size), desc="backproject", unit="batch", disable=not progress):
        rec.add(batch)
    return rec.volume(0), rec.volume(1)


def _cg_half_maps(meta, stack, half, batch_size, device, use_ctf, n_iter: int, tikhonov: float):
    maps = []
    for h in (0, 1):
        idx = torch.nonzero(half == h).flatten()
        maps.append(
            reconstruct_cg(
                lambda idx=idx: iter_batches(meta, stack, batch_size, device, use_ctf, indices=idx),
                stack.box, n_iter=n_iter, tikhonov=tikhonov, device=device,
            )
        )
    return maps


def reconstruct_known_poses(
    meta: ParticleMetadata,
    stack,
    seed: int = 0,
    solver: str = "direct",
    use_ctf: bool = True,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    reference: torch.Tensor | None = None,
    mask_radius: float | None = None,
    cg_iterations: int = 20,
    tikhonov: float = 0.0,
    progress: bool = True,
) -> Reconstruction:
    """Reconstruct two half-sets (the STAR file's rlnRandomSubset, else random from `seed`) by least squares, with
    `solver` 'direct' (direct Fourier inversion) or 'cg' (iterative).

    The half-map FSC is that of the unmasked least-squares half-maps. The half-maps are then cut by a soft spherical
    mask of `mask_radius` pixels (None: 0.45 N; 0: no mask) and scaled per shell by the FSC; the final map is their
    average filtered by sqrt(2 FSC / (1 + FSC)) (`halfmaps.masked_half_maps`). `reference` [N, N, N] (same frame and
    voxel size, e.g. the simulation's truth) adds the FSC against it to the metrics.
    """
    if solver not in ("direct", "cg"):
        raise InvalidValueError(f"unknown solver {solver!r} (direct or cg)")
    device = torch.device(device)
    voxel = float(meta.require_pixel_size()[0])
    half, from_file = half_sets(meta.n, seed, meta.random_subset)
    if solver == "direct":
        u1, u2 = _direct_half_maps(meta, stack, half, batch_size, device, use_ctf, progress)
    else:
        u1, u2 = _cg_half_maps(meta, stack, half, batch_size, device, use_ctf, cg_iterations, tikhonov)
    u1, u2 = u1.cpu(), u2.cpu()
    box = u1.shape[-1]
    f_half = fsc(u1, u2)
    radius = 0.45 * box if mask_radius is None else mask_radius
    mask = soft_mask(box, radius, 0.05 * box, 3, dtype=u1.dtype) if radius > 0 else torch.ones_like(u1)
    h1, h2, final = masked_half_maps(u1, u2, mask, f_half)
    metrics = {"n_particles": meta.n, "box": box, "voxel_size_A": voxel, "solver": solver, "mask_radius_px": radius,
               "half_sets": "rlnRandomSubset" if from_file else "random"}
    for thr in (0.143, 0.5):
        cyc, ang = resolution_at(f_half, thr, box, voxel)
        metrics[f"halfmap_fsc_{thr}_cycles_per_pixel"], metrics[f"halfmap_fsc_{thr}_A"] = cyc, ang
    f_truth = None
    if reference is not None:
        if reference.shape != final.shape:
            raise InvalidValueError(f"reference map shape {tuple(reference.shape)} differs from the reconstruction {tuple(final.shape)}")
        f_truth = fsc(final, reference.to(final))
        for thr in (0.5, 0.143):
            cyc, ang = resolution_at(f_truth, thr, box, voxel)
            metrics[f"truth_fsc_{thr}_cycles_per_pixel"], metrics[f"truth_fsc_{thr}_A"] = cyc, ang
    return Reconstruction(h1, h2, final, f_half, voxel, f_truth, metrics=metrics, unfiltered=(u1, u2))


def write_reconstruction(result: Reconstruction, out_dir: str | Path, protect: tuple = ()) -> dict[str, Path]:
    """Write half_map1.mrc, half_map2.mrc (and their *_unfil.mrc), map.mrc and fsc.png into `out_dir`; returns their
    paths."""
    from cryoscope.report.plots import plot_fsc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"half_map1": out / "half_map1.mrc", "half_map2": out / "half_map2.mrc", "map": out / "map.mrc"}
    write_map(paths["half_map1"], result.half1, result.voxel_size, protect)
    write_map(paths["half_map2"], result.half2, result.voxel_size, protect)
    write_map(paths["map"], result.final, result.voxel_size, protect)
    for k, half in enumerate(result.unfiltered or ()):
        paths[f"half_map{k + 1}_unfil"] = out / f"half_map{k + 1}_unfil.mrc"
        write_map(paths[f"half_map{k + 1}_unfil"], half, result.voxel_size, protect)
    curves = {"half-maps": result.fsc_half}
    if result.fsc_truth is not None:
        curves["map vs truth"] = result.fsc_truth
    paths["fsc_plot"] = plot_fsc(out / "fsc.png", curves, result.final.shape[-1], result.voxel_size)
    return paths
