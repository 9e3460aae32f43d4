"""Second state for the discrete-heterogeneity acceptance: the 70S map with one subunit region masked away.

The voxels above a density threshold are split into two lobes by 2-means on their coordinates (the 30S and 50S
subunits are the two lobes of the 70S map); the smaller lobe, dilated and soft-edged, is removed.
Usage: python benchmarks/make_subunit_state.py IN.mrc VOXEL_SIZE OUT_FULL.mrc OUT_MASKED.mrc
"""

from __future__ import annotations

import sys

import torch

from cryoscope.io.mrc import read_map, write_map
from cryoscope.physics.filters import distance_to_mask
from cryoscope.simulation.states import prepare_map


def split_lobes(vol: torch.Tensor, threshold: float, n_iter: int = 50) -> torch.Tensor:
    """Label map [N, N, N] (0: background, 1 and 2: the two lobes of the density above `threshold`)."""
    idx = torch.nonzero(vol > threshold).double()
    w = vol[vol > threshold].double()
    centres = idx[torch.stack([idx[:, 0].argmin(), idx[:, 0].argmax()])]
    for _ in range(n_iter):
        lab = torch.cdist(idx, centres).argmin(1)
        centres = torch.stack([(idx[lab == k] * w[lab == k, None]).sum(0) / w[lab == k].sum() for k in (0, 1)])
    out = torch.zeros(vol.shape, dtype=torch.long)
    out[tuple(idx.long().T)] = lab + 1
    return out


def main(src: str, voxel: float, full_out: str, masked_out: str) -> None:
    m = prepare_map(read_map(src, voxel_size=voxel), box=64)
    vol = m.data
    labels = split_lobes(vol, float(vol.max()) * 0.1)
    small = 1 if (labels == 1).sum() < (labels == 2).sum() else 2
    dist = distance_to_mask(labels == small)  # voxels from the smaller lobe
    keep = (dist / 3.0).clamp(0, 1)  # removed within the lobe, soft over 3 voxels
    write_map(full_out, vol, m.voxel_size)
    write_map(masked_out, vol * keep, m.voxel_size)
    print(f"lobe sizes {(labels == 1).sum().item()} / {(labels == 2).sum().item()} voxels; masked map keeps "
          f"{float((vol * keep).clamp_min(0).sum() / vol.clamp_min(0).sum()):.2f} of the positive density")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4])
