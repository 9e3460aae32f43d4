"""Heterogeneity engine (issue 9): the symmetry-adapted spherical basis, the projection model, the Woodbury
likelihood, the GEM and the files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoscope.cli.main import main
from cryoscope.geometry.rotations import axis_angle_to_matrix
from cryoscope.geometry.spherical_harmonics import SphereGrid, real_spherical_harmonics, real_wigner_matrices
from cryoscope.geometry.symmetry import symmetry_group
from cryoscope.hetero.analysis import flip_hand, radial_variance, shell_correlation
from cryoscope.hetero.gem import HeteroData, HeteroEstimator, known_pose_model
from cryoscope.hetero.likelihood import Woodbury, gram, log_likelihood
from cryoscope.hetero.operator import ProjectionOperator
from cryoscope.hetero.orientations import orientation_quadrature
from cryoscope.hetero.simulate import measurements_to_images, simulate_measurements
from cryoscope.physics.projection import project
from cryoscope.representations.spherical_basis import SphericalBasis, invariant_count, symmetric_harmonics

F64 = torch.float64


def _sphere_points(degree: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadrature nodes [m, 3] and weights [m] exact for spherical polynomials of `degree`."""
    g = SphereGrid(degree)
    st = torch.sqrt(1 - g.cos_theta**2)
    u = torch.stack(torch.broadcast_tensors(st[:, None] * torch.cos(g.phi), st[:, None] * torch.sin(g.phi), g.cos_theta[:, None]), -1)
    return u.reshape(-1, 3), g.weights[:, None].expand(-1, g.n_phi).reshape(-1)


def _random_rotations(n: int, seed: int) -> torch.Tensor:
    return axis_angle_to_matrix(torch.randn(n, 3, dtype=F64, generator=torch.Generator().manual_seed(seed)))


def test_icosahedral_counts_match_molien_series():
    """Σ_{l<=55} N_l = 53, N_l = 0 exactly on the listed degrees, and the projector's rank equals the character count."""
    counts = [invariant_count(l, "I") for l in range(56)]
    molien = np.zeros(56, dtype=int)  # (1 + t^15) / ((1 - t^6)(1 - t^10))
    for a in range(0, 56, 6):
        for b in range(0, 56 - a, 10):
            molien[a + b] += 1
            if a + b + 15 < 56:
                molien[a + b + 15] += 1
    assert counts == molien.tolist()
    assert sum(counts) == 53
    assert [l for l in range(56) if counts[l] == 0] == [1, 2, 3, 4, 5, 7, 8, 9, 11, 13, 14, 17, 19, 23, 29]
    assert [symmetric_harmonics(l, "I").shape[0] for l in range(0, 56, 5)] == counts[::5]


@pytest.mark.parametrize("group", ["C4", "D3", "T", "O", "I"])
def test_symmetric_harmonics_are_orthonormal_and_invariant(group):
    u, w = _sphere_points(2 * 16 + 2)
    G = symmetry_group(group, dtype=F64)
    for l in (3, 6, 10, 15, 16):
        B = symmetric_harmonics(l, group)
        assert B.shape[0] == invariant_count(l, group)
        if B.shape[0] == 0:
            continue
        psi = real_spherical_harmonics(l, u)[:, l, :] @ B.T  # [m, N_l]
        gram_ = psi.T @ (psi * w[:, None])
        assert torch.allclose(gram_, torch.eye(B.shape[0], dtype=F64), atol=1e-11)
        for g in G:  # Ψ(g u) = Ψ(u)
            rotated = real_spherical_harmonics(l, u[:50] @ g.T)[:, l, :] @ B.T
            assert torch.allclose(rotated, psi[:50], atol=1e-11)


