"""Class averages for the Poisson engine: non-negative, centred, CTF-free images (thesis §4.1).

Image formation (eq. 4.2): frame z_f = f_f * y + ε_f, the projection y convolved with the PSF f_f (whose
transform is the CTF C_f on the centred grid of `physics.fourier`) plus i.i.d. Gaussian noise. The MAP estimate
of y from F frames minimises the convex loss (eq. 4.3, weighted as the thesis' defocus averages)

    L(y) = 1/2 Σ_f w_f ||z_f - H_f y||² + α/2 ||∇y||²,   H_f y = Re IFFT(C_f · FFT(y)),   subject to y >= 0,

with ∇ periodic forward differences along x and y (px⁻¹; periodic like the circular convolution) and weights
w_f the precision of each frame (images averaged / noise variance of one image). It is minimised by scipy's
L-BFGS-B (Byrd et al. 1995, as the thesis) with bounds y >= 0 and, optionally, y = 0 outside a circular support
(the thesis masks by hand after deconvolution); value and gradient are computed in torch (float64). One frame
(F = 1) is single-frame deconvolution (eq. 4.4). Where the CTFs are small (low frequency) the data barely fix y,
and positivity lifts the background there; a support removes it.

Frames from particles: particles of a class are aligned (origin and psi undone) and split into defocus groups
of equal-width defocus intervals (thesis); each group gives one frame, the mean of its aligned images, whose
operator is the mean aligned CTF and whose weight is the group size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.optimize import Bounds, minimize

from cryoscope.errors import InvalidValueError
from cryoscope.physics.ctf import CTFParams, apply_ctf, compute_ctf
from cryoscope.physics.filters import soft_mask
from cryoscope.physics.fourier import centered_coords, fft2c, ifft2c
from cryoscope.physics.shift import translate_images

# Centring of deconvolved class averages: passes of shift-and-deconvolve until every shift is below the tolerance (px).
_CENTRING_PASSES = 5
_CENTRING_TOL = 0.05


def gradient_penalty(image: torch.Tensor) -> torch.Tensor:
    """||∇y||² with periodic forward differences along x and y (px⁻¹)."""
    dx = image.roll(-1, -1) - image
    dy = image.roll(-1, -2) - image
    return (dx * dx).sum() + (dy * dy).sum()


def _laplacian(image: torch.Tensor) -> torch.Tensor:
    """∇ᵀ∇ y (the gradient of ||∇y||² / 2) for the periodic differences of `gradient_penalty`."""
    return 4 * image - image.roll(1, -1) - image.roll(-1, -1) - image.roll(1, -2) - image.roll(-1, -2)


def _laplacian_symbol(box: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Eigenvalues [N, N] of `_laplacian` on the centred Fourier grid: 4 sin²(π kx / N) + 4 sin²(π ky / N)."""
    s = torch.sin(torch.pi * centered_coords(box, device, dtype) / box) ** 2
    return 4 * (s[:, None] + s[None, :])


def unconstrained_map(frames: torch.Tensor, ctfs: torch.Tensor, weights: torch.Tensor, regulariser: float) -> torch.Tensor:
    """Minimiser [N, N] of eq. 4.3 without the bound: Re IFFT(Σ w C Z / (Σ w C² + α Λ)) (0 where the ratio is 0/0).

    Exact when each CTF is point-symmetric on the grid (odd boxes, or no astigmatism); the start of `deconvolve`.
    """
    w = weights[:, None, None]
    denominator = (w * ctfs * ctfs).sum(0) + regulariser * _laplacian_symbol(frames.shape[-1], frames.dtype, frames.device)
    numerator = (w * ctfs * fft2c(frames)).sum(0)
    return ifft2c(torch.where(denominator > 0, numerator / denominator, 0)).real


