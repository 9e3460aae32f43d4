"""Physics of the soft-mode engine (float64): exact 3-D/2-D equality, adjoints, finite differences, implicit
alignments, rigid null modes and Lanczos against a dense Hessian."""

from __future__ import annotations

import math

import mrcfile
import numpy as np
import pytest
import torch

from cryoscope.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from cryoscope.physics.ctf import CTFParams
from cryoscope.physics.polar import polar_ctf, shift_phases
from cryoscope.physics.poses import uniform_rotations
from cryoscope.representations.shells import from_real, from_voxels, k_max_from_two_pi_k, shell_basis, to_real
from cryoscope.uncertainty.alignments import ImplicitAlignments, polish_alignments
from cryoscope.uncertainty.data import ParticleRings, polar_grid_of
from cryoscope.uncertainty.hessian import EffectiveHessian, alignment_newton_terms
from cryoscope.uncertainty.likelihood import NoiseModel, RingLikelihood, offset_rings
from cryoscope.uncertainty.moments import VolumetricLikelihood, accumulate_moments
from cryoscope.uncertainty.slicing import ShellSlicer, default_n_psi
from cryoscope.uncertainty.softmodes import EffectiveOperator, rigid_directions, soft_modes

J = 128


@pytest.fixture(scope="module")
def problem(data_dir):
    """Ribosome map at 2πK = 8 (4 shells, degree 6), 128 uniform poses, CTF and shifts; noiseless and noisy rings."""
    gen = torch.Generator().manual_seed(0)
    vol = torch.tensor(mrcfile.read(data_dir / "maps" / "ribosome70S_65.mrc").astype("float64"))
    basis = shell_basis(k_max_from_two_pi_k(8), 4, 6, vol.shape[-1], radius=2.0)
    x = to_real(from_voxels(vol, basis), basis)
    R = uniform_rotations(J, gen, torch.float64)
    n_psi = default_n_psi(basis.L)
    grid = polar_grid_of(basis, n_psi)
    df = 1e4 + 2e4 * torch.rand(J, generator=gen, dtype=torch.float64)
    ctf = polar_ctf(CTFParams.create(defocus_u=df, defocus_v=df * 1.05, defocus_angle=30.0), grid, vol.shape[-1], 4.0)
    phases = shift_phases(torch.randn(J, 2, generator=gen, dtype=torch.float64), grid, vol.shape[-1])
    empty = ParticleRings(torch.zeros(J, basis.n_shells, n_psi, dtype=torch.complex128), R, ctf, phases)
    clean = RingLikelihood(basis, empty, chunk=J)
    S = clean.templates(x, slice(0, J))
    noise = 0.1 * S.abs().mean() * torch.complex(*torch.randn(2, *S.shape, generator=gen, dtype=torch.float64))
    return {"basis": basis, "x": x, "gen": gen, "noiseless": clean.with_data(empty.with_rings(S)),
            "noisy": clean.with_data(empty.with_rings(S + noise))}


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_real_parameters_are_an_isometry_onto_real_maps(problem):
    basis, x = problem["basis"], problem["x"]
    f = from_real(x, basis)
    np.testing.assert_allclose(to_real(f, basis).numpy(), x.numpy(), atol=1e-14)
    assert abs(float((f.abs() ** 2).sum()) - float((x**2).sum())) < 1e-10 * float((x**2).sum())
    L = basis.L  # f_l^{-m} = (-1)^{l+m} conj(f_l^m)
    l, m = torch.arange(L + 1)[:, None], torch.arange(1, L + 1)[None, :]
    sign = (1 - 2 * ((l + m) % 2)).to(torch.float64)
    np.testing.assert_allclose(f[..., :L].flip(-1).numpy(), (sign * f[..., L + 1 :].conj()).numpy(), atol=1e-14)


def test_slice_adjoint_identity(problem):
    gen, basis = problem["gen"], problem["basis"]
    L = basis.L
    slicer = ShellSlicer(L, default_n_psi(L))
    g = from_real(torch.randn(3, basis.n_params, generator=gen, dtype=torch.float64), basis)
    r = torch.complex(*torch.randn(2, 3, basis.n_shells, slicer.n_psi, generator=gen, dtype=torch.float64))
    lhs = (slicer.slice(g).conj() * r).sum()
    rhs = (g.conj() * slicer.adjoint_slice(r)).sum()
    assert abs(complex(lhs - rhs)) < 1e-12 * abs(complex(lhs))


