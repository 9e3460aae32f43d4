"""Isotropic Gaussian mixture fitted to binned 3-D data (a map) by Gibbs sampling or EM (thesis §2.2-2.3, App. A-B).

The conditionals and EM updates take sufficient statistics, so the projected-data engine (`projected`) reuses
them with its back-projected sums. Thesis typos fixed (issue 5): in eqs. 2.59-2.62 N_k = Σ_j z_jk, the mean is
Σ_j z_jk v_j / (N_k + r) and 2ã = 2a + (N + K) d; with the "fixed" mean prior (B.42) the mean is
s Σ z v / (s N_k + r).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryoscope.bayes.assignments import AssignmentStats, assignment_stats
from cryoscope.bayes.counts import GridPoints
from cryoscope.bayes.draws import dirichlet, gamma
from cryoscope.bayes.prior import MixturePrior


@dataclass
class MixtureState:
    """means [K, d] (Å), precision s (Å⁻², 0-d tensor), weights [K] (sum 1)."""

    means: torch.Tensor
    precision: torch.Tensor
    weights: torch.Tensor

    @property
    def sigma(self) -> float:
        """Component standard deviation σ = 1 / √s (Å)."""
        return float(self.precision.rsqrt())

    def clone(self) -> MixtureState:
        return MixtureState(self.means.clone(), self.precision.clone(), self.weights.clone())

    def to(self, device: torch.device | str) -> MixtureState:
        return MixtureState(self.means.to(device), self.precision.to(device), self.weights.to(device))


def draw_from_prior(n_components: int, ndim: int, prior: MixturePrior, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float64) -> MixtureState:
    """A mixture drawn from the prior (the thesis's initialisation)."""
    s = gamma(prior.a, prior.b, generator, dtype)
    sd = (prior.r * s).rsqrt() if prior.mean_prior == "scaled" else torch.tensor(prior.r, dtype=dtype, device=s.device).rsqrt()
    means = torch.randn(n_components, ndim, generator=generator, dtype=dtype, device=s.device) * sd
    weights = dirichlet(torch.full((n_components,), prior.alpha0, dtype=dtype, device=s.device), generator)
    return MixtureState(means, s, weights)


def draw_weights(n: torch.Tensor, prior: MixturePrior, generator: torch.Generator | None = None) -> torch.Tensor:
    """w ~ Dirichlet(N_k + α0) (eq. 2.63)."""
    return dirichlet(n + prior.alpha0, generator)


def draw_means(n: torch.Tensor, s_sum: torch.Tensor, precision: torch.Tensor, prior: MixturePrior,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """μ_k ~ N(Σ z x / (N_k + r), 1 / (s (N_k + r))) (eq. C.56), or the "fixed"-prior form (B.42); s_sum [K, d] = Σ z x."""
    if prior.mean_prior == "scaled":
        mean, var = s_sum / (n + prior.r)[:, None], 1 / (precision * (n + prior.r))
    else:
        mean, var = precision * s_sum / (precision * n + prior.r)[:, None], 1 / (precision * n + prior.r)
    return mean + torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device) * var.sqrt()[:, None]


def _precision_shape_rate(ssr: torch.Tensor, n_total: torch.Tensor, means: torch.Tensor, prior: MixturePrior):
    """(ã, b̃) of the precision's Gamma conditional (eqs. 2.60-2.62 / C.63-C.64; B.44-B.45 for the fixed prior).
    ssr = Σ z |x - μ|² over all points; n_total = Σ_k N_k."""
    k, d = means.shape
    if prior.mean_prior == "scaled":
        return prior.a + 0.5 * (n_total + k) * d, prior.b + 0.5 * (ssr + prior.r * (means * means).sum())
    return prior.a + 0.5 * n_total * d, prior.b + 0.5 * ssr


def draw_precision(ssr, n_total, means, prior: MixturePrior, generator: torch.Generator | None = None) -> torch.Tensor:
    """s ~ Gamma(ã, rate b̃)."""
    shape, rate = _precision_shape_rate(ssr, n_total, means, prior)
    return gamma(shape, rate, generator, means.dtype)


def squared_residual(stats: AssignmentStats, means: torch.Tensor) -> torch.Tensor:
    """Σ_jk z_jk |v_j - μ_k|² from the sums: Σ_k Q_k - 2 μ_k·S_k + N_k |μ_k|²."""
    return (stats.q - 2 * (means * stats.s).sum(-1) + stats.n * (means * means).sum(-1)).sum()


def log_prior(state: MixtureState, prior: MixturePrior) -> torch.Tensor:
    """log p(μ | s) + log p(s) + log p(w), normalised (eqs. 2.22-2.25)."""
    k, d = state.means.shape
    s = state.precision
    prec = prior.r * s if prior.mean_prior == "scaled" else torch.as_tensor(prior.r, dtype=s.dtype, device=s.device)
    lp_mu = 0.5 * k * d * torch.log(prec / (2 * math.pi)) - 0.5 * prec * (state.means**2).sum()
    lp_s = prior.a * math.log(prior.b) - math.lgamma(prior.a) + (prior.a - 1) * torch.log(s) - prior.b * s
    a0 = prior.alpha0
    lp_w = math.lgamma(k * a0) - k * math.lgamma(a0) + (a0 - 1) * torch.log(state.weights.clamp_min(1e-300)).sum()
    return lp_mu + lp_s + lp_w


def gibbs_step(state: MixtureState, data: GridPoints, prior: MixturePrior, generator: torch.Generator | None = None,
               truncation: float | None = 5.0) -> tuple[MixtureState, torch.Tensor]:
    """One sweep z -> w -> μ -> s for binned data; returns the new state and log p(D | θ) at the old one."""
    stats = assignment_stats(data, state.means, state.weights, state.precision, generator, truncation=truncation)
    weights = draw_weights(stats.n, prior, generator)
    means = draw_means(stats.n, stats.s, state.precision, prior, generator)
    precision = draw_precision(squared_residual(stats, means), stats.n.sum(), means, prior, generator)
    return MixtureState(means, precision, weights), stats.log_likelihood


def em_step(state: MixtureState, data: GridPoints, prior: MixturePrior, truncation: float | None = 5.0) -> tuple[MixtureState, torch.Tensor]:
    """One MAP-EM iteration (eqs. 2.34, 2.38, 2.39 with binned weights); returns the new state and log p(D | θ)
    at the old one. The log-posterior never decreases (for α0 >= 1; exactly so with `truncation` None)."""
    stats = assignment_stats(data, state.means, state.weights, state.precision, soft=True, truncation=truncation)
    k = stats.n.numel()
    n_total = stats.n.sum()
    weights = (stats.n + prior.alpha0 - 1).clamp_min(0) / (n_total + k * (prior.alpha0 - 1))
    if prior.mean_prior == "scaled":
        means = stats.s / (stats.n + prior.r)[:, None]
        shape, rate = _precision_shape_rate(squared_residual(stats, means), n_total, means, prior)
        precision = (shape - 1) / rate
    else:  # coordinate ascent: means at the current s, then s at the new means
        means = state.precision * stats.s / (state.precision * stats.n + prior.r)[:, None]
        shape, rate = _precision_shape_rate(squared_residual(stats, means), n_total, means, prior)
        precision = (shape - 1) / rate
    return MixtureState(means, precision, weights), stats.log_likelihood
