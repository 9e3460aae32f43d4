"""Batched pose scoring: log-likelihoods of images over rotations x in-plane shifts, posteriors, pruning.

For image Y_i (centred transform), CTF C_i, rotation r (slice S_r = F_V(A_r^T k)) and origin t (pixels,
RELION convention: model image T_{-t} C S_r), the Gaussian log-likelihood of `likelihood.noise` is

    ll[i, r, t] = -sum_k |T_{+t} Y_i - C_i S_r|^2 / (2 sigma2)
                = -sum |Y_i|^2 / (2 sigma2) + sum Re(conj(T_{+t} Y_i) C_i S_r) / sigma2 - sum C_i^2 |S_r|^2 / (2 sigma2)

(|T_{+t} Y| = |Y|). Shifts are phase ramps on the images ([n, T] ramps, not [R, T] shifted
projections); the cross term is one real matmul [n T, 2P] x [2P, R] over the P Fourier pixels inside the
resolution cutoff (frequency marching: only |k| / N <= cutoff is projected and scored). Only the
Hermitian half of the grid is used, each pixel weighted by how many full-grid pixels it stands for,
so sums equal full-grid sums exactly. Rotations are scored in chunks to bound memory.

In-plane rotations are scored by brute force: every (direction, psi) of a HEALPix grid is its own
slice. Factorising the grid as directions x psi and scoring psi by polar resampling / FFT along the
angle is `likelihood.inplane`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.likelihood.noise import n_shells, shell_map
from cryoscope.physics.projection import SliceLayout, half_slices, slice_layout
from cryoscope.physics.shift import phase_ramp

# Upper bound on slice values held per rotation chunk (rotations x 2P reals).
_CHUNK_VALUES = 1 << 22


def half_multiplicity(layout: SliceLayout) -> torch.Tensor:
    """[P] number of full-grid pixels each computed (Hermitian-half) pixel stands for: 1 or 2."""
    p = layout.computed.numel()
    return 1 + torch.bincount(layout.source, minlength=p)


def shift_grid(max_shift: float, step: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """Square grid of in-plane origins [T, 2] (x, y) in pixels: multiples of `step` with |x|, |y| <= max_shift."""
    if not (step > 0 and max_shift >= 0):
        raise InvalidValueError(f"shift grid needs step > 0 and range >= 0 pixels, got step {step}, range {max_shift}")
    m = int(math.floor(max_shift / step + 1e-9))
    ax = torch.arange(-m, m + 1, dtype=dtype, device=device) * step
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], -1)


def score_poses(
    fvol: torch.Tensor,
    images: torch.Tensor,
    ctf: torch.Tensor | None,
    rotations: torch.Tensor,
    shifts: torch.Tensor,
    sigma2: torch.Tensor,
    cutoff: float | None = None,
) -> torch.Tensor:
    """Log-likelihoods [n, R, T] (module docstring) of image transforms [n, N, N] (centred, `fft2c`).

    fvol: `physics.projection.fourier_volume` of the reference; ctf [n, N, N] real or None;
    rotations [R, 3, 3] shared by all images or [n, R, 3, 3] per image (local grids); shifts [T, 2]
    or [n, T, 2] origins (x, y) in pixels; sigma2 [N // 2 + 1] or [n, N // 2 + 1]; cutoff in cycles/pixel.
    Computed in the real dtype of `fvol`.
    """
    n, box = images.shape[0], images.shape[-1]
    real = fvol.real.dtype
    _check_inputs(images, ctf, rotations, shifts, sigma2, n, box)
    sigma2, shifts, rotations = sigma2.to(fvol.device, real), shifts.to(fvol.device), rotations.to(fvol.device)
    images, ctf = images.to(fvol.device), None if ctf is None else ctf.to(fvol.device)
    layout = slice_layout(box, cutoff, fvol.device)
    idx = layout.computed
    Y = images.reshape(n, -1)[:, idx].to(fvol.dtype)  # [n, P]
    C = torch.ones(1, idx.numel(), dtype=real, device=fvol.device) if ctf is None else ctf.reshape(n, -1)[:, idx].to(real)
    s2 = sigma2[..., shell_map(box, fvol.device).reshape(-1)[idx]]  # [P] or [n, P]
    inv = half_multiplicity(layout).to(real) / (2 * s2)  # 1 / (2 sigma2) x multiplicity
    inv = inv.expand(n, -1)
    ramps = phase_ramp(shifts.to(real), box).reshape(*shifts.shape[:-1], -1)[..., idx]  # [(n,) T, P]
    Yt = Y[:, None, :] * ramps  # [n, T, P]
    const = -(Y.abs() ** 2 * inv).sum(-1)  # [n]
    A = Yt.conj() * (2 * inv * C)[:, None, :]
    A = torch.cat([A.real, -A.imag], -1)  # [n, T, 2P]: Re(conj(Yt) C S / sigma2) = A . [S.re, S.im]
    B = C * C * inv  # [n, P]
    T = Yt.shape[1]
    if rotations.dim() == 3:
        out = []
        flatA = A.reshape(n * T, -1)
        for rot in rotations.split(max(1, _CHUNK_VALUES // (2 * idx.numel())), 0):
            S = half_slices(fvol, rot.to(real), layout)
            cross = (flatA @ torch.cat([S.real, S.imag], -1).T).reshape(n, T, -1).transpose(1, 2)
            quad = B @ (S.abs() ** 2).T  # [n, r]
            out.append(cross - quad[..., None])
        return torch.cat(out, 1) + const[:, None, None]
    K = rotations.shape[1]
    out = []
    step = max(1, _CHUNK_VALUES // (2 * idx.numel() * K))
    for lo in range(0, n, step):
        sl = slice(lo, min(n, lo + step))
        rot = rotations[sl].reshape(-1, 3, 3).to(real)
        S = half_slices(fvol, rot, layout).reshape(-1, K, idx.numel())  # [m, K, P]
        cross = torch.bmm(A[sl], torch.cat([S.real, S.imag], -1).transpose(1, 2)).transpose(1, 2)  # [m, K, T]
        quad = torch.einsum("np,nkp->nk", B[sl], S.abs() ** 2)
        out.append(cross - quad[..., None])
    return torch.cat(out, 0) + const[:, None, None]


def _check_inputs(images, ctf, rotations, shifts, sigma2, n: int, box: int) -> None:
    if images.dim() != 3 or images.shape[-2] != box:
        raise InvalidValueError(f"images must be [n, N, N] transforms, got {tuple(images.shape)}")
    if ctf is not None and ctf.shape != images.shape:
        raise InvalidValueError(f"CTF must be {tuple(images.shape)}, got {tuple(ctf.shape)}")
    if not (rotations.shape[-2:] == (3, 3) and (rotations.dim() == 3 or (rotations.dim() == 4 and rotations.shape[0] == n))):
        raise InvalidValueError(f"rotations must be [R, 3, 3] or [{n}, K, 3, 3], got {tuple(rotations.shape)}")
    if not (shifts.shape[-1] == 2 and (shifts.dim() == 2 or (shifts.dim() == 3 and shifts.shape[0] == n))):
        raise InvalidValueError(f"shifts must be [T, 2] or [{n}, T, 2] pixels, got {tuple(shifts.shape)}")
    if sigma2.shape[-1] != n_shells(box) or not bool((sigma2 > 0).all()):
        raise InvalidValueError(f"noise spectrum must be positive with {n_shells(box)} shells, got shape {tuple(sigma2.shape)}")


def pose_posterior(log_likelihood: torch.Tensor) -> torch.Tensor:
    """Posterior [n, R, T] under a uniform prior: softmax of the log-likelihoods over R x T per image."""
    n = log_likelihood.shape[0]
    return torch.softmax(log_likelihood.reshape(n, -1), -1).reshape(log_likelihood.shape)


def _select(table: torch.Tensor, index: torch.Tensor, per_image_dims: int) -> torch.Tensor:
    """table[index] for a shared table [R, ...] or table[i, index_i] for a per-image table [n, R, ...]."""
    if table.dim() == per_image_dims:
        return table[torch.arange(index.shape[0], device=index.device), index]
    return table[index]


@dataclass
class PoseEstimate:
    """Best pose per image and the spread of its posterior.

    rotations [n, 3, 3]; shifts [n, 2] origins (x, y) in pixels; rotation_index, shift_index [n] into the
    scored grids; angular_spread_deg [n]: sqrt(E_post angle(R, R_best)^2) in degrees; shift_spread_px [n]:
    sqrt(E_post |t - t_best|^2) in pixels; max_log_likelihood [n].
    """

    rotations: torch.Tensor
    shifts: torch.Tensor
    rotation_index: torch.Tensor
    shift_index: torch.Tensor
    angular_spread_deg: torch.Tensor
    shift_spread_px: torch.Tensor
    max_log_likelihood: torch.Tensor


def best_poses(log_likelihood: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor, posterior: torch.Tensor | None = None) -> PoseEstimate:
    """Maximum-likelihood pose and posterior spread from scores [n, R, T] over `rotations` and `shifts` (as in `score_poses`)."""
    n, R, T = log_likelihood.shape
    post = pose_posterior(log_likelihood) if posterior is None else posterior
    best, flat = log_likelihood.reshape(n, -1).max(-1)
    r_idx, t_idx = flat // T, flat % T
    R_best = _select(rotations, r_idx, 4)
    t_best = _select(shifts, t_idx, 3)
    rot_flat = rotations.reshape(*rotations.shape[:-2], 9).to(R_best.dtype)
    if rotations.dim() == 3:
        trace = R_best.reshape(n, 9) @ rot_flat.T  # tr(R_best^T R_r) [n, R]
    else:
        trace = torch.einsum("nj,nrj->nr", R_best.reshape(n, 9), rot_flat)
    angle = torch.arccos(((trace - 1) / 2).clamp(-1, 1))
    p_rot = post.sum(2).to(angle.dtype)
    d2 = ((shifts.to(t_best.dtype) - (t_best[:, None] if shifts.dim() == 3 else t_best[:, None, :])) ** 2).sum(-1)  # [n, T]
    p_shift = post.sum(1).to(d2.dtype)
    return PoseEstimate(
        rotations=R_best,
        shifts=t_best,
        rotation_index=r_idx,
        shift_index=t_idx,
        angular_spread_deg=torch.rad2deg((p_rot * angle**2).sum(-1).sqrt()),
        shift_spread_px=(p_shift * d2).sum(-1).sqrt(),
        max_log_likelihood=best,
    )


@dataclass
class SignificantPoses:
    """Poses kept for the M-step: image, rotation and shift indices [m] and weights [m] summing to 1 per image."""

    image: torch.Tensor
    rotation_index: torch.Tensor
    shift_index: torch.Tensor
    weight: torch.Tensor


def significant_poses(
    posterior: torch.Tensor, rel_threshold: float = 1e-4, mass: float = 0.999, max_poses: int | None = None
) -> SignificantPoses:
    """Prune negligible poses of posteriors [n, R, T].

    Per image, poses are taken in decreasing posterior order until the kept mass reaches `mass`, skipping
    poses below `rel_threshold` x the image's maximum, at most `max_poses`; the best pose is always kept.
    Kept weights are renormalised to sum to 1. With `max_poses` only the largest are found (top-k, not a full sort).
    """
    if not (0 < mass <= 1 and rel_threshold >= 0):
        raise InvalidValueError(f"pruning needs 0 < mass <= 1 and rel_threshold >= 0, got {mass}, {rel_threshold}")
    n, R, T = posterior.shape
    flat_post = posterior.reshape(n, -1)
    if max_poses is None:
        vals, order = flat_post.sort(-1, descending=True)
    else:
        vals, order = flat_post.topk(min(max_poses, R * T), -1)
    before = vals.cumsum(-1) - vals  # mass of the better poses
    keep = (before < mass) & (vals >= rel_threshold * vals[:, :1])
    keep[:, 0] = True
    img, pos = keep.nonzero(as_tuple=True)
    flat = order[img, pos]
    w = vals[img, pos]
    total = torch.zeros(n, dtype=w.dtype, device=w.device).index_add_(0, img, w)
    return SignificantPoses(img, flat // T, flat % T, w / total[img])


__all__ = [
    "PoseEstimate",
    "SignificantPoses",
    "best_poses",
    "half_multiplicity",
    "pose_posterior",
    "score_poses",
    "shift_grid",
    "significant_poses",
]
