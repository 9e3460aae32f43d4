"""Elastic-network (mechanical) model of thesis ch. 4: Hessian, rigid null space, analytic moments against Monte
Carlo, coefficient moments in the box and sine bases, the spring-constant fit, trajectories and the CLI."""

from __future__ import annotations

import itertools
import json
import math

import gemmi
import numpy as np
import pytest
import torch

from cryoscope.cli.main import main as cli
from cryoscope.hetero.mechanics import MechanicalModel, fit_spring_constants, kl_cost, moment_cost
from cryoscope.hetero.mechanics_io import write_mode_trajectory, write_moments
from cryoscope.hetero.moments import fourier_second_moment, mean_density, second_moment, series_order
from cryoscope.hetero.moments_basis import BoxBasis, SineBasis, coefficient_covariance, coefficient_mean, density_coefficients
from cryoscope.representations.elastic_network import (build_network, hessian, normal_modes, positional_covariance, rigid_basis,
                                                       spring_energy)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def block_network(k_labels: bool = False):
    """12 masses on a jittered 2 x 2 x 3 lattice (spacing 1.2 Å), 42 springs; labels split it in two halves."""
    gen = torch.Generator().manual_seed(3)
    pts = torch.tensor(list(itertools.product(range(2), range(2), range(3))), dtype=F64) * 1.2
    pts = pts - pts.mean(0) + 0.05 * torch.randn(12, 3, generator=gen, dtype=F64)
    labels = (pts[:, 2] > 0).long() if k_labels else None
    return build_network(pts, cutoff=1.9, labels=labels)


def gaussian_samples(cov: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    lam, vec = torch.linalg.eigh(cov)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, cov.shape[0], generator=gen, dtype=F64)
    return (z * lam.clamp_min(0).sqrt()) @ vec.T


