"""Particle images for the VAE-GAN: normalise at the original size, downsample to the network box, cache as float16.

Pixel coordinates follow the toolkit convention: the centre of an N x N image is index N // 2 in both axes
(odd and even N). The cache is an .npy file of float16 [n, box, box] read through a memory map, with a JSON
sidecar recording how it was made; a cache whose sidecar matches the request is reused.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from tqdm import tqdm

from cryoscope.errors import InputFormatError, InvalidValueError, MissingDataError
from cryoscope.io.atomic import atomic_path
from cryoscope.physics.filters import fourier_resize, frequency_magnitude

METHODS = ("contrast", "standard")
RESAMPLERS = ("fourier", "lanczos")
LANCZOS_A = 5
MIN_BACKGROUND_PIXELS = 16
FLOAT16_MAX = 65504.0
FIT_SAMPLE = 1000
CACHE_VERSION = 1


# ---------------------------------------------------------------- normalisation

def _check_method(method: str) -> None:
    if method not in METHODS:
        raise InvalidValueError(f"unknown normalisation method {method!r}: choose one of {', '.join(METHODS)}")


def _check_images(images: torch.Tensor) -> None:
    """Images must be [n, N, N] and finite."""
    if images.dim() != 3 or images.shape[-1] != images.shape[-2]:
        raise InvalidValueError(f"expected square images [n, N, N], got shape {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise InvalidValueError("images contain NaN/Inf")


def _particle_region(box: int, radius: float, device: torch.device) -> torch.Tensor:
    """Boolean [box, box] mask of the particle, r <= `radius` pixels about index box // 2 (background: the rest)."""
    if not radius >= 0:
        raise InvalidValueError(f"particle radius must be >= 0 pixels, got {radius}")
    inside = frequency_magnitude(box, 2, device, torch.float64) <= radius
    if int((~inside).sum()) < MIN_BACKGROUND_PIXELS:
        raise InvalidValueError(
            f"a particle radius of {radius} px leaves fewer than {MIN_BACKGROUND_PIXELS} background pixels in {box}² images"
        )
    return inside


