"""The uncertainty engine (effective Hessian, Lanczos soft modes, `cryoscope softmodes`) makes every tensor on an
explicit device: the map's and particles' device for the numerics, the CPU for what is written out (what
`--device cuda` needs).

Checked without a GPU (`meta_device`). Two helpers of the command work on the
default (CPU) device by design: the pose sampler behind --simulate (a CPU generator; its rotations are moved to the
map's device) and the reader of the particles' metadata; they run with the CPU as the default device here, as they
do in a real run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from meta_device import on_cpu
from test_likelihood_scoring import blob_map

from cryoscope.io.mrc import write_map
from cryoscope.physics.ctf import CTFParams
from cryoscope.physics.poses import uniform_rotations
from cryoscope.representations.shells import (from_real, from_voxels, k_max_from_two_pi_k, shell_basis, to_real,
                                              to_voxels)
from cryoscope.uncertainty.alignments import ImplicitAlignments, polish_alignments
from cryoscope.uncertainty.hessian import EffectiveHessian
from cryoscope.uncertainty.likelihood import NoiseModel, RingLikelihood
from cryoscope.uncertainty.moments import VolumetricLikelihood, accumulate_moments
from cryoscope.uncertainty.path import path_stiffness
from cryoscope.uncertainty.prepare import rings_from_images, simulate_rings
from cryoscope.uncertainty.slicing import default_n_psi
from cryoscope.uncertainty.softmodes import EffectiveOperator, log20_scaling, log_determinant, soft_modes

BOX, J = 16, 12


@pytest.fixture(scope="module")
def problem():
    """A blob map at 2πK = 8 (4 shells, degree 6), J poses with CTF and shifts, and noisy images of it (CPU)."""
    gen = torch.Generator().manual_seed(0)
    vol = blob_map(BOX, 1, 10, torch.float64)
    basis = shell_basis(k_max_from_two_pi_k(6), 3, 4, BOX, radius=2.0)
    x = to_real(from_voxels(vol, basis), basis)
    R = uniform_rotations(J, gen, torch.float64)
    df = 1e4 + 1e4 * torch.rand(J, generator=gen, dtype=torch.float64)
    ctf = CTFParams.create(defocus_u=df, defocus_v=1.05 * df, defocus_angle=30.0, device="cpu")
    origins = torch.randn(J, 2, generator=gen, dtype=torch.float64)
    images = torch.randn(J, BOX, BOX, generator=gen, dtype=torch.float64)
    return {"basis": basis, "x": x, "R": R, "ctf": ctf, "origins": origins, "images": images, "vol": vol}


def _cpu_finite(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.device.type == "cpu" and bool(torch.isfinite(torch.view_as_real(t) if t.is_complex() else t).all())


def test_soft_modes_stay_on_the_map_device(one_thread, meta_default, problem):
    basis, x, R = problem["basis"], problem["x"], problem["R"]
    n_psi = default_n_psi(basis.L)
    # noiseless images of the map with CTF and shifts, plus images from pixels
    clean = simulate_rings(basis, x, R, n_psi, problem["ctf"], 4.0, chunk=J)
    data = rings_from_images(problem["images"], R, basis, n_psi, problem["ctf"], problem["origins"], 4.0)
    _cpu_finite(clean.rings, clean.ctf, data.rings, data.ctf, data.phases)
    noisy = data.with_rings(clean.rings * data.phases + 0.1 * data.rings)
    lik, steps = polish_alignments(RingLikelihood(basis, noisy, NoiseModel(temperature=2.0), chunk=J), x, 4)
    assert len(steps) >= 1
    # least-squares map from the volumetric form
    moments = accumulate_moments(basis, lik.data, chunk=J)
    x_lsq, _ = VolumetricLikelihood(basis, moments).least_squares_map(max_iter=20)
    _cpu_finite(x_lsq)
    # handwritten and autograd effective Hessians, implicit alignments
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype, device="cpu")
    hv, z1 = EffectiveHessian(lik, x).apply(v)
    auto = ImplicitAlignments(lik, x)
    _cpu_finite(hv, z1, auto.matvec(v), auto.second_order(v, z1), *lik.hvp(x, v, z1))
    # Lanczos and ARPACK soft modes, their log-20 scaling, the log-determinant
    op = EffectiveOperator(EffectiveHessian(lik, x), basis)
    modes = soft_modes(op, k=3, max_iter=30, tol=1e-6)
    _cpu_finite(modes.eigenvalues, modes.modes, modes.alignments, modes.residuals, modes.rigid_rayleigh,
                *modes.ritz_history)
    s = log20_scaling(modes, x, basis, 0)
    dmap = to_voxels(from_real(s.delta_x, basis), basis)  # per voxel |ΔF|, per image |Δτ|
    _cpu_finite(s.delta_x, s.delta_alignments, s.alignment_degrees, dmap)
    assert s.alignment_degrees.shape == (J,) and dmap.shape == (BOX, BOX, BOX)
    check = soft_modes(op, k=1, method="eigsh", tol=1e-3, deflate=False)  # deflated: run by the command below
    _cpu_finite(check.eigenvalues, check.modes, check.alignments)
    estimate, stderr = log_determinant(op, n_probes=2, n_iter=5)
    assert math.isfinite(estimate) and math.isfinite(stderr)
    # stiffness along a path of maps
    frames = torch.stack([0.9 * x, x, 1.1 * x])
    stiffness = path_stiffness(frames, basis, R[:8], n_psi, problem["ctf"][:8], 4.0, chunk=J)
    _cpu_finite(stiffness)


@pytest.fixture
def map_file(problem, tmp_path):
    """The map, and particles simulated from it (aligned, with CTF and origins) beside it."""
    from cryoscope.cli.main import main

    path = tmp_path / "map.mrc"
    write_map(path, problem["vol"].float(), 4.0)
    assert main(["simulate", "--map", str(path), "-n", "12", "--snr", "5", "--max-shift", "1", "--defocus-min", "10000",
                 "--defocus-max", "20000", "--seed", "1", "-o", str(tmp_path / "sim"), "--no-progress"]) == 0
    return path


def test_softmodes_run_stays_on_the_map_device(one_thread, map_file, meta_default, monkeypatch, tmp_path):
    import cryoscope.workflows.softmodes as wf
    from cryoscope.cli.main import main

    for name in ("rotations_from_spec", "open_aligned_particles"):
        monkeypatch.setattr(wf, name, on_cpu(getattr(wf, name)))
    small = ["--two-pi-k", "6", "--shells", "3", "--degree", "4", "--max-iter", "20", "--n-modes", "2",
             "--maps-for", "1", "--polish", "2", "--device", "cpu", "--no-progress"]
    assert main(["softmodes", str(map_file), "-o", str(tmp_path / "sm"), "--simulate", "uniform", "--n-images", "16",
                 "--defocus", "10000:20000", "--check-eigsh", *small]) == 0
    m = json.loads((tmp_path / "sm" / "metrics.json").read_text())
    assert len(m["eigenvalues"]) == 2 and m["device"] == "cpu"
    star = tmp_path / "sim" / "particles.star"
    assert main(["softmodes", str(map_file), "-o", str(tmp_path / "particles"), "--particles", str(star),
                 "--refine-map", "3", "--offset", "--dtype", "float64", *small]) == 0
    assert (tmp_path / "particles" / "particles.star").is_file()
    assert main(["softmodes-path", str(map_file), str(map_file), "-o", str(tmp_path / "path"), "--n-images", "8",
                 "--two-pi-k", "6", "--shells", "3", "--degree", "4", "--device", "cpu", "--no-progress"]) == 0
