"""Rotation parameterisations: RELION Euler reference values, round trips, exp-map Jacobians."""

from __future__ import annotations

import math

import pytest
import torch

from cryoscope.geometry.rotations import (
    axis_angle_to_matrix,
    euler_to_matrix,
    geodesic_distance,
    matrix_to_axis_angle,
    matrix_to_euler,
    matrix_to_quaternion,
    matrix_to_rot6d,
    perturb_right,
    quaternion_to_axis_angle,
    quaternion_to_matrix,
    rot6d_to_matrix,
    so3_left_jacobian,
    so3_left_jacobian_inv,
    so3_right_jacobian,
    so3_right_jacobian_inv,
)

D = torch.float64
EYE = torch.eye(3, dtype=D)


def random_rotations(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return quaternion_to_matrix(torch.randn(n, 4, generator=g, dtype=D))


def hard_rotations(seed: int = 1) -> torch.Tensor:
    """Rotations next to gimbal lock (tilt 0/180) and with angle pi or nearly pi."""
    g = torch.Generator().manual_seed(seed)
    n = 500
    rot = torch.rand(n, generator=g, dtype=D) * 360 - 180
    psi = torch.rand(n, generator=g, dtype=D) * 360 - 180
    mats = []
    for tilt in (0.0, 180.0, 1e-9, 1e-5, 180 - 1e-9, 180 - 1e-5, 90.0):
        mats.append(euler_to_matrix(torch.stack([rot, torch.full_like(rot, tilt), psi], -1)))
    axes = torch.randn(n, 3, generator=g, dtype=D)
    axes = axes / axes.norm(dim=-1, keepdim=True)
    axes[:3] = torch.eye(3, dtype=D)  # pi about x, y and z exactly
    for angle in (math.pi, math.pi - 1e-9, math.pi - 1e-5, 1e-9, 0.0):
        mats.append(axis_angle_to_matrix(axes * angle))
    return torch.cat(mats)


def relion_reference(rot: float, tilt: float, psi: float) -> list[list[float]]:
    """Element formulas of Euler_angles2matrix (relion/src/euler.cpp), alpha=rot, beta=tilt, gamma=psi."""
    a, b, g = math.radians(rot), math.radians(tilt), math.radians(psi)
    ca, sa, cb, sb, cg, sg = math.cos(a), math.sin(a), math.cos(b), math.sin(b), math.cos(g), math.sin(g)
    return [
        [cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
        [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
        [sb * ca, sb * sa, cb],
    ]


def test_euler_matches_relion_element_formulas():
    g = torch.Generator().manual_seed(3)
    angles = (torch.rand(300, 3, generator=g, dtype=D) * 720 - 360).tolist()
    angles += [[0, 0, 0], [180, 180, 180], [-90, 45, 270]]
    ours = euler_to_matrix(torch.tensor(angles, dtype=D))
    ref = torch.tensor([relion_reference(*e) for e in angles], dtype=D)
    assert (ours - ref).abs().max() < 1e-14


def test_euler_is_product_of_relion_elementary_rotations():
    """A = Rz(psi) Ry(tilt) Rz(rot) with RELION's Rz(a) = [[c, s, 0], [-s, c, 0], [0, 0, 1]], Ry(b) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]."""

    def rz(a):
        c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
        return torch.tensor([[c, s, 0], [-s, c, 0], [0, 0, 1]], dtype=D)

    def ry(b):
        c, s = math.cos(math.radians(b)), math.sin(math.radians(b))
        return torch.tensor([[c, 0, -s], [0, 1, 0], [s, 0, c]], dtype=D)

    for rot, tilt, psi in [(10, 20, 30), (-170, 100, 45), (300, 179, -60)]:
        ref = rz(psi) @ ry(tilt) @ rz(rot)
        assert torch.allclose(euler_to_matrix(torch.tensor([rot, tilt, psi], dtype=D)), ref, atol=1e-14)


@pytest.mark.parametrize(
    "angles, expected",
    [
        # tilt = psi = 0: cc = ca, cs = sa -> [[ca, sa, 0], [-sa, ca, 0], [0, 0, 1]] at rot = 90.
        ((90, 0, 0), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
        # rot = psi = 0, tilt = 90: cb = 0, sb = 1 -> rows (0, 0, -1), (0, 1, 0), (1, 0, 0).
        ((0, 90, 0), [[0, 0, -1], [0, 1, 0], [1, 0, 0]]),
        # rot = tilt = 0, psi = 90: cg = 0, sg = 1 -> rows (0, 1, 0), (-1, 0, 0), (0, 0, 1).
        ((0, 0, 90), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
    ],
)
def test_euler_hand_checked_special_cases(angles, expected):
    A = euler_to_matrix(torch.tensor(angles, dtype=D))
    assert torch.allclose(A, torch.tensor(expected, dtype=D), atol=1e-15)


def test_projection_direction_of_rot_tilt():
    """The viewing direction in the map frame, A^T (0, 0, 1), is (cos rot sin tilt, sin rot sin tilt, cos tilt)."""
    e = torch.tensor([[30.0, 60.0, 77.0], [-120.0, 150.0, 5.0]], dtype=D)
    d = euler_to_matrix(e).transpose(-1, -2)[..., :, 2]
    r, t = torch.deg2rad(e[:, 0]), torch.deg2rad(e[:, 1])
    ref = torch.stack([torch.cos(r) * torch.sin(t), torch.sin(r) * torch.sin(t), torch.cos(t)], -1)
    assert torch.allclose(d, ref, atol=1e-15)


def test_matrices_are_rotations():
    for R in (euler_to_matrix(torch.randn(100, 3, dtype=D) * 100), random_rotations(100), hard_rotations()):
        assert (R @ R.transpose(-1, -2) - EYE).abs().max() < 1e-13
        assert (torch.linalg.det(R) - 1).abs().max() < 1e-13


@pytest.mark.parametrize("kind", ["random", "hard"])
def test_matrix_round_trips(kind):
    R = random_rotations(5000) if kind == "random" else hard_rotations()
    trips = {
        "euler": euler_to_matrix(matrix_to_euler(R)),
        "quaternion": quaternion_to_matrix(matrix_to_quaternion(R)),
        "axis_angle": axis_angle_to_matrix(matrix_to_axis_angle(R)),
        "rot6d": rot6d_to_matrix(matrix_to_rot6d(R)),
    }
    for name, R2 in trips.items():
        assert (R2 - R).abs().max() < 1e-6, name
        assert (R2 - R).abs().max() < 1e-12, name  # in fact to rounding


def test_matrix_to_euler_ranges_and_gimbal_lock():
    R = hard_rotations()
    e = matrix_to_euler(R)
    assert (e[:, 1] >= 0).all() and (e[:, 1] <= 180).all()
    assert (e[:, [0, 2]].abs() <= 180).all()
    locked = torch.minimum(e[:, 1], 180 - e[:, 1]) == 0
    assert locked.any()
    assert (e[locked, 0] == 0).all()  # RELION: rot = 0 at gimbal lock, psi carries the in-plane angle


def test_euler_round_trip_recovers_angles():
    g = torch.Generator().manual_seed(5)
    e = torch.rand(5000, 3, generator=g, dtype=D) * torch.tensor([360.0, 179.0, 360.0], dtype=D) - torch.tensor([180.0, -0.5, 180.0], dtype=D)
    e2 = matrix_to_euler(euler_to_matrix(e))
    diff = (e2 - e + 180) % 360 - 180
    assert diff.abs().max() < 1e-6


def test_quaternion_and_axis_angle_round_trips():
    g = torch.Generator().manual_seed(7)
    q = torch.randn(5000, 4, generator=g, dtype=D)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    assert (matrix_to_quaternion(quaternion_to_matrix(q)) - q).abs().max() < 1e-12
    v = torch.randn(5000, 3, generator=g, dtype=D)
    v = v / v.norm(dim=-1, keepdim=True) * torch.rand(5000, 1, generator=g, dtype=D) * (math.pi - 1e-6)
    v[:10] *= 1e-10  # tiny angles
    assert (matrix_to_axis_angle(axis_angle_to_matrix(v)) - v).abs().max() < 1e-9
    # at angle pi, v and -v are the same rotation: the log has norm pi and reproduces R
    axes = v / v.norm(dim=-1, keepdim=True)
    R_pi = axis_angle_to_matrix(axes * math.pi)
    v_pi = matrix_to_axis_angle(R_pi)
    assert torch.allclose(v_pi.norm(dim=-1), torch.full((5000,), math.pi, dtype=D), atol=1e-12)
    assert torch.minimum((v_pi - axes * math.pi).norm(dim=-1), (v_pi + axes * math.pi).norm(dim=-1)).max() < 1e-9
    assert torch.allclose(quaternion_to_axis_angle(matrix_to_quaternion(R_pi)), v_pi)


def test_rot6d_gram_schmidt_accepts_unnormalised_input():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1000, 6, generator=g, dtype=D) * 3
    R = rot6d_to_matrix(x)
    assert (R @ R.transpose(-1, -2) - EYE).abs().max() < 1e-13
    assert (torch.linalg.det(R) - 1).abs().max() < 1e-13
    # the first column is the direction of a1, the second lies in the plane of (a1, a2) on a2's side
    a1, a2 = x[:, :3], x[:, 3:]
    assert torch.allclose(R[:, :, 0], a1 / a1.norm(dim=-1, keepdim=True), atol=1e-14)
    assert ((R[:, :, 1] * a2).sum(-1) > 0).all()
    assert (R[:, :, 2] * a1).sum(-1).abs().max() < 1e-12 and (R[:, :, 2] * a2).sum(-1).abs().max() < 1e-12


def _test_vectors() -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    v = torch.randn(40, 3, generator=g, dtype=D)
    v = v / v.norm(dim=-1, keepdim=True)
    norms = torch.tensor([1e-7, 1e-4, 5e-3, 0.0099, 0.0101, 0.3, 1.0, 2.0, 2.8, 3.0], dtype=D)
    return (v[:, None, :] * norms[None, :, None]).reshape(-1, 3)


def _central_difference(f, v: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Columns d f / d x_k at x = 0 for f: [..., 3] -> [..., 3]."""
    cols = []
    for k in range(3):
        e = torch.zeros_like(v)
        e[:, k] = h
        cols.append((f(e) - f(-e)) / (2 * h))
    return torch.stack(cols, -1)


def test_right_and_left_jacobians_against_finite_differences():
    v = _test_vectors()
    R = axis_angle_to_matrix(v)
    # exp(v + d) = exp(v) exp(J_r d): J_r = d/dd log(exp(v)^T exp(v + d))
    Jr_fd = _central_difference(lambda d: matrix_to_axis_angle(R.transpose(-1, -2) @ axis_angle_to_matrix(v + d)), v)
    Jl_fd = _central_difference(lambda d: matrix_to_axis_angle(axis_angle_to_matrix(v + d) @ R.transpose(-1, -2)), v)
    assert (so3_right_jacobian(v) - Jr_fd).abs().max() < 1e-8
    assert (so3_left_jacobian(v) - Jl_fd).abs().max() < 1e-8
    # inverses: log(exp(v) exp(d)) = v + J_r^{-1} d and log(exp(d) exp(v)) = v + J_l^{-1} d
    Jri_fd = _central_difference(lambda d: matrix_to_axis_angle(R @ axis_angle_to_matrix(d)), v)
    Jli_fd = _central_difference(lambda d: matrix_to_axis_angle(axis_angle_to_matrix(d) @ R), v)
    assert (so3_right_jacobian_inv(v) - Jri_fd).abs().max() < 1e-7
    assert (so3_left_jacobian_inv(v) - Jli_fd).abs().max() < 1e-7


def test_jacobian_identities():
    v = _test_vectors()
    Jr, Jl = so3_right_jacobian(v), so3_left_jacobian(v)
    assert (Jr @ so3_right_jacobian_inv(v) - EYE).abs().max() < 1e-10
    assert (Jl @ so3_left_jacobian_inv(v) - EYE).abs().max() < 1e-10
    assert (Jl - Jr.transpose(-1, -2)).abs().max() < 1e-15
    assert (Jl - axis_angle_to_matrix(v) @ Jr).abs().max() < 1e-13  # J_l(v) = exp(v) J_r(v)


def test_perturb_right_gradient_is_body_frame():
    """d/dd f(R exp(d)) at d = 0 equals the projection of R^T grad_R f onto skew matrices."""
    R = random_rotations(8, seed=13)
    target = random_rotations(8, seed=14)
    delta = torch.zeros(8, 3, dtype=D, requires_grad=True)
    loss = ((perturb_right(R, delta) - target) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, delta)
    G = 2 * (R - target)  # Euclidean gradient in R
    M = R.transpose(-1, -2) @ G
    # <M, skew(e_k)> for skew(e_x) = [[0,0,0],[0,0,-1],[0,1,0]], etc.
    ref = torch.stack([M[:, 2, 1] - M[:, 1, 2], M[:, 0, 2] - M[:, 2, 0], M[:, 1, 0] - M[:, 0, 1]], -1)
    assert torch.allclose(grad, ref, atol=1e-12)
    assert torch.allclose(geodesic_distance(R, perturb_right(R, torch.full((8, 3), 0.01, dtype=D))), torch.full((8,), math.degrees(0.01 * math.sqrt(3)), dtype=D))
