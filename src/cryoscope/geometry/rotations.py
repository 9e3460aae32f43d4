"""Rotation parameterisations, batched in torch.

Convention: a rotation matrix `R` (shape [..., 3, 3]) is RELION's Euler matrix A(rot, tilt, psi).
It maps map coordinates to projection coordinates: the image of a particle is the projection
along z of V(R^T r), and its 2-D Fourier transform is the central slice F(R^T (kx, ky, 0)).
Euler angles are RELION's ZYZ (rot, tilt, psi) in degrees; axis-angle vectors are in radians.
"""

from __future__ import annotations

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

    Same angles as RELION's `Euler_matrix2angles`: at tilt = 0 or 180 (gimbal lock) rot is set to 0
    and psi carries the in-plane angle. rot comes from the third row; tilt and psi are then read off
    `R Rz(rot)^T = Rz(psi) Ry(tilt)`, so the angles reproduce R to rounding even next to gimbal lock.
    """
    abs_sb = torch.sqrt(R[..., 2, 0] ** 2 + R[..., 2, 1] ** 2)
    eps = 16 * torch.finfo(R.dtype).eps
    rot = torch.where(abs_sb > eps, torch.atan2(R[..., 2, 1], R[..., 2, 0]), torch.zeros_like(abs_sb))
    ca, sa = torch.cos(rot), torch.sin(rot)
    # M = R @ Rz(rot)^T, where RELION's Rz(rot) = [[ca, sa, 0], [-sa, ca, 0], [0, 0, 1]].
    m01 = R[..., 0, 1] * ca - R[..., 0, 0] * sa
    m11 = R[..., 1, 1] * ca - R[..., 1, 0] * sa
    m20 = R[..., 2, 0] * ca + R[..., 2, 1] * sa
    tilt = torch.atan2(m20.clamp_min(0), R[..., 2, 2])
    psi = torch.atan2(m01, m11)
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


def axis_angle_derivative(v: torch.Tensor) -> torch.Tensor:
    """∂R/∂v_i of R(v) = exp(skew(v)), [..., 3] -> [..., 3 (i), 3, 3].

    Gallego & Yezzi (2015; thesis eq. 5.27): ∂R/∂v_i = (v_i skew(v) + skew(v × (I - R) e_i)) R / |v|², which equals
    skew(J_l(v) e_i) R with the left Jacobian J_l; that form is evaluated (stable at v = 0, Taylor series there).
    """
    R = axis_angle_to_matrix(v)
    columns = so3_left_jacobian(v).transpose(-1, -2)  # row i = J_l(v) e_i
    return _skew(columns) @ R[..., None, :, :]


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


def matrix_to_rot6d(R: torch.Tensor) -> torch.Tensor:
    """Matrices [..., 3, 3] -> continuous 6-D representation [..., 6] (Zhou et al., CVPR 2019).

    The 6 numbers are the first two columns of R, column after column: (R00, R10, R20, R01, R11, R21).
    """
    return torch.cat([R[..., :, 0], R[..., :, 1]], -1)


def rot6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """6-D representation [..., 6] -> matrices [..., 3, 3] by Gram-Schmidt (Zhou et al., CVPR 2019).

    b1 = a1/|a1|, b2 = normalised (a2 - (b1.a2) b1), b3 = b1 x b2 are the columns of R;
    any pair of non-parallel 3-vectors is accepted, so networks can output x unconstrained.
    """
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = a1 / a1.norm(dim=-1, keepdim=True)
    b2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = b2 / b2.norm(dim=-1, keepdim=True)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], -1)


def _jacobian_coefficients(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1 - cos t)/t^2, (t - sin t)/t^3 and 1/t^2 - (1 + cos t)/(2 t sin t) for t = |v|, shape [..., 1, 1]."""
    theta2 = (v * v).sum(-1, keepdim=True)
    small = theta2 < 1e-4  # Taylor series to t^4 below t = 0.01 rad (remainder < 1e-16)
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    safe = torch.sqrt(safe2)
    t4 = theta2 * theta2
    b = torch.where(small, 1 / 2 - theta2 / 24 + t4 / 720, (1 - torch.cos(safe)) / safe2)
    c = torch.where(small, 1 / 6 - theta2 / 120 + t4 / 5040, (safe - torch.sin(safe)) / (safe2 * safe))
    d = torch.where(small, 1 / 12 + theta2 / 720 + t4 / 30240, 1 / safe2 - (1 + torch.cos(safe)) / (2 * safe * torch.sin(safe)))
    return b[..., None], c[..., None], d[..., None]


def so3_right_jacobian(v: torch.Tensor) -> torch.Tensor:
    """Right Jacobian of the exponential map, [..., 3] (radians) -> [..., 3, 3].

    exp(v + d) = exp(v) exp(J_r(v) d) + O(|d|^2); J_r(v) = I - (1-cos t)/t^2 K + (t - sin t)/t^3 K^2, K = skew(v).
    """
    b, c, _ = _jacobian_coefficients(v)
    K = _skew(v)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(K.shape)
    return eye - b * K + c * (K @ K)


def so3_left_jacobian(v: torch.Tensor) -> torch.Tensor:
    """Left Jacobian of the exponential map, [..., 3] -> [..., 3, 3]: exp(v + d) = exp(J_l(v) d) exp(v) + O(|d|^2).

    J_l(v) = J_r(-v) = J_r(v)^T.
    """
    b, c, _ = _jacobian_coefficients(v)
    K = _skew(v)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(K.shape)
    return eye + b * K + c * (K @ K)


def so3_right_jacobian_inv(v: torch.Tensor) -> torch.Tensor:
    """Inverse right Jacobian, [..., 3] -> [..., 3, 3]: log(exp(v) exp(d)) = v + J_r^{-1}(v) d + O(|d|^2).

    J_r^{-1}(v) = I + K/2 + (1/t^2 - (1 + cos t)/(2 t sin t)) K^2; singular at |v| = pi.
    """
    _, _, d = _jacobian_coefficients(v)
    K = _skew(v)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(K.shape)
    return eye + 0.5 * K + d * (K @ K)


def so3_left_jacobian_inv(v: torch.Tensor) -> torch.Tensor:
    """Inverse left Jacobian, [..., 3] -> [..., 3, 3]: log(exp(d) exp(v)) = v + J_l^{-1}(v) d + O(|d|^2)."""
    _, _, d = _jacobian_coefficients(v)
    K = _skew(v)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(K.shape)
    return eye - 0.5 * K + d * (K @ K)


def perturb_right(R: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Pose update R exp(delta) for matrices [..., 3, 3] and axis-angle increments [..., 3] (radians).

    This is the retraction optimisers use: a gradient with respect to delta at delta = 0 is the
    body-frame gradient, and d(R exp(delta)) = R skew(delta) to first order.
    """
    return R @ axis_angle_to_matrix(delta)