def test_real_harmonics_orthonormal_to_degree_60_and_wigner_rotation():
    L = 60
    u, w = _sphere_points(2 * L + 2)
    Y = real_spherical_harmonics(L, u)
    mask = torch.arange(-L, L + 1).abs()[None, :] <= torch.arange(L + 1)[:, None]
    mask[:50] = False  # the highest degrees, where an unstable recursion would fail first
    Yf = Y.reshape(u.shape[0], -1)[:, mask.reshape(-1)]
    assert (Yf.T @ (Yf * w[:, None]) - torch.eye(Yf.shape[1], dtype=F64)).abs().max() < 1e-10
    R = _random_rotations(2, 1)
    for l in (7, 40):
        a = torch.randn(2 * l + 1, dtype=F64)
        for j in range(2):  # coefficients of f(R^T u) are D^r(R) a
            lhs = real_spherical_harmonics(l, u[:40] @ R[j])[:, l, :] @ a
            rhs = real_spherical_harmonics(l, u[:40])[:, l, :] @ (real_wigner_matrices(l, R[j : j + 1])[0] @ a)
            assert torch.allclose(lhs, rhs, atol=1e-11)


def test_radial_functions_orthonormal_and_hankel_transform_by_quadrature():
    from scipy.special import spherical_jn

    b = SphericalBasis(20.0, 9, 5, "O")  # l = 0, 4, 6, 8, 9
    r = torch.linspace(0, 20, 20001, dtype=F64)
    h = b.radial(r)
    w = torch.full_like(r, float(r[1] - r[0]))
    w[[0, -1]] /= 2  # trapezoid rule
    gram_ = (h * (w * r**2)[:, None]).T @ h
    same_ln = (b.l[:, None] == b.l[None]) & (b.n[:, None] == b.n[None])
    assert ((gram_ - torch.eye(b.size, dtype=F64)) * same_ln).abs().max() < 1e-7
    k = torch.tensor([0.0, 0.013, 0.05, 0.1, float(b.zeros[7]) / (2 * math.pi * 20)], dtype=F64)
    H = b.hankel(k)
    for i, kk in enumerate(k.tolist()):
        jl = torch.from_numpy(spherical_jn(b.l.numpy()[None], 2 * math.pi * kk * r.numpy()[:, None]))
        quad = 4 * math.pi * torch.trapezoid(h * jl * (r**2)[:, None], r, dim=0)
        assert (H[i] - quad).abs().max() < 1e-6 * H.abs().max()


def test_forward_model_matches_voxel_projector_and_map_round_trip():
    """L(θ)c equals the measurements of the core's projection of the rendered map (Kaiser–Bessel, to 1 %)."""
    torch.manual_seed(0)
    b = SphericalBasis(14.0, 8, 5, "C1", k_max=0.3)
    c = torch.randn(b.size, dtype=F64)
    vol = b.to_voxels(c, 40)
    assert (b.from_voxels(vol) - c).norm() / c.norm() < 5e-3  # orthonormal in L², voxel quadrature
    op = ProjectionOperator(b, 40, 0.35)
    R = _random_rotations(3, 2)
    measured = op.measurements(project(vol, R, kernel="kb5"))
    for got, want in zip(measured, op.images(c, R)):
        assert (got - want).norm() / want.norm() < 1e-2
    # the measurement map is inverted by measurements_to_images, and white noise keeps its variance λ²
    y = tuple(torch.randn(4, ch.pixels.numel(), dtype=F64) for ch in op.channels)
    back = op.measurements(measurements_to_images(op, y))
    assert all(torch.allclose(a, b_) for a, b_ in zip(back, y))
    noise = op.measurements(torch.randn(2000, 40, 40, dtype=F64) * 0.3)
    assert abs(float(torch.cat(noise, 1).var()) / 0.09 - 1) < 0.02


def test_woodbury_likelihood_equals_direct_gaussian():
    b = SphericalBasis(10.0, 6, 4, "C1", k_max=0.25)
    op = ProjectionOperator(b, 24, 0.3)
    L = op.matrices(_random_rotations(2, 3))[0]
    N = L.shape[-1]
    y = torch.randn(5, L.shape[1], dtype=F64)
    c, v, noise = torch.randn(N, dtype=F64), torch.rand(N, dtype=F64), torch.tensor(0.4, dtype=F64)
    S = gram(L)
    wood = Woodbury(S, v.sqrt(), noise, L.shape[1])
    for j in range(2):
        ll = log_likelihood(y @ L[j], y.pow(2).sum(-1), S[j], c, wood, j, L.shape[1])
        cov = L[j] @ torch.diag(v) @ L[j].T + noise * torch.eye(L.shape[1], dtype=F64)
        direct = torch.distributions.MultivariateNormal(L[j] @ c, cov).log_prob(y)
        assert torch.allclose(ll, direct, rtol=1e-10, atol=1e-8)


