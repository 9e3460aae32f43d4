"""Gaussian-noise engine (thesis ch. 5, App. D): HMC and Metropolis-Hastings against Gaussian targets, the
appendix-D gradients and conditionals against autograd and brute force, and small recoveries."""

from __future__ import annotations

import math

import pytest
import torch

from cryoscope.bayes.gaussian_model import (
    GaussianPrior,
    GaussianState,
    ImageSet,
    noise_precision_shape_rate,
    precision_energy,
    scale_conditional,
    unit_images,
)
from cryoscope.bayes.gaussian_sampler import (
    Tuning,
    global_rotations,
    image_residuals,
    rotation_energy_and_gradient,
    sweep,
)
from cryoscope.bayes.hmc import StepSize, energy_and_gradient, hmc_step, metropolis_step
from cryoscope.bayes.projected import Poses
from cryoscope.geometry.rotations import _skew, axis_angle_derivative, axis_angle_to_matrix, geodesic_distance
from cryoscope.geometry.sampling import random_rotations
from cryoscope.physics.ctf import CTFParams

F64 = torch.float64


def _gaussian_target():
    cov = torch.tensor([[2.0, 1.2], [1.2, 1.0]], dtype=F64)
    mean = torch.tensor([1.0, -2.0], dtype=F64)
    prec = torch.linalg.inv(cov)

    def energy(q):
        d = q - mean
        return 0.5 * torch.einsum("ci,ij,cj->c", d, prec, d)

    return mean, cov, energy


def _check_moments(x, mean, cov, n):
    se = (torch.diagonal(cov) / n).sqrt()
    assert ((x.mean(0) - mean).abs() < 5 * se).all()
    emp = torch.cov(x.T)
    assert torch.allclose(emp, cov, atol=6 * float(cov.max()) / math.sqrt(n))


def test_hmc_samples_a_correlated_gaussian():
    mean, cov, energy = _gaussian_target()
    g = torch.Generator().manual_seed(0)
    chains = 4000
    q = torch.zeros(chains, 2, dtype=F64)
    step = StepSize(torch.full((chains,), 0.3, dtype=F64), adapt=False)
    for _ in range(100):
        q, acc = hmc_step(q, lambda x: energy_and_gradient(energy, x), step, 10, g)
    assert 0.5 < float(acc.double().mean()) < 1.0
    _check_moments(q, mean, cov, chains)


def test_metropolis_samples_a_correlated_gaussian_and_adapts_its_steps():
    mean, cov, energy = _gaussian_target()
    g = torch.Generator().manual_seed(1)
    chains = 4000
    q = torch.zeros(chains, 2, dtype=F64)
    step = StepSize(torch.full((chains,), 5.0, dtype=F64))
    u = None
    for i in range(300):
        if i == 150:
            step.adapt = False
        q, u, _ = metropolis_step(q, energy, step, g, u)
    assert float(step.value.median()) < 5.0  # too-large steps are rejected and shrink
    _check_moments(q, mean, cov, chains)


def _problem(g, p=3, k=6, box=16, px=4.0, ctf=False):
    means = torch.randn(k, 3, generator=g, dtype=F64) * 8
    rot = random_rotations(p, g, dtype=F64)
    shifts = torch.randn(p, 2, generator=g, dtype=F64)
    images = torch.randn(p, box, box, generator=g, dtype=F64)
    data = ImageSet(images, px)
    if ctf:
        data = ImageSet.with_ctf(images, px, CTFParams.create(torch.tensor([8000.0, 12000.0, 15000.0])[:p], dtype=F64))
    state = GaussianState(means, torch.tensor(1 / 25.0, dtype=F64), torch.tensor(0.7, dtype=F64), torch.tensor(2.0, dtype=F64))
    return state, Poses(rot, shifts), data


