"""Binned data: a non-negative map or image as integer counts at voxel / pixel centres (thesis §2.3, eq. 2.52)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.fourier import centered_coords


def discretise(values: torch.Tensor, n_counts: int) -> torch.Tensor:
    """Counts round(λ_j / Σλ · N0) over all of `values` (any shape; negative values count as 0) -> int64, same shape.

    The total is close to `n_counts`, not exactly it (rounding).
    """
    if n_counts < 1:
        raise InvalidValueError(f"number of counts must be >= 1, got {n_counts}")
    if not bool(torch.isfinite(values).all()):
        raise InvalidValueError("density to discretise contains NaN/Inf")
    lam = values.double().clamp_min(0)
    total = lam.sum()
    if not total > 0:
        raise InvalidValueError("density to discretise has no positive values")
    return torch.round(lam / total * n_counts).long()


def discretise_images(images: torch.Tensor, n_counts: int) -> torch.Tensor:
    """Counts per image [n, N, N] -> int64 [n, N, N], each image scaled to about `n_counts` counts."""
    return torch.stack([discretise(img, n_counts) for img in images])


def grid_points(box: int, ndim: int, spacing: float, dtype: torch.dtype = torch.float64,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Centres [box**ndim, ndim] (Å, (x, y[, z]) about voxel box // 2) of a grid flattened in C order ([z,] y, x)."""
    c = centered_coords(box, device, dtype=dtype) * spacing
    axes = torch.meshgrid(*([c] * ndim), indexing="ij")  # z, y, x (or y, x)
    return torch.stack(list(reversed([a.reshape(-1) for a in axes])), -1)


@dataclass
class GridPoints:
    """The occupied points of a binned map or image: centres [M, d] (Å), counts [M] (int64) and their flat indices
    [M] in the C-ordered grid of edge `box` and spacing `spacing` Å (as made by `grid_points`)."""

    points: torch.Tensor
    counts: torch.Tensor
    index: torch.Tensor
    box: int
    spacing: float

    @staticmethod
    def from_counts(counts: torch.Tensor, spacing: float) -> GridPoints:
        """From a grid of counts [N, N] or [N, N, N] (C order, x fastest)."""
        flat = counts.reshape(-1)
        index = (flat > 0).nonzero().squeeze(1)
        pts = grid_points(counts.shape[-1], counts.dim(), spacing, device=counts.device)[index]
        return GridPoints(pts, flat[index], index, counts.shape[-1], float(spacing))

    @property
    def ndim(self) -> int:
        return self.points.shape[1]
