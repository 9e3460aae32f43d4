"""SO(3) sampling: Haar-uniform random rotations, HEALPix and Hopf grids (size, step, coverage), local grids."""

from __future__ import annotations

import math

import pytest
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.rotations import (
    axis_angle_to_matrix,
    euler_to_matrix,
    geodesic_distance,
)
from cryoscope.geometry.sampling import (
    covering_radius_deg,
    grid_within,
    healpix_directions,
    healpix_euler_grid,
    healpix_grid,
    healpix_order_for_step,
    healpix_pixel_centres,
    healpix_step_deg,
    hopf_grid,
    local_grid,
    local_offsets,
    nearest_grid_rotation,
    random_rotations,
)

D = torch.float64


def test_random_rotations_are_seedable_and_haar_uniform():
    a = random_rotations(20000, generator=torch.Generator().manual_seed(4), dtype=D)
    b = random_rotations(20000, generator=torch.Generator().manual_seed(4), dtype=D)
    assert torch.equal(a, b)
    assert (a @ a.transpose(-1, -2) - torch.eye(3, dtype=D)).abs().max() < 1e-13
    # Haar measure: P(angle <= t) = (t - sin t) / pi; Kolmogorov-Smirnov distance small for 20000 draws
    t = torch.sort(torch.deg2rad(geodesic_distance(torch.eye(3, dtype=D).expand_as(a), a))).values
    cdf = (t - torch.sin(t)) / math.pi
    emp = torch.arange(1, t.numel() + 1, dtype=D) / t.numel()
    assert (cdf - emp).abs().max() < 0.015  # 99.9 % KS bound for n = 20000 is 0.0138
    # E[R] = 0 and E[R_ij^2] = 1/3 for every element
    assert a.mean(0).abs().max() < 0.02
    assert ((a**2).mean(0) - 1 / 3).abs().max() < 0.02


def test_healpix_nside1_hand_checked():
    """Nside = 1: rings at z = 2/3, 0, -2/3, four pixels each, phi = pi/4 + k pi/2 on the caps and k pi/2 on the equator."""
    theta, phi = healpix_pixel_centres(1)
    z = torch.cos(theta)
    k = torch.arange(4, dtype=D)
    assert torch.allclose(z, torch.tensor([2 / 3] * 4 + [0.0] * 4 + [-2 / 3] * 4, dtype=D), atol=1e-15)
    assert torch.allclose(phi, torch.cat([math.pi / 4 + k * math.pi / 2, k * math.pi / 2, math.pi / 4 + k * math.pi / 2]), atol=1e-15)


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_healpix_directions_count_and_symmetry(order):
    d = healpix_directions(order)
    n = 12 * 4**order
    assert d.shape == (n, 3)
    assert torch.allclose(d.norm(dim=-1), torch.ones(n, dtype=D))
    # the pixel centres form a set invariant under z -> -z and under 90 degree turns about z
    for M in (torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=D)), torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=D)):
        moved = d @ M.T
        assert (moved[:, None] - d[None]).norm(dim=-1).min(dim=1).values.max() < 1e-12
    # equal-area pixels: the centres are nearly balanced, and all distinct
    assert d.mean(0).norm() < 1e-12
    assert torch.cdist(d, d).add(torch.eye(n, dtype=D) * 10).min() > 0.5 * math.radians(healpix_step_deg(order))


def test_grid_step_and_order_helpers():
    assert [healpix_step_deg(o) for o in range(5)] == [60.0, 30.0, 15.0, 7.5, 3.75]
    assert [healpix_order_for_step(s) for s in (100, 60, 59, 30, 15, 10, 7.5, 1.8)] == [0, 0, 1, 1, 2, 3, 3, 6]
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(InvalidValueError):
            healpix_order_for_step(bad)
    with pytest.raises(InvalidValueError):
        healpix_grid(-1)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_healpix_euler_grid_layout(order):
    e = healpix_euler_grid(order)
    n_dir, n_psi = 12 * 4**order, 6 * 2**order
    assert e.shape == (72 * 8**order, 3)
    psi = e.reshape(n_dir, n_psi, 3)[..., 2]
    assert torch.allclose(psi[:, 1:] - psi[:, :-1], torch.full((n_dir, n_psi - 1), healpix_step_deg(order), dtype=D))
    # (rot, tilt) are the HEALPix directions: the viewing direction A^T e_z reproduces them
    A = euler_to_matrix(e)
    view = A.transpose(-1, -2)[:, :, 2].reshape(n_dir, n_psi, 3)
    assert torch.allclose(view, healpix_directions(order)[:, None, :].expand(-1, n_psi, -1), atol=1e-14)


