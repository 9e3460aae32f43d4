"""Fourier resampling, radial (shell) averages and real-space masks for images and maps.

Resampling convention (as RELION's `resizeMap` / `relion_image_handler --rescale_angpix`):
cropping or zero-padding the centred transform keeps *sample values*, i.e. a map stays a
density per voxel, its mean is unchanged and a band-limited function is re-sampled exactly.
Integrated quantities (sums over the box) scale by (M / N)^d.

Shells: shell index round(|k|) with k in cycles per box (`cryoscope.physics.fourier`); shell i
of a box of size N is at i / N cycles/pixel; shells 0 .. N // 2 are returned.
Masks take radii and edge widths in pixels; the soft edge is a raised cosine
0.5 (1 + cos(pi (r - radius) / width)) for radius < r < radius + width.
"""

from __future__ import annotations

import math

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.fourier import centered_coords, fft3c, ifft3c, radial_index_3d

# Upper bound on elements of one transient [chunk, L, L] tensor in the distance transform.
_EDT_CHUNK = 1 << 24


def _fftc(x: torch.Tensor, ndim: int) -> torch.Tensor:
    dims = tuple(range(-ndim, 0))
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=dims), dim=dims), dim=dims)


def _ifftc(F: torch.Tensor, ndim: int) -> torch.Tensor:
    dims = tuple(range(-ndim, 0))
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(F, dim=dims), dim=dims), dim=dims)


def _window_centred(F: torch.Tensor, new_shape: tuple[int, ...]) -> torch.Tensor:
    """Crop or zero-pad the last len(new_shape) axes of a centred transform, keeping index N//2 at M//2.

    Cropping to an even size folds the +M/2 plane onto the -M/2 one (both alias to the new Nyquist),
    so that padding followed by cropping is the identity.
    """
    ndim = len(new_shape)
    for ax, n_new in enumerate(new_shape):
        dim = F.dim() - ndim + ax
        n_old = F.shape[dim]
        if n_new < n_old:
            start = n_old // 2 - n_new // 2
            cropped = F.narrow(dim, start, n_new).clone()
            if n_new % 2 == 0:
                cropped.narrow(dim, 0, 1).add_(F.narrow(dim, start + n_new, 1))
            F = cropped
        elif n_new > n_old:
            shape = list(F.shape)
            shape[dim] = n_new
            padded = F.new_zeros(shape)
            padded.narrow(dim, n_new // 2 - n_old // 2, n_old).copy_(F)
            F = padded
    return F


def fourier_resize(x: torch.Tensor, new_shape: int | tuple[int, ...], ndim: int = 2) -> torch.Tensor:
    """Resample the last `ndim` axes of real `x` to `new_shape` by cropping/zero-padding its centred transform.

    Down-sampling (M < N) low-pass filters at the new Nyquist; up-sampling (M > N) is band-limited
    (sinc) interpolation. Sample values are kept (mean preserved), as RELION's rescaling. The
    pixel size changes from p to p * N / M. Padding splits an unpaired Nyquist plane of an even size
    evenly between +-N/2 (the real part is returned), so padding then cropping is the identity.
    """
    shape = (new_shape,) * ndim if isinstance(new_shape, int) else tuple(new_shape)
    if len(shape) != ndim or min(shape) < 1 or x.dim() < ndim:
        raise InvalidValueError(f"fourier_resize: bad target shape {shape} for a {ndim}-D array of shape {tuple(x.shape)}")
    old = tuple(x.shape[-ndim:])
    if shape == old:
        return x.clone()
    F = _window_centred(_fftc(x, ndim), shape)
    factor = math.prod(shape) / math.prod(old)
    return _ifftc(F, ndim).real * factor


def shell_index(box: int, ndim: int = 2, device=None) -> torch.Tensor:
    """[box]*ndim integer shell index round(|k|), k in cycles per box."""
    k = centered_coords(box, device, torch.float64)
    grids = torch.meshgrid(*([k] * ndim), indexing="ij")
    return torch.sqrt(sum(g**2 for g in grids)).round().long()


def frequency_magnitude(box: int, ndim: int = 2, device=None, dtype=torch.float32) -> torch.Tensor:
    """[box]*ndim |k| in cycles per box on the centred grid."""
    k = centered_coords(box, device, torch.float64)
    grids = torch.meshgrid(*([k] * ndim), indexing="ij")
    return torch.sqrt(sum(g**2 for g in grids)).to(dtype)


def radial_average(x: torch.Tensor, ndim: int = 2) -> torch.Tensor:
    """Mean of `x` [..., N, N(, N)] over each shell round(|k|) -> [..., N // 2 + 1] (real or complex input).

    The grid is the centred one (`x` is typically |fft2c(img)|^2); shell i is at i / N cycles/pixel.
    """
    n = x.shape[-1]
    if x.dim() < ndim or len(set(x.shape[-ndim:])) != 1:
        raise InvalidValueError(f"radial_average: expected square/cubic last {ndim} axes, got {tuple(x.shape)}")
    n_shells = n // 2 + 1
    idx = shell_index(n, ndim, x.device).reshape(-1)
    keep = idx < n_shells
    flat = x.reshape(*x.shape[: x.dim() - ndim], -1)[..., keep]
    sums = flat.new_zeros(*flat.shape[:-1], n_shells).index_add_(-1, idx[keep], flat)
    counts = torch.bincount(idx[keep], minlength=n_shells).to(sums.real.dtype)
    return sums / counts


def radial_to_grid(profile: torch.Tensor, box: int, ndim: int = 2) -> torch.Tensor:
    """Expand a radial profile [..., S] (value at |k| = 0, 1, ..., S-1 cycles/box) onto the centred grid.

    Linear interpolation in |k|; beyond the last sample the last value is held. -> [..., box]*ndim.
    """
    s = profile.shape[-1]
    r = frequency_magnitude(box, ndim, profile.device, profile.dtype).clamp(max=s - 1)
    i0 = r.floor().long().clamp(max=s - 2) if s > 1 else torch.zeros_like(r, dtype=torch.long)
    t = (r - i0.to(r.dtype)) if s > 1 else torch.zeros_like(r)
    lead = profile.shape[:-1]
    p = profile.reshape(-1, s)
    v0 = p[:, i0.reshape(-1)]
    v1 = p[:, (i0 + 1).clamp(max=s - 1).reshape(-1)]
    out = v0 + (v1 - v0) * t.reshape(-1)
    return out.reshape(*lead, *r.shape)


def _cosine_edge(dist: torch.Tensor, radius: float, width: float) -> torch.Tensor:
    """1 for dist <= radius, raised cosine to 0 over `width`, 0 beyond (width 0: hard edge)."""
    if width <= 0:
        return (dist <= radius).to(dist.dtype)
    t = ((dist - radius) / width).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * t))


