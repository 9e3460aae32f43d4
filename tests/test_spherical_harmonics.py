"""Spherical harmonics, sphere quadrature, Wigner-D rotation and so(3) generators (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import sph_harm_y

from cryoscope.geometry.rotations import axis_angle_to_matrix
from cryoscope.geometry.spherical_harmonics import (
    SphereGrid,
    WignerRotation,
    apply_generator,
    coefficient_mask,
    direction_angles,
    equator_harmonics,
    spherical_harmonics,
    wigner_small_d,
    zyz_angles,
)

L = 7


def _random_coeffs(shape, gen):
    c = torch.complex(torch.randn(*shape, L + 1, 2 * L + 1, generator=gen, dtype=torch.float64),
                      torch.randn(*shape, L + 1, 2 * L + 1, generator=gen, dtype=torch.float64))
    return c * coefficient_mask(L)


def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


def _rz(a):
    c, s, z, o = torch.cos(a), torch.sin(a), torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2)


def _ry(b):
    c, s, z, o = torch.cos(b), torch.sin(b), torch.zeros_like(b), torch.ones_like(b)
    return torch.stack([torch.stack([c, z, s], -1), torch.stack([z, o, z], -1), torch.stack([-s, z, c], -1)], -2)


def test_harmonics_match_scipy_condon_shortley():
    gen = torch.Generator().manual_seed(1)
    theta = torch.rand(50, generator=gen, dtype=torch.float64) * math.pi
    phi = torch.rand(50, generator=gen, dtype=torch.float64) * 2 * math.pi
    Y = spherical_harmonics(L, theta, phi).numpy()
    for l in range(L + 1):
        for m in range(-l, l + 1):
            np.testing.assert_allclose(Y[:, l, L + m], sph_harm_y(l, m, theta.numpy(), phi.numpy()), atol=1e-13)
    assert np.abs(Y[:, ~coefficient_mask(L).numpy()]).max() == 0


def test_quadrature_round_trip_and_orthonormality():
    gen = torch.Generator().manual_seed(2)
    grid = SphereGrid(2 * L)
    c = _random_coeffs((3,), gen)
    np.testing.assert_allclose(grid.analysis(grid.synthesis(c), L).numpy(), c.numpy(), atol=1e-12)
    # the degree-2L grid integrates products of two degree-L harmonics exactly: Gram matrix = identity
    theta = torch.acos(grid.cos_theta)[:, None].expand(-1, grid.n_phi)
    Y = spherical_harmonics(L, theta, grid.phi[None].expand_as(theta))[..., coefficient_mask(L)]
    gram = torch.einsum("tpa,tpb,t->ab", Y.conj(), Y, grid.weights.to(Y.dtype))
    np.testing.assert_allclose(gram.numpy(), np.eye(gram.shape[0]), atol=1e-12)


def test_wigner_rotation_matches_direct_evaluation():
    """G = D(R) f must satisfy G(u) = F(R^T u) at arbitrary points (Eq. 39)."""
    gen = torch.Generator().manual_seed(3)
    f = _random_coeffs((2,), gen)
    R = axis_angle_to_matrix(torch.randn(6, 3, generator=gen, dtype=torch.float64))
    R = torch.cat([R, _rz(_t(0.3)) @ _ry(_t(math.pi)) @ _rz(_t(0.2)), _rz(_t(1.1))])
    G = WignerRotation(L)(f, R)
    u = torch.randn(11, 3, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True)
    at_u = torch.einsum("jslm,plm->jsp", G, spherical_harmonics(L, *direction_angles(u)))
    back = torch.einsum("jba,pb->jpa", R, u)  # R^T u
    direct = torch.einsum("slm,jplm->jsp", f, spherical_harmonics(L, *direction_angles(back)))
    np.testing.assert_allclose(at_u.numpy(), direct.numpy(), atol=1e-11 * float(direct.abs().max()))


def test_zyz_angles_reproduce_matrices_including_gimbal_lock():
    gen = torch.Generator().manual_seed(4)
    R = axis_angle_to_matrix(torch.randn(20, 3, generator=gen, dtype=torch.float64))
    R = torch.cat([R, _rz(_t(0.7, -2.0)) @ _ry(_t(0.0, math.pi)) @ _rz(_t(0.4, 1.0))])
    a, b, g = zyz_angles(R)
    np.testing.assert_allclose((_rz(a) @ _ry(b) @ _rz(g)).numpy(), R.numpy(), atol=1e-14)


def test_small_d_is_orthogonal_and_composes():
    b1, b2 = torch.tensor(0.4, dtype=torch.float64), torch.tensor(-1.3, dtype=torch.float64)
    for l in (0, 1, 4):
        d1, d2 = wigner_small_d(l, b1), wigner_small_d(l, b2)
        np.testing.assert_allclose((d1 @ d1.T).numpy(), np.eye(2 * l + 1), atol=1e-13)
        np.testing.assert_allclose((d1 @ d2).numpy(), wigner_small_d(l, b1 + b2).numpy(), atol=1e-13)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_generators_are_derivatives_of_rotations(axis):
    gen = torch.Generator().manual_seed(5)
    f = _random_coeffs((1,), gen)
    rot = WignerRotation(L)
    h = 1e-5
    w = torch.zeros(1, 3, dtype=torch.float64)
    w[0, axis] = h
    fd = (rot(f, axis_angle_to_matrix(w))[0] - rot(f, axis_angle_to_matrix(-w))[0]) / (2 * h)
    np.testing.assert_allclose(fd.numpy(), apply_generator(f, axis).numpy(), atol=1e-8 * float(f.abs().max()) * L**2)


def test_equator_weights_vanish_for_odd_l_plus_m():
    eq = equator_harmonics(L)
    l = torch.arange(L + 1)[:, None]
    m = torch.arange(-L, L + 1)[None, :]
    assert float(eq[((l + m) % 2 == 1) & (m.abs() <= l)].abs().max()) < 1e-15
    ref = spherical_harmonics(L, torch.tensor([math.pi / 2], dtype=torch.float64), torch.zeros(1, dtype=torch.float64))[0]
    np.testing.assert_allclose(eq.numpy(), ref.real.numpy(), atol=1e-14)


def test_reduced_rotation_is_the_sum_of_rotations():
    gen = torch.Generator().manual_seed(6)
    f = _random_coeffs((4, 2), gen)
    R = axis_angle_to_matrix(torch.randn(4, 3, generator=gen, dtype=torch.float64))
    rot = WignerRotation(L)
    np.testing.assert_allclose(rot(f, R, reduce=True).numpy(), rot(f, R).sum(0).numpy(), atol=1e-12)