def _region_means(images: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean inside the particle and of the background, float64 [n] each (input units)."""
    _check_images(images)
    inside = _particle_region(images.shape[-1], radius, images.device)
    x = images.double()
    return x[:, inside].mean(1), x[:, ~inside].mean(1)


def _contrast_scale(contrast: torch.Tensor) -> float:
    """Dataset contrast: the mean of per-image (inside mean - background mean), which must be > 0."""
    scale = float(contrast.mean())
    if not scale > 0:
        raise InvalidValueError(
            f"particles are not brighter than the background on average (mean contrast {scale:.3g}): "
            "invert the images if the particles are dark, or use --normalisation standard (CTF-modulated images keep "
            "almost no mean contrast)"
        )
    return scale


def fit_normalisation(sample_images: torch.Tensor, radius: float, method: str) -> float:
    """Dataset-level scale (input units) from a sample of images [n, N, N].

    "contrast": the mean over the sample of (mean inside `radius` px - background mean); an error if not > 0.
    "standard": 1.0 (that method scales each image by its own background standard deviation).
    """
    _check_method(method)
    if method == "standard":
        _check_images(sample_images)
        return 1.0
    inside, background = _region_means(sample_images, radius)
    return _contrast_scale(inside - background)


def normalise(images: torch.Tensor, radius: float, method: str, scale: float | None = None) -> torch.Tensor:
    """Normalise images [n, N, N] about a circular particle mask of `radius` pixels centred at index N // 2.

    Background: pixels with r > radius (at least 16 of them); inside: r <= radius.
    "contrast" (thesis eq. 49 with a dataset denominator): I' = (I - background mean of the image) / scale, where
    `scale` is the dataset mean contrast from `fit_normalisation` (fitted on these images when None). Output unit:
    the mean particle contrast, so the background averages 0 and a typical particle 1.
    "standard" (RELION-style): I' = (I - background mean) / background standard deviation (population std), both
    per image; `scale` is not used. Output unit: the background noise standard deviation.
    Returns the same dtype as `images`.
    """
    _check_method(method)
    if method == "contrast":
        inside, background = _region_means(images, radius)
        scale = _contrast_scale(inside - background) if scale is None else scale
        if not (np.isfinite(scale) and scale > 0):
            raise InvalidValueError(f"contrast normalisation scale must be finite and > 0, got {scale}")
        return ((images.double() - background[:, None, None]) / scale).to(images.dtype)
    _check_images(images)
    outside = ~_particle_region(images.shape[-1], radius, images.device)
    noise = images.double()[:, outside]
    mean, std = noise.mean(1), noise.std(1, correction=0)
    if not bool((std > 0).all()):
        flat = int((std <= 0).nonzero()[0, 0])
        raise InvalidValueError(f"image {flat} has a constant background: cannot scale it to unit noise")
    return ((images.double() - mean[:, None, None]) / std[:, None, None]).to(images.dtype)


# ---------------------------------------------------------------- downsampling

def _check_downsampling(n: int, box: int, method: str) -> None:
    if method not in RESAMPLERS:
        raise InvalidValueError(f"unknown downsampling method {method!r}: choose one of {', '.join(RESAMPLERS)}")
    if not 1 <= box <= n:
        raise InvalidValueError(f"cannot downsample {n}² images to {box}²: the box must be between 1 and {n} pixels")


@functools.lru_cache(maxsize=8)
def _lanczos_matrix(n: int, box: int) -> torch.Tensor:
    """[box, n] float64 Lanczos-5 weights shrinking n samples to box (factor f = n / box).

    Output sample j sits at input coordinate n // 2 + (j - box // 2) f, so centre stays on centre. The kernel
    L(t) = sinc(t) sinc(t / a), |t| < a, is stretched by f (t = offset in input pixels / f: support a f input pixels
    each side, a low-pass at the new Nyquist); it is truncated at the image edge and each row is normalised to sum 1.
    """
    f = n / box
    centres = n // 2 + (torch.arange(box, dtype=torch.float64, device="cpu") - box // 2) * f
    t = (torch.arange(n, dtype=torch.float64, device="cpu")[None, :] - centres[:, None]) / f
    w = torch.sinc(t) * torch.sinc(t / LANCZOS_A) * (t.abs() < LANCZOS_A)
    return w / w.sum(1, keepdim=True)


def downsample(images: torch.Tensor, box: int, method: str = "fourier") -> torch.Tensor:
    """Resample images [..., N, N] to [..., box, box]; the pixel size grows from p to p N / box (mean kept).

    "fourier": crop the centred transform (`fourier_resize`). "lanczos": separable anti-aliased Lanczos-5,
    W @ image @ W^T with W from `_lanczos_matrix`. box == N returns the input itself; box > N is an error.
    """
    n = images.shape[-1]
    if images.dim() < 2 or images.shape[-2] != n:
        raise InvalidValueError(f"expected square images [..., N, N], got shape {tuple(images.shape)}")
    _check_downsampling(n, box, method)
    if box == n:
        return images
    if method == "fourier":
        return fourier_resize(images, box)
    w = _lanczos_matrix(n, box).to(images.device, images.dtype)
    return w @ images @ w.T


# ---------------------------------------------------------------- float16 cache

class ImageCache:
    """Read-only float16 images [n, box, box] memory-mapped from an .npy cache, served as float32 tensors.

    `scale` is the dataset normalisation scale (input units; 1.0 for "standard"); `meta` the whole sidecar.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = _read_sidecar(self.path)
        if self.meta is None:
            raise MissingDataError("no readable cache sidecar (.json) beside the image cache", self.path)
        try:
            self._images = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise InputFormatError(f"unreadable image cache ({e})", self.path) from None
        self.scale = float(self.meta["scale"])

    def __len__(self) -> int:
        return int(self._images.shape[0])

    @property
    def box(self) -> int:
        """Image size (pixels)."""
        return int(self._images.shape[-1])

    def __getitem__(self, positions) -> torch.Tensor:
        """Images at `positions` (numpy/tensor index array, 0-based) as float32 [m, box, box]."""
        if torch.is_tensor(positions):
            positions = positions.cpu().numpy()
        pos = np.atleast_1d(np.asarray(positions, np.int64))
        bad = pos[(pos < 0) | (pos >= len(self))]
        if bad.size:
            raise InvalidValueError(f"image position {int(bad[0])} out of range: the cache holds {len(self)} images", self.path)
        return torch.from_numpy(self._images[pos].astype(np.float32))


def _sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _read_sidecar(path: Path) -> dict | None:
    """The cache's sidecar contents, or None when missing or unreadable."""
    try:
        return json.loads(_sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None


def _read(stack, indices: np.ndarray) -> torch.Tensor:
    """Particles `indices` of `stack` as float32 [m, N, N]."""
    return torch.as_tensor(stack[indices], device="cpu").float()


def _source_fingerprint(stack, indices: np.ndarray) -> dict:
    """What identifies the cached particles: the stack's files (name, size, mtime) where it has them, its length,
    a hash of `indices`, and a hash of the first, middle and last cached images (catches a re-ordered stack)."""
    files = [Path(f) for f in getattr(stack, "files", [])]
    probe = indices[[0, indices.size // 2, -1]]
    return {
        "files": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
        "stack_length": len(stack),
        "indices_sha256": hashlib.sha256(indices.tobytes()).hexdigest(),
        "probe_sha256": hashlib.sha256(_read(stack, probe).numpy().tobytes()).hexdigest(),
    }


def _sample_scale(stack, indices: np.ndarray, radius: float, method: str, batch_size: int) -> float:
    """`fit_normalisation` over up to FIT_SAMPLE evenly spaced particles of `indices`, read in batches."""
    if method == "standard":
        return 1.0
    sample = indices[np.linspace(0, indices.size - 1, min(indices.size, FIT_SAMPLE)).round().astype(np.int64)]
    contrast = []
    for start in range(0, sample.size, batch_size):
        inside, background = _region_means(_read(stack, sample[start:start + batch_size]), radius)
        contrast.append(inside - background)
    return _contrast_scale(torch.cat(contrast))


def _fill(out: np.ndarray, stack, indices: np.ndarray, radius: float, method: str, scale: float,
          resample: str, batch_size: int, progress: bool, path: Path) -> None:
    """Normalise, downsample and store each batch into `out` (float16), refusing values beyond the float16 range."""
    with tqdm(total=indices.size, desc="cache images", unit="image", disable=not progress) as bar:
        for start in range(0, indices.size, batch_size):
            images = _read(stack, indices[start:start + batch_size])
            small = downsample(normalise(images, radius, method, scale), out.shape[-1], resample)
            peak = float(small.abs().max())
            if not peak <= FLOAT16_MAX:
                raise InvalidValueError(
                    f"normalised images reach {peak:.3g}, beyond the float16 range ±{FLOAT16_MAX:g}: "
                    "check the particle radius and normalisation method", path
                )
            out[start:start + len(small)] = small.numpy().astype(np.float16)
            bar.update(len(small))


def build_cache(stack, indices, path: str | Path, box: int, radius: float, method: str, resample: str,
                batch_size: int = 256, progress: bool = True) -> ImageCache:
    """Cache particles `indices` (1-D, in order) of `stack` as float16 [n, box, box] at `path` (.npy).

    Each image is normalised at its original size (`radius` in original pixels, dataset scale fitted on up to
    1000 evenly spaced particles) and then downsampled to `box` by `resample`. The .npy and its JSON sidecar are
    written atomically; an existing cache whose sidecar matches (parameters and source fingerprint) is reused.
    """
    path = Path(path)
    indices = np.asarray(indices.cpu() if torch.is_tensor(indices) else indices, np.int64)
    if indices.ndim != 1 or indices.size == 0:
        raise InvalidValueError(f"expected a non-empty 1-D array of particle indices, got shape {indices.shape}", path)
    _check_method(method)
    request = {"version": CACHE_VERSION, "box": int(box), "radius": float(radius), "method": method,
               "resample": resample, "n": int(indices.size), "source": _source_fingerprint(stack, indices)}
    old = _read_sidecar(path)
    if path.exists() and old is not None and {k: v for k, v in old.items() if k != "scale"} == request:
        return ImageCache(path)
    _check_downsampling(_read(stack, indices[:1]).shape[-1], box, resample)
    _sidecar_path(path).unlink(missing_ok=True)
    scale = _sample_scale(stack, indices, radius, method, batch_size)
    with atomic_path(path) as tmp:
        out = open_memmap(tmp, mode="w+", dtype=np.float16, shape=(indices.size, box, box))
        _fill(out, stack, indices, radius, method, scale, resample, batch_size, progress, path)
        out.flush()
        del out
    with atomic_path(_sidecar_path(path)) as tmp:
        tmp.write_text(json.dumps({**request, "scale": scale}, indent=1))
    return ImageCache(path)
