"""The heterogeneity engine (GEM for the mean and covariance in the spherical basis, its analysis, and the
elastic-network model) makes every tensor on an explicit device: the operator's or the inputs' (what
`--device cuda` needs).

Checked without a GPU (`meta_device`). Inputs (the basis, networks, CPU
generators) are made on the CPU first. A few helpers outside the engine build small tables on the default (CPU)
device by design and move them where they are used; they run with the CPU as the default device here, as they do in
a real run."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from cryoscope.hetero.analysis import (capsid_region, flip_hand, fractional_difference, gain, radial_sd, sd_at_points,
                                       shell_correlation, to_rectangular)
from cryoscope.hetero.gem import HeteroData, HeteroEstimator, known_pose_model
from cryoscope.hetero.mechanics import MechanicalModel, fit_spring_constants, kl_cost
from cryoscope.hetero.mechanics_io import write_moments
from cryoscope.hetero.moments import mean_density, second_moment
from cryoscope.hetero.moments_basis import BoxBasis, SineBasis, coefficient_covariance, density_coefficients
from cryoscope.hetero.operator import ProjectionOperator
from cryoscope.hetero.orientations import local_candidates, orientation_quadrature
from cryoscope.hetero.simulate import measurements_to_images, simulate_measurements
from cryoscope.physics.ctf import CTFParams, ctf_at
from cryoscope.representations.elastic_network import (build_network, hessian, normal_modes, positional_covariance,
                                                       rigid_basis)
from cryoscope.representations.spherical_basis import SphericalBasis
from cryoscope.workflows.hetero import ctf_groups, run_analyze, run_hetero, run_simulate
from cryoscope.workflows.mechanics import run_fit, run_modes

F64 = torch.float64
BOX, K_MAX = 12, 0.3

# (function, modules that hold it by name): tables made on the CPU by design, then moved to where they are used, and
# the runner's file input and output (on the CPU)
CPU_HELPERS = [
    ("cryoscope.physics.projection", "slice_layout",
     ["cryoscope.physics.projection", "cryoscope.hetero.operator", "cryoscope.hetero.simulate"]),
    ("cryoscope.geometry.symmetry", "symmetry_group",
     ["cryoscope.geometry.symmetry", "cryoscope.hetero.orientations", "cryoscope.representations.spherical_basis"]),
    ("cryoscope.workflows.likelihood", "open_particles", ["cryoscope.workflows.hetero"]),
    ("cryoscope.particles", "ctf_params", ["cryoscope.workflows.hetero"]),
    ("cryoscope.io.mrc", "write_map", ["cryoscope.workflows.hetero"]),
]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


@pytest.fixture(scope="module")
def basis():
    b = SphericalBasis(5.0, 4, 2, "O", k_max=K_MAX)
    mean = torch.randn(b.size, generator=_gen(1), dtype=F64) / (1 + b.zeros / 5)
    return b, mean, 0.2 * mean.pow(2).mean() * torch.ones(b.size, dtype=F64)


def _cpu_and_finite(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.device.type == "cpu" and bool(torch.isfinite(t).all())


def test_operator_and_simulation_stay_on_the_operators_device(meta_default, basis):
    assert SphericalBasis(4.0, 3, 2, "D2", k_max=K_MAX).l.device.type == "cpu"  # index tables on the CPU by design
    b, mean, var = basis
    for joint in (False, True):
        op = ProjectionOperator(b, BOX, K_MAX, joint=joint)
        classes = torch.zeros(6, dtype=torch.long, device="cpu")
        y, R, coeffs = simulate_measurements(op, mean[None], var[None], 0.1, classes, _gen())
        images = measurements_to_images(op, y)
        again = op.measurements(images, torch.zeros(6, 2, dtype=F64, device="cpu"))
        _cpu_and_finite(*y, R, coeffs, images, *again)
        assert all(torch.allclose(a, c) for a, c in zip(y, again))


def _measurements(op: ProjectionOperator, mean: torch.Tensor, var: torch.Tensor, n: int):
    classes = torch.zeros(n, dtype=torch.long)
    y, R, _ = simulate_measurements(op, torch.stack([mean, -mean]), var.expand(2, -1), 0.05, classes, _gen(2))
    return y, R, CTFParams.create(torch.linspace(8000.0, 20000.0, n, dtype=F64), dtype=F64)


@pytest.mark.parametrize("full", [False, True])
def test_gem_stays_on_the_operators_device(meta_default, basis, full):
    b, mean, var = basis
    with torch.device("cpu"):
        y, R, params = _measurements(ProjectionOperator(b, BOX, K_MAX, joint=full), mean, var, 24)
    op = ProjectionOperator(b, BOX, K_MAX, joint=full)
    group, reps = ctf_groups(params, 3)  # as `workflows.hetero` makes the CTF groups
    ctf = ctf_at(params[reps].to(op.device, op.dtype), *op.frequencies_angstrom(2.0))
    data = HeteroData(y, group.to(op.device), ctf)
    grid = orientation_quadrature("O", 1)
    data.candidates = local_candidates(R, grid, "O", 40.0)
    model = known_pose_model(op, data, R, n_classes=2, generator=_gen(3), full_covariance=full)
    est = HeteroEstimator(op, data, grid, chunk=8)
    model, history = est.run(model, max_mean_iterations=1, max_rounds=2, variance_iterations=2)
    final = est.e_step(model)
    assert any(h["step"] == "variance" for h in history)
    _cpu_and_finite(model.mean, model.variance, model.noise, model.weights, final.weights, grid, data.candidates)


def test_analysis_stays_on_the_inputs_device(meta_default, basis):
    b, mean, var = basis
    full = torch.diag(var)
    k = torch.linspace(0.02, b.band_limit(), 5, dtype=F64, device="cpu")
    r = torch.linspace(0, b.radius, 9, dtype=F64, device="cpu")
    fsc, e1, e2 = shell_correlation(b, mean, 0.9 * mean, k)
    flipped, flipped_cov = flip_hand(b, mean, full)
    maps = [b.to_voxels(c, BOX) for c in (mean, flipped)]
    region = capsid_region(maps, 1.0, b.radius)
    g = gain(maps[0], maps[1], region)
    sd, sd_full = radial_sd(b, var, r), radial_sd(b, full, r)
    diff = fractional_difference(sd_full, sd, r, 1.0, b.radius)
    at = sd_at_points(b, full, torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, -1.0]], dtype=F64, device="cpu"))
    sdmap = b.variance_to_voxels(full, BOX)
    back = b.from_voxels(maps[0])
    rects = (SineBasis(8.0, 2), BoxBasis.half_space(8.0, 1))
    rect = [to_rectangular(b, rb, 1.5) for rb in rects] + [rb.values(r[:, None].expand(-1, 3)) for rb in rects]
    _cpu_and_finite(fsc, e1, e2, flipped, flipped_cov, *maps, sd, sd_full, diff, at, sdmap, back, *rect)
    assert region.device.type == "cpu" and np.isfinite(g)


def _network():
    pts = torch.tensor(list(itertools.product(range(2), range(2), range(2))), dtype=F64) * 1.2
    pts = pts - pts.mean(0) + 0.05 * torch.randn(8, 3, generator=_gen(4), dtype=F64)
    return pts, (pts[:, 2] > 0).long()


def test_elastic_network_and_its_moments_stay_on_the_positions_device(meta_default):
    with torch.device("cpu"):
        pts, labels = _network()
    net = build_network(pts, cutoff=1.9, labels=labels)
    one = build_network(pts, cutoff=1.9, masses=torch.full((8,), 2.0, dtype=F64, device="cpu"))
    u = hessian(net, torch.tensor([2.0, 3.0], dtype=F64, device="cpu"))
    lam, modes = normal_modes(u, net.masses)
    cov = positional_covariance(u)
    f = torch.ones(8, dtype=F64, device="cpu")
    x = torch.tensor([[0.1, 0.2, 0.0], [0.5, -0.3, 0.2]], dtype=F64, device="cpu")
    rho, rho2 = mean_density(x, net.positions, cov, f, 0.4), second_moment(x, x.flip(0), net.positions, cov, f, 0.4)
    tensors = [lam, modes, cov, rigid_basis(net.positions), one.masses, one.groups, rho, rho2]
    for basis in (SineBasis(3.0, 2), BoxBasis.half_space(3.0, 1)):
        model = MechanicalModel(net, basis, q=0.4)
        mean, c = model.moments(torch.tensor([20.0, 30.0], dtype=F64, device="cpu"))
        exact = coefficient_covariance(basis, net.positions, cov, f, 0.4, max_order=0)  # the pair sum
        tensors += [mean, c, exact, density_coefficients(basis, net.positions, f, 0.4)]
    fit = fit_spring_constants(model, mean, c, bounds=(5.0, 80.0), grid=3, groups=False)  # groups: the same cost calls
    assert 5.0 <= fit.k_single <= 80.0 and abs(kl_cost(mean, c, mean, c)) < 1e-6
    _cpu_and_finite(*tensors)


BASIS = {"radius": 10.0, "l_max": 4, "p_max": 2, "resolution": 7.0, "symmetry": "O"}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("hetero") / "sim"
    p = {"n": 24, "box": BOX, "pixel_size": 2.0, **BASIS, "map": None, "snr": 4.0, "defocus": (10000.0, 20000.0),
         "variance": 0.1, "class_weights": [1.0], "class_separation": 0.5, "seed": 0}
    run_simulate(p, out, "cpu", time.perf_counter())  # a CPU-only runner
    return out


def test_hetero_runner_stays_on_its_device(meta_default, simulated, tmp_path):
    p = {"particles": str(simulated / "particles.star"), **BASIS, "classes": 2, "grid_order": 1, "local_deg": 40.0,
         "prune": 1e-3, "no_variance": False, "full_covariance": False, "tol": 1e-3, "max_mean_iterations": 1,
         "max_rounds": 2, "variance_iterations": 2, "ctf": True, "ctf_groups": 2, "pixel_size": None, "chunk": 8,
         "dtype": "float64", "seed": 0}
    m = run_hetero(p, tmp_path / "run", False, False, torch.device("cpu"), time.perf_counter())
    assert np.isfinite(m["noise_variance"]) and m["device"] == "cpu"
    p = {"model": str(tmp_path / "run" / "hetero_model.pt"), "other": str(simulated / "truth.pt"), "class_index": 1,
         "flip_hand": False, "region": None, "pdb": None, "export_moments": "sine:2", "half_width": 12.0, "seed": 0}
    m = run_analyze(p, tmp_path / "analyze", time.perf_counter())  # on the CPU
    assert np.isfinite(m["gain"]) and (tmp_path / "analyze" / "moments.npz").exists()


def test_mechanics_runners_stay_on_their_device(meta_default, tmp_path):
    with torch.device("cpu"):
        pts, labels = _network()
        net = build_network(pts, cutoff=1.9, labels=labels)
        basis = SineBasis(3.0, 2)
        write_moments(tmp_path / "moments.npz", *MechanicalModel(net, basis, q=0.4).moments(20.0), basis)
    np.savez(tmp_path / "net.npz", positions=pts.numpy(), labels=labels.numpy())
    common = {"network": str(tmp_path / "net.npz"), "cutoff": 1.9, "atoms": "ca", "masses": "unit", "kT": 1.0,
              "seed": 0}
    p = {"command": "mechanics modes", **common, "k": 1.0, "n_modes": 2, "frames": 4, "rmsd": 1.0}
    m = run_modes(p, tmp_path / "modes", "cpu")
    assert m["rigid_eigenvalue_relative"] < 1e-12
    p = {"command": "mechanics fit", **common, "moments": str(tmp_path / "moments.npz"), "q": 0.4, "groups": "none",
         "weights": "masses", "cost": "kl", "gamma": 1.0, "ridge": 0.05, "k_min": 5.0, "k_max": 80.0, "grid": 3}
    m = run_fit(p, tmp_path / "fit", "cpu")
    assert abs(m["k_single"] / 20 - 1) < 0.05