def soft_mask(box: int, radius: float, edge_width: float = 0.0, ndim: int = 2, device=None, dtype=torch.float32) -> torch.Tensor:
    """Circular (ndim=2) or spherical (ndim=3) mask of `radius` pixels about index box // 2 with a cosine edge.

    Values: 1 for r <= radius, 0.5 (1 + cos(pi (r - radius) / edge_width)) up to radius + edge_width, then 0.
    """
    if radius < 0 or edge_width < 0:
        raise InvalidValueError(f"soft_mask: radius and edge width must be >= 0, got {radius}, {edge_width}")
    r = frequency_magnitude(box, ndim, device, torch.float64)
    return _cosine_edge(r, radius, edge_width).to(dtype)


def _squared_distance_1d(f: torch.Tensor) -> torch.Tensor:
    """min_j f[..., j] + (i - j)^2 along the last axis (one pass of the separable exact distance transform)."""
    n = f.shape[-1]
    idx = torch.arange(n, device=f.device, dtype=f.dtype)
    d2 = (idx[:, None] - idx[None, :]) ** 2
    flat = f.reshape(-1, n)
    chunk = max(1, _EDT_CHUNK // (n * n))
    out = torch.cat([(flat[i : i + chunk, None, :] + d2).amin(-1) for i in range(0, flat.shape[0], chunk)])
    return out.reshape(f.shape)


def distance_to_mask(binary: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distance (pixels) of every element of a 2-D/3-D boolean array to the nearest True element.

    Separable squared-distance transform (one min-plus pass per axis). inf if `binary` is all False.
    """
    f = torch.where(binary, 0.0, math.inf).to(torch.float64)
    for axis in range(binary.dim()):
        f = _squared_distance_1d(f.movedim(axis, -1)).movedim(-1, axis)
    return torch.sqrt(f)


def threshold_mask(x: torch.Tensor, threshold: float, extend: float = 0.0, soft_edge: float = 0.0) -> torch.Tensor:
    """Mask of a map/image: binary x >= threshold, dilated by `extend` pixels, then a cosine edge of `soft_edge` pixels.

    As RELION's relion_mask_create (--ini_threshold, --extend_inimask, --width_soft_edge), with exact
    Euclidean distances. Returns values in [0, 1] with the dtype of `x`.
    """
    if extend < 0 or soft_edge < 0:
        raise InvalidValueError(f"threshold_mask: extend and soft edge must be >= 0, got {extend}, {soft_edge}")
    binary = x >= threshold
    if not bool(binary.any()):
        raise InvalidValueError(f"threshold_mask: no value reaches the threshold {threshold} (max {float(x.max()):.4g})")
    dist = distance_to_mask(binary)
    return _cosine_edge(dist, extend, soft_edge).to(x.dtype)


def lowpass(vol: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Sharp low-pass of maps [..., N, N, N] at `cutoff` cycles/pixel (shells round(|k|) <= cutoff N kept)."""
    n = vol.shape[-1]
    return ifft3c(fft3c(vol) * (radial_index_3d(n, vol.device) <= cutoff * n)).real.to(vol.dtype)


def gaussian_lowpass(vol: torch.Tensor, resolution: float, voxel_size: float) -> torch.Tensor:
    """Maps [..., N, N, N] blurred to `resolution` Å as Chimera's molmap does: a Gaussian of σ = resolution / (π √2),
    whose transform exp(-resolution² |k|²) falls to 1/e at |k| = 1 / resolution."""
    n = vol.shape[-1]
    k = centered_coords(n, vol.device, torch.float64) / (n * voxel_size)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    return ifft3c(fft3c(vol) * torch.exp(-(resolution**2) * k2).to(vol.real.dtype)).real.to(vol.dtype)
