"""Softest modes of the effective Hessian (Rangan et al. §20.1) and their sensitivity scaling.

Metric: eigenvectors are unit vectors of L²(dκ) on the ball |κ| < k_max, ‖ΔF‖² = ∫ |ΔF̂|² dκ = Σ_n w_n k_n² Σ_lm
|Δf_lm|² (= (2π)^3-free real-space ‖ΔF‖² by Parseval, for the band-limited map), so eigenvalues are Rayleigh
quotients ΔF†HΔF / ‖ΔF‖² in negative-log-likelihood units per unit squared norm (cycles per box)^3. The solvers run
in the orthonormal coordinates y = √m ⊙ x (m the per-parameter shell weight w_n k_n²).

Deflation: an infinitesimal rotation of the map with the opposite rotation of every pose leaves the likelihood
unchanged, so -iJ_a F (a = x, y, z) are null directions of the effective Hessian at a stationary point; they are
projected away (and their Rayleigh quotients before deflation are reported).

Sensitivity (§3.1): each mode is scaled so that the log-likelihood ratio ½ λ ‖ΔF‖² equals log 20, i.e.
‖ΔF‖ = √(2 log 20 / λ); its implicit alignments scale with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cryoscope.geometry.spherical_harmonics import apply_generator
from cryoscope.representations.shells import ShellBasis, from_real, to_real
from cryoscope.uncertainty.alignments import ImplicitAlignments
from cryoscope.uncertainty.hessian import EffectiveHessian
from cryoscope.uncertainty.lanczos import deflation_basis, eigsh_smallest, lanczos_smallest, logdet_slq

LOG20 = math.log(20.0)


def metric_weights(basis: ShellBasis) -> torch.Tensor:
    """Per-parameter weights m [P] (w_n k_n² of each parameter's shell): ‖ΔF‖² = Σ m x²."""
    per_shell = basis.volume_weights()[:, None, None].expand(tuple(basis.mask.shape))
    return per_shell[basis.mask]


def rigid_directions(x: torch.Tensor, basis: ShellBasis) -> torch.Tensor:
    """Infinitesimal rigid rotations of the map about x, y, z: real parameters [P, 3]."""
    f = from_real(x, basis)
    return torch.stack([to_real(apply_generator(f, a), basis) for a in range(3)], -1)


@dataclass
class SoftModes:
    """The k softest modes: eigenvalues [k] (ascending), unit map directions [P, k] (x coordinates), their implicit
    alignments [k, J, 3] (radians per unit norm), Lanczos diagnostics, and the rigid-rotation Rayleigh quotients [3]."""

    eigenvalues: torch.Tensor
    modes: torch.Tensor
    alignments: torch.Tensor
    residuals: torch.Tensor
    ritz_history: list[torch.Tensor]
    iterations: int
    converged: bool
    rigid_rayleigh: torch.Tensor
    largest_ritz: float


class EffectiveOperator:
    """The effective Hessian (handwritten `EffectiveHessian`, or the autograd `ImplicitAlignments`) in the orthonormal
    metric coordinates y, with the rigid-rotation deflation basis."""

    def __init__(self, implicit: EffectiveHessian | ImplicitAlignments, basis: ShellBasis):
        self.implicit, self.basis = implicit, basis
        self.sqrt_m = metric_weights(basis).sqrt()
        self.dim = int(self.sqrt_m.numel())
        self.deflate = deflation_basis(self.sqrt_m[:, None] * rigid_directions(implicit.x, basis))
        self.calls = 0  # Hessian-vector products so far

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.implicit.matvec(y / self.sqrt_m) / self.sqrt_m

    def to_map(self, y: torch.Tensor) -> torch.Tensor:
        """Metric coordinates [P, ...] -> real shell parameters x."""
        return y / self.sqrt_m.reshape(-1, *([1] * (y.dim() - 1)))

    def rigid_rayleigh(self) -> torch.Tensor:
        """Rayleigh quotients of the three (orthonormalised) rigid directions before deflation."""
        return torch.stack([(q * self(q)).sum() for q in self.deflate.T])


def soft_modes(
    operator: EffectiveOperator,
    k: int = 7,
    method: str = "lanczos",
    max_iter: int = 300,
    tol: float = 1e-8,
    deflate: bool = True,
    seed: int = 0,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> SoftModes:
    """The k softest modes by Lanczos with full re-orthogonalisation ('lanczos') or ARPACK ('eigsh')."""
    q = operator.deflate if deflate else None
    dtype, device = operator.sqrt_m.dtype, operator.sqrt_m.device
    if method == "eigsh":
        lam, vecs = eigsh_smallest(operator, operator.dim, k, deflate=q, tol=tol, dtype=dtype, seed=seed, device=device)
        vecs = vecs.to(dtype)
        res = torch.stack([(operator(v) - l * v).norm() for l, v in zip(lam, vecs.T)])
        history, iters, conv = [], 0, True
    else:
        gen = torch.Generator(device=device).manual_seed(seed)
        out = lanczos_smallest(operator, operator.dim, k, deflate=q, max_iter=max_iter, tol=tol, generator=gen,
                               dtype=dtype, device=device, callback=callback)
        lam, vecs, res, history, iters, conv = out.eigenvalues, out.eigenvectors, out.residuals, out.ritz_history, out.iterations, out.converged
    modes = operator.to_map(vecs)
    align = torch.stack([operator.implicit.first_order(modes[:, i]) for i in range(modes.shape[1])])
    top = float(history[-1].max()) if history else float("nan")
    return SoftModes(lam, modes, align, res, history, iters, conv, operator.rigid_rayleigh(), top)


@dataclass
class ModeSensitivity:
    """One mode scaled to a log-likelihood ratio of log 20: map change Δx [P] (‖ΔF‖ = `norm`), `relative_norm`
    = ‖ΔF‖ / ‖F‖, and the implicit alignment changes [J, 3] (radians) with their magnitudes in degrees [J]."""

    eigenvalue: float
    norm: float
    relative_norm: float
    delta_x: torch.Tensor
    delta_alignments: torch.Tensor
    alignment_degrees: torch.Tensor


def log20_scaling(modes: SoftModes, x: torch.Tensor, basis: ShellBasis, index: int) -> ModeSensitivity:
    """Scale mode `index` so that ½ λ ‖ΔF‖² = log 20 (Eq. 6)."""
    lam = float(modes.eigenvalues[index])
    s = math.sqrt(2 * LOG20 / lam) if lam > 0 else float("inf")
    m = metric_weights(basis)
    f_norm = float(torch.sqrt((m * x * x).sum()))
    dx = s * modes.modes[:, index]
    dw = s * modes.alignments[index]
    return ModeSensitivity(lam, s, s / f_norm, dx, dw, torch.rad2deg(dw.norm(dim=-1)))


def log_determinant(operator: EffectiveOperator, n_probes: int = 16, n_iter: int = 40, seed: int = 0) -> tuple[float, float]:
    """Stochastic Lanczos quadrature estimate (and standard error) of log det of the deflated effective Hessian."""
    gen = torch.Generator(device=operator.sqrt_m.device).manual_seed(seed)
    return logdet_slq(operator, operator.dim, n_probes=n_probes, n_iter=n_iter, deflate=operator.deflate, generator=gen,
                      dtype=operator.sqrt_m.dtype, device=operator.sqrt_m.device)
