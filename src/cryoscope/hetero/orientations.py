"""Orientation quadrature for the E-step: a HEALPix grid of SO(3) over one asymmetric unit of the point group, and
the neighbourhoods of prior poses that the adaptive integration of §2.6.3 may restrict each image to."""

from __future__ import annotations

import torch

from cryoscope.geometry.sampling import grid_within, healpix_grid
from cryoscope.geometry.symmetry import asymmetric_unit_mask, symmetry_expand, symmetry_group


def orientation_quadrature(group: str, order: int, dtype: torch.dtype = torch.float64,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """RELION matrices [T, 3, 3] of the HEALPix grid of `order` (step 60° / 2^order) whose viewing directions
    A^T e_z lie in one asymmetric unit of `group` (all of them for C1); equal weights."""
    grid = healpix_grid(order, dtype=dtype, device=device)
    return grid[asymmetric_unit_mask(grid[:, 2, :], group)]


def local_candidates(prior: torch.Tensor, grid: torch.Tensor, group: str, max_angle_deg: float, chunk: int = 256) -> torch.Tensor:
    """Mask [n, T]: grid rotations within `max_angle_deg` of some symmetry-equivalent pose A S of each prior pose
    [n, 3, 3]; an image with none keeps its nearest grid rotation."""
    G = symmetry_group(group, dtype=grid.dtype)
    out = torch.zeros(prior.shape[0], grid.shape[0], dtype=torch.bool, device=grid.device)
    for s in range(0, prior.shape[0], chunk):
        expanded = symmetry_expand(prior[s : s + chunk].to(grid.dtype), G)  # [m, |G|, 3, 3]
        m = expanded.shape[0]
        near = grid_within(grid, expanded.reshape(-1, 3, 3), max_angle_deg).reshape(m, G.shape[0], -1).any(1)
        empty = ~near.any(1)
        if bool(empty.any()):
            tr = expanded[empty].reshape(-1, 9) @ grid.reshape(-1, 9).T  # nearest by trace
            best = tr.reshape(int(empty.sum()), G.shape[0], -1).amax(1).argmax(1)
            near[empty.nonzero().squeeze(1), best] = True
        out[s : s + chunk] = near
    return out
