"""Sampling of SO(3): uniform random rotations, RELION-style HEALPix grids, Hopf-fibration grids, local grids.

Grid order n (RELION's `--healpix_order`): 12 * 4**n HEALPix directions (Nside = 2**n) times
6 * 2**n in-plane angles, i.e. an angular step of 60 / 2**n degrees (order 0 = 60, 1 = 30, 2 = 15,
3 = 7.5, ...) and 72 * 8**n rotations. Rotations are RELION Euler matrices (see rotations.py).
"""

from __future__ import annotations

import math

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.rotations import (
    axis_angle_to_matrix,
    euler_to_matrix,
    geodesic_distance,
    quaternion_to_matrix,
)


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """n rotations [n, 3, 3] uniform on SO(3) (Haar measure), from normalised Gaussian quaternions.

    With a seeded `generator` the draw is reproducible; the numbers are drawn on the generator's device.
    """
    if n < 0:
        raise InvalidValueError(f"number of rotations must be >= 0, got {n}")
    gen_device = generator.device if generator is not None else device
    q = torch.randn(n, 4, generator=generator, dtype=dtype, device=gen_device)
    return quaternion_to_matrix(q).to(device if device is not None else q.device)


def healpix_step_deg(order: int) -> float:
    """Angular step (degrees) of the grid of a given HEALPix order: 60 / 2**order (RELION)."""
    _check_order(order)
    return 60.0 / 2**order


def healpix_order_for_step(step_deg: float) -> int:
    """Smallest HEALPix order whose angular step 60 / 2**order is at most `step_deg` degrees."""
    if not math.isfinite(step_deg) or step_deg <= 0:
        raise InvalidValueError(f"angular step must be a positive number of degrees, got {step_deg}")
    return max(0, math.ceil(math.log2(60.0 / step_deg) - 1e-9))


def _check_order(order: int) -> None:
    if not isinstance(order, int) or order < 0 or order > 10:
        raise InvalidValueError(f"HEALPix order must be an integer in [0, 10], got {order}")


