"""Three species for the VAE-GAN acceptance, as in assembly-intermediate datasets: the 70S map, the same without a
protuberance of the large subunit, and the same without the small subunit. Also prints the SNR (as `cryoscope
simulate` defines it, in a mask of RADIUS px) that white noise of σ = 1 has on images whose CTF-free projections
have a mean particle contrast of 1 (the thesis's normalisation, eq. 49, then σ = 1 noise).

The map's negative values are clipped (the test map is high-pass filtered; a mean contrast needs a density). The
lobes are split as in make_subunit_state.py. The protuberance: the large-lobe voxels within 0.12 box of the solid
(> 30 % of the maximum) large-lobe voxel farthest from the map's centre of mass (soft edge of 3 voxels).
Usage: python benchmarks/make_species.py IN.mrc VOXEL_SIZE OUT_DIR RADIUS_PX
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from cryoscope.io.mrc import read_map, write_map
from cryoscope.physics.ctf import CTFParams, compute_ctf, apply_ctf
from cryoscope.physics.filters import distance_to_mask
from cryoscope.physics.forward import ImageFormation
from cryoscope.physics.noise import masked_variance, particle_mask
from cryoscope.physics.poses import uniform_rotations
from cryoscope.representations.voxel import VoxelMap
from cryoscope.simulation.states import prepare_map
from make_subunit_state import split_lobes


def species(vol: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(without the protuberance, without the small subunit)."""
    labels = split_lobes(vol, float(vol.max()) * 0.1)
    small = 1 if (labels == 1).sum() < (labels == 2).sum() else 2
    large = 3 - small
    no_small = vol * (distance_to_mask(labels == small) / 3.0).clamp(0, 1)
    box = vol.shape[-1]
    grid = torch.stack(torch.meshgrid(*[torch.arange(box, dtype=torch.float64)] * 3, indexing="ij"), -1)
    w = vol.clamp_min(0).double()
    centre = (grid * w[..., None]).sum((0, 1, 2)) / w.sum()
    lobe = torch.nonzero((labels == large) & (vol > 0.3 * vol.max())).double()  # solid density, not stray voxels
    tip = lobe[(lobe - centre).norm(dim=1).argmax()]
    ball = (grid - tip).norm(dim=-1) <= 0.12 * box
    cut = ball & (labels == large)
    no_protuberance = vol * (distance_to_mask(cut) / 3.0).clamp(0, 1).float()
    return no_protuberance, no_small


def snr_for_unit_sigma(vol: torch.Tensor, voxel: float, radius: float, n: int = 500) -> float:
    """Masked signal variance (with CTFs of defocus 1-5 µm) over σ², σ = 1 in units of the mean CTF-free contrast."""
    g = torch.Generator().manual_seed(0)
    R = uniform_rotations(n, g)
    clean = ImageFormation()(VoxelMap(vol, voxel), R)
    box = clean.shape[-1]
    mask = particle_mask(box, radius)
    inside = mask > 0.5
    contrast = float((clean[:, inside].mean(1) - clean[:, ~(mask > 0)].mean(1)).mean())
    defocus = 10000 + 40000 * torch.rand(n, generator=g, dtype=torch.float64)
    ctf = compute_ctf(CTFParams.create(defocus), box, voxel).float()
    return float(masked_variance(apply_ctf(clean, ctf), mask).mean()) / contrast**2


def main(src: str, voxel: float, out_dir: str, radius: float) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = prepare_map(read_map(src, voxel_size=voxel), box=64)
    vol = m.data.float().clamp_min(0)  # a physical (non-negative) density: the test map is high-pass filtered
    no_protuberance, no_small = species(vol)
    for name, v in (("full", vol), ("no_protuberance", no_protuberance), ("no_small_subunit", no_small)):
        write_map(out / f"{name}.mrc", v, m.voxel_size)
        kept = float(v.clamp_min(0).sum() / vol.clamp_min(0).sum())
        print(f"{name}: keeps {kept:.2f} of the positive density", file=sys.stderr)
    print(f"{snr_for_unit_sigma(vol, m.voxel_size, radius):.5f}")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