def test_means_gradient_is_eq_d14():
    g = torch.Generator().manual_seed(2)
    state, poses, data = _problem(g)
    prior = GaussianPrior(r=0.01)
    beta, lam, s = state.noise_precision, state.scale, state.precision

    def energy(q):
        return (0.5 * beta * image_residuals(state, poses, data, means=q[0]).sum() + 0.5 * prior.r * (q * q).sum())[None]

    _, grad = energy_and_gradient(energy, state.means[None])
    # eq. D.14: ∂E/∂μ_k = -β λ s Σ_ij v_ijk (y_ij - ŷ_ij) R_iᵀ P_oᵀ d_ijk + r μ_k
    n = data.box
    x = (torch.arange(n, dtype=F64) - n // 2) * data.pixel_size
    pix = torch.stack(torch.meshgrid(x, x, indexing="xy"), -1)  # [y, x, (x, y)]
    c = torch.einsum("pij,kj->pki", poses.rotations[:, :2], state.means) + poses.shifts[:, None]
    d = pix[None, :, :, None, :] - c[:, None, None]  # [P, y, x, K, 2]
    v = torch.exp(-0.5 * s * (d * d).sum(-1))
    resid = data.images - lam * v.sum(-1)
    proj = torch.einsum("pyxk,pyxka->pka", v * resid[..., None], d)  # Σ_j v (y - ŷ) d
    expected = -beta * lam * s * torch.einsum("pai,pka->ki", poses.rotations[:, :2], proj) + prior.r * state.means
    assert torch.allclose(grad[0], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("ctf", [False, True])
def test_rotation_gradient_gallego_yezzi_matches_finite_differences(ctf):
    g = torch.Generator().manual_seed(3)
    state, poses, data = _problem(g, ctf=ctf)
    v = torch.randn(data.n_images, 3, generator=g, dtype=F64) * 0.3
    e, grad = rotation_energy_and_gradient(state, poses, data, v)
    h = 1e-6
    for a in range(3):
        dv = torch.zeros_like(v)
        dv[:, a] = h
        fd = (rotation_energy_and_gradient(state, poses, data, v + dv)[0] - rotation_energy_and_gradient(state, poses, data, v - dv)[0]) / (2 * h)
        assert torch.allclose(grad[:, a], fd, rtol=1e-6, atol=1e-6 * float(e.abs().max()))


def test_exponential_map_derivative_is_the_gallego_yezzi_formula():
    g = torch.Generator().manual_seed(4)
    v = torch.randn(5, 3, generator=g, dtype=F64)
    r = axis_angle_to_matrix(v)
    eye = torch.eye(3, dtype=F64)
    theta2 = (v * v).sum(-1)[:, None, None]
    literal = torch.stack([(v[:, i, None, None] * _skew(v) + _skew(torch.linalg.cross(v, (eye - r)[:, :, i], dim=-1))) @ r / theta2
                           for i in range(3)], 1)  # thesis eq. 5.27
    assert torch.allclose(axis_angle_derivative(v), literal, atol=1e-12)
    assert torch.allclose(axis_angle_derivative(torch.zeros(1, 3, dtype=F64))[0], _skew(eye), atol=0)


def test_scale_and_precision_conditionals_against_brute_force():
    g = torch.Generator().manual_seed(5)
    state, poses, data = _problem(g)
    beta = state.noise_precision
    lams = torch.linspace(-3, 3, 20001, dtype=F64)

    def lam_integral(s):
        unit = unit_images(state.means, s, poses.rotations, poses.shifts, data)
        e = 0.5 * beta * ((data.images[None] - lams[:, None, None, None] * unit[None]) ** 2).sum((1, 2, 3))
        logp = -e
        m = logp.max()
        w = torch.exp(logp - m)
        z = w.sum() * (lams[1] - lams[0])
        mean = (w * lams).sum() / w.sum()
        var = (w * (lams - mean) ** 2).sum() / w.sum()
        return -(m + torch.log(z)), unit, mean, var

    s1, s2 = torch.tensor(1 / 25, dtype=F64), torch.tensor(1 / 16, dtype=F64)
    e1, u1, mean1, var1 = lam_integral(s1)
    e2, u2, _, _ = lam_integral(s2)
    assert torch.allclose(precision_energy(data.images, u1, beta) - precision_energy(data.images, u2, beta), e1 - e2, atol=1e-6)
    m, prec = scale_conditional(data.images, u1, beta)
    assert torch.allclose(m, mean1, atol=1e-6) and torch.allclose(1 / prec, var1, rtol=1e-4)
    # β | rest: Gamma(PN/2 + a, rate SS/2 + b) is ∝ β^(PN/2) exp(-β SS/2) p(β)
    prior = GaussianPrior(r=1.0, a_beta=2.0, b_beta=0.5)
    ss = image_residuals(state, poses, data).sum()
    shape, rate = noise_precision_shape_rate(ss, data.n_pixels, prior)
    betas = torch.tensor([0.5, 1.0, 3.0], dtype=F64)
    logp = 0.5 * data.n_pixels * torch.log(betas) - 0.5 * betas * ss + (prior.a_beta - 1) * torch.log(betas) - prior.b_beta * betas
    gam = (shape - 1) * torch.log(betas) - rate * betas
    assert torch.allclose(logp - logp[0], gam - gam[0], rtol=1e-12)


def test_unit_ctf_on_the_padded_grid_equals_no_ctf():
    g = torch.Generator().manual_seed(6)
    state, poses, data = _problem(g)
    ones = torch.ones(data.n_images, 2 * data.box, 2 * data.box, dtype=F64)
    a = unit_images(state.means, state.precision, poses.rotations, poses.shifts, data)
    b = unit_images(state.means, state.precision, poses.rotations, poses.shifts, ImageSet(data.images, data.pixel_size, ones))
    assert torch.allclose(a, b, atol=1e-12)


def _synthetic(g, p, k=12, box=24, px=5.0, noise=0.05):
    means = torch.randn(k, 3, generator=g, dtype=F64) * 15
    truth = GaussianState(means, torch.tensor(1 / 36.0, dtype=F64), torch.tensor(1.0, dtype=F64), torch.tensor(noise**-2, dtype=F64))
    rot = random_rotations(p, g, dtype=F64)
    poses = Poses(rot, torch.zeros(p, 2, dtype=F64))
    clean = unit_images(means, truth.precision, rot, poses.shifts, ImageSet(torch.zeros(p, box, box, dtype=F64), px))
    return truth, poses, ImageSet(clean + noise * torch.randn(clean.shape, generator=g, dtype=F64), px)


def test_sweeps_from_the_truth_keep_the_residual_at_the_noise_level():
    g = torch.Generator().manual_seed(7)
    truth, poses, data = _synthetic(g, 6)
    prior = GaussianPrior.from_images(data.images, data.pixel_size)
    state = truth.clone()
    state.means = state.means + 2.0 * torch.randn(state.means.shape, generator=g, dtype=F64)  # perturbed
    tuning = Tuning.initial(state, data)
    for _ in range(60):
        state, poses = sweep(state, poses, data, prior, tuning, g, shifts=True)
    noise_var = 1 / float(truth.noise_precision)
    assert abs(1 / float(state.noise_precision) / noise_var - 1) < 0.15  # β recovered: the fit reaches the noise
    assert abs(state.sigma / truth.sigma - 1) < 0.1


def test_global_step_then_hmc_recovers_rotations_of_a_known_mixture():
    g = torch.Generator().manual_seed(8)
    truth, true_poses, data = _synthetic(g, 8)
    poses = Poses(random_rotations(8, g, dtype=F64), true_poses.shifts.clone())
    poses.rotations = global_rotations(truth, poses, data, 3000, g)
    tuning = Tuning.initial(truth, data)
    prior = GaussianPrior.from_images(data.images, data.pixel_size)
    state = truth.clone()
    for _ in range(20):
        state, poses = sweep(state, poses, data, prior, tuning, g, mixture=False, shifts=False)
    err = geodesic_distance(poses.rotations, true_poses.rotations)  # degrees
    assert (err < 2).all(), err


def test_ctf_model_explains_images_from_the_physics_core():
    """Images made by the shared forward model (voxel map of the mixture, Fourier-slice projection, RELION CTF) are
    explained to the noise level by the Gaussian model with the CTF, and not without it."""
    from cryoscope.physics import gmm
    from cryoscope.physics.ctf import compute_ctf
    from cryoscope.physics.forward import ImageFormation
    from cryoscope.representations.voxel import VoxelMap

    g = torch.Generator().manual_seed(9)
    k, box, px, p, noise = 12, 32, 4.0, 6, 0.02
    means = torch.randn(k, 3, generator=g, dtype=F64) * 12
    sigma = 6.0
    vol = gmm.render_volume(means, torch.ones(k, dtype=F64), torch.full((k,), sigma, dtype=F64), box, px)
    rot = random_rotations(p, g, dtype=F64)
    ctf = CTFParams.create(torch.linspace(8000, 16000, p, dtype=F64), dtype=F64)
    clean = ImageFormation()(VoxelMap(vol, px), rot, ctf=compute_ctf(ctf, box, px))
    clean = clean / clean.abs().max()
    images = clean + noise * torch.randn(clean.shape, generator=g, dtype=F64)
    poses = Poses(rot, torch.zeros(p, 2, dtype=F64))
    prior = GaussianPrior(r=1e-3)
    fits = {}
    for name, data in (("ctf", ImageSet.with_ctf(images, px, ctf)), ("no_ctf", ImageSet(images, px))):
        unit = unit_images(means, torch.tensor(sigma**-2, dtype=F64), rot, poses.shifts, data)
        lam, _ = scale_conditional(images, unit, torch.ones((), dtype=F64))
        state = GaussianState(means.clone(), torch.tensor(sigma**-2, dtype=F64), lam, torch.tensor(noise**-2, dtype=F64))
        tuning = Tuning.initial(state, data)
        for _ in range(15):
            state, _ = sweep(state, poses, data, prior, tuning, g, rotations=False, shifts=False)
        fits[name] = 1 / float(state.noise_precision) / noise**2
    assert fits["ctf"] < 1.3, fits  # residual variance over the noise variance; measured 1.01 (9.4 without the CTF)
    assert fits["no_ctf"] > 3 * fits["ctf"], fits