def deconvolution_loss(
    image: torch.Tensor, frames: torch.Tensor, ctfs: torch.Tensor, weights: torch.Tensor, regulariser: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss L(y) of eq. 4.3 and its gradient ∂L/∂y [N, N] for y [N, N], frames and CTFs [F, N, N], weights [F]."""
    residual = apply_ctf(image, ctfs) - frames
    w = weights[:, None, None]
    loss = 0.5 * (w * residual * residual).sum() + 0.5 * regulariser * gradient_penalty(image)
    grad = (w * apply_ctf(residual, ctfs)).sum(0) + regulariser * _laplacian(image)
    return loss, grad


def _check_frames(frames: torch.Tensor, ctfs: torch.Tensor, weights: torch.Tensor, regulariser: float) -> None:
    if frames.dim() != 3 or frames.shape[-1] != frames.shape[-2] or ctfs.shape != frames.shape:
        raise InvalidValueError(f"frames and CTFs must both be [F, N, N], got {tuple(frames.shape)} and {tuple(ctfs.shape)}")
    if weights.shape != frames.shape[:1] or not bool((weights > 0).all()):
        raise InvalidValueError(f"frame weights must be [{frames.shape[0]}] positive values, got shape {tuple(weights.shape)}")
    if not regulariser >= 0:
        raise InvalidValueError(f"regulariser must be >= 0, got {regulariser}")
    if not (bool(torch.isfinite(frames).all()) and bool(torch.isfinite(ctfs).all())):
        raise InvalidValueError("frames or CTFs contain NaN/Inf")


def deconvolve(
    frames: torch.Tensor,
    ctfs: torch.Tensor,
    weights: torch.Tensor | None = None,
    regulariser: float = 10.0,
    positivity: bool = True,
    mask_radius: float | None = None,
    max_iter: int = 1000,
    ftol: float = 1e-12,
) -> torch.Tensor:
    """MAP image y [N, N] (px values, units of the frames) from frames z_f [F, N, N] or one frame [N, N] (eq. 4.3/4.4).

    ctfs: CTF values on the centred grid, same shape as `frames` (`physics.ctf.compute_ctf`); weights [F]: frame
    precisions (default 1: equal variance, as the thesis); regulariser: α, the prior precision of the gradient in
    units of the frames' precision (thesis: α = 10); positivity: bound y >= 0 (exact at the optimum);
    mask_radius: support constraint y = 0 beyond this radius (px) from pixel N // 2 (None: no support; the thesis
    masks after deconvolution instead). L-BFGS-B starts from the `unconstrained_map` clamped to the bounds and
    stops after `max_iter` iterations or when an iteration lowers the loss by less than `ftol` of its value (the
    loss is flat where the CTFs are small, at low frequency, so scipy's default 2.2e-9 can stop 1e-4 - 1e-3 short
    of the optimum). Computed in float64 on the frames' device, returned in their dtype.
    """
    single = frames.dim() == 2
    z = (frames[None] if single else frames).to(torch.float64)
    c = (ctfs[None] if single and ctfs.dim() == 2 else ctfs).to(z.device, torch.float64)
    w = torch.ones(z.shape[0], dtype=torch.float64, device=z.device) if weights is None else weights.to(z.device, torch.float64)
    _check_frames(z, c, w, regulariser)
    shape = z.shape[-2:]

    def fun(y: np.ndarray) -> tuple[float, np.ndarray]:
        loss, grad = deconvolution_loss(torch.from_numpy(y).to(z.device).view(shape), z, c, w, regulariser)
        return float(loss), grad.reshape(-1).cpu().numpy()

    radius = math.inf if mask_radius is None else mask_radius
    inside = soft_mask(shape[-1], radius, device=z.device) > 0
    lower = torch.where(inside, 0.0 if positivity else -math.inf, 0.0).to(z)
    upper = torch.where(inside, math.inf, 0.0).to(z)
    start = unconstrained_map(z, c, w, regulariser).clamp(lower, upper)
    bounds = Bounds(lower.reshape(-1).cpu().numpy(), upper.reshape(-1).cpu().numpy())
    options = {"maxiter": max_iter, "ftol": ftol}
    result = minimize(fun, start.reshape(-1).cpu().numpy(), jac=True, method="L-BFGS-B", bounds=bounds, options=options)
    return torch.from_numpy(result.x).view(shape).to(frames.device, frames.dtype)


def centre_of_mass_shift(images: torch.Tensor) -> torch.Tensor:
    """Shifts [n, 2] (x, y) px that move the centre of mass of the positive part of each image [n, N, N] to N // 2."""
    if images.dim() != 3 or images.shape[-1] != images.shape[-2]:
        raise InvalidValueError(f"images must be [n, N, N], got {tuple(images.shape)}")
    mass = images.clamp_min(0)
    total = mass.sum((-2, -1))
    if not bool((total > 0).all()):
        raise InvalidValueError("an image has no positive density to centre")
    r = centered_coords(images.shape[-1], images.device, images.dtype)
    com_x = (mass.sum(-2) * r).sum(-1) / total
    com_y = (mass.sum(-1) * r).sum(-1) / total
    return -torch.stack([com_x, com_y], -1)


