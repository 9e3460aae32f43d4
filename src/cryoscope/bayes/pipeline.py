"""The Poisson/Gibbs pipeline of thesis §3.4: an initial stage (small K, coarse images, few counts, shifts fixed;
alternating mixture sweeps with rotation updates, a global step then local steps; several restarts ranked by
log-posterior) and a refinement stage (larger K, more counts, full sweeps with shifts; burn-in, thinning,
posterior samples)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cryoscope.bayes.mixture import MixtureState, draw_from_prior
from cryoscope.bayes.prior import MixturePrior
from cryoscope.bayes.projected import (
    BinnedImages,
    Poses,
    draw_latents,
    draw_mixture,
    draw_rotations,
    draw_shifts,
    global_rotations,
    log_posterior,
    symmetric_copies,
)
from cryoscope.geometry.sampling import random_rotations


@dataclass
class StageResult:
    """Final state and poses, the thinned samples after burn-in (refinement) and the log-posterior per sweep."""

    state: MixtureState
    poses: Poses
    log_posterior: list[float] = field(default_factory=list)
    samples: list[tuple[MixtureState, Poses]] = field(default_factory=list)

    @property
    def final_log_posterior(self) -> float:
        return self.log_posterior[-1]


def data_prior(data: BinnedImages, **kwargs) -> MixturePrior:
    """The default prior for a set of images: r from the per-axis spread of all counts about the image centre."""
    return MixturePrior.from_data(data.pixels.points, data.pixels.counts, **kwargs)


def initial_stage(
    data: BinnedImages,
    n_components: int,
    rounds: int = 10,
    mixture_steps: int = 10,
    local_steps: int = 10,
    n_rotations: int = 1000,
    prior: MixturePrior | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int], None] | None = None,
    group: torch.Tensor | None = None,
) -> StageResult:
    """One run of the initial stage from a mixture and rotations drawn from the prior; shifts stay 0. With a point
    `group` ([G, 3, 3], `geometry.symmetry`) the state is the asymmetric unit of n_components components."""
    prior = prior or data_prior(data)
    p = data.n_images
    state = draw_from_prior(n_components, 3, prior, generator)
    dev = data.counts.device
    poses = Poses(random_rotations(p, generator, dtype=torch.float64, device=dev),
                  torch.zeros(p, 2, dtype=torch.float64, device=dev))
    res = StageResult(state, poses)
    for r in range(rounds):
        for _ in range(mixture_steps):
            stats = draw_latents(symmetric_copies(state, group), poses, data, generator)
            res.log_posterior.append(float(log_posterior(state, stats.log_likelihood, prior)))
            state = draw_mixture(state, stats, poses, prior, generator, group)
        full = symmetric_copies(state, group)
        poses.rotations = global_rotations(full, poses, data, n_rotations, generator)
        for _ in range(local_steps):
            stats = draw_latents(full, poses, data, generator)
            res.log_posterior.append(float(log_posterior(state, stats.log_likelihood, prior)))
            poses.rotations = draw_rotations(full, stats, poses, generator)
        if callback is not None:
            callback(r)
    res.state, res.poses = state, poses
    return res


def refinement_stage(
    data: BinnedImages,
    n_components: int,
    poses: Poses,
    steps: int = 300,
    burn_in: int = 150,
    thin: int = 10,
    shifts: bool = True,
    prior: MixturePrior | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, StageResult], None] | None = None,
    resume: StageResult | None = None,
    group: torch.Tensor | None = None,
) -> StageResult:
    """Full Gibbs sweeps (assignments and depths, w, μ, s, rotations, shifts) from a new mixture drawn from the prior
    and the initial stage's rotations; keeps every `thin`-th (state, poses) after `burn_in` sweeps. `callback(step,
    result)` runs after every sweep (e.g. to checkpoint); `resume` continues a partial result (with the generator
    restored to its state at that point, the run ends as an uninterrupted one). `group`: as in `initial_stage`."""
    prior = prior or data_prior(data)
    if resume is None:
        res = StageResult(draw_from_prior(n_components, 3, prior, generator), poses.clone())
    else:
        res = resume
    state, poses = res.state, res.poses
    for step in range(len(res.log_posterior), steps):
        stats = draw_latents(symmetric_copies(state, group), poses, data, generator)
        res.log_posterior.append(float(log_posterior(state, stats.log_likelihood, prior)))
        state = draw_mixture(state, stats, poses, prior, generator, group)
        full = symmetric_copies(state, group)
        poses.rotations = draw_rotations(full, stats, poses, generator)
        if shifts:
            poses.shifts = draw_shifts(full, stats, poses, generator=generator)
        if step >= burn_in and (step - burn_in) % thin == 0:
            res.samples.append((state.clone(), poses.clone()))
        res.state, res.poses = state, poses
        if callback is not None:
            callback(step, res)
    return res
