"""Gibbs sampling of a 3-D Gaussian mixture from 2-D binned projections with unknown rotations and shifts
(thesis §2.4, App. C; the global rotation step of §3.3).

Image i shows the mixture rotated by R_i (RELION's A: projected centre (R μ)_xy) and shifted in-plane by
t_i = (t_x, t_y, 0) Å. Each count at pixel x_ij (2-D) has a missing depth coordinate; the Gibbs sweep draws
the component split of every pixel's counts, then the depth sums per (image, component) from their
sufficient statistics (ν, τ; eqs. C.31-C.34), then w, μ, s, each R_i (matrix Fisher) and each t_i.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryoscope.bayes.counts import discretise_images
from cryoscope.bayes.draws import chi2
from cryoscope.bayes.image_assignments import PixelCounts, image_assignment_stats
from cryoscope.bayes.mixture import MixtureState, draw_means, draw_precision, draw_weights, log_prior
from cryoscope.bayes.prior import MixturePrior
from cryoscope.errors import InvalidValueError
from cryoscope.geometry.matrix_fisher import sample_matrix_fisher
from cryoscope.geometry.sampling import random_rotations
from cryoscope.physics import gmm


@dataclass
class BinnedImages:
    """Counts [P, N, N] (int64) of P images on a grid of `pixel_size` Å, with their occupied pixels."""

    counts: torch.Tensor
    pixel_size: float

    def __post_init__(self) -> None:
        self.pixels = PixelCounts.from_counts(self.counts, self.pixel_size)

    @staticmethod
    def from_images(images: torch.Tensor, pixel_size: float, n_counts: int) -> BinnedImages:
        """Discretise non-negative images [P, N, N] to about `n_counts` counts each (eq. 2.52)."""
        if images.dim() != 3 or images.shape[1] != images.shape[2]:
            raise InvalidValueError(f"images must be [P, N, N], got {tuple(images.shape)}")
        return BinnedImages(discretise_images(images, n_counts), float(pixel_size))

    @property
    def n_images(self) -> int:
        return self.counts.shape[0]

    @property
    def box(self) -> int:
        return self.counts.shape[-1]


@dataclass
class Poses:
    """rotations [P, 3, 3] (image = projection of R μ) and in-plane shifts [P, 2] (Å)."""

    rotations: torch.Tensor
    shifts: torch.Tensor

    def clone(self) -> Poses:
        return Poses(self.rotations.clone(), self.shifts.clone())


@dataclass
class LatentStats:
    """Per (image, component): counts N [P, K] and sums of the 3-D points ν [P, K, 3] (pixel x, y and drawn depth);
    the sum ss of the points' squared norms over all images and components (only the total enters the precision's
    conditional); and log p(D | θ) with the latent variables summed out."""

    n: torch.Tensor
    nu: torch.Tensor
    ss: torch.Tensor
    log_likelihood: torch.Tensor


def transformed_centres(means: torch.Tensor, poses: Poses) -> torch.Tensor:
    """c_ik = R_i μ_k + t_i [P, K, 3] (t_i has no depth component)."""
    c = torch.einsum("pij,kj->pki", poses.rotations, means)
    c[..., :2] += poses.shifts[:, None, :]
    return c


def draw_latents(state: MixtureState, poses: Poses, data: BinnedImages, generator: torch.Generator | None = None) -> LatentStats:
    """Assignments (eq. C.27), the depth sums ν^m ~ N(N c_z, N / s) (eq. C.33) and Σ τ ~ χ²(Σ N) / s (eq. C.34:
    each τ_ik ~ χ²(N_ik) / s is needed only in the total, and a sum of independent χ² draws is χ² in the summed
    degrees of freedom)."""
    centres = transformed_centres(state.means, poses)
    st = image_assignment_stats(data.pixels, centres[..., :2], state.weights, state.precision, generator)
    n, s, cz = st.n, state.precision, centres[..., 2]
    nu_m = n * cz + torch.randn(n.shape, generator=generator, dtype=n.dtype, device=n.device) * (n / s).sqrt()
    tau = chi2(n.sum(), generator) / s  # Σ (x^m - c_z)² over every count
    nu = torch.cat([st.s, nu_m[..., None]], -1)
    ss = (st.q + 2 * cz * nu_m - n * cz * cz).sum() + tau  # Σ (x^m)² = τ + 2 c_z ν^m - N c_z²
    return LatentStats(n, nu, ss, st.log_likelihood)


def _centred_sums(stats: LatentStats, poses: Poses) -> torch.Tensor:
    """ν_ik - N_ik t_i [P, K, 3]: the sums of each image's points with its shift (t_z = 0) removed."""
    t3 = torch.cat([poses.shifts, torch.zeros_like(poses.shifts[:, :1])], -1)
    return stats.nu - stats.n[..., None] * t3[:, None, :]


def symmetric_copies(state: MixtureState, group: torch.Tensor | None) -> MixtureState:
    """The whole mixture of an asymmetric unit `state` under a point group [G, 3, 3] (`geometry.symmetry`): means
    G_g μ_k [G K, 3] (copy-major) and weights w_k / G; `state` itself when `group` is None."""
    if group is None:
        return state
    means = torch.einsum("gij,kj->gki", group.to(state.means.dtype), state.means).reshape(-1, 3)
    return MixtureState(means, state.precision, state.weights.repeat(group.shape[0]) / group.shape[0])