def test_volumetric_likelihood_equals_image_sum(problem):
    """Eq. 77 with exactly back-propagated moments equals the 2-D sum (Eq. 90) for any map, to rounding."""
    lik, basis, gen = problem["noisy"], problem["basis"], problem["gen"]
    vol = VolumetricLikelihood(basis, accumulate_moments(basis, lik.data))
    for _ in range(3):
        y = torch.randn(basis.n_params, generator=gen, dtype=torch.float64) * problem["x"].std()
        a, b = lik.value(y), vol.value(y)
        assert abs(float(a - b)) <= 1e-10 * abs(float(a))
    gx = lik.gradient(problem["x"])[0]
    assert _rel(vol.gradient(problem["x"]), gx) < 1e-10  # M20 F - M11
    x_lsq, info = vol.least_squares_map()
    assert info["relative_residual"] < 1e-9
    assert float(lik.gradient(x_lsq)[0].norm()) < 1e-8 * float(lik.gradient(torch.zeros_like(x_lsq))[0].norm())


def test_gradients_match_central_differences(problem):
    lik, x, gen = problem["noisy"], problem["x"], problem["gen"]
    gx, gw = lik.gradient(x)
    u = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    h = 1e-4
    fd = (lik.value(x + h * u) - lik.value(x - h * u)) / (2 * h)
    assert abs(float(fd - (gx * u).sum())) <= 1e-6 * abs(float(fd))
    z = torch.randn(J, 3, generator=gen, dtype=torch.float64)
    R = lik.data.rotations

    def central(t):
        return (lik.value(x, axis_angle_to_matrix(t * z) @ R) - lik.value(x, axis_angle_to_matrix(-t * z) @ R)) / (2 * t)

    fd = (4 * central(h / 2) - central(h)) / 3  # Richardson extrapolation: O(h^4)
    assert abs(float(fd - (gw * z).sum())) <= 1e-6 * abs(float(fd))


def test_hessian_vector_products_match_finite_differences_and_are_symmetric(problem):
    lik, _ = polish_alignments(problem["noisy"], problem["x"])  # ∂ℓ/∂ω = 0, so pose charts agree to first order
    x, gen = problem["x"], problem["gen"]
    u = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    z = torch.randn(J, 3, generator=gen, dtype=torch.float64)
    h = 1e-4
    hx, hw = lik.hvp(x, u)  # H_xx u, H_ωx u
    (gxp, gwp), (gxm, gwm) = lik.gradient(x + h * u), lik.gradient(x - h * u)
    assert _rel(hx, (gxp - gxm) / (2 * h)) < 1e-6 and _rel(hw, (gwp - gwm) / (2 * h)) < 1e-6
    hx, hw = lik.hvp(x, torch.zeros_like(x), z)  # H_xω z, H_ωω z
    R = lik.data.rotations

    def central(t):
        plus, minus = (lik.with_data(lik.data.with_rotations(axis_angle_to_matrix(s * t * z) @ R)).gradient(x) for s in (1, -1))
        return (plus[0] - minus[0]) / (2 * t), (plus[1] - minus[1]) / (2 * t)

    (ax1, aw1), (ax2, aw2) = central(h), central(h / 2)
    assert _rel(hx, (4 * ax2 - ax1) / 3) < 1e-6 and _rel(hw, (4 * aw2 - aw1) / 3) < 1e-6
    u2 = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    z2 = torch.randn(J, 3, generator=gen, dtype=torch.float64)
    a, b = lik.hvp(x, u, z), lik.hvp(x, u2, z2)
    lhs, rhs = (a[0] * u2).sum() + (a[1] * z2).sum(), (b[0] * u).sum() + (b[1] * z).sum()
    assert abs(float(lhs - rhs)) <= 1e-10 * abs(float(lhs))


def test_implicit_alignments_match_reoptimised_alignments(problem):
    """Re-optimised poses after x -> x + εv differ from ε z1 by O(ε²) and from ε z1 + ε² z2 by O(ε³)."""
    lik, _ = polish_alignments(problem["noisy"], problem["x"], tol=1e-13)
    x, gen = problem["x"], problem["gen"]
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64) * x.std()
    implicit = ImplicitAlignments(lik, x)
    z1 = implicit.first_order(v)
    z2 = implicit.second_order(v, z1)
    errors = []
    for eps in (4e-3, 2e-3):
        moved, _ = polish_alignments(lik, x + eps * v, iterations=30, tol=1e-14)
        dw = matrix_to_axis_angle(moved.data.rotations @ lik.data.rotations.transpose(-1, -2))
        scale = float((eps * z1).norm())
        errors.append((float((dw - eps * z1).norm()) / scale, float((dw - eps * z1 - eps**2 * z2).norm()) / scale))
    (e1a, e2a), (e1b, e2b) = errors
    assert 0.4 < e1b / e1a < 0.6  # first order: relative error halves with ε
    assert 0.15 < e2b / e2a < 0.35  # second order: relative error quarters with ε
    assert e2b < 0.2 * e1b


