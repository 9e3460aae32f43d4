"""Rigid map-to-map alignment (rotation, shift, optional hand flip) maximising real-space correlation.

The aligned map is `rotate_volume(M, R, shift)` (M = `flip_hand(map)` when `flipped`), i.e.
M'(r) = M(R^T (r - s)) with r and s in voxels (x, y, z) about the box centre N // 2.

Search: (1) global, over a uniform random set of rotations and both hands, on low-pass filtered,
Fourier-cropped maps, with the best translation of each rotation from an FFT cross-correlation;
(2) local, L-BFGS on (axis-angle, shift) through the differentiable trilinear resampling,
first on the cropped maps for the best few distinct candidates of each hand (the hand is decided
after refinement), then on the full (or `refine_box`) maps.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.resample import flip_hand, rotate_volume
from cryoscope.geometry.rotations import axis_angle_to_matrix, geodesic_distance
from cryoscope.geometry.sampling import random_rotations
from cryoscope.physics.filters import fourier_resize
from cryoscope.physics.fourier import fft3c, ifft3c, radial_index_3d
from cryoscope.validation.fsc import fsc, resolution_at, shell_frequencies
from cryoscope.validation.metrics import cross_correlation


class Alignment(NamedTuple):
    """Rigid transform taking a map onto a reference (see module docstring)."""

    R: torch.Tensor  # [3, 3]
    shift: torch.Tensor  # [3] voxels (x, y, z)
    flipped: bool
    cc: float  # real-space correlation with the reference after alignment (at refine_box in `align_maps`)


class AlignedFSC(NamedTuple):
    """Result of `fsc_after_alignment`."""

    aligned: torch.Tensor  # [N, N, N] map after alignment
    fsc: torch.Tensor  # [N // 2 + 1] FSC with the reference
    frequencies: torch.Tensor  # [N // 2 + 1] cycles/pixel
    resolution_05: tuple[float, float | None]  # (cycles/pixel, Å) at FSC 0.5
    resolution_0143: tuple[float, float | None]  # (cycles/pixel, Å) at FSC 0.143
    alignment: Alignment


def apply_map_alignment(vol: torch.Tensor, alignment: Alignment) -> torch.Tensor:
    """Transform `vol` [N, N, N] by `alignment` (hand flip first, then rotation and shift).

    Cubic B-spline resampling: trilinear resampling would blur and alias the shells near Nyquist, which lowers
    the FSC of a map that was rotated against one that was not (by 0.02 cycles/pixel at FSC 0.5 for a 64^3 map).
    """
    src = flip_hand(vol) if alignment.flipped else vol
    return rotate_volume(src, alignment.R.to(vol), alignment.shift.to(vol), mode="cubic")


def _resize(vol: torch.Tensor, box: int) -> torch.Tensor:
    """Fourier crop / pad [N, N, N] -> [box]^3 about the same centre (voxel size scaled by N / box)."""
    return vol if box == vol.shape[-1] else fourier_resize(vol, box, ndim=3)


def _lowpass(vol: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian low-pass exp(-|k|^2 / (2 sigma^2)), sigma in cycles/box."""
    k2 = radial_index_3d(vol.shape[-1], vol.device).to(vol.dtype) ** 2
    return ifft3c(fft3c(vol) * torch.exp(-k2 / (2 * sigma**2))).real