def _tiny_problem(n: int, variance: float, noise_ratio: float, seed: int = 0, joint: bool = False):
    g = torch.Generator().manual_seed(seed)
    b = SphericalBasis(10.0, 12, 4, "O", k_max=0.3)
    op = ProjectionOperator(b, 24, 0.35, joint=joint)
    mean = torch.randn(b.size, generator=g, dtype=F64) / (1 + b.zeros / 5)
    var = variance * mean.pow(2).mean() * torch.ones(b.size, dtype=F64)
    clean, _, _ = simulate_measurements(op, mean[None], var[None] * 0, 0.0, torch.zeros(64, dtype=torch.long), g)
    noise = sum(float(y.pow(2).sum()) for y in clean) / (64 * op.n_measurements) * noise_ratio
    y, R, _ = simulate_measurements(op, mean[None], var[None], noise, torch.zeros(n, dtype=torch.long), g)
    return b, op, mean, var, noise, y, R


def test_known_pose_mean_is_exact_without_noise():
    b, op, mean, _, _, y, R = _tiny_problem(60, 0.0, 0.0)
    model = known_pose_model(op, HeteroData(y, torch.zeros(60, dtype=torch.long)), R)
    assert (model.mean[0] - mean).norm() / mean.norm() < 1e-8


@pytest.mark.parametrize("full", [False, True])
def test_gem_increases_the_likelihood_monotonically_and_estimates_noise(full):
    """Diagonal V (two parity channels) and full V (one joint channel, V = F F^T)."""
    b, op, mean, var, noise, y, R = _tiny_problem(150, 0.2, 1.0, joint=full)
    data = HeteroData(y, torch.zeros(150, dtype=torch.long))
    est = HeteroEstimator(op, data, orientation_quadrature("O", 2), chunk=64, prune=0.0)
    model, history = est.run(known_pose_model(op, data, R, full_covariance=full), max_mean_iterations=3, max_rounds=2, variance_iterations=15)
    ll = [h["log_likelihood"] for h in history]
    assert any(h["step"] == "variance" for h in history)
    assert all(b_ >= a - 1e-7 * abs(a) for a, b_ in zip(ll, ll[1:])), ll
    assert abs(float(model.noise) / noise - 1) < 0.1
    v = model.variance[0].diagonal() if full else model.variance[0]
    assert bool((v > 0).all())
    if full:
        assert torch.allclose(model.variance[0], model.variance[0].T) and float(torch.linalg.eigvalsh(model.variance[0]).min()) > -1e-12


def test_hand_flip_and_radial_variance_match_the_rendered_maps():
    b = SphericalBasis(9.0, 6, 3, "C1")
    c = torch.randn(b.size, dtype=F64)
    flipped, _ = flip_hand(b, c)
    vol, vol_f = b.to_voxels(c, 21), b.to_voxels(flipped, 21)
    assert torch.allclose(vol_f, vol.flip(0, 1, 2), atol=1e-10)  # ρ'(x) = ρ(-x) on a grid centred at index 10
    fsc, e1, _ = shell_correlation(b, c, flipped, torch.tensor([0.05, 0.1], dtype=F64))
    assert bool((e1 > 0).all()) and bool((fsc.abs() <= 1 + 1e-12).all())
    V = torch.rand(b.size, dtype=F64)
    u, w = _sphere_points(2 * 6 + 2)
    for r in (2.0, 5.5):
        phi = b.functions(u * r)
        average = ((phi * phi) @ V * w).sum() / (4 * math.pi)
        assert torch.allclose(radial_variance(b, V, torch.tensor([r], dtype=F64))[0], average, rtol=1e-10)


