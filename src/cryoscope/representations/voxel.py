"""Voxel-grid map representation with a cached padded Fourier volume."""

from __future__ import annotations

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.projection import (
    backproject,
    fourier_volume,
    slice_fourier_volume,
)


class VoxelMap:
    """A density map [N, N, N] ([z, y, x], centre N // 2) with voxel size in Å.

    `slice(rotations)` gives centred 2-D transforms of its projections (the interface shared by
    all representations used by `cryoscope.physics.forward.ImageFormation`). The padded,
    gridding-corrected transform is cached until `density` is modified or replaced; maps that
    require gradients are re-transformed on every call so autograd sees the whole chain.
    """

    def __init__(self, density: torch.Tensor, voxel_size: float, oversample: float = 2.0):
        if density.dim() != 3 or len(set(density.shape)) != 1:
            raise InvalidValueError(f"voxel map must be cubic [N, N, N], got shape {tuple(density.shape)}")
        if not voxel_size > 0:
            raise InvalidValueError(f"voxel size must be positive (Å), got {voxel_size}")
        self.density = density
        self.voxel_size = float(voxel_size)
        self.oversample = float(oversample)
        self._cache: tuple[tuple, torch.Tensor] | None = None

    @property
    def box(self) -> int:
        """Box size N in pixels."""
        return self.density.shape[-1]

    def fourier_volume(self) -> torch.Tensor:
        """Padded Fourier volume (see `cryoscope.physics.projection.fourier_volume`), cached."""
        d = self.density
        if d.requires_grad and torch.is_grad_enabled():
            return fourier_volume(d, self.oversample)
        key = (d.data_ptr(), d._version, d.dtype, d.device, self.oversample)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, fourier_volume(d.detach(), self.oversample))
        return self._cache[1]

    def slice(self, rotations: torch.Tensor, cutoff: float | None = None) -> torch.Tensor:
        """Central slices F(A^T (kx, ky, 0)) [n, N, N] for rotations [n, 3, 3]; cutoff in cycles/pixel."""
        return slice_fourier_volume(self.fourier_volume(), rotations, self.box, cutoff)

    def slice_adjoint(self, slices: torch.Tensor, rotations: torch.Tensor, cutoff: float | None = None) -> torch.Tensor:
        """Adjoint of `slice` with respect to the density: [n, N, N] centred transforms -> [N, N, N]."""
        return backproject(slices, rotations, self.oversample, cutoff, fourier=True)
