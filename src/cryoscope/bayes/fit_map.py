"""Fit an isotropic Gaussian mixture to a 3-D map (thesis §3.1): binning, Gibbs or EM sweeps, posterior maps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cryoscope.bayes.counts import GridPoints, discretise
from cryoscope.bayes.mixture import MixtureState, draw_from_prior, em_step, gibbs_step, log_prior
from cryoscope.bayes.prior import MixturePrior
from cryoscope.errors import InvalidValueError
from cryoscope.physics import gmm


@dataclass
class MapFit:
    """Final state, the thinned posterior samples after burn-in and the log-posterior of every step."""

    state: MixtureState
    samples: list[MixtureState] = field(default_factory=list)
    log_posterior: list[float] = field(default_factory=list)


def binned_map(volume: torch.Tensor, voxel_size: float, n_counts: int) -> GridPoints:
    """The voxels of a map that hold counts (eq. 2.52), centres in Å about voxel N // 2."""
    if volume.dim() != 3 or len(set(volume.shape)) != 1:
        raise InvalidValueError(f"map must be a cube [N, N, N], got {tuple(volume.shape)}")
    return GridPoints.from_counts(discretise(volume, n_counts), voxel_size)


def fit_map(
    volume: torch.Tensor,
    voxel_size: float,
    n_components: int,
    n_counts: int,
    n_steps: int,
    burn_in: int | None = None,
    thin: int = 10,
    method: str = "gibbs",
    prior: MixturePrior | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, float], None] | None = None,
    truncation: float | None = 5.0,
) -> MapFit:
    """Fit K components to a map [N, N, N] (negative values count as empty). Gibbs keeps every `thin`-th sample
    after `burn_in` steps (default: half the steps); EM returns only the MAP state. `truncation`: see
    `assignments.assignment_stats`."""
    if method not in ("gibbs", "em"):
        raise InvalidValueError(f"method must be 'gibbs' or 'em', got {method!r}")
    if n_components < 1 or n_steps < 1 or thin < 1:
        raise InvalidValueError(f"need K >= 1, steps >= 1 and thin >= 1, got {n_components}, {n_steps}, {thin}")
    data = binned_map(volume, voxel_size, n_counts)
    prior = prior or MixturePrior.from_data(data.points, data.counts)
    state = draw_from_prior(n_components, 3, prior, generator)
    burn_in = n_steps // 2 if burn_in is None else burn_in
    fit = MapFit(state)
    for step in range(n_steps):
        if method == "gibbs":
            new, loglik = gibbs_step(state, data, prior, generator, truncation)
        else:
            new, loglik = em_step(state, data, prior, truncation)
        fit.log_posterior.append(float(loglik + log_prior(state, prior)))  # of the state the sweep started from
        state = new
        if method == "gibbs" and step >= burn_in and (step - burn_in) % thin == 0:
            fit.samples.append(state.clone())
        if callback is not None:
            callback(step, fit.log_posterior[-1])
    fit.state = state
    return fit


def render(state: MixtureState, box: int, voxel_size: float, mass: float = 1.0) -> torch.Tensor:
    """The mixture as a map [box, box, box] of mass per voxel (total `mass`)."""
    k = state.means.shape[0]
    sigma = torch.full((k,), state.sigma, dtype=state.means.dtype, device=state.means.device)
    return gmm.render_volume(state.means, state.weights * mass, sigma, box, voxel_size)


def posterior_maps(samples: list[MixtureState], box: int, voxel_size: float, mass: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and per-voxel standard deviation maps over `samples` (thesis §3.2.2)."""
    if not samples:
        raise InvalidValueError("no posterior samples (increase the steps or lower the burn-in)")
    total = None
    total_sq = None
    for st in samples:
        m = render(st, box, voxel_size, mass)
        total = m if total is None else total + m
        total_sq = m * m if total_sq is None else total_sq + m * m
    mean = total / len(samples)
    return mean, (total_sq / len(samples) - mean * mean).clamp_min(0).sqrt()
