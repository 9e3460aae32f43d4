"""Gibbs sweeps of the Gaussian-noise model (thesis §5.2): HMC for the means and for each rotation, Metropolis-
Hastings for s (λ integrated out) and for each shift, exact draws of λ and β; and a global rotation step.

Rotations are moved in exponential coordinates about the rotation at the start of each trajectory,
R(v) = exp(skew(v)) R_0 (thesis §5.2.2); ∂E/∂v follows from ∂E/∂R (autograd, eq. D.23) and the Gallego-Yezzi
derivative ∂R/∂v. s is walked in log s (the flat prior on s adds the Jacobian term -log s to the energy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryoscope.bayes.draws import gamma
from cryoscope.bayes.gaussian_model import (
    GaussianPrior,
    GaussianState,
    ImageSet,
    noise_precision_shape_rate,
    precision_energy,
    scale_conditional,
    unit_images,
)
from cryoscope.bayes.hmc import StepSize, energy_and_gradient, hmc_step, metropolis_step
from cryoscope.bayes.projected import Poses, draw_candidates
from cryoscope.geometry.rotations import axis_angle_derivative, axis_angle_to_matrix
from cryoscope.geometry.sampling import random_rotations


@dataclass
class Tuning:
    """Step sizes (adapted by ±2 % per accept/reject until `freeze`) and trajectory settings."""

    means: StepSize
    rotations: StepSize
    log_precision: StepSize
    shifts: StepSize
    n_leapfrog: int = 10
    precision_steps: int = 5

    @staticmethod
    def initial(state: GaussianState, data: ImageSet, factor: float = 0.2) -> Tuning:
        """Step sizes `factor` / √(curvature) from the Gauss-Newton curvature of well-separated components: for a
        mean β λ² P π / (2 h²), for a rotation β λ² π Σ_k |μ_k|² / (3 h²), for a shift β λ² K π / (2 h²)
        (h = pixel size); log s starts at 0.01."""
        full = state.copies()
        p, k, copies = data.n_images, full.shape[0], full.shape[0] // state.means.shape[0]
        dt = state.means.dtype
        base = float(state.noise_precision) * float(state.scale) ** 2 * math.pi / (2 * data.pixel_size**2)
        mu2 = float((full**2).sum()) * 2 / 3
        return Tuning(
            StepSize(torch.full((1,), factor / math.sqrt(base * p * copies), dtype=dt, device=full.device)),
            StepSize(torch.full((p,), factor / math.sqrt(base * max(mu2, 1e-12)), dtype=dt, device=full.device)),
            StepSize(torch.full((1,), 0.01, dtype=dt, device=full.device)),
            StepSize(torch.full((p,), 5 * factor / math.sqrt(base * k), dtype=dt, device=full.device)),
        )

    def freeze(self) -> None:
        """Stop adapting (after burn-in: the chain then has a fixed transition kernel)."""
        for s in (self.means, self.rotations, self.log_precision, self.shifts):
            s.adapt = False


def image_residuals(state: GaussianState, poses: Poses, data: ImageSet, means=None, precision=None,
                    rotations=None, shifts=None) -> torch.Tensor:
    """Σ_j (y_ij - λ ỹ_ij)² per image [P], with any of the parameters replaced (`means`: the asymmetric unit)."""
    unit = unit_images(state.copies(means), state.precision if precision is None else precision,
                       poses.rotations if rotations is None else rotations, poses.shifts if shifts is None else shifts, data)
    return ((data.images - state.scale * unit) ** 2).sum((-1, -2))


def draw_means(state: GaussianState, poses: Poses, data: ImageSet, prior: GaussianPrior, tuning: Tuning,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """One HMC transition of all means on E(μ) = β/2 Σ (y - ŷ)² + r/2 Σ |μ_k|² (eq. 5.19)."""
    beta = state.noise_precision

    def energy(q: torch.Tensor) -> torch.Tensor:
        return (0.5 * beta * image_residuals(state, poses, data, means=q[0]).sum() + 0.5 * prior.r * (q * q).sum())[None]

    q, _ = hmc_step(state.means[None], lambda x: energy_and_gradient(energy, x), tuning.means, tuning.n_leapfrog, generator)
    return q[0]


def rotation_energy_and_gradient(state: GaussianState, poses: Poses, data: ImageSet, v: torch.Tensor):
    """E_i(v_i) = β/2 Σ_j (y_ij - ŷ_ij)² at R_i = exp(skew(v_i)) R_0i [P], and ∂E_i/∂v_i [P, 3] = ⟨∂E/∂R, ∂R/∂v⟩."""
    r0 = poses.rotations
    with torch.enable_grad():
        rot = (axis_angle_to_matrix(v) @ r0).detach().requires_grad_(True)
        e = 0.5 * state.noise_precision * image_residuals(state, poses, data, rotations=rot)
        (d_rot,) = torch.autograd.grad(e.sum(), rot)
    return e.detach(), torch.einsum("pac,piac->pi", d_rot @ r0.transpose(-1, -2), axis_angle_derivative(v))


def draw_rotations(state: GaussianState, poses: Poses, data: ImageSet, tuning: Tuning,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """One HMC transition of every rotation (independent given the rest), starting at v = 0."""
    v0 = torch.zeros(data.n_images, 3, dtype=poses.rotations.dtype, device=poses.rotations.device)
    v, _ = hmc_step(v0, lambda x: rotation_energy_and_gradient(state, poses, data, x), tuning.rotations,
                    tuning.n_leapfrog, generator)
    return axis_angle_to_matrix(v) @ poses.rotations


def draw_precision_and_scale(state: GaussianState, poses: Poses, data: ImageSet, tuning: Tuning,
                             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """s by `precision_steps` MH steps on Ẽ(s) (λ integrated out, eq. 5.36) in log s, then λ ~ p(λ | s) exactly."""
    beta = state.noise_precision

    def energy(log_s: torch.Tensor) -> torch.Tensor:
        unit = unit_images(state.copies(), torch.exp(log_s[0, 0]), poses.rotations, poses.shifts, data)
        return (precision_energy(data.images, unit, beta) - log_s[0, 0])[None]

    q = torch.log(state.precision).reshape(1, 1)
    u = None
    for _ in range(tuning.precision_steps):
        q, u, _ = metropolis_step(q, energy, tuning.log_precision, generator, u)
    s = torch.exp(q[0, 0])
    mean, prec = scale_conditional(data.images, unit_images(state.copies(), s, poses.rotations, poses.shifts, data), beta)
    scale = mean + torch.randn((), generator=generator, dtype=mean.dtype, device=mean.device) * prec.rsqrt()
    return s, scale


def draw_shifts(state: GaussianState, poses: Poses, data: ImageSet, tuning: Tuning,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One MH step per image on E(t_i) = β/2 Σ_j (y_ij - ŷ_ij)² (eq. 5.45)."""
    beta = state.noise_precision
    t, _, _ = metropolis_step(poses.shifts, lambda x: 0.5 * beta * image_residuals(state, poses, data, shifts=x),
                              tuning.shifts, generator)
    return t


