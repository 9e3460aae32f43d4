"""Isotropic Gaussian-mixture map representation with exact projections (`cryoscope.physics.gmm`)."""

from __future__ import annotations

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics import gmm


class GaussianMixture(torch.nn.Module):
    """Sum of M isotropic 3-D Gaussians sampled on a box of `box` voxels of `voxel_size` Å.

    centres [M, 3] (x, y, z) in Å about the box centre (voxel N // 2), amplitudes [M] (integrated
    mass of each Gaussian), sigmas [M] (Å). Scalars broadcast to M. Arrays it returns hold mass per
    voxel/pixel, so `project` is the sum along z of the rotated `render`, as for voxel maps.
    Its `slice` is the analytic transform of `project` on the `fft2c` grid, the interface of
    `cryoscope.physics.forward.ImageFormation`. With `trainable`, the three are learnable parameters.
    """

    def __init__(self, centres, amplitudes=1.0, sigmas=2.0, box: int = 64, voxel_size: float = 1.0, trainable: bool = False):
        super().__init__()
        c = torch.as_tensor(centres)
        c = c.to(torch.get_default_dtype()) if not c.is_floating_point() else c
        if c.dim() != 2 or c.shape[-1] != 3:
            raise InvalidValueError(f"Gaussian centres must have shape [M, 3], got {tuple(c.shape)}")
        m = c.shape[0]
        a = torch.as_tensor(amplitudes, dtype=c.dtype, device=c.device).expand(m).clone()
        s = torch.as_tensor(sigmas, dtype=c.dtype, device=c.device).expand(m).clone()
        if not bool(torch.isfinite(c).all() & torch.isfinite(a).all() & torch.isfinite(s).all()):
            raise InvalidValueError("Gaussian mixture parameters contain NaN or Inf")
        if bool((s <= 0).any()):
            raise InvalidValueError("Gaussian widths sigma must be positive (Å)")
        if box < 1 or not voxel_size > 0:
            raise InvalidValueError(f"box must be >= 1 and voxel size > 0, got {box}, {voxel_size} Å")
        self.centres = torch.nn.Parameter(c.clone(), requires_grad=trainable)
        self.amplitudes = torch.nn.Parameter(a, requires_grad=trainable)
        self.sigmas = torch.nn.Parameter(s, requires_grad=trainable)
        self.box = int(box)
        self.voxel_size = float(voxel_size)

    def _grid(self, box: int | None, voxel_size: float | None) -> tuple[int, float]:
        return (self.box if box is None else int(box)), (self.voxel_size if voxel_size is None else float(voxel_size))

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """Density (mass per Å^3) at points [..., 3] (x, y, z) in Å."""
        return gmm.density(points, self.centres, self.amplitudes, self.sigmas)

    def render(self, box: int | None = None, voxel_size: float | None = None) -> torch.Tensor:
        """Voxel map [box, box, box] ([z, y, x]) of mass per voxel."""
        b, v = self._grid(box, voxel_size)
        return gmm.render_volume(self.centres, self.amplitudes, self.sigmas, b, v)

    def project(self, rotations: torch.Tensor, box: int | None = None, voxel_size: float | None = None) -> torch.Tensor:
        """Exact real-space projections [n, box, box] of ∫ V(A^T (x, y, z)) dz for matrices [n, 3, 3]."""
        b, v = self._grid(box, voxel_size)
        return gmm.project(self.centres, self.amplitudes, self.sigmas, rotations, b, v)

    def slice(
        self, rotations: torch.Tensor, cutoff: float | None = None, box: int | None = None, voxel_size: float | None = None
    ) -> torch.Tensor:
        """Centred transforms [n, box, box] of the projections; `cutoff` (cycles/pixel) zeroes |k| / box > cutoff."""
        b, v = self._grid(box, voxel_size)
        F = gmm.fourier_slice(self.centres, self.amplitudes, self.sigmas, rotations, b, v)
        if cutoff is not None:
            k = torch.arange(b, device=F.device, dtype=torch.float64) - b // 2
            inside = (k[:, None] ** 2 + k[None, :] ** 2).sqrt() <= cutoff * b + 1e-9
            F = F * inside
        return F