def test_conversion_to_the_mechanical_models_bases_matches_quadrature():
    """B c̄ equals Σ_voxels ρ(x) φ_rect(x) Δx³ for the sine and box bases of the mechanical model (Eqs. 4.184–4.202)."""
    from cryoscope.hetero.analysis import to_rectangular
    from cryoscope.hetero.moments_basis import BoxBasis, SineBasis, realify

    px, box = 2.0, 24
    b = SphericalBasis(8.0, 4, 3, "C1")
    c = torch.randn(b.size, dtype=F64, generator=torch.Generator().manual_seed(4)) / (1 + b.zeros / 3)
    vol = b.to_voxels(c, box).reshape(-1, 1)
    k = torch.arange(box, dtype=F64) - box // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    pts = torch.stack([x, y, z], -1).reshape(-1, 3) * px
    for rect in (SineBasis(20.0, 3, (0.5, -1.0, 0.0)), BoxBasis.half_space(20.0, 1)):
        vals = rect.values(pts)
        direct = realify((vol.to(vals.dtype) * vals).sum(0) * px**3, rect)
        assert (to_rectangular(b, rect, px) @ c - direct).norm() / direct.norm() < 5e-3


def test_cli_run_with_ctf_groups(tmp_path):
    """Particles with per-particle CTFs (defocus 1–2 µm) and the estimator's CTF groups: the mean is still recovered."""
    sim, run, an = tmp_path / "sim", tmp_path / "run", tmp_path / "an"
    basis = ["--radius", "20", "--l-max", "12", "--p-max", "4", "--resolution", "10", "--symmetry", "O"]
    assert main(["hetero", "simulate", "-o", str(sim), "--n", "160", "--box", "24", "--pixel-size", "2", *basis, "--snr", "4",
                 "--defocus", "10000:20000"]) == 0
    assert main(["hetero", "run", str(sim / "particles.star"), "-o", str(run), *basis, "--grid-order", "2", "--max-rounds", "1",
                 "--max-mean-iterations", "2", "--no-variance", "--ctf-groups", "8", "--no-progress"]) == 0
    assert main(["hetero", "analyze", str(run / "hetero_model.pt"), "--other", str(sim / "truth.pt"), "-o", str(an)]) == 0
    assert np.loadtxt(an / "fsc.csv", delimiter=",", skiprows=1)[:, 1].min() > 0.8


def test_cli_simulate_run_analyze(tmp_path, capsys):
    sim, run, an = tmp_path / "sim", tmp_path / "run", tmp_path / "an"
    basis = ["--radius", "20", "--l-max", "12", "--p-max", "4", "--resolution", "8", "--symmetry", "O"]
    assert main(["hetero", "simulate", "-o", str(sim), "--n", "120", "--box", "24", "--pixel-size", "2", *basis, "--snr", "4", "--variance", "0.1"]) == 0
    assert main(["hetero", "run", str(sim / "particles.star"), "-o", str(run), *basis, "--grid-order", "2", "--max-rounds", "2",
                 "--max-mean-iterations", "2", "--variance-iterations", "5", "--no-progress"]) == 0
    for name in ("hetero_model.pt", "mean_class1.mrc", "sd_class1.mrc", "particles.star", "history.csv", "report.html", "metrics.json"):
        assert (run / name).exists(), name
    steps = len((run / "history.csv").read_text().splitlines())
    assert main(["hetero", "run", str(sim / "particles.star"), "-o", str(run), *basis, "--grid-order", "2", "--max-rounds", "2",
                 "--max-mean-iterations", "2", "--variance-iterations", "5", "--no-progress", "--resume"]) == 0  # from checkpoint.pt
    assert len((run / "history.csv").read_text().splitlines()) > steps
    assert main(["hetero", "analyze", str(run / "hetero_model.pt"), "--other", str(sim / "truth.pt"), "-o", str(an),
                 "--export-moments", "sine:3", "--half-width", "25"]) == 0
    moments = np.load(an / "moments.npz")
    assert moments["mean"].shape == (27,) and moments["cov"].shape == (27, 27)
    fsc = np.loadtxt(an / "fsc.csv", delimiter=",", skiprows=1)[:, 1]
    assert fsc.min() > 0.8  # estimate vs truth at SNR 4
    assert main(["hetero", "run", str(sim / "particles.star"), "-o", str(tmp_path / "bad"), *basis[:-2], "--symmetry", "Q5"]) == 2
    assert "symmetry" in capsys.readouterr().err