def draw_noise_precision(state: GaussianState, poses: Poses, data: ImageSet, prior: GaussianPrior,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """β ~ Gamma(PN/2 + a_β, rate Σ (y - ŷ)²/2 + b_β)."""
    shape, rate = noise_precision_shape_rate(image_residuals(state, poses, data).sum(), data.n_pixels, prior)
    return gamma(shape, rate, generator, state.means.dtype)


def sweep(state: GaussianState, poses: Poses, data: ImageSet, prior: GaussianPrior, tuning: Tuning,
          generator: torch.Generator | None = None, mixture: bool = True, rotations: bool = True,
          shifts: bool = True) -> tuple[GaussianState, Poses]:
    """One Gibbs sweep: μ, R, (s, λ), t, β; the flags skip blocks (rotations fixed in the initial mixture steps)."""
    state, poses = state.clone(), poses.clone()
    if mixture:
        state.means = draw_means(state, poses, data, prior, tuning, generator)
    if rotations:
        poses.rotations = draw_rotations(state, poses, data, tuning, generator)
    state.precision, state.scale = draw_precision_and_scale(state, poses, data, tuning, generator)
    if shifts:
        poses.shifts = draw_shifts(state, poses, data, tuning, generator)
    state.noise_precision = draw_noise_precision(state, poses, data, prior, generator)
    return state, poses


def rotation_energies(state: GaussianState, candidates: torch.Tensor, poses: Poses, data: ImageSet,
                      chunk: int = 256) -> torch.Tensor:
    """E_i(R_m) = β/2 Σ_j (y_ij - λ ỹ_j(R_m, t_i))² [M candidates, P images]; images that share their shift and
    have no CTF share the candidates' projections."""
    m, p = candidates.shape[0], data.n_images
    out = torch.empty(m, p, dtype=state.means.dtype, device=state.means.device)
    shared = data.ctf is None and bool((poses.shifts == poses.shifts[:1]).all())
    groups = [list(range(p))] if shared else [[i] for i in range(p)]
    yy = (data.images**2).sum((-1, -2))
    for group in groups:
        i = group[0]
        y = data.images[group].reshape(len(group), -1)
        for a in range(0, m, chunk):
            rot = candidates[a : a + chunk]
            ctf = None if data.ctf is None else data.ctf[i : i + 1].expand(rot.shape[0], -1, -1)
            unit = state.scale * unit_images(state.copies(), state.precision, rot, poses.shifts[i].expand(rot.shape[0], 2), data, ctf)
            unit = unit.reshape(rot.shape[0], -1)
            out[a : a + chunk, group] = yy[group] - 2 * unit @ y.T + (unit * unit).sum(-1, keepdim=True)
    return 0.5 * state.noise_precision * out


def global_rotations(state: GaussianState, poses: Poses, data: ImageSet, n_rotations: int,
                     generator: torch.Generator | None = None, keep_current: bool = False) -> torch.Tensor:
    """The global step of thesis §3.3 applied to the Gaussian model: each image draws from p(R_i | rest)
    restricted to `n_rotations` fresh uniform rotations, and its current one with `keep_current` (see
    `projected.global_rotations`)."""
    candidates = random_rotations(n_rotations, generator, dtype=state.means.dtype, device=state.means.device)
    energies = rotation_energies(state, candidates, poses, data)
    if keep_current:
        energies = torch.cat([torch.diagonal(rotation_energies(state, poses.rotations, poses, data))[None], energies])
    return draw_candidates(-energies, poses.rotations if keep_current else None, candidates, generator)