def healpix_pixel_centres(
    nside: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres of the 12 * nside**2 HEALPix pixels (Górski et al. 2005), RING order.

    Returns colatitude theta in [0, pi] and longitude phi in [0, 2 pi), radians, each [12 * nside**2].
    Polar-cap ring i (1 <= i < nside): z = 1 - i**2 / (3 nside**2), phi = pi (j - 1/2) / (2 i), j = 1..4i.
    Equatorial ring i (nside <= i <= 3 nside): z = 4/3 - 2 i / (3 nside),
    phi = pi (j - 1 + s/2) / (2 nside), s = (i - nside + 1) mod 2, j = 1..4 nside. South cap mirrors north.
    Same points and order as healpy's `pix2ang(nside, ipix)` (RELION uses NEST order: same set, other order).
    """
    if nside < 1:
        raise InvalidValueError(f"HEALPix nside must be >= 1, got {nside}")
    zs, phis = [], []
    for i in range(1, nside):  # north polar cap
        j = torch.arange(1, 4 * i + 1, dtype=dtype, device=device)
        zs.append(torch.full_like(j, 1 - i * i / (3 * nside * nside)))
        phis.append(math.pi * (j - 0.5) / (2 * i))
    for i in range(nside, 3 * nside + 1):  # equatorial belt
        s = (i - nside + 1) % 2
        j = torch.arange(1, 4 * nside + 1, dtype=dtype, device=device)
        zs.append(torch.full_like(j, 4 / 3 - 2 * i / (3 * nside)))
        phis.append(math.pi * (j - 1 + s / 2) / (2 * nside))
    north_z, north_phi = zs[: nside - 1], phis[: nside - 1]
    zs += [-z for z in reversed(north_z)]
    phis += list(reversed(north_phi))
    z = torch.cat(zs)
    return torch.arccos(z.clamp(-1, 1)), torch.cat(phis)


def healpix_directions(order: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """Unit vectors (x, y, z) [12 * 4**order, 3] at the HEALPix pixel centres of Nside = 2**order."""
    _check_order(order)
    theta, phi = healpix_pixel_centres(2**order, dtype, device)
    return torch.stack([torch.sin(theta) * torch.cos(phi), torch.sin(theta) * torch.sin(phi), torch.cos(theta)], -1)


def healpix_euler_grid(order: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """RELION's orientation grid as Euler angles (rot, tilt, psi) in degrees, [72 * 8**order, 3].

    (rot, tilt) = (phi, theta) of the HEALPix pixel centres (RELION's pix2ang), psi = k * 360 / (6 * 2**order).
    Rows run over directions (outer) and psi (inner).
    """
    _check_order(order)
    theta, phi = healpix_pixel_centres(2**order, dtype, device)
    n_psi = 6 * 2**order
    psi = torch.arange(n_psi, dtype=dtype, device=device) * (360.0 / n_psi)
    rot = torch.rad2deg(phi)[:, None].expand(-1, n_psi)
    tilt = torch.rad2deg(theta)[:, None].expand(-1, n_psi)
    return torch.stack([rot, tilt, psi[None, :].expand(rot.shape[0], -1)], -1).reshape(-1, 3)


def healpix_grid(order: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """RELION's orientation grid of a HEALPix order as matrices [72 * 8**order, 3, 3] (step 60 / 2**order degrees)."""
    return euler_to_matrix(healpix_euler_grid(order, dtype, device))


def hopf_grid(order: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """Hopf-fibration grid of SO(3) (Yershova et al., IJRR 2010), [72 * 8**order, 3, 3].

    HEALPix base points (theta, phi) of Nside = 2**order times 6 * 2**order circle points
    psi_k = (k + 1/2) 2 pi / (6 * 2**order); quaternion
    q = (cos(theta/2) cos(psi/2), cos(theta/2) sin(psi/2), sin(theta/2) cos(phi + psi/2), sin(theta/2) sin(phi + psi/2)).
    Same size and step as `healpix_grid`; the fibres are sampled in Hopf rather than Euler coordinates.
    """
    _check_order(order)
    theta, phi = healpix_pixel_centres(2**order, dtype, device)
    n_psi = 6 * 2**order
    psi = (torch.arange(n_psi, dtype=dtype, device=device) + 0.5) * (2 * math.pi / n_psi)
    t, p, s = theta[:, None] / 2, phi[:, None], psi[None, :] / 2
    q = torch.stack(
        torch.broadcast_tensors(torch.cos(t) * torch.cos(s), torch.cos(t) * torch.sin(s), torch.sin(t) * torch.cos(p + s), torch.sin(t) * torch.sin(p + s)),
        -1,
    )
    return quaternion_to_matrix(q.reshape(-1, 4))


def nearest_grid_rotation(R: torch.Tensor, grid: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For rotations R [n, 3, 3], the nearest element of `grid` [G, 3, 3]: (angle in degrees [n], index [n]).

    Nearest = largest trace(R^T g); the angle is then computed accurately from R^T g.
    """
    g_flat = grid.reshape(-1, 9).to(R.dtype)
    idx = torch.cat([(r.reshape(-1, 9) @ g_flat.T).argmax(-1) for r in R.split(chunk)]) if R.shape[0] else torch.zeros(0, dtype=torch.long, device=R.device)
    return geodesic_distance(R, grid.index_select(0, idx).to(R.dtype)), idx


def covering_radius_deg(grid: torch.Tensor, n_samples: int = 4000, generator: torch.Generator | None = None) -> float:
    """Estimated covering radius of a grid (degrees): the largest distance from uniform random rotations to the grid.

    A lower bound on the true covering radius that tightens as `n_samples` grows.
    """
    R = random_rotations(n_samples, generator=generator, dtype=grid.dtype).to(grid.device)
    return float(nearest_grid_rotation(R, grid)[0].max())


def local_offsets(max_angle_deg: float, step_deg: float, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """Axis-angle offsets [K, 3] (radians) on a cubic lattice of spacing `step_deg` inside the ball of radius `max_angle_deg`.

    Includes the zero offset. Near the identity the geodesic distance of exp(v) is |v|, so the lattice
    is a near-uniform local grid; K is about (4/3) pi (max_angle / step)**3.
    """
    if not (step_deg > 0 and max_angle_deg >= 0 and max_angle_deg < 180):
        raise InvalidValueError(f"local grid needs step > 0 and 0 <= range < 180 degrees, got step {step_deg}, range {max_angle_deg}")
    m = int(math.floor(max_angle_deg / step_deg + 1e-9))
    ax = torch.arange(-m, m + 1, dtype=dtype, device=device) * math.radians(step_deg)
    v = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    return v[v.norm(dim=-1) <= math.radians(max_angle_deg) * (1 + 1e-9)]


def local_grid(centres: torch.Tensor, max_angle_deg: float, step_deg: float) -> torch.Tensor:
    """Local search grid around each pose: centres [..., 3, 3] -> [..., K, 3, 3] with elements centre @ exp(v).

    v runs over `local_offsets(max_angle_deg, step_deg)`; every element lies within `max_angle_deg` of its centre
    (the geodesic distance is bi-invariant, so the right-side composition R exp(v) covers the same ball as exp(v) R).
    """
    D = axis_angle_to_matrix(local_offsets(max_angle_deg, step_deg, centres.dtype, centres.device))
    return centres[..., None, :, :] @ D


def grid_within(grid: torch.Tensor, centres: torch.Tensor, max_angle_deg: float) -> torch.Tensor:
    """Mask [M, G]: which of the grid rotations [G, 3, 3] lie within `max_angle_deg` of each centre [M, 3, 3]."""
    tr = centres.reshape(-1, 9) @ grid.reshape(-1, 9).to(centres.dtype).T
    cos_max = math.cos(math.radians(max_angle_deg))
    return (tr - 1) / 2 >= cos_max - 1e-12