def z_scores(samples: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """(sample mean - expected) / standard error, elementwise over the trailing dimensions."""
    return (samples.mean(0) - expected) / (samples.std(0) / math.sqrt(samples.shape[0]))


def test_hessian_matches_finite_differences_of_the_spring_energy():
    net = block_network(k_labels=True)
    k = torch.tensor([2.0, 5.0], dtype=F64)  # two spring groups
    n3 = 3 * net.n_masses
    h = 1e-4
    eye = torch.eye(n3, dtype=F64) * h
    signs = torch.tensor([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=F64)
    disp = signs[:, 0, None, None, None] * eye[None, :, None, :] + signs[:, 1, None, None, None] * eye[None, None, :, :]
    e = spring_energy(net, disp.reshape(4, n3, n3, net.n_masses, 3), k)  # [4, 3N, 3N]
    fd = (e[0] - e[1] - e[2] + e[3]) / (4 * h * h)
    u = hessian(net, k)
    assert torch.allclose(u, u.T)
    assert (fd - u).abs().max() < 1e-5 * u.abs().max()
    assert float(spring_energy(net, torch.zeros(net.n_masses, 3, dtype=F64), k)) == 0.0


def test_rigid_null_space_and_normal_modes():
    net = block_network()
    u = hessian(net, 3.0)
    lam = torch.linalg.eigvalsh(u)
    assert lam[:6].abs().max() < 1e-12 * lam[-1] and lam[6] > 1e-3 * lam[-1]
    rigid = rigid_basis(net.positions)
    assert torch.allclose(rigid.T @ rigid, torch.eye(6, dtype=F64), atol=1e-12)
    assert (u @ rigid).abs().max() < 1e-12 * lam[-1]
    masses = torch.linspace(1.0, 3.0, net.n_masses, dtype=F64)
    omega2, modes = normal_modes(u, masses)
    assert omega2[:6].abs().max() < 1e-12 * omega2[-1]
    assert torch.allclose((rigid.T @ modes[:, :6]).norm(dim=0), torch.ones(6, dtype=F64), atol=1e-9)  # modes 1-6 are rigid
    t = masses.repeat_interleave(3)
    gram = modes.T @ (t[:, None] * modes)  # T-orthogonal, and U δ = ω² T δ
    assert (gram - torch.diag(gram.diagonal())).abs().max() < 1e-10 * gram.diagonal().max()
    assert (u @ modes - t[:, None] * modes * omega2).abs().max() < 1e-10 * omega2[-1]


def test_positional_covariance_is_kT_over_k_times_the_pseudo_inverse():
    net = block_network()
    u1 = hessian(net, 1.0)
    c = positional_covariance(hessian(net, 4.0), kT=2.0)
    assert torch.allclose(c, 0.5 * positional_covariance(u1), atol=1e-12)
    assert torch.allclose(c @ (u1 * 4.0) @ c, 2.0 * c, atol=1e-10)  # C U C = kT C
    assert (c @ rigid_basis(net.positions)).abs().max() < 1e-10


def test_real_space_moments_match_monte_carlo():
    """Mean density (Eq. 4.81) and second moment (Eq. 4.130 with 4.122 and 4.128) within 5 MC standard errors."""
    net = block_network()
    cov = positional_covariance(hessian(net, 2.0))
    f = torch.linspace(0.5, 1.5, net.n_masses, dtype=F64)
    q = 0.4
    gen = torch.Generator().manual_seed(1)
    xa = net.positions[torch.randint(0, net.n_masses, (24,), generator=gen)] + 0.4 * torch.randn(24, 3, generator=gen, dtype=F64)
    xb = torch.cat([xa[:8], xa[8:16] + 0.3 * torch.randn(8, 3, generator=gen, dtype=F64), xa[16:].flip(0)])  # equal, near, far pairs
    delta = gaussian_samples(cov, 20000, seed=2).reshape(-1, net.n_masses, 3)
    x = net.positions + delta  # [S, N, 3]

    def rho(points: torch.Tensor) -> torch.Tensor:  # [S, P]
        d2 = ((points[None, :, None, :] - x[:, None]) ** 2).sum(-1)
        return (f * torch.exp(-d2 / (2 * q * q))).sum(-1) / (2 * math.pi * q * q) ** 1.5

    ra, rb = rho(xa), rho(xb)
    z_mean = z_scores(ra, mean_density(xa, net.positions, cov, f, q))
    z_second = z_scores(ra * rb, second_moment(xa, xb, net.positions, cov, f, q))
    assert z_mean.abs().max() < 5 and z_second.abs().max() < 5
    # the fluctuations matter: the rigid (δ = 0) density is many standard errors off
    z_rigid = z_scores(ra, mean_density(xa, net.positions, torch.zeros_like(cov), f, q))
    assert z_rigid.abs().max() > 20


@pytest.mark.parametrize("basis", [SineBasis(3.0, 3, (0.2, -0.1, 0.0)), BoxBasis.half_space(3.0, 1, (0.2, -0.1, 0.0))])
def test_basis_coefficients_of_gaussians_match_quadrature(basis):
    g = torch.linspace(-3.0, 3.0, 97, dtype=F64)
    w = torch.full((97,), float(g[1] - g[0]), dtype=F64)
    w[0] = w[-1] = w[0] / 2
    grid = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) + torch.tensor(basis.centre, dtype=F64)
    weight = (w[:, None, None] * w[None, :, None] * w[None, None, :]).reshape(-1)
    x0 = torch.tensor([[0.7, 0.2, -0.3], [0.1, -0.5, 0.4]], dtype=F64)
    f = torch.tensor([1.0, 2.0], dtype=F64)
    q = 0.5
    rho = sum(f[i] * torch.exp(-((grid - x0[i]) ** 2).sum(-1) / (2 * q * q)) for i in range(2)) / (2 * math.pi * q * q) ** 1.5
    values = basis.values(grid)
    quad = (weight * rho).to(values.dtype) @ values
    if isinstance(basis, BoxBasis):
        quad = torch.stack([quad.real, quad.imag], -1).flatten()
    assert torch.allclose(density_coefficients(basis, x0, f, q), quad, atol=1e-6)


@pytest.mark.parametrize("basis", [SineBasis(3.2, 3), BoxBasis.half_space(3.2, 1)])
def test_coefficient_moments_match_monte_carlo(basis):
    net = block_network()
    cov = positional_covariance(hessian(net, 6.0))
    f = torch.linspace(0.5, 1.5, net.n_masses, dtype=F64)
    q = 0.4
    mean = coefficient_mean(basis, net.positions, cov, f, q)
    assert series_order(basis.fourier_terms()[0], cov)[0] <= 12  # the series path
    v = coefficient_covariance(basis, net.positions, cov, f, q)
    exact = coefficient_covariance(basis, net.positions, cov, f, q, max_order=0)  # the pair sum of Eq. 4.176
    assert (v - exact).abs().max() < 1e-9 * exact.abs().max()
    c = density_coefficients(basis, net.positions + gaussian_samples(cov, 20000, seed=4).reshape(-1, net.n_masses, 3), f, q)
    centred = c - mean
    products = centred[:, :, None] * centred[:, None, :]
    assert z_scores(c, mean).abs().max() < 5
    assert z_scores(products, v).abs().max() < 5.5
    assert (v.diagonal() > 10 * products.std(0).diagonal() / math.sqrt(c.shape[0])).sum() > v.shape[0] // 2  # a real signal


def test_printed_diagonal_phase_of_eq_4_165_fails_monte_carlo():
    """E c_a c_b in the complex box basis: the α = α' term with exp(-iπ x·(na + nb)/R) (forward transform)
    matches Monte Carlo; the printed exp(+iπ x·(na + nb)/R) does not."""
    net = block_network()
    cov = positional_covariance(hessian(net, 1.0))
    f = torch.ones(net.n_masses, dtype=F64)
    q, r = 0.4, 3.2
    basis = BoxBasis.half_space(r, 1, centre=(-0.8, 0.6, -0.4))  # off-centre: the phases x·(na + nb) are not small
    k, _ = basis.fourier_terms()
    norm = (2 * r) ** -3
    x = net.positions - torch.tensor(basis.centre, dtype=F64)
    corrected = norm * fourier_second_moment(k, k, x, cov, f, q)
    idx = torch.arange(net.n_masses)
    s = cov.reshape(net.n_masses, 3, net.n_masses, 3)[idx, :, idx, :] + 0.5 * q * q * torch.eye(3, dtype=F64)
    ksum = k[:, None, :] + k[None, :, :]
    quad = torch.einsum("abi,nij,abj->abn", ksum, s, ksum)
    damp = -math.pi**2 * q * q * ((k[None, :, :] - k[:, None, :]) ** 2).sum(-1)[..., None] - 2 * math.pi**2 * quad
    phase = 2 * math.pi * torch.einsum("abi,ni->abn", ksum, x)
    diag_right = norm * (f**2 * torch.polar(damp.exp(), -phase)).sum(-1)
    diag_printed = norm * (f**2 * torch.polar(damp.exp(), phase)).sum(-1)
    printed = corrected - diag_right + diag_printed
    c = density_coefficients(basis, net.positions + gaussian_samples(cov, 20000, seed=5).reshape(-1, net.n_masses, 3), f, q)
    cc = torch.complex(c[:, 0::2], c[:, 1::2])
    prod = cc[:, :, None] * cc[:, None, :]

    def worst(expected: torch.Tensor) -> float:
        return max(float(z_scores(prod.real, expected.real).abs().max()), float(z_scores(prod.imag, expected.imag).abs().max()))

    assert worst(corrected) < 5
    assert worst(printed) > 50


def _noisy(m: torch.Tensor, snr: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    e = torch.randn(m.shape, generator=gen, dtype=F64) * float(m.std()) / snr
    return m + torch.triu(e) + torch.triu(e, 1).T


def test_spring_constant_fit_recovers_k():
    net = block_network(k_labels=True)
    model = MechanicalModel(net, SineBasis(3.2, 3), q=0.4)
    mean, cov = model.moments(torch.tensor([15.0, 30.0], dtype=F64))
    fit = fit_spring_constants(model, mean, _noisy(cov, 20.0, seed=0), bounds=(5.0, 80.0), grid=9)
    assert fit.curve_minima == 1
    assert fit.k_groups is not None and abs(fit.k_groups[0] / 15 - 1) < 0.1 and abs(fit.k_groups[1] / 30 - 1) < 0.1
    one = MechanicalModel(block_network(), SineBasis(3.2, 3), q=0.4)
    mean1, cov1 = one.moments(20.0)
    for cost in ("moments", "kl"):
        fit1 = fit_spring_constants(one, mean1, _noisy(cov1, 10.0, seed=1), cost=cost, bounds=(5.0, 80.0), grid=7)
        assert abs(fit1.k_single / 20 - 1) < 0.05 and fit1.k_groups is None and fit1.curve_minima == 1
    assert moment_cost(mean1, cov1, mean1, cov1) == 0.0 and abs(kl_cost(mean1, cov1, mean1, cov1)) < 1e-8


def test_mode_trajectory_is_a_multi_model_pdb(tmp_path):
    net = block_network()
    _, modes = normal_modes(hessian(net, 1.0), net.masses)
    path = tmp_path / "mode_007.pdb"
    write_mode_trajectory(path, net, modes[:, 6], rmsd=1.5, frames=12)
    st = gemmi.read_structure(str(path))
    assert len(st) == 12 and all(m.count_atom_sites() == net.n_masses for m in st)
    frames = torch.tensor([[a.pos.tolist() for a in (cra.atom for cra in m.all())] for m in st], dtype=F64)
    rmsd = ((frames - net.positions) ** 2).sum(-1).mean(-1).sqrt()
    assert abs(float(rmsd.max()) - 1.5) < 0.02 and float(rmsd[0]) < 1e-3  # PDB coordinates have 3 decimals


def test_cli_modes_and_fit(tmp_path, capsys):
    net = block_network(k_labels=True)
    network = tmp_path / "net.npz"
    np.savez(network, positions=net.positions.numpy(), labels=net.labels.numpy())
    out = tmp_path / "modes"
    assert cli(["mechanics", "modes", str(network), "-o", str(out), "--cutoff", "1.9", "--n-modes", "3", "--frames", "6"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["springs"] == net.n_springs and metrics["rigid_eigenvalue_relative"] < 1e-12
    assert [p.name for p in sorted(out.glob("mode_*.pdb"))] == ["mode_007.pdb", "mode_008.pdb", "mode_009.pdb"]
    assert len(gemmi.read_structure(str(out / "mode_008.pdb"))) == 6 and (out / "params.json").exists()
    rows = (out / "eigenvalues.csv").read_text().splitlines()
    assert rows[0] == "mode,eigenvalue,omega,rigid,collectivity" and len(rows) == 1 + 3 * net.n_masses
    basis = SineBasis(3.2, 2)
    mean, cov = MechanicalModel(net, basis, q=0.4).moments(torch.tensor([15.0, 30.0], dtype=F64))
    moments = tmp_path / "moments.npz"
    write_moments(moments, mean, cov, basis)
    fit_out = tmp_path / "fit"
    assert cli(["mechanics", "fit", str(moments), "--network", str(network), "-o", str(fit_out), "--q", "0.4", "--cutoff", "1.9",
                "--groups", "labels", "--k-min", "5", "--k-max", "80", "--grid", "9"]) == 0
    fit = json.loads((fit_out / "metrics.json").read_text())
    assert abs(fit["k_groups"][0] / 15 - 1) < 1e-3 and abs(fit["k_groups"][1] / 30 - 1) < 1e-3
    assert (fit_out / "cost_curve.csv").exists() and (fit_out / "cost_curve.png").exists()
    capsys.readouterr()
    bad = tmp_path / "bad.npz"
    np.savez(bad, mean=mean.numpy(), cov=cov[:5].numpy(), basis="sine", half_width=3.2, per_axis=2)
    assert cli(["mechanics", "fit", str(bad), "--network", str(network), "-o", str(tmp_path / "x"), "--q", "0.4", "--cutoff", "1.9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "8 coefficients" in err