def test_rigid_rotations_are_null_modes_on_noiseless_data(problem):
    lik, x, basis, gen = problem["noiseless"], problem["x"], problem["basis"], problem["gen"]
    implicit = ImplicitAlignments(lik, x)
    u = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    typical = float(implicit.matvec(u).norm() / u.norm())
    for r in rigid_directions(x, basis).T:
        assert float(implicit.matvec(r).norm() / r.norm()) < 1e-10 * typical


def test_lanczos_matches_dense_eigh_after_deflation(problem):
    lik, x, basis = problem["noiseless"], problem["x"], problem["basis"]
    op = EffectiveOperator(ImplicitAlignments(lik, x), basis)
    H = torch.stack([op(e) for e in torch.eye(op.dim, dtype=torch.float64)], 1)
    assert float((H - H.T).norm()) < 1e-12 * float(H.norm())
    P = torch.eye(op.dim, dtype=torch.float64) - op.deflate @ op.deflate.T
    lam = np.sort(np.linalg.eigvalsh((P @ (0.5 * (H + H.T)) @ P).numpy()))
    assert np.abs(lam[:3]).max() < 1e-10 * lam[-1]  # the three rigid rotations
    modes = soft_modes(op, k=7, max_iter=op.dim, tol=1e-12)
    np.testing.assert_allclose(modes.eigenvalues.numpy(), lam[3:10], rtol=1e-8)
    assert float(modes.rigid_rayleigh.abs().max()) < 1e-10 * lam[-1]


def test_noise_marginalised_forms(problem):
    base, x, gen, basis = problem["noisy"], problem["x"], problem["gen"], problem["basis"]
    ell = base.per_image(x)
    dof = 1000.0
    marginal = type(base)(basis, base.data, NoiseModel("marginal", dof=dof), chunk=J)
    assert abs(float(marginal.value(x)) - (dof - 1) / 2 * float(torch.log(ell).sum())) < 1e-10 * abs(float(marginal.value(x)))
    u = torch.randn(x.shape, generator=gen, dtype=torch.float64) * x.std()
    h = 1e-5
    hx, _ = marginal.hvp(x, u)
    fd = (marginal.gradient(x + h * u)[0] - marginal.gradient(x - h * u)[0]) / (2 * h)
    assert _rel(hx, fd) < 1e-6
    affine = type(base)(basis, base.data, NoiseModel("affine", dof=dof, affine=(0.5, -0.3)), chunk=J)
    assert abs(float(affine.value(x)) - (dof - 1) / 2 * float((0.5 * ell - 0.3).sum())) < 1e-10 * abs(float(affine.value(x)))
    # ℓ# does not change when a constant is added to every image in real space
    with_offset = type(base)(basis, base.data, NoiseModel(offset=True), chunk=J)
    c = offset_rings(basis.k, base.data.n_psi, basis.box)
    shifted = with_offset.with_data(base.data.with_rings(base.data.rings + 3.7 * c))
    np.testing.assert_allclose(shifted.per_image(x).numpy(), with_offset.per_image(x).numpy(), rtol=1e-10)
    assert float((with_offset.per_image(x) - ell).abs().max()) > 0


@pytest.mark.parametrize("noise", [NoiseModel(), NoiseModel("marginal", dof=500.0, offset=True)])
def test_handwritten_effective_hessian_matches_autograd_and_reoptimised_gradients(problem, noise):
    """EffectiveHessian equals the autograd Schur complement, and both equal central differences of the gradient of
    the likelihood with the poses re-optimised at x ± h v (the envelope ∇_x L(x, ω*(x)))."""
    base, x, basis, gen = problem["noisy"], problem["x"], problem["basis"], problem["gen"]
    lik, _ = polish_alignments(RingLikelihood(basis, base.data, noise, chunk=J), x, tol=1e-13)
    fast, auto = EffectiveHessian(lik, x), ImplicitAlignments(lik, x)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64) * x.std()
    hv, z = fast.apply(v)
    assert _rel(hv, auto.matvec(v)) < 1e-10 and _rel(z, auto.first_order(v)) < 1e-10
    unpolished = RingLikelihood(basis, base.data, noise, chunk=J)  # non-zero pose gradients
    blocks, grads = alignment_newton_terms(unpolished, x)
    ref_blocks, ref_grads = unpolished.alignment_hessians(x)
    assert _rel(blocks, ref_blocks) < 1e-10 and _rel(grads, ref_grads) < 1e-10
    h = 1e-4
    grads = [polish_alignments(lik, x + s * h * v, iterations=30, tol=1e-14)[0].gradient(x + s * h * v)[0] for s in (1, -1)]
    assert _rel(hv, (grads[0] - grads[1]) / (2 * h)) < 1e-6


