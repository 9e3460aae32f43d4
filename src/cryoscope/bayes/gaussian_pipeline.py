"""The Gaussian-noise pipeline (thesis §5.3, structured as the Poisson pipeline of §3.4): an initial stage (few
components, coarse images; mixture sweeps with rotations fixed, then a global rotation step and local HMC
rotation steps; several restarts ranked by log-posterior) and a refinement stage (more components, finer images,
full sweeps with shifts; step sizes adapt during burn-in and are then frozen; thinned posterior samples)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from cryoscope.bayes.gaussian_model import GaussianPrior, GaussianState, ImageSet, log_posterior, scale_conditional, unit_images
from cryoscope.bayes.gaussian_sampler import Tuning, draw_noise_precision, global_rotations, image_residuals, sweep
from cryoscope.bayes.pipeline import StageResult
from cryoscope.bayes.projected import Poses
from cryoscope.geometry.sampling import random_rotations


def sweep_log_posterior(state: GaussianState, poses: Poses, data: ImageSet, prior: GaussianPrior) -> float:
    return float(log_posterior(state, image_residuals(state, poses, data).sum(), data.n_pixels, prior))


def initial_state(means: torch.Tensor, sigma: float, poses: Poses, data: ImageSet, prior: GaussianPrior,
                  generator: torch.Generator | None = None, group: torch.Tensor | None = None) -> GaussianState:
    """Means (the asymmetric unit with a point `group`) and σ (Å) given; λ at its conditional mean, then β drawn
    from its conditional."""
    one = torch.ones((), dtype=means.dtype, device=means.device)
    s = one / sigma**2
    state = GaussianState(means, s, one.clone(), one.clone(), group)
    unit = unit_images(state.copies(), s, poses.rotations, poses.shifts, data)
    state.scale, _ = scale_conditional(data.images, unit, one)
    state.noise_precision = draw_noise_precision(state, poses, data, prior, generator)
    return state


def initial_stage(
    data: ImageSet,
    n_components: int,
    rounds: int = 10,
    mixture_steps: int = 10,
    local_steps: int = 10,
    n_rotations: int = 1000,
    sigma: float | None = None,
    prior: GaussianPrior | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int], None] | None = None,
    group: torch.Tensor | None = None,
) -> StageResult:
    """One initial-stage run from means drawn from the prior and random rotations; shifts stay 0. σ defaults to
    2 pixels. With a point `group`, n_components counts the asymmetric unit."""
    prior = prior or GaussianPrior.from_images(data.images, data.pixel_size)
    p, dt, dev = data.n_images, data.images.dtype, data.images.device
    means = torch.randn(n_components, 3, generator=generator, dtype=dt, device=dev) * prior.r**-0.5
    poses = Poses(random_rotations(p, generator, dtype=dt, device=dev), torch.zeros(p, 2, dtype=dt, device=dev))
    state = initial_state(means, sigma or 2 * data.pixel_size, poses, data, prior, generator, group)
    tuning = Tuning.initial(state, data)
    res = StageResult(state, poses)
    for r in range(rounds):
        for _ in range(mixture_steps):
            state, poses = sweep(state, poses, data, prior, tuning, generator, rotations=False, shifts=False)
            res.log_posterior.append(sweep_log_posterior(state, poses, data, prior))
        poses.rotations = global_rotations(state, poses, data, n_rotations, generator)
        for _ in range(local_steps):
            state, poses = sweep(state, poses, data, prior, tuning, generator, mixture=False, shifts=False)
            res.log_posterior.append(sweep_log_posterior(state, poses, data, prior))
        if callback is not None:
            callback(r)
    res.state, res.poses = state, poses
    return res


def refinement_stage(
    data: ImageSet,
    n_components: int,
    start: StageResult,
    steps: int = 300,
    burn_in: int = 150,
    thin: int = 10,
    shifts: bool = True,
    prior: GaussianPrior | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, StageResult, Tuning], None] | None = None,
    resume: tuple[StageResult, Tuning] | None = None,
) -> StageResult:
    """Full sweeps from the initial stage's rotations and mixture (each component split into n_components / K
    copies jittered by σ/2, same σ and symmetry); keeps every `thin`-th (state, poses) after `burn_in` sweeps, with the step
    sizes frozen from then on. `callback(step, result, tuning)` runs after every sweep (e.g. to checkpoint);
    `resume` continues a partial result with its tuning (and the generator restored to that point)."""
    prior = prior or GaussianPrior.from_images(data.images, data.pixel_size)
    if resume is None:
        k0 = start.state.means.shape[0]
        pick = torch.arange(n_components, device=start.state.means.device) % k0
        sigma = start.state.sigma
        jitter = 0.5 * sigma * torch.randn(n_components, 3, generator=generator, dtype=start.state.means.dtype,
                                           device=start.state.means.device)
        poses = start.poses.clone()
        state = initial_state(start.state.means[pick] + jitter, sigma, poses, data, prior, generator, start.state.group)
        res, tuning = StageResult(state, poses), Tuning.initial(state, data)
    else:
        res, tuning = resume
    state, poses = res.state, res.poses
    for step in range(len(res.log_posterior), steps):
        if step == burn_in:
            tuning.freeze()
        state, poses = sweep(state, poses, data, prior, tuning, generator, shifts=shifts)
        res.log_posterior.append(sweep_log_posterior(state, poses, data, prior))
        if step >= burn_in and (step - burn_in) % thin == 0:
            res.samples.append((state.clone(), poses.clone()))
        res.state, res.poses = state, poses
        if callback is not None:
            callback(step, res, tuning)
    return res
