"""Particle data on the shells' polar grid: image rings, CTF rings, shift phases and poses."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.polar import PolarGrid
from cryoscope.representations.shells import ShellBasis


@dataclass(frozen=True, eq=False)
class ParticleRings:
    """J particles: rings Â_j(k_n, ψ_q) [J, n_k, n_psi] (complex), RELION rotation matrices [J, 3, 3], and optional
    CTF rings [J, n_k, n_psi] (real) and shift phases T(δ_j; k) [J, n_k, n_psi] (complex, `physics.polar.shift_phases`)."""

    rings: torch.Tensor
    rotations: torch.Tensor
    ctf: torch.Tensor | None = None
    phases: torch.Tensor | None = None

    def __post_init__(self):
        J = self.rings.shape[0]
        if self.rings.dim() != 3 or not self.rings.is_complex():
            raise InvalidValueError(f"image rings must be complex [J, n_k, n_psi], got {tuple(self.rings.shape)} {self.rings.dtype}")
        if self.rotations.shape != (J, 3, 3):
            raise InvalidValueError(f"rotations must have shape [{J}, 3, 3], got {tuple(self.rotations.shape)}")
        for name in ("ctf", "phases"):
            t = getattr(self, name)
            if t is not None and t.shape != self.rings.shape:
                raise InvalidValueError(f"{name} rings must have shape {tuple(self.rings.shape)}, got {tuple(t.shape)}")
        if not bool(torch.isfinite(torch.view_as_real(self.rings)).all()):
            raise InvalidValueError("image rings contain NaN or Inf")

    def __len__(self) -> int:
        return self.rings.shape[0]

    @property
    def n_psi(self) -> int:
        return self.rings.shape[-1]

    def subset(self, index: slice | torch.Tensor) -> ParticleRings:
        """Particles at `index` (a slice or an index tensor)."""
        pick = (lambda t: None if t is None else t[index])
        return ParticleRings(self.rings[index], self.rotations[index], pick(self.ctf), pick(self.phases))

    def with_rotations(self, rotations: torch.Tensor) -> ParticleRings:
        return replace(self, rotations=rotations)

    def with_rings(self, rings: torch.Tensor) -> ParticleRings:
        return replace(self, rings=rings)

    def modulation(self, index: slice) -> torch.Tensor | None:
        """CTF · T for the particles at `index` [j, n_k, n_psi], or None when both are absent."""
        ctf = None if self.ctf is None else self.ctf[index]
        ph = None if self.phases is None else self.phases[index]
        if ctf is None:
            return ph
        return ctf if ph is None else ctf * ph


def polar_grid_of(basis: ShellBasis, n_psi: int) -> PolarGrid:
    """The image grid that matches a shell basis: the same radial nodes and weights, `n_psi` angles per ring."""
    return PolarGrid(basis.k, basis.radial_weights, int(n_psi), basis.k_max)