def test_shell_templates_match_images_projected_by_the_physics_core(data_dir):
    """Rings of images made by ImageFormation (RELION rotations, CTF, origins) agree with the shell model's templates;
    the transposed rotation convention does not (this pins the conventions end to end)."""
    from cryoscope.physics.ctf import compute_ctf
    from cryoscope.physics.forward import ImageFormation
    from cryoscope.representations.voxel import VoxelMap
    from cryoscope.uncertainty.prepare import rings_from_images

    gen = torch.Generator().manual_seed(4)
    vol = torch.tensor(mrcfile.read(data_dir / "maps" / "ribosome70S_65.mrc").astype("float64"))
    n = 12
    R = uniform_rotations(n, gen, torch.float64)
    origins = 2 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    params = CTFParams.create(defocus_u=torch.full((n,), 15000.0), defocus_v=torch.full((n,), 16000.0), defocus_angle=30.0)
    images = ImageFormation()(VoxelMap(vol, 5.0), R, origins_px=origins, ctf=compute_ctf(params, 65, 5.0, torch.float64))
    basis = shell_basis(k_max_from_two_pi_k(24), 22, 26, 65)
    data = rings_from_images(images, R, basis, default_n_psi(basis.L), params, origins, 5.0)
    lik = RingLikelihood(basis, data, chunk=n)
    x = to_real(from_voxels(vol, basis), basis)
    assert _rel(lik.templates(x, slice(0, n)), data.rings) < 0.08
    assert _rel(lik.templates(x, slice(0, n), rotations=R.transpose(-1, -2)), data.rings) > 0.5


def test_path_stiffness_vanishes_along_a_rigid_rotation(problem):
    """R(s) of a path that only rotates the map is ~0 (alignments absorb it); scaling the map is stiff."""
    from cryoscope.geometry.spherical_harmonics import WignerRotation
    from cryoscope.uncertainty.path import path_stiffness

    basis, x = problem["basis"], problem["x"]
    f = from_real(x, basis)
    axis = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    rot = torch.stack([axis_angle_to_matrix(a * axis / axis.norm()) for a in (-0.02, 0.0, 0.02)])
    turned = torch.stack([to_real(c, basis) for c in WignerRotation(basis.L)(f, rot)])
    scaled = torch.stack([s * x for s in (0.98, 1.0, 1.02)])
    R = uniform_rotations(64, torch.Generator().manual_seed(5), torch.float64)
    n_psi = default_n_psi(basis.L)
    r_rot = path_stiffness(turned, basis, R, n_psi, chunk=64)[1]
    r_scale = path_stiffness(scaled, basis, R, n_psi, chunk=64)[1]
    assert float(r_scale) > 0 and abs(float(r_rot)) < 1e-4 * float(r_scale)


def test_derivative_slices_and_their_adjoint(problem):
    """Sl(G_i g) from weighted l-sums equals slicing the generator-applied coefficients; the adjoint is exact."""
    from cryoscope.geometry.spherical_harmonics import apply_generator

    basis, gen = problem["basis"], problem["gen"]
    slicer = ShellSlicer(basis.L, default_n_psi(basis.L))
    g = from_real(torch.randn(3, basis.n_params, generator=gen, dtype=torch.float64), basis)
    d = slicer.derivative_slices(g)
    ref = torch.stack([slicer.slice(g)] + [slicer.slice(apply_generator(g, i)) for i in range(3)], -2)
    assert _rel(d, ref) < 1e-13
    r = torch.complex(*torch.randn(2, *d.shape, generator=gen, dtype=torch.float64))
    lhs, rhs = (d.conj() * r).sum(), (g.conj() * slicer.derivative_adjoint(r)).sum()
    assert abs(complex(lhs - rhs)) < 1e-12 * abs(complex(lhs))