@pytest.mark.parametrize("make_grid", [healpix_grid, hopf_grid])
def test_grid_size_distinct_and_coverage_halves_per_order(make_grid):
    radii = []
    for order in range(4):
        G = make_grid(order)
        assert G.shape == (72 * 8**order, 3, 3)
        assert (G @ G.transpose(-1, -2) - torch.eye(3, dtype=D)).abs().max() < 1e-13
        if order <= 2:  # all rotations distinct: nearest other element at least a third of a step away
            tr = G.reshape(-1, 9) @ G.reshape(-1, 9).T
            tr.fill_diagonal_(-3)
            min_angle = math.degrees(math.acos(min(1.0, (float(tr.max()) - 1) / 2)))
            assert min_angle > healpix_step_deg(order) / 3
        r = covering_radius_deg(G, n_samples=1500, generator=torch.Generator().manual_seed(order))
        step = healpix_step_deg(order)
        assert 0.6 * step < r < 1.0 * step, (order, r)
        radii.append(r)
    for coarse, fine in zip(radii[:-1], radii[1:]):
        assert 0.4 < fine / coarse < 0.6


def test_nearest_grid_rotation_is_exact_for_grid_points():
    G = hopf_grid(1)
    idx = torch.tensor([0, 5, 100, 575])
    dist, found = nearest_grid_rotation(G[idx], G)
    assert torch.equal(found, idx) and dist.max() < 1e-6


def test_local_grid_stays_in_range_and_covers_the_ball():
    gen = torch.Generator().manual_seed(2)
    centres = random_rotations(5, generator=gen, dtype=D)
    max_angle, step = 6.0, 1.5
    L = local_grid(centres, max_angle, step)
    K = local_offsets(max_angle, step).shape[0]
    assert L.shape == (5, K, 3, 3)
    assert abs(K - 4 / 3 * math.pi * (max_angle / step) ** 3) / K < 0.2
    dist = geodesic_distance(centres[:, None].expand_as(L), L)
    assert dist.max() <= max_angle + 1e-9 and dist.min() < 1e-9  # the centre itself is included
    # every rotation within (max_angle - step) of a centre is within ~ step * sqrt(3) / 2 of the local grid
    v = torch.randn(5, 400, 3, generator=gen, dtype=D)
    v = v / v.norm(dim=-1, keepdim=True) * torch.rand(5, 400, 1, generator=gen, dtype=D) * math.radians(max_angle - step)
    probes = centres[:, None] @ axis_angle_to_matrix(v)
    for i in range(5):
        d, _ = nearest_grid_rotation(probes[i], L[i])
        assert d.max() < step * math.sqrt(3) / 2 * 1.05


def test_grid_within_matches_geodesic_distance():
    G = healpix_grid(2)
    centres = random_rotations(4, generator=torch.Generator().manual_seed(8), dtype=D)
    mask = grid_within(G, centres, 20.0)
    dist = geodesic_distance(centres[:, None].expand(-1, G.shape[0], -1, -1), G[None].expand(4, -1, -1, -1))
    assert torch.equal(mask, dist <= 20.0)
    # the neighbourhood size is about the volume fraction of a 20 degree ball in SO(3): (t - sin t) / pi
    t = math.radians(20.0)
    expected = (t - math.sin(t)) / math.pi * G.shape[0]
    assert ((mask.sum(1).to(D) - expected).abs() / expected).max() < 0.3
