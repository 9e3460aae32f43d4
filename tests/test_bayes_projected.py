"""Gibbs engine for projected data: the rotation and shift conditionals against the complete-data likelihood,
and recovery of unknown rotations by the global step plus local Gibbs steps."""

from __future__ import annotations

import torch

from cryoscope.bayes.mixture import MixtureState
from cryoscope.bayes.pipeline import initial_stage
from cryoscope.bayes.projected import (
    BinnedImages,
    LatentStats,
    Poses,
    draw_latents,
    draw_rotations,
    draw_shifts,
    global_rotations,
    rotation_parameter,
)
from cryoscope.geometry.rotations import geodesic_distance
from cryoscope.geometry.sampling import random_rotations
from cryoscope.physics import gmm


def _points_and_stats(g, p=3, k=4, per=30):
    """Explicit 3-D points with assignments, and their sufficient statistics."""
    comp = torch.randint(0, k, (p, per), generator=g)
    x = torch.randn(p, per, 3, generator=g, dtype=torch.float64) * 5
    onehot = torch.nn.functional.one_hot(comp, k).double()  # [p, per, k]
    n = onehot.sum(1)
    nu = torch.einsum("plk,pli->pki", onehot, x)
    ss = (x * x).sum()
    return x, comp, LatentStats(n, nu, ss, torch.zeros((), dtype=torch.float64))


def _complete_loglik(x, comp, state, poses):
    c = torch.einsum("pij,kj->pki", poses.rotations, state.means)
    c[..., :2] += poses.shifts[:, None]
    centre = torch.gather(c, 1, comp[..., None].expand(-1, -1, 3))
    return -0.5 * state.precision * ((x - centre) ** 2).sum((-1, -2))  # per image


def test_rotation_and_shift_conditionals_match_the_complete_likelihood():
    g = torch.Generator().manual_seed(0)
    x, comp, stats = _points_and_stats(g)
    state = MixtureState(torch.randn(4, 3, generator=g, dtype=torch.float64) * 8, torch.tensor(0.05, dtype=torch.float64),
                         torch.full((4,), 0.25, dtype=torch.float64))
    shifts = torch.randn(3, 2, generator=g, dtype=torch.float64)
    r1, r2 = random_rotations(3, g, dtype=torch.float64), random_rotations(3, g, dtype=torch.float64)
    p1, p2 = Poses(r1, shifts), Poses(r2, shifts)
    a = rotation_parameter(state, stats, p1)
    # log p(R | rest) - tr(Aᵀ R) must not depend on R
    lhs = _complete_loglik(x, comp, state, p1) - _complete_loglik(x, comp, state, p2)
    rhs = (a * r1).sum((-1, -2)) - (a * r2).sum((-1, -2))
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-8)
    # shifts: draws have the mean and variance of the exact Gaussian conditional (brute force on the likelihood)
    draws = torch.stack([draw_shifts(state, stats, p1, generator=torch.Generator().manual_seed(i)) for i in range(3000)])
    grid = torch.linspace(-3, 3, 601, dtype=torch.float64)
    for i in range(3):
        lp = []
        for v in grid:
            sh = shifts.clone()
            sh[i, 0] = draws[:, i, 0].mean() + v
            sh[i, 1] = draws[:, i, 1].mean()
            lp.append(_complete_loglik(x, comp, state, Poses(r1, sh))[i])
        w = torch.softmax(torch.stack(lp), 0)
        mean_bf = float(draws[:, i, 0].mean() + (w * grid).sum())
        var_bf = float((w * (grid - (w * grid).sum()) ** 2).sum())
        assert abs(float(draws[:, i, 0].mean()) - mean_bf) < 5 * (var_bf / 3000) ** 0.5
        assert abs(float(draws[:, i, 0].var()) / var_bf - 1) < 0.1