def centre(images: torch.Tensor) -> torch.Tensor:
    """Images [n, N, N] translated (sub-pixel, Fourier phase ramps) so that their positive mass is centred at N // 2.

    The translation is periodic and band-limited: values of an image with sharp edges ring slightly below 0
    (`bayes.counts` counts negative pixels as empty). A positive background wraps around the box and biases the
    centre of mass: mask it first.
    """
    return translate_images(images, centre_of_mass_shift(images))


def group_by_defocus(defocus: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Group labels [n] (0 .. G-1, increasing defocus) of defocus values [n] (Å) in `n_groups` equal-width intervals.

    The thesis' grouping: the range of defocus values is split into equal intervals, so the CTFs within a group
    differ by a bounded defocus; empty intervals are dropped (G <= n_groups).
    """
    if not (isinstance(n_groups, int) and n_groups >= 1):
        raise InvalidValueError(f"number of defocus groups must be a positive integer, got {n_groups}")
    if defocus.dim() != 1 or defocus.numel() == 0 or not bool(torch.isfinite(defocus).all()):
        raise InvalidValueError(f"defocus must be [n] finite values (Å), got shape {tuple(defocus.shape)}")
    edges = torch.linspace(float(defocus.min()), float(defocus.max()), n_groups + 1, dtype=torch.float64,
                           device=defocus.device)
    labels = torch.bucketize(defocus.to(torch.float64), edges[1:-1], right=True)
    return torch.unique(labels, return_inverse=True)[1]


def rotate_images(images: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """a(r) = z(A r) with A the in-plane block of RELION's Rz(psi) (psi [n] degrees): undoes a particle's psi.

    Bilinear interpolation about pixel N // 2, zero outside the box; images [n, N, N].
    """
    box = images.shape[-1]
    a = torch.deg2rad(psi.to(images))
    cos, sin = torch.cos(a)[:, None, None], torch.sin(a)[:, None, None]
    r = centered_coords(box, images.device, images.dtype)
    y, x = torch.meshgrid(r, r, indexing="ij")
    # A = [[cos, sin], [-sin, cos]]; grid_sample's normalised coordinates (align_corners=True): u = index / h - 1
    h = (box - 1) / 2
    grid = torch.stack([cos * x + sin * y, -sin * x + cos * y], -1) + box // 2
    out = torch.nn.functional.grid_sample(images[:, None], grid / h - 1, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, 0]


def aligned_ctf(ctf: CTFParams, psi: torch.Tensor, box: int, pixel_size: float, dtype: torch.dtype) -> torch.Tensor:
    """CTFs [n, N, N] of `rotate_images(images, psi)`: C(A k) is the CTF with its astigmatism angle turned by +psi."""
    turned = replace(ctf, defocus_angle=ctf.defocus_angle + psi.to(ctf.defocus_angle))
    return compute_ctf(turned, box, pixel_size, dtype)


@dataclass
class DefocusFrames:
    """Frames of multi-frame deconvolution, one row per (class, defocus group) with particles.

    frames [M, N, N] mean aligned images; ctfs [M, N, N] their mean aligned CTFs; counts [M] particles per frame;
    classes [M] the class id of each frame.
    """

    frames: torch.Tensor
    ctfs: torch.Tensor
    counts: torch.Tensor
    classes: torch.Tensor


def _read(images, index) -> torch.Tensor:
    """images[index] as a tensor: a tensor stays on its device, anything else (numpy) comes to the CPU."""
    x = images[index]
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x, device="cpu")


def defocus_frames(
    images,
    psi: torch.Tensor,
    origins_px: torch.Tensor,
    classes: torch.Tensor,
    ctf: CTFParams,
    pixel_size: float,
    n_defocus_groups: int,
    batch_size: int = 1024,
) -> DefocusFrames:
    """Defocus averages of aligned particles (thesis Fig. 4.5): origin and psi undone, averaged per class and group.

    images: [n, N, N] tensor, or a lazy stack that `len()` and slices read (`io.mrc.ParticleStack`: read in
    batches, so the stack need not fit in memory); psi [n] degrees (RELION rlnAnglePsi; rot = tilt = 0);
    origins_px [n, 2] (x, y) RELION origins in pixels; classes [n] integer class ids; ctf: `CTFParams` of the n
    particles; pixel_size Å; defocus groups: `group_by_defocus` of the mean defocus (defocus_u + defocus_v) / 2 over
    all particles. A frame's mean CTF is exact for the expectation of its mean image (E z̄ = C̄ · Y); its weight is
    the count. Sums are accumulated in float64; frames come back in the images' dtype.
    """
    n = len(images)
    first = _read(images, slice(0, 1))
    box, dtype, device = first.shape[-1], first.dtype, first.device
    if first.dim() != 3 or first.shape[-2] != box:
        raise InvalidValueError(f"particle images must be [n, N, N], got {tuple(first.shape)}")
    if psi.shape != (n,) or origins_px.shape != (n, 2) or classes.shape != (n,) or len(ctf) != n:
        raise InvalidValueError(f"psi [n], origins [n, 2], classes [n] and CTFs must be given for all {n} particles")
    groups = group_by_defocus((ctf.defocus_u + ctf.defocus_v) / 2, n_defocus_groups)
    class_ids, class_index = torch.unique(classes, return_inverse=True)
    n_groups = int(groups.max()) + 1
    frame_index = (class_index * n_groups + groups).to(device)
    m = len(class_ids) * n_groups
    sums = torch.zeros(m, box, box, dtype=torch.float64, device=device)
    ctf_sums = torch.zeros_like(sums)
    for lo in range(0, n, batch_size):
        sl = slice(lo, lo + batch_size)
        batch = _read(images, sl).to(device, torch.float64)
        unshifted = translate_images(batch, origins_px[sl].to(device, torch.float64))
        sums.index_add_(0, frame_index[sl], rotate_images(unshifted, psi[sl].to(device)))
        ctf_sums.index_add_(0, frame_index[sl], aligned_ctf(ctf[sl].to(device), psi[sl].to(device), box, pixel_size, torch.float64))
    counts = torch.bincount(frame_index, minlength=m)
    keep = counts > 0
    mean = counts[keep].to(torch.float64)[:, None, None]
    frame_class = class_ids.to(device).repeat_interleave(n_groups)
    return DefocusFrames((sums[keep] / mean).to(dtype), (ctf_sums[keep] / mean).to(dtype), counts[keep], frame_class[keep])


def _deconvolve_classes(frames: DefocusFrames, class_ids: torch.Tensor, shifts: torch.Tensor, **options) -> torch.Tensor:
    """Multi-frame `deconvolve` of each class's frames translated by its shift [K, 2] (px), weighted by counts."""
    moved = translate_images(frames.frames, shifts[torch.searchsorted(class_ids, frames.classes)])
    sel = [frames.classes == k for k in class_ids]
    return torch.stack([deconvolve(moved[m], frames.ctfs[m], frames.counts[m], **options) for m in sel])


def class_averages_from_particles(
    images: torch.Tensor,
    psi: torch.Tensor,
    origins_px: torch.Tensor,
    classes: torch.Tensor,
    ctf: CTFParams,
    pixel_size: float,
    n_defocus_groups: int = 7,
    regulariser: float = 10.0,
    mask_radius: float | None = None,
    centred: bool = False,
    max_iter: int = 1000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(class ids [K], averages [K, N, N]): multi-frame deconvolution of each class's `defocus_frames`.

    Weights are the frames' particle counts (the frame precisions for particles normalised to unit noise SD);
    `regulariser` and `mask_radius` (px) are those of `deconvolve`. The averages are non-negative. With `centred`,
    each class's frames are translated by the `centre_of_mass_shift` of its deconvolution (translations commute
    with the CTFs) and deconvolved again, until the remaining shifts are below 0.05 px or after 5 passes: the
    positive mass sits at pixel N // 2 without the negative ringing of shifting a non-negative image. Centring
    needs `mask_radius`: without a support the background, which positivity lifts where the CTFs are small (low
    frequency), wraps around the periodic box and drags the centre of mass. Default 7 defocus groups as the
    thesis' ribosome example.
    """
    if centred and mask_radius is None:
        raise InvalidValueError("centring class averages needs a mask radius (px)")
    frames = defocus_frames(images, psi, origins_px, classes, ctf, pixel_size, n_defocus_groups)
    class_ids = torch.unique(frames.classes)
    shifts = frames.frames.new_zeros(len(class_ids), 2)
    options = dict(regulariser=regulariser, mask_radius=mask_radius, max_iter=max_iter)
    averages = _deconvolve_classes(frames, class_ids, shifts, **options)
    for _ in range(_CENTRING_PASSES if centred else 0):
        step = centre_of_mass_shift(averages)
        if float(step.abs().max()) < _CENTRING_TOL:
            break
        shifts = shifts + step
        averages = _deconvolve_classes(frames, class_ids, shifts, **options)
    return class_ids, averages
