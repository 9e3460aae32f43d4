"""Pose distributions: samplers returning RELION rotation matrices [n, 3, 3].

The viewing direction of a particle with matrix A is d = A^T e_z = A[2, :] (x, y, z), the
direction in map coordinates along which it is projected; d = (sin tilt cos rot, sin tilt sin rot, cos tilt).
All samplers draw the in-plane angle psi uniformly in [0, 360) and use a `torch.Generator` for reproducibility.
"""

from __future__ import annotations

import math

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.rotations import euler_to_matrix, quaternion_to_matrix


def viewing_directions(rotations: torch.Tensor) -> torch.Tensor:
    """Unit viewing directions A^T e_z [..., 3] (x, y, z) of matrices [..., 3, 3]."""
    return rotations[..., 2, :]


def _uniform(n: int, low: float, high: float, generator, dtype, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=dtype, device=device)


def _from_directions(d: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Matrices with viewing directions d [n, 3] (unit) and uniform psi."""
    rot = torch.rad2deg(torch.atan2(d[:, 1], d[:, 0]))
    tilt = torch.rad2deg(torch.acos(d[:, 2].clamp(-1, 1)))
    psi = _uniform(d.shape[0], 0.0, 360.0, generator, d.dtype, d.device)
    return euler_to_matrix(torch.stack([rot, tilt, psi], -1))


def _from_cos_tilt(cos_tilt: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Matrices with given cos(tilt), uniform rot and psi (uniform on the sphere when cos_tilt is uniform)."""
    n = cos_tilt.shape[0]
    rot = _uniform(n, 0.0, 2 * math.pi, generator, cos_tilt.dtype, cos_tilt.device)
    sin_tilt = torch.sqrt((1 - cos_tilt**2).clamp_min(0))
    d = torch.stack([sin_tilt * torch.cos(rot), sin_tilt * torch.sin(rot), cos_tilt], -1)
    return _from_directions(d, generator)


def uniform_rotations(n: int, generator: torch.Generator | None = None, dtype=torch.float32, device=None) -> torch.Tensor:
    """Haar-uniform rotations on SO(3): normalised 4-D Gaussian vectors as quaternions."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64, device=device)
    return quaternion_to_matrix(q).to(dtype)


def polar_cap_rotations(
    n: int, max_tilt: float, both_poles: bool = False, generator: torch.Generator | None = None, dtype=torch.float32, device=None
) -> torch.Tensor:
    """Viewing directions uniform on the cap within `max_tilt` degrees of +z (and of -z too if `both_poles`)."""
    if not 0 < max_tilt <= 180:
        raise InvalidValueError(f"polar cap half-angle must be in (0, 180] degrees, got {max_tilt}")
    c = _uniform(n, math.cos(math.radians(max_tilt)), 1.0, generator, torch.float64, device)
    if both_poles:
        c = torch.where(torch.rand(n, generator=generator, dtype=torch.float64, device=device) < 0.5, -c, c)
    return _from_cos_tilt(c, generator).to(dtype)


def equatorial_band_rotations(
    n: int, half_width: float, generator: torch.Generator | None = None, dtype=torch.float32, device=None
) -> torch.Tensor:
    """Viewing directions uniform on the band with tilt in [90 - half_width, 90 + half_width] degrees (side views)."""
    if not 0 < half_width <= 90:
        raise InvalidValueError(f"equatorial band half-width must be in (0, 90] degrees, got {half_width}")
    s = math.sin(math.radians(half_width))
    c = _uniform(n, -s, s, generator, torch.float64, device)
    return _from_cos_tilt(c, generator).to(dtype)


def latitude_concentrated_rotations(
    n: int, sigma: float, around: str = "poles", generator: torch.Generator | None = None, dtype=torch.float32, device=None
) -> torch.Tensor:
    """Viewing directions with tilt density ρ(β) ∝ exp(-sin²β / 2σ²) (around="poles") or exp(-cos²β / 2σ²)
    (around="equator") per unit solid angle, as in Rangan et al. Fig. 24-25: concentrated, but non-zero everywhere."""
    if sigma <= 0 or around not in ("poles", "equator"):
        raise InvalidValueError(f"need sigma > 0 and around in (poles, equator), got {sigma} and {around!r}")
    accepted: list[torch.Tensor] = []
    count = 0
    while count < n:  # rejection sampling of t = cos β against the uniform density on [-1, 1]
        t = _uniform(4 * n + 64, -1.0, 1.0, generator, torch.float64, device)
        f = (1 - t * t) if around == "poles" else t * t
        keep = t[torch.rand(t.shape[0], generator=generator, dtype=torch.float64, device=device) < torch.exp(-f / (2 * sigma**2))]
        accepted.append(keep)
        count += keep.numel()
    return _from_cos_tilt(torch.cat(accepted)[:n], generator).to(dtype)


def concentrated_rotations(
    n: int,
    directions: torch.Tensor,
    spread: float,
    weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype=torch.float32,
) -> torch.Tensor:
    """Viewing directions from a mixture of von Mises-Fisher distributions on the sphere.

    directions: [m, 3] (x, y, z) centres (normalised here); spread: angular spread sigma in degrees,
    kappa = 1 / sigma^2 (radians), so the angle to the centre is about Rayleigh(sigma) for small sigma;
    weights: [m] relative probabilities of the centres (default equal). Exact vMF sampling (Wood 1994).
    """
    d0 = torch.as_tensor(directions, dtype=torch.float64)
    if d0.dim() != 2 or d0.shape[-1] != 3 or d0.shape[0] == 0 or bool((d0.norm(dim=-1) == 0).any()):
        raise InvalidValueError(f"directions must be non-zero vectors of shape [m, 3], got {tuple(d0.shape)}")
    if spread <= 0:
        raise InvalidValueError(f"spread must be positive (degrees), got {spread}")
    device = d0.device
    d0 = d0 / d0.norm(dim=-1, keepdim=True)
    w = torch.ones(d0.shape[0], dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (d0.shape[0],) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise InvalidValueError("weights must be [m] non-negative numbers with a positive sum")
    centre = d0[torch.multinomial(w.to(device), n, replacement=True, generator=generator)]
    kappa = 1.0 / math.radians(spread) ** 2
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
    # Inverse CDF of the cosine t to the centre: p(t) ~ exp(kappa t) on [-1, 1].
    t = (1 + torch.log((u + (1 - u) * math.exp(-2 * kappa)).clamp_min(1e-300)) / kappa).clamp(-1, 1)
    phi = _uniform(n, 0.0, 2 * math.pi, generator, torch.float64, device)
    # Orthonormal frame (e1, e2) perpendicular to each centre.
    helper = torch.where(centre[:, 2:3].abs() < 0.9, centre.new_tensor([0.0, 0.0, 1.0]), centre.new_tensor([1.0, 0.0, 0.0]))
    e1 = torch.linalg.cross(centre, helper)
    e1 = e1 / e1.norm(dim=-1, keepdim=True)
    e2 = torch.linalg.cross(centre, e1)
    s = torch.sqrt((1 - t**2).clamp_min(0))
    d = t[:, None] * centre + s[:, None] * (torch.cos(phi)[:, None] * e1 + torch.sin(phi)[:, None] * e2)
    return _from_directions(d, generator).to(dtype)


def empirical_rotations(n: int, euler: torch.Tensor, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """Resample n poses with replacement from observed RELION Euler angles [m, 3] (rot, tilt, psi degrees)."""
    e = torch.as_tensor(euler, dtype=torch.float64)
    if e.dim() != 2 or e.shape[-1] != 3 or e.shape[0] == 0:
        raise InvalidValueError(f"Euler angles must have shape [m, 3] with m > 0, got {tuple(e.shape)}")
    if not bool(torch.isfinite(e).all()):
        raise InvalidValueError("Euler angles contain NaN or Inf")
    idx = torch.randint(e.shape[0], (n,), generator=generator, device=e.device)
    return euler_to_matrix(e[idx]).to(dtype)


POSE_SPECS = "uniform, cap:DEG, band:DEG, polar:SIGMA, equator:SIGMA, views:DEG, star:PATH"


def rotations_from_spec(spec: str, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
    """n rotations [n, 3, 3] from a named pose distribution: 'uniform', 'cap:DEG' (polar cap), 'band:DEG'
    (equatorial band), 'polar:SIGMA' / 'equator:SIGMA' (concentrated towards the poles / the equator but non-zero
    everywhere, `latitude_concentrated_rotations`), 'views:DEG' (concentrated around the 6 axis views, spread DEG)
    or 'star:PATH' (resample the angles of a STAR, cryoSPARC .cs or cryoDRGN .pkl file)."""
    kind, _, arg = spec.partition(":")
    kind, arg = kind.strip().lower(), arg.strip()
    try:
        if kind == "uniform":
            return uniform_rotations(n, generator, dtype)
        if kind == "cap":
            return polar_cap_rotations(n, float(arg or 30), generator=generator, dtype=dtype)
        if kind == "band":
            return equatorial_band_rotations(n, float(arg or 20), generator=generator, dtype=dtype)
        if kind in ("polar", "equator"):
            return latitude_concentrated_rotations(n, float(arg or 0.2), "poles" if kind == "polar" else "equator", generator, dtype)
        if kind == "views":
            axes = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float64)
            return concentrated_rotations(n, axes, float(arg or 10), generator=generator, dtype=dtype)
        if kind == "star":
            from cryoscope.io.convert import read_metadata

            meta = read_metadata(arg)
            if meta.euler is None:
                raise InvalidValueError("the file has no angles to resample", arg)
            return empirical_rotations(n, meta.euler, generator=generator, dtype=dtype)
    except ValueError:
        raise InvalidValueError(f"bad pose distribution {spec!r}") from None
    raise InvalidValueError(f"unknown pose distribution {spec!r} ({POSE_SPECS})")
