"""Alignments determined implicitly by the map (Rangan et al. §21).

At converged alignments (∂ℓ_j/∂ω_j = 0) a map perturbation εv moves them by Δω_j = ε z1_j + ε² z2_j + O(ε³):
z1 = -X0⁻¹ X1 (Eq. 118, X0 = H_ωω, X1 = H_ωx v) and z2 = -½ X0⁻¹ D³ℓ[e_ω, u, u], u = (v, z1), which is Eq. 124's
second-order correction with Y0, Y1, Y2 contracted. The Hessian of the likelihood with alignments re-optimised is
then exactly the Schur complement H_xx - H_xω H_ωω⁻¹ H_ωx (the z2 terms multiply ∂ℓ/∂ω = 0), the "effective Hessian".
"""

from __future__ import annotations

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.rotations import axis_angle_to_matrix
from cryoscope.uncertainty.hessian import alignment_newton_terms
from cryoscope.uncertainty.likelihood import RingLikelihood


def safe_inverse(blocks: torch.Tensor, floor: float = 1e-12) -> torch.Tensor:
    """Inverses [J, 3, 3] of symmetric blocks, with eigenvalues floored at `floor` x the largest (|λ| used, so a
    block at a saddle is inverted as a Newton step towards the minimum would be)."""
    lam, U = torch.linalg.eigh(blocks)
    top = lam.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(blocks.dtype).tiny)
    lam = torch.maximum(lam.abs(), floor * top)
    return U @ torch.diag_embed(1 / lam) @ U.transpose(-1, -2)


def polish_alignments(lik: RingLikelihood, x: torch.Tensor, iterations: int = 8, tol: float = 1e-10) -> tuple[RingLikelihood, list[float]]:
    """Newton steps on each image's rotation (R_j <- exp([ω_j]x) R_j) until max |ω_j| < tol radians.

    Each image's step is halved (up to 20 times) until its ℓ_j does not increase, so every image descends to a
    minimum of its own likelihood. Returns the likelihood at the polished poses and the largest step of each
    iteration (radians).
    """
    steps = []
    ell = lik.per_image(x)
    for _ in range(iterations):
        H, g = alignment_newton_terms(lik, x)
        omega = -(safe_inverse(H) @ g[..., None])[..., 0]
        R = lik.data.rotations
        for _halving in range(20):
            trial = axis_angle_to_matrix(omega) @ R
            ell_trial = lik.per_image(x, trial)
            worse = ell_trial > ell * (1 + 1e-12) + 1e-300
            if not bool(worse.any()):
                break
            omega = torch.where(worse[:, None], 0.5 * omega, omega)
        keep = ~(ell_trial > ell * (1 + 1e-12) + 1e-300)
        omega = torch.where(keep[:, None], omega, torch.zeros_like(omega))
        trial = axis_angle_to_matrix(omega) @ R
        ell = torch.where(keep, ell_trial, ell)
        steps.append(float(omega.norm(dim=-1).max()))
        lik = lik.with_data(lik.data.with_rotations(trial))
        if steps[-1] < tol:
            break
    return lik, steps


class ImplicitAlignments:
    """The effective Hessian and implicit alignments of `lik` at map `x` (poses assumed converged: polish first)."""

    def __init__(self, lik: RingLikelihood, x: torch.Tensor):
        self.lik, self.x = lik, x
        self.blocks, self.gradient = lik.alignment_hessians(x)
        lam = torch.linalg.eigvalsh(self.blocks)
        if bool((lam[:, 0] <= 0).any()):
            n = int((lam[:, 0] <= 0).sum())
            raise InvalidValueError(f"{n} image(s) are not at a minimum in their alignment (H_ωω not positive definite); polish the poses first")
        self.inverse = torch.linalg.inv(self.blocks)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Effective Hessian times v [P]."""
        return self.lik.reduced_hvp(self.x, v, self.inverse)[0]

    def first_order(self, v: torch.Tensor) -> torch.Tensor:
        """z1 [J, 3] (radians per unit of v)."""
        return self.lik.reduced_hvp(self.x, v, self.inverse)[1]

    def second_order(self, v: torch.Tensor, z1: torch.Tensor | None = None) -> torch.Tensor:
        """z2 [J, 3] (radians per unit of v, squared)."""
        z1 = self.first_order(v) if z1 is None else z1
        t = self.lik.third_derivative(self.x, v, z1)
        return -0.5 * (self.inverse @ t[..., None])[..., 0]
