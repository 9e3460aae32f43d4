"""Rotation parameterisations, batched in torch.

Convention: a rotation matrix `R` (shape [..., 3, 3]) is RELION's Euler matrix A(rot, tilt, psi).
It maps map coordinates to projection coordinates: the image of a particle is the projection
along z of V(R^T r), and its 2-D Fourier transform is the central slice F(R^T (kx, ky, 0)).
Euler angles are RELION's ZYZ (rot, tilt, psi) in degrees; axis-angle vectors are in radians.
"""

from __future__ import annotations

import math

import torch


def euler_to_matrix(euler_deg: torch.Tensor) -> torch.Tensor:
    """RELION Euler angles (rot, tilt, psi) in degrees, [..., 3] -> matrices [..., 3, 3].

    A = Rz(psi) Ry(tilt) Rz(rot) with RELION's sense of rotation (relion/src/euler.cpp).
    """
    a = torch.deg2rad(euler_deg)
    ca, cb, cg = torch.cos(a[..., 0]), torch.cos(a[..., 1]), torch.cos(a[..., 2])
    sa, sb, sg = torch.sin(a[..., 0]), torch.sin(a[..., 1]), torch.sin(a[..., 2])
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        torch.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
        torch.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
        torch.stack([sc, ss, cb], -1),
    ]
    return torch.stack(rows, -2)


def matrix_to_euler(R: torch.Tensor) -> torch.Tensor:
    """Matrices [..., 3, 3] -> RELION Euler angles (rot, tilt, psi) in degrees, tilt in [0, 180].

    At tilt = 0 or 180 (gimbal lock) rot is set to 0 and psi carries the in-plane angle.
    """
    abs_sb = torch.sqrt(R[..., 0, 2] ** 2 + R[..., 1, 2] ** 2)
    eps = 16 * torch.finfo(R.dtype).eps
    regular = abs_sb > eps
    rot = torch.where(regular, torch.atan2(R[..., 2, 1], R[..., 2, 0]), torch.zeros_like(abs_sb))
    tilt = torch.atan2(abs_sb, R[..., 2, 2])
    psi_regular = torch.atan2(R[..., 1, 2], -R[..., 0, 2])
    psi_up = torch.atan2(-R[..., 1, 0], R[..., 0, 0])
    psi_down = torch.atan2(R[..., 1, 0], -R[..., 0, 0])
    psi = torch.where(regular, psi_regular, torch.where(R[..., 2, 2] > 0, psi_up, psi_down))
    tilt = torch.where(regular, tilt, torch.where(R[..., 2, 2] > 0, torch.zeros_like(tilt), torch.full_like(tilt, math.pi)))
    return torch.rad2deg(torch.stack([rot, tilt, psi], -1))


def _skew(v: torch.Tensor) -> torch.Tensor:
    """[..., 3] -> skew-symmetric [..., 3, 3] with skew(v) @ w = v x w."""
    z = torch.zeros_like(v[..., 0])
    return torch.stack(
        [
            torch.stack([z, -v[..., 2], v[..., 1]], -1),
            torch.stack([v[..., 2], z, -v[..., 0]], -1),
            torch.stack([-v[..., 1], v[..., 0], z], -1),
        ],
        -2,
    )


def axis_angle_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """Exponential map so(3) -> SO(3): axis-angle vectors [..., 3] (radians) -> [..., 3, 3].

    Rodrigues' formula, R = exp(skew(v)), a right-handed rotation by |v| about v/|v|.
    Stable and differentiable at v = 0 (Taylor series for small angles).
    """
    theta2 = (v * v).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2.clamp_min(1e-30))
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-30))
    K = _skew(v)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(K.shape)
    return eye + a[..., None] * K + b[..., None] * (K @ K)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Logarithm map SO(3) -> so(3): [..., 3, 3] -> axis-angle [..., 3] (radians, |v| <= pi)."""
    return quaternion_to_axis_angle(matrix_to_quaternion(R))


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (w, x, y, z) [..., 4] -> matrices [..., 3, 3] (q and -q give the same R)."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ]
    return torch.stack(rows, -2)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Matrices [..., 3, 3] -> unit quaternions (w, x, y, z) with w >= 0 (Shepperd's method)."""
    m = R
    t = torch.stack(
        [
            1 + m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2],
            1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
            1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],
        ],
        -1,
    )
    k = t.argmax(-1)
    s = torch.sqrt(t.gather(-1, k[..., None]).clamp_min(1e-30))[..., 0] * 2  # 4 * |component|
    cands = torch.stack(
        [
            torch.stack([s / 4, (m[..., 2, 1] - m[..., 1, 2]) / s, (m[..., 0, 2] - m[..., 2, 0]) / s, (m[..., 1, 0] - m[..., 0, 1]) / s], -1),
            torch.stack([(m[..., 2, 1] - m[..., 1, 2]) / s, s / 4, (m[..., 0, 1] + m[..., 1, 0]) / s, (m[..., 0, 2] + m[..., 2, 0]) / s], -1),
            torch.stack([(m[..., 0, 2] - m[..., 2, 0]) / s, (m[..., 0, 1] + m[..., 1, 0]) / s, s / 4, (m[..., 1, 2] + m[..., 2, 1]) / s], -1),
            torch.stack([(m[..., 1, 0] - m[..., 0, 1]) / s, (m[..., 0, 2] + m[..., 2, 0]) / s, (m[..., 1, 2] + m[..., 2, 1]) / s, s / 4], -1),
        ],
        -2,
    )
    q = cands.gather(-2, k[..., None, None].expand(*k.shape, 1, 4))[..., 0, :]
    q = torch.where(q[..., :1] < 0, -q, q)
    return q / q.norm(dim=-1, keepdim=True)


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (w, x, y, z) -> axis-angle vectors (radians, angle in [0, pi])."""
    q = torch.where(q[..., :1] < 0, -q, q)
    xyz = q[..., 1:]
    sin_half = xyz.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, q[..., :1])
    scale = torch.where(sin_half > 1e-12, angle / sin_half.clamp_min(1e-30), 2 / q[..., :1].clamp_min(1e-30))
    return xyz * scale


def geodesic_distance(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Angle in degrees of R1^T R2, [...]; robust near 0 and 180 degrees."""
    return torch.rad2deg(matrix_to_axis_angle(R1.transpose(-1, -2) @ R2).norm(dim=-1))
