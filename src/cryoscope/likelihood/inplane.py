"""Scoring of in-plane rotations (psi) by polar resampling and FFT along the angle.

A global grid factorises as base rotations A0_d = Ry(tilt) Rz(rot) (psi = 0) times in-plane angles
psi_j = 360 j / n_psi degrees, A_dj = Rz(psi_j) A0_d (RELION's Euler convention). With k = r (cos phi,
sin phi) in cycles per box, the slice of A_dj is the slice of A0_d turned in plane:

    S_A(r, phi) = F_V(A0^T Rz(psi)^T k) = S_0(r, phi + psi)        (Rz(psi)^T turns (x, y) by +psi).

So the two pose-dependent terms of the log-likelihood of `likelihood.scoring` (same normalisation),

    cross(psi) = sum_k Re(conj(T_{+t} Y) C S_A) / sigma2,    quad(psi) = sum_k C^2 |S_A|^2 / (2 sigma2),

are circular correlations over phi of image-frame polar arrays (Y T_t C / sigma2 and C^2 / (2 sigma2);
the CTF is not rotation invariant and stays on the image side) with reference polar arrays (S_0 and
|S_0|^2). Both sides are Fourier transformed along phi (n_angles samples per ring); for each angular
frequency q the rings are contracted (one batched matmul over q), and the psi scores are the inverse DFT
over q evaluated at psi_j (frequencies folded modulo n_psi, then an n_psi-point FFT), exact for any
n_psi. Hermitian symmetry (real images and map) leaves the frequencies 0 <= q <= n_angles / 2.

Polar points: one ring per noise shell s = round(|k|) inside the cutoff, at the mean radius of the shell's
full-grid pixels, weighted by their count / n_angles, so polar sums approximate the Cartesian sums of
`score_poses` (constant-per-shell terms exactly). Image transforms are evaluated at the polar points
exactly (the DTFT of the real-space image, i.e. the continuous transform behind the phase ramps); the
reference is sampled from the `fourier_volume` by the same trilinear interpolation as
`physics.projection.slice_fourier_volume`; a CTF given as a grid is interpolated bilinearly, one given as
`CTFParams` is evaluated exactly. The pose-free term -sum |Y|^2 / (2 sigma2) is the Cartesian sum, as in
`score_poses`. Scores differ from brute force only by the polar quadrature / interpolation error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.rotations import euler_to_matrix
from cryoscope.geometry.sampling import healpix_pixel_centres
from cryoscope.likelihood.noise import cutoff_mask, n_shells, pixel_sigma2, shell_map
from cryoscope.physics.ctf import CTFParams, ctf_at
from cryoscope.physics.fourier import centered_coords, ifft2c
from cryoscope.physics.projection import sample_fourier_volume

# Upper bound on complex values held per chunk (angular spectra of one chunk of base rotations, DTFT partials).
_CHUNK_VALUES = 1 << 24


@dataclass(frozen=True)
class PolarGrid:
    """Polar sampling of the Fourier plane inside a cutoff.

    radius [S] ring radii (cycles per box); weight [S] area weight of each sample of the ring (full-grid
    pixel count of its shell / n_angles); shell [S] noise shell of each ring; points [S, n_angles, 2]
    (kx, ky) in cycles per box at angles phi_m = 360 m / n_angles degrees from +x towards +y.
    """

    box: int
    n_angles: int
    radius: torch.Tensor
    weight: torch.Tensor
    shell: torch.Tensor
    points: torch.Tensor


def polar_grid(box: int, cutoff: float | None = None, n_angles: int | None = None, dtype=torch.float32, device=None) -> PolarGrid:
    """`PolarGrid` of an N x N image with rings of the shells |k| / N <= cutoff (cycles/pixel; None: Nyquist).

    n_angles defaults to the smallest multiple of 4 with a sample spacing <= 1 pixel on the outer ring.
    """
    if cutoff is None:
        cutoff = 0.5
    if not 0 < cutoff <= 0.5:
        raise InvalidValueError(f"polar grid cutoff must be in (0, 0.5] cycles/pixel, got {cutoff}")
    k = centered_coords(box, device, torch.float64)
    radius_px = (k[:, None] ** 2 + k[None, :] ** 2).sqrt().reshape(-1)
    inside = cutoff_mask(box, cutoff, device).reshape(-1)
    shell = shell_map(box, device).reshape(-1)[inside]
    count = torch.bincount(shell, minlength=n_shells(box)).to(torch.float64)
    mean_r = torch.zeros_like(count).index_add_(0, shell, radius_px[inside]) / count.clamp_min(1)
    rings = (count > 0).nonzero().squeeze(1)
    radius = mean_r[rings]
    if n_angles is None:
        n_angles = 4 * math.ceil(2 * math.pi * float(radius.max()) / 4)
    if not isinstance(n_angles, int) or n_angles < 4 or n_angles % 2:
        raise InvalidValueError(f"polar grid needs an even number of angles >= 4, got {n_angles}")
    phi = torch.arange(n_angles, dtype=torch.float64, device=device) * (2 * math.pi / n_angles)
    points = radius[:, None, None] * torch.stack([phi.cos(), phi.sin()], -1)
    return PolarGrid(box, n_angles, radius.to(dtype), (count[rings] / n_angles).to(dtype), rings, points.to(dtype))


def psi_rotations(n_psi: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """RELION in-plane rotations Rz(psi_j) [n_psi, 3, 3], psi_j = 360 j / n_psi degrees."""
    psi = torch.arange(n_psi, dtype=torch.float64, device=device) * (360.0 / n_psi)
    euler = torch.stack([torch.zeros_like(psi), torch.zeros_like(psi), psi], -1)
    return euler_to_matrix(euler).to(dtype)


def inplane_rotations(base_rotations: torch.Tensor, n_psi: int) -> torch.Tensor:
    """Rotations [D * n_psi, 3, 3] matching `score_poses_inplane(...).reshape(n, D * n_psi, T)`.

    Row d * n_psi + j is Rz(psi_j) A0_d (base rotation outer, psi inner: the order of `healpix_grid`).
    """
    R = psi_rotations(n_psi, base_rotations.dtype, base_rotations.device)
    return (R[None] @ base_rotations[:, None]).reshape(-1, 3, 3)


def healpix_base_rotations(order: int, dtype=torch.float32, device=None) -> tuple[torch.Tensor, int]:
    """(base rotations [12 * 4**order, 3, 3] at psi = 0, n_psi = 6 * 2**order) of RELION's HEALPix grid.

    `inplane_rotations(*healpix_base_rotations(order))` equals `geometry.sampling.healpix_grid(order)`.
    """
    theta, phi = healpix_pixel_centres(2**order, torch.float64, device)
    euler = torch.stack([torch.rad2deg(phi), torch.rad2deg(theta), torch.zeros_like(phi)], -1)
    return euler_to_matrix(euler).to(dtype), 6 * 2**order


def _polar_sections(fvol: torch.Tensor, rotations: torch.Tensor, points: torch.Tensor, box: int) -> torch.Tensor:
    """Central sections F_V(A^T (kx, ky, 0)) of a `fourier_volume` at 2-D points [..., 2] -> [d, ...] complex."""
    freqs = torch.nn.functional.pad(points.reshape(-1, 2).to(rotations.dtype), (0, 1))
    return sample_fourier_volume(fvol, rotations, freqs, box).reshape(rotations.shape[0], *points.shape[:-1])


def _polar_image_samples(images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Exact transforms (DTFT of the real-space images) of centred transforms [n, N, N] at points [S, M, 2] -> [n, S, M]."""
    n, box = images.shape[0], images.shape[-1]
    y = ifft2c(images)  # [n, N(y), N(x)]
    x = centered_coords(box, images.device, points.dtype)
    pts = points.reshape(-1, 2)
    out = []
    step = max(1, _CHUNK_VALUES // (n * box))
    for p in pts.split(step, 0):
        ex = torch.polar(torch.ones_like(p[:, 0])[None], (-2 * math.pi / box) * x[:, None] * p[None, :, 0])  # [N(x), p]
        ey = torch.polar(torch.ones_like(p[:, 1])[None], (-2 * math.pi / box) * x[:, None] * p[None, :, 1])  # [N(y), p]
        partial = (y.reshape(n * box, box) @ ex.to(y.dtype)).reshape(n, box, -1)  # sum over x
        out.append((partial * ey.to(y.dtype)).sum(1))
    return torch.cat(out, 1).reshape(n, *points.shape[:-1])


def _polar_ctf(ctf: torch.Tensor | CTFParams | None, points: torch.Tensor, box: int, pixel_size: float | None) -> torch.Tensor | None:
    """CTF [n, S, M] at the polar points: exact from `CTFParams`, bilinear from a centred grid [n, N, N]."""
    if ctf is None:
        return None
    if isinstance(ctf, CTFParams):
        if pixel_size is None or pixel_size <= 0:
            raise InvalidValueError(f"a CTF given as parameters needs a positive pixel size in Å, got {pixel_size}")
        k = points.to(ctf.defocus_u.dtype) / (box * pixel_size)
        return ctf_at(ctf, k[..., 0], k[..., 1]).to(points.dtype)
    c = points + box // 2  # fractional (x, y) indices
    c0 = c.floor().clamp(0, box - 2)
    t = (c - c0).clamp(0, 1).to(ctf.dtype)
    i0 = c0.long()
    flat = ctf.reshape(ctf.shape[0], -1)

    def at(dx: int, dy: int) -> torch.Tensor:
        return flat[:, (i0[..., 1] + dy) * box + i0[..., 0] + dx]

    top = torch.lerp(at(0, 0), at(1, 0), t[..., 0])
    bottom = torch.lerp(at(0, 1), at(1, 1), t[..., 0])
    return torch.lerp(top, bottom, t[..., 1])


def _half_spectrum(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Angular spectra [..., S, Q] of polar arrays [..., S, M] for 0 <= q <= M / 2, scaled for the synthesis.

    The scale is weight_s (ring area) x c_q (2 for q paired with -q, else 1); the correlation over phi at
    angle psi is then Re sum_q conj(a_q) b_q exp(i q psi) / M (see `_synthesis`).
    """
    m = x.shape[-1]
    spec = torch.fft.fft(x, dim=-1)[..., : m // 2 + 1]
    c = torch.full((m // 2 + 1,), 2.0, dtype=weight.dtype, device=weight.device)
    c[0] = 1
    c[-1] = 1
    return spec * (weight[:, None] * c / m).to(spec.dtype)


def _image_operand(spec: torch.Tensor) -> torch.Tensor:
    """Conjugated image spectra [m, S, Q] -> real [Q, 2S, m] (real parts of the rings, then imaginary parts)."""
    a = spec.conj().permute(2, 1, 0)
    return torch.cat([a.real, a.imag], 1).contiguous()


def _reference_operand(spec: torch.Tensor) -> torch.Tensor:
    """Reference spectra [d, S, Q] -> real [Q, 2d, 2S] such that operand @ `_image_operand` = [Re; Im] of the
    complex ring contraction h[q, d, m] = sum_s a[q, s, m] b[d, s, q] (rows: real parts for all d, then imaginary)."""
    b = spec.permute(2, 0, 1)  # [Q, d, S]
    return torch.cat([torch.cat([b.real, -b.imag], 2), torch.cat([b.imag, b.real], 2)], 1).contiguous()


def _synthesis(n_angles: int, n_psi: int, dtype, device) -> torch.Tensor:
    """[n_psi, 2Q]: row j maps (Re h_0, Im h_0, Re h_1, ...) to Re sum_q h_q exp(i q psi_j), psi_j = 2 pi j / n_psi."""
    q = torch.arange(n_angles // 2 + 1, dtype=torch.float64, device=device)
    phase = torch.outer(torch.arange(n_psi, dtype=torch.float64, device=device) * (2 * math.pi / n_psi), q)
    return torch.stack([phase.cos(), -phase.sin()], -1).reshape(n_psi, -1).to(dtype)


def score_poses_inplane(
    fvol: torch.Tensor,
    images: torch.Tensor,
    ctf: torch.Tensor | CTFParams | None,
    base_rotations: torch.Tensor,
    n_psi: int,
    shifts: torch.Tensor,
    sigma2: torch.Tensor,
    cutoff: float | None = None,
    n_angles: int | None = None,
    pixel_size: float | None = None,
) -> torch.Tensor:
    """Log-likelihoods [n, D, n_psi, T] of image transforms [n, N, N] (centred) at rotations Rz(psi_j) A0_d.

    Equal, up to polar quadrature error, to `score_poses(fvol, images, ctf, inplane_rotations(base_rotations,
    n_psi), shifts, sigma2, cutoff).reshape(n, D, n_psi, T)`; `.reshape(n, D * n_psi, T)` is scored against
    `inplane_rotations(base_rotations, n_psi)` by `pose_posterior`, `best_poses`, `significant_poses`.
    fvol: `fourier_volume` of the map; ctf: [n, N, N] grid (interpolated), `CTFParams` (exact; needs
    `pixel_size` in Å) or None; base_rotations [D, 3, 3] (psi = 0); psi_j = 360 j / n_psi degrees; shifts
    [T, 2] or [n, T, 2] origins (x, y) in pixels; sigma2 [N // 2 + 1] or [n, N // 2 + 1]; cutoff in
    cycles/pixel (None: Nyquist; corners beyond it are not scored); n_angles: polar samples per ring
    (default `polar_grid`'s). Computed in the real dtype of `fvol`, in chunks of base rotations; the image-side
    polar arrays [n, T, rings, n_angles] are held whole (chunk images in the caller for large batches).
    """
    n, box = images.shape[0], images.shape[-1]
    real = fvol.real.dtype
    dev = fvol.device
    _check_inputs(images, ctf, base_rotations, n_psi, shifts, sigma2, n, box)
    sigma2, shifts, base_rotations = sigma2.to(dev, real), shifts.to(dev), base_rotations.to(dev)
    images, ctf = images.to(dev), None if ctf is None else ctf.to(dev)  # a grid or `CTFParams`
    grid = polar_grid(box, cutoff, n_angles, real, dev)
    pts = grid.points
    Q = grid.n_angles // 2 + 1
    s2 = sigma2[..., grid.shell][..., None]  # [(n,) S, 1]
    C = _polar_ctf(ctf, pts, box, pixel_size)
    # image side: Y T_t C / sigma2 and C^2 / (2 sigma2), angular spectra conjugated
    Y = _polar_image_samples(images.to(fvol.dtype), pts)  # [n, S, M]
    G = Y / s2 if C is None else Y * (C / s2)
    k = pts.reshape(-1, 2) * (-2 * math.pi / box)
    ramps = torch.polar(torch.ones((), dtype=real, device=dev), shifts.to(real) @ k.T).reshape(*shifts.shape[:-1], *pts.shape[:-1])
    G = G[:, None] * ramps  # [n, T, S, M]
    T = G.shape[1]
    G = _image_operand(_half_spectrum(G, grid.weight).reshape(n * T, -1, Q))  # [Q, 2S, nT]
    B = (torch.ones_like(grid.radius)[None, :, None] if C is None else C * C) / (2 * s2)
    B = _image_operand(_half_spectrum(B.expand(n, *pts.shape[:-1]), grid.weight))  # [Q, 2S, n]
    W = _synthesis(grid.n_angles, n_psi, real, dev)  # [n_psi, 2Q]
    # pose-free term over the Cartesian pixels, as in score_poses
    mask = cutoff_mask(box, 0.5 if cutoff is None else cutoff, dev)
    const = -((images.abs() ** 2).to(real) / (2 * pixel_sigma2(sigma2, box)) * mask).flatten(-2).sum(-1)
    out = torch.empty(n, base_rotations.shape[0], n_psi, T, dtype=real, device=dev)
    step = max(1, _CHUNK_VALUES // (Q * max(n * T, grid.radius.numel() * grid.n_angles)))
    for lo in range(0, base_rotations.shape[0], step):
        rot = base_rotations[lo : lo + step].to(real)
        S = _polar_sections(fvol, rot, pts, box)  # [d, S, M]
        d = rot.shape[0]
        S_hat = _reference_operand(torch.fft.fft(S, dim=-1)[..., :Q])  # [Q, 2d, 2S]
        P_hat = _reference_operand(torch.fft.fft(S.abs() ** 2, dim=-1)[..., :Q])
        cross = W @ torch.bmm(S_hat, G).view(2 * Q, d * n * T)  # rows (q, Re / Im) -> [n_psi, d n T]
        quad = W @ torch.bmm(P_hat, B).view(2 * Q, d * n)  # [n_psi, d n]
        out[:, lo : lo + d] = (cross.view(n_psi, d, n, T) - quad.view(n_psi, d, n, 1)).permute(2, 1, 0, 3)
    return out.add_(const[:, None, None, None])


def _check_inputs(images, ctf, base_rotations, n_psi, shifts, sigma2, n: int, box: int) -> None:
    if images.dim() != 3 or images.shape[-2] != box:
        raise InvalidValueError(f"images must be [n, N, N] transforms, got {tuple(images.shape)}")
    if torch.is_tensor(ctf) and ctf.shape != images.shape:
        raise InvalidValueError(f"CTF must be {tuple(images.shape)}, got {tuple(ctf.shape)}")
    if isinstance(ctf, CTFParams) and len(ctf) != n:
        raise InvalidValueError(f"CTF parameters must be given for {n} images, got {len(ctf)}")
    if base_rotations.dim() != 3 or base_rotations.shape[-2:] != (3, 3):
        raise InvalidValueError(f"base rotations must be [D, 3, 3], got {tuple(base_rotations.shape)}")
    if not (isinstance(n_psi, int) and n_psi >= 1):
        raise InvalidValueError(f"number of in-plane angles must be a positive integer, got {n_psi}")
    if not (shifts.shape[-1] == 2 and (shifts.dim() == 2 or (shifts.dim() == 3 and shifts.shape[0] == n))):
        raise InvalidValueError(f"shifts must be [T, 2] or [{n}, T, 2] pixels, got {tuple(shifts.shape)}")
    if sigma2.shape[-1] != n_shells(box) or sigma2.dim() > 2 or not bool((sigma2 > 0).all()):
        raise InvalidValueError(f"noise spectrum must be positive with {n_shells(box)} shells, got shape {tuple(sigma2.shape)}")


__all__ = [
    "PolarGrid",
    "healpix_base_rotations",
    "inplane_rotations",
    "polar_grid",
    "psi_rotations",
    "score_poses_inplane",
]