def draw_mixture(state: MixtureState, stats: LatentStats, poses: Poses, prior: MixturePrior,
                 generator: torch.Generator | None = None, group: torch.Tensor | None = None) -> MixtureState:
    """w, μ (eq. C.56: back-projected sums Σ_i R_iᵀ (ν_ik - N_ik t_i)) and s (eqs. C.63-C.64).

    With a point `group`, `state` is the asymmetric unit and `stats` belong to its `symmetric_copies`: the counts
    and sums of copy g of component k are rotated back by G_gᵀ and pooled (copy g of μ_k is G_g μ_k)."""
    back = torch.einsum("pji,pkj->ki", poses.rotations, _centred_sums(stats, poses))
    n_k = stats.n.sum(0)
    if group is not None:
        g = group.shape[0]
        back = torch.einsum("gji,gkj->ki", group.to(back.dtype), back.reshape(g, -1, 3))
        n_k = n_k.reshape(g, -1).sum(0)
    weights = draw_weights(n_k, prior, generator)
    means = draw_means(n_k, back, state.precision, prior, generator)
    c = transformed_centres(symmetric_copies(MixtureState(means, state.precision, weights), group).means, poses)
    ssr = stats.ss + (stats.n * (c * c).sum(-1) - 2 * (c * stats.nu).sum(-1)).sum()
    precision = draw_precision(ssr, n_k.sum(), means, prior, generator)
    return MixtureState(means, precision, weights)


def rotation_parameter(state: MixtureState, stats: LatentStats, poses: Poses) -> torch.Tensor:
    """A_i = s Σ_k (ν_ik - N_ik t_i) μ_kᵀ [P, 3, 3]: p(R_i | rest) ∝ exp(tr(A_iᵀ R_i)) (eqs. 2.92-2.93, C.75)."""
    return state.precision * torch.einsum("pki,kj->pij", _centred_sums(stats, poses), state.means)


def draw_rotations(state: MixtureState, stats: LatentStats, poses: Poses, generator: torch.Generator | None = None) -> torch.Tensor:
    """R_i from its matrix Fisher conditional."""
    return sample_matrix_fisher(rotation_parameter(state, stats, poses), generator)


def draw_shifts(state: MixtureState, stats: LatentStats, poses: Poses, shift_precision: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """In-plane t_i ~ N(s Σ_k (ν_ik - N_ik R_i μ_k)_xy / (N_i s + r_t), 1 / (N_i s + r_t)) (eq. C.89, depth kept at 0)."""
    s = state.precision
    rm = torch.einsum("pij,kj->pki", poses.rotations, state.means)[..., :2]
    n_i = stats.n.sum(1)
    prec = n_i * s + shift_precision
    mean = s * (stats.nu[..., :2] - stats.n[..., None] * rm).sum(1) / prec[:, None]
    return mean + torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device) * prec.rsqrt()[:, None]


def rotation_scores(state: MixtureState, candidates: torch.Tensor, shifts: torch.Tensor, data: BinnedImages) -> torch.Tensor:
    """log p(image i | R_m, θ) with assignments and depths summed out (eq. 3.8), [M candidates, P images]:
    Σ_j y_ij log Σ_k w_k N(x_ij | (R_m μ_k)_xy + t_i, 1/s), pixel-centre evaluation, from the exact mixture
    projections of `physics.gmm`."""
    n, p, px = data.box, data.n_images, data.pixel_size
    y_img = data.counts.reshape(p, -1).to(state.means.dtype)
    sigma = torch.full_like(state.weights, state.sigma)
    shared = bool((shifts == shifts[:1]).all())
    groups = [list(range(p))] if shared else [[i] for i in range(p)]
    out = torch.empty(candidates.shape[0], p, dtype=state.means.dtype, device=state.means.device)
    for group in groups:
        t = shifts[group[0]].expand(candidates.shape[0], 2)
        mass = gmm.project(state.means, state.weights, sigma, candidates, n, px, t)  # Σ_k w_k N(x) px² per pixel
        density = torch.log(mass.clamp_min(1e-300)) - 2 * math.log(px)
        out[:, group] = density.reshape(candidates.shape[0], -1) @ y_img[group].T
    return out


def global_rotations(state: MixtureState, poses: Poses, data: BinnedImages, n_rotations: int,
                     generator: torch.Generator | None = None, keep_current: bool = False) -> torch.Tensor:
    """The global step (thesis §3.3, eq. 3.9): each image draws its rotation from p(R_i | θ, D) restricted to
    `n_rotations` fresh uniform rotations (the thesis: a forced jump, which explores while the mixture is still
    wrong), or with `keep_current` to those and its current rotation. The latter is an exact MCMC move (an ensemble
    move with independent uniform proposals): an image leaves a good rotation only for a candidate that explains
    it about as well."""
    candidates = random_rotations(n_rotations, generator, dtype=state.means.dtype, device=state.means.device)
    scores = rotation_scores(state, candidates, poses.shifts, data)  # [M, P]
    if keep_current:
        scores = torch.cat([torch.diagonal(rotation_scores(state, poses.rotations, poses.shifts, data))[None], scores])
    return draw_candidates(scores, poses.rotations if keep_current else None, candidates, generator)


def draw_candidates(log_weights: torch.Tensor, current: torch.Tensor | None, candidates: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Per image i, a draw from softmax(log_weights[:, i]) over the shared candidates [M, 3, 3], preceded (row 0)
    by the images' current rotations [P, 3, 3] when `current` is given."""
    pick = torch.multinomial(torch.softmax(log_weights, 0).T, 1, generator=generator).squeeze(1)  # [P]
    if current is None:
        return candidates[pick]
    return torch.where((pick == 0)[:, None, None], current, candidates[(pick - 1).clamp_min(0)])


def log_posterior(state: MixtureState, log_likelihood: torch.Tensor, prior: MixturePrior) -> torch.Tensor:
    """log p(D | θ) + log p(θ) with the uniform rotation prior and flat shift prior (constants dropped)."""
    return log_likelihood + log_prior(state, prior)
