"""The generators' maps: one real-space density (CryoGAN) or a map per latent value (Multi-CryoGAN).

Both keep their output non-negative and inside a soft spherical support, and optionally symmetric under a point
group. Densities are in units of `amplitude` (set from the data), so optimiser steps are dimensionless.
"""

from __future__ import annotations

import torch
from torch import nn

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.resample import rotate_volume
from cryoscope.geometry.symmetry import symmetry_group
from cryoscope.physics.filters import soft_mask


def _support(box: int, radius: float | None) -> torch.Tensor:
    r = 0.45 * box if radius is None else radius
    if not 0 < r <= box / 2:
        raise InvalidValueError(f"support radius must be in (0, {box / 2}] voxels, got {r}")
    return soft_mask(box, r, min(3.0, r / 4), ndim=3)


def _register_constraints(module: nn.Module, box: int, support_radius: float | None, symmetry: str | None) -> None:
    """Buffers `support` (soft sphere) and `group` (point-group rotations, identity first; identity alone for C1)."""
    module.register_buffer("support", _support(box, support_radius))
    group = None if symmetry in (None, "", "C1", "c1") else symmetry_group(symmetry, torch.float32)
    module.register_buffer("group", group if group is not None else torch.eye(3)[None])


def _symmetrise(density: torch.Tensor, group: torch.Tensor | None) -> torch.Tensor:
    """Average of the map over the point group's rotations (identity first), for [N]*3 or [B, N, N, N] maps."""
    if group is None or group.shape[0] == 1:
        return density
    vols = density if density.dim() == 4 else density[None]
    b, g = vols.shape[0], group.shape[0]
    rotated = rotate_volume(vols.repeat_interleave(g - 1, 0), group[1:].to(vols).repeat(b, 1, 1), mode="linear")
    out = (vols + rotated.reshape(b, g - 1, *vols.shape[1:]).sum(1)) / g
    return out if density.dim() == 4 else out[0]


class DensityMap(nn.Module):
    """A real-space map [N, N, N] (voxel units of `amplitude`): non-negative (unless `positive` is False: maps that
    were high-pass filtered or sharpened have negative regions), inside a soft sphere of `support_radius` voxels
    (default 0.45 N), averaged over `symmetry` (e.g. 'C4', 'D2'; None: no symmetry)."""

    def __init__(self, initial: torch.Tensor, amplitude: float, support_radius: float | None = None, symmetry: str | None = None,
                 positive: bool = True):
        super().__init__()
        self.positive = positive
        if initial.dim() != 3 or len(set(initial.shape)) != 1:
            raise InvalidValueError(f"map must be cubic [N, N, N], got {tuple(initial.shape)}")
        box = initial.shape[-1]
        self.amplitude = float(amplitude)
        self.raw = nn.Parameter(initial.float() / self.amplitude)
        _register_constraints(self, box, support_radius, symmetry)
        self.constrain_()

    def forward(self) -> torch.Tensor:
        """The density [N, N, N]."""
        return _symmetrise(self.raw * self.support, self.group) * self.amplitude

    @torch.no_grad()
    def constrain_(self) -> None:
        """Project the parameters onto the constraints after an optimiser step (non-negative, zero off the support)."""
        if self.positive:
            self.raw.clamp_(min=0)
        self.raw.mul_(self.support > 0)


class ConformationGenerator(nn.Module):
    """G(z): a latent [B] or [B, d] -> maps [B, N, N, N] = amplitude · relu(V0 + sum_k c_k(z) U_k) inside the support
    (no relu when `positive` is False).

    c is a small MLP (d -> width -> width -> K); V0 and the K basis maps U_k are learned real-space maps, so maps
    along the latent trace a curved path in map space (a K-dimensional decoder, the cheapest that can carry a
    continuous motion or several discrete states). V0 starts at `initial` [N, N, N] and the U_k at zero.
    """

    def __init__(self, initial: torch.Tensor, amplitude: float, n_basis: int = 4, latent_dim: int = 1, width: int = 32,
                 support_radius: float | None = None, symmetry: str | None = None, positive: bool = True):
        super().__init__()
        box = initial.shape[-1]
        self.positive = positive
        self.amplitude, self.latent_dim = float(amplitude), latent_dim
        self.mean = nn.Parameter(initial.float() / self.amplitude)
        self.basis = nn.Parameter(torch.zeros(n_basis, box, box, box))
        self.coefficients = nn.Sequential(nn.Linear(latent_dim, width), nn.LeakyReLU(0.2), nn.Linear(width, width),
                                          nn.LeakyReLU(0.2), nn.Linear(width, n_basis))
        _register_constraints(self, box, support_radius, symmetry)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Maps [B, N, N, N] for latents z [B] or [B, d]."""
        z = z.reshape(-1, self.latent_dim).to(self.mean)
        c = self.coefficients(z)
        vols = self.mean + torch.einsum("bk,kzyx->bzyx", c, self.basis)
        vols = (torch.relu(vols) if self.positive else vols) * self.support
        return _symmetrise(vols, self.group) * self.amplitude

    @torch.no_grad()
    def constrain_(self) -> None:
        """Zero the maps' parameters off the support after an optimiser step."""
        keep = self.support > 0
        self.mean.mul_(keep)
        self.basis.mul_(keep)