def _normalise(v: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit norm over the last three axes."""
    v = v - v.mean(dim=(-3, -2, -1), keepdim=True)
    return v / v.flatten(-3).norm(dim=-1).clamp_min(1e-30)[..., None, None, None]


def _global_search(
    small: torch.Tensor, ref: torch.Tensor, rotations: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best translation (voxels of the small box) and correlation for every rotation of `small` onto `ref`."""
    n = ref.shape[-1]
    dims = (-3, -2, -1)
    F_ref = torch.fft.rfftn(_normalise(ref), dim=dims)
    scores, shifts = [], []
    for start in range(0, rotations.shape[0], chunk):
        rot = _normalise(rotate_volume(small, rotations[start : start + chunk]))
        # c(s) = sum_r ref(r) rot(r - s) (circular): inverse transform of F_ref conj(F_rot), s at index s mod n
        c = torch.fft.irfftn(F_ref * torch.fft.rfftn(rot, dim=dims).conj(), s=(n, n, n), dim=dims).flatten(-3)
        best, idx = c.max(dim=-1)
        ijk = torch.stack([idx % n, (idx // n) % n, idx // (n * n)], -1)  # (x, y, z) indices
        shifts.append(((ijk + n // 2) % n - n // 2).to(small.dtype))
        scores.append(best)
    return torch.cat(scores), torch.cat(shifts)


def _distinct_top(scores: torch.Tensor, rotations: torch.Tensor, k: int, min_deg: float) -> list[int]:
    """Indices of the `k` best scores whose rotations differ pairwise by more than `min_deg` degrees."""
    picked: list[int] = []
    for i in torch.argsort(scores, descending=True).tolist():
        if all(float(geodesic_distance(rotations[i], rotations[j])) > min_deg for j in picked):
            picked.append(i)
            if len(picked) == k:
                break
    return picked


def _refine(
    vol: torch.Tensor, ref: torch.Tensor, R0: torch.Tensor, s0: torch.Tensor, iterations: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Local L-BFGS maximisation of the correlation over R = exp(w) R0 and the shift (voxels)."""
    n = ref.shape[-1]
    ref_n = _normalise(ref.detach())
    scale = n / 4  # a rotation of 1/scale radians moves voxels at radius n/4 by about one voxel
    params = torch.cat([torch.zeros(3, dtype=vol.dtype, device=vol.device), s0.to(vol)]).requires_grad_(True)
    opt = torch.optim.LBFGS([params], lr=1, max_iter=iterations, line_search_fn="strong_wolfe")

    def transform(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return axis_angle_to_matrix(p[:3] / scale) @ R0.to(vol), p[3:]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        R, s = transform(params)
        loss = -(_normalise(rotate_volume(vol, R, s)) * ref_n).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        R, s = transform(params)
        cc = float((_normalise(rotate_volume(vol, R, s)) * ref_n).sum())
    return R.detach(), s.detach().clone(), cc


def align_maps(
    vol: torch.Tensor,
    reference: torch.Tensor,
    flip: bool = True,
    n_rotations: int = 3000,
    coarse_box: int = 24,
    refine_box: int = 128,
    n_candidates: int = 4,
    seed: int = 0,
    chunk: int = 128,
) -> Alignment:
    """Find the rotation, shift (voxels, x y z) and hand taking `vol` [N, N, N] onto `reference` [N, N, N].

    flip: also try the mirrored map (`flip_hand`). n_rotations: size of the global random rotation set.
    coarse_box / refine_box: Fourier-cropped box sizes for the global search and the final refinement.
    """
    if vol.shape != reference.shape or vol.dim() != 3 or len(set(vol.shape)) != 1:
        raise InvalidValueError(f"align: expected two cubic maps of the same size, got {tuple(vol.shape)} and {tuple(reference.shape)}")
    if not (torch.isfinite(vol).all() and torch.isfinite(reference).all()):
        raise InvalidValueError("align: maps contain NaN or Inf")
    if n_rotations < 1 or n_candidates < 1 or coarse_box < 4 or refine_box < 4:
        raise InvalidValueError("align: n_rotations and n_candidates must be >= 1, coarse_box and refine_box >= 4")
    n = vol.shape[-1]
    dtype = vol.dtype if vol.dtype == torch.float64 else torch.float32
    vol, reference = vol.to(dtype), reference.to(dtype)
    hands = [False, True] if flip else [False]
    sources = {h: flip_hand(vol) if h else vol for h in hands}

    # global search on cropped, low-passed maps, then local refinement of the best distinct
    # candidates of each hand (still on the cropped maps)
    m = min(n, coarse_box)
    sigma = m / 4
    ref_small = _lowpass(_resize(reference, m), sigma)
    small = {h: _lowpass(_resize(src, m), sigma) for h, src in sources.items()}
    rotations = random_rotations(n_rotations, torch.Generator().manual_seed(seed), torch.float64).to(vol.device, dtype)
    refined = []
    for h in hands:
        scores, shifts = _global_search(small[h], ref_small, rotations, chunk)
        for i in _distinct_top(scores, rotations, n_candidates, min_deg=20.0):
            refined.append((*_refine(small[h], ref_small, rotations[i], shifts[i], iterations=40), h))
    R, s, _, h = max(refined, key=lambda c: c[2])

    # final refinement at (up to) refine_box
    b = min(n, refine_box)
    R, s_b, cc = _refine(_resize(sources[h], b), _resize(reference, b), R, s * b / m, iterations=60)
    return Alignment(R, s_b * n / b, h, cc)


def fsc_after_alignment(
    vol: torch.Tensor,
    reference: torch.Tensor,
    voxel_size: float | None = None,
    mask: torch.Tensor | None = None,
    flip: bool = True,
    **search,
) -> AlignedFSC:
    """Align `vol` onto `reference` (`align_maps`), then the FSC and resolutions (0.5, 0.143) with the reference.

    voxel_size in Å (resolutions in Å are None without it); `mask` is a soft mask applied to both maps for the FSC.
    """
    alignment = align_maps(vol, reference, flip=flip, **search)
    aligned = apply_map_alignment(vol.to(alignment.R.dtype), alignment)
    reference = reference.to(aligned.dtype)
    alignment = alignment._replace(cc=float(cross_correlation(aligned, reference)))
    curve = fsc(aligned, reference, mask)
    n = vol.shape[-1]
    return AlignedFSC(
        aligned,
        curve,
        shell_frequencies(n),
        resolution_at(curve, 0.5, n, voxel_size),
        resolution_at(curve, 0.143, n, voxel_size),
        alignment,
    )