def test_global_step_then_local_gibbs_recovers_rotations_that_local_steps_alone_miss():
    g = torch.Generator().manual_seed(1)
    k, box, px = 12, 24, 4.0
    means = torch.randn(k, 3, generator=g, dtype=torch.float64) * torch.tensor([14.0, 9.0, 6.0], dtype=torch.float64)
    state = MixtureState(means, torch.tensor(1 / 16.0, dtype=torch.float64), torch.full((k,), 1 / k, dtype=torch.float64))
    truth = random_rotations(6, g, dtype=torch.float64)
    images = gmm.project(means, torch.ones(k, dtype=torch.float64), torch.full((k,), 4.0, dtype=torch.float64), truth, box, px)
    data = BinnedImages.from_images(images, px, 3000)

    def run(use_global: bool) -> torch.Tensor:
        gen = torch.Generator().manual_seed(7)
        poses = Poses(random_rotations(6, gen, dtype=torch.float64), torch.zeros(6, 2, dtype=torch.float64))
        if use_global:
            poses.rotations = global_rotations(state, poses, data, 3000, gen)
        for _ in range(40):
            poses.rotations = draw_rotations(state, draw_latents(state, poses, data, gen), poses, gen)
        return geodesic_distance(poses.rotations, truth)

    err_global, err_local = run(True), run(False)
    assert int((err_global < 5).sum()) >= 5, err_global
    assert int((err_local < 5).sum()) < int((err_global < 5).sum()), err_local



def test_initial_stage_finds_the_rotations_of_projections_of_an_unknown_mixture():
    g = torch.Generator().manual_seed(1)
    k, box, px = 12, 24, 4.0
    means = torch.randn(k, 3, generator=g, dtype=torch.float64) * torch.tensor([14.0, 9.0, 6.0], dtype=torch.float64)
    truth = random_rotations(10, g, dtype=torch.float64)
    images = gmm.project(means, torch.ones(k, dtype=torch.float64), torch.full((k,), 4.0, dtype=torch.float64), truth, box, px)
    data = BinnedImages.from_images(images, px, 2000)
    # 15 rounds: with 5, the best of 3 restarts has >= 9 of 10 rotations consistent in only 29-33 of 72 seed sets
    # (after and before a change of random streams); with 15, 18 of 20 have >= 9 and all 20 have >= 8
    runs = [initial_stage(data, 12, rounds=15, mixture_steps=10, local_steps=10, n_rotations=1000,
                          generator=torch.Generator().manual_seed(seed)) for seed in range(3)]
    res = max(runs, key=lambda r: r.final_log_posterior)  # restarts ranked by log-posterior (thesis §3.4.3)
    assert res.final_log_posterior > res.log_posterior[0]
    # the structure is unknown, so rotations are right only up to one common rotation (the gauge) and the hand
    rel = res.poses.rotations.transpose(-1, -2) @ truth
    flip = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    rel_mirror = (flip @ res.poses.rotations @ flip).transpose(-1, -2) @ truth
    best = 0
    for r in (rel, rel_mirror):
        d = geodesic_distance(r[:, None], r[None])
        best = max(best, int((d < 10).sum(1).max()))
    assert best >= 8  # random rotations: 1 (each agrees only with itself)


def test_point_group_symmetry_pools_the_copies_and_recovers_a_symmetric_mixture():
    from cryoscope.bayes.fit_map import posterior_maps
    from cryoscope.bayes.pipeline import refinement_stage
    from cryoscope.bayes.projected import symmetric_copies
    from cryoscope.geometry.symmetry import symmetry_group

    g = torch.Generator().manual_seed(4)
    group = symmetry_group("D2")
    box, px = 24, 4.0
    asym = MixtureState(torch.randn(3, 3, generator=g, dtype=torch.float64) * 10 + torch.tensor([8.0, 4.0, 3.0], dtype=torch.float64),
                        torch.tensor(1 / 16, dtype=torch.float64), torch.full((3,), 1 / 3, dtype=torch.float64))
    truth = symmetric_copies(asym, group)  # 12 components, invariant under D2
    rot = random_rotations(8, g, dtype=torch.float64)
    images = gmm.project(truth.means, truth.weights, torch.full((12,), 4.0, dtype=torch.float64), rot, box, px)
    data = BinnedImages.from_images(images, px, 4000)
    res = refinement_stage(data, 3, Poses(rot, torch.zeros(8, 2, dtype=torch.float64)), steps=80, burn_in=40, thin=4,
                           shifts=False, generator=torch.Generator().manual_seed(0), group=group)
    full = [symmetric_copies(st, group) for st, _ in res.samples]
    mean = posterior_maps(full, box, px)[0]
    ref = posterior_maps([truth], box, px)[0]
    cc = float((mean * ref).sum() / (mean.norm() * ref.norm()))
    assert cc > 0.97, cc
    # the fitted density is exactly D2-symmetric: rotating it by a group element leaves it unchanged
    turned = posterior_maps([MixtureState(f.means @ group[2].T, f.precision, f.weights) for f in full], box, px)[0]
    assert torch.allclose(turned, mean, atol=1e-9 * float(mean.abs().max()))
