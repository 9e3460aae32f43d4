"""VAE-GAN preprocessing: normalisation puts particles in known units, Lanczos downsampling samples a band-limited
image at the mapped coordinates and suppresses aliasing, and the float16 cache round-trips, is reused and rebuilt."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.io.mrc import ParticleStack, write_stack
from cryoscope.vaegan.preprocess import ImageCache, build_cache, downsample, fit_normalisation, normalise


pytestmark = pytest.mark.usefixtures("one_thread")  # many small steps: see conftest


def _radius(n: int) -> torch.Tensor:
    """[n, n] distance (pixels) from index n // 2."""
    c = torch.arange(n, dtype=torch.float64) - n // 2
    return torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)


def _discs(n_images: int, box: int, radius: float, contrast: float, noise: float, seed: int = 0) -> torch.Tensor:
    """Discs of height `contrast` inside `radius` px on a background level differing per image, plus white noise."""
    g = torch.Generator().manual_seed(seed)
    levels = 3.0 + torch.rand(n_images, 1, 1, generator=g, dtype=torch.float64) * 4
    disc = (_radius(box) <= radius).double() * contrast
    return levels + disc + noise * torch.randn(n_images, box, box, generator=g, dtype=torch.float64)


def _blob(n: int, sigma: float, centre: tuple[float, float], ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Gaussian of `sigma` px at input pixel (n // 2 + centre) sampled at input coordinates ys x xs."""
    dy, dx = ys[:, None] - n // 2 - centre[0], xs[None, :] - n // 2 - centre[1]
    return torch.exp(-(dy**2 + dx**2) / (2 * sigma**2))


def _mapped(n: int, box: int) -> torch.Tensor:
    """Input coordinate of each output pixel: n // 2 + (j - box // 2) n / box."""
    return n // 2 + (torch.arange(box, dtype=torch.float64) - box // 2) * n / box


# ---------------------------------------------------------------- normalisation

@pytest.mark.parametrize("box", [64, 63])
def test_contrast_normalisation_puts_the_background_at_0_and_the_particle_at_1(box):
    radius, contrast = 20, 0.5
    images = _discs(8, box, radius, contrast, noise=0.01)
    scale = fit_normalisation(images, radius, "contrast")
    assert scale == pytest.approx(contrast, rel=0.01)
    out = normalise(images, radius, "contrast", scale)
    inside = _radius(box) <= radius
    assert out[:, inside].mean(1).sub(1).abs().max() < 0.01
    assert out[:, ~inside].mean(1).abs().max() < 1e-6


def test_standard_normalisation_gives_unit_background_noise_and_the_particle_in_noise_units():
    box, radius, contrast, sigma = 64, 20, 5.0, 2.5
    images = _discs(6, box, radius, contrast, noise=sigma)
    out = normalise(images, radius, "standard")
    outside = _radius(box) > radius
    assert out[:, outside].mean(1).abs().max() < 1e-9
    assert out[:, outside].std(1, correction=0).sub(1).abs().max() < 1e-9
    assert out[:, ~outside].mean(1).mean() == pytest.approx(contrast / sigma, rel=0.05)
    assert fit_normalisation(images, radius, "standard") == 1.0


@pytest.mark.parametrize("case, match", [
    (lambda im: normalise(im, 10, "zscore"), "unknown normalisation"),
    (lambda im: normalise(im, 31, "standard"), "background pixels"),
    (lambda im: normalise(torch.where(im > 5, torch.nan, im), 10, "standard"), "NaN"),
    (lambda im: fit_normalisation(-im, 10, "contrast"), "standard"),
])
def test_normalisation_refuses_bad_input_with_a_one_line_error(case, match):
    images = _discs(2, 32, 10, 1.0, noise=0.1)
    with pytest.raises(InvalidValueError, match=match) as err:
        case(images)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- downsampling

@pytest.mark.parametrize("n, box", [(128, 64), (101, 64)])
@pytest.mark.parametrize("centre", [(0.0, 0.0), (7.3, -5.1)])
def test_lanczos_samples_a_smooth_blob_at_the_mapped_coordinates(n, box, centre):
    sigma, grid = 4.0, torch.arange(n, dtype=torch.float64)
    out = downsample(_blob(n, sigma, centre, grid, grid)[None], box, "lanczos")[0]
    exact = _blob(n, sigma, centre, _mapped(n, box), _mapped(n, box))
    assert float((out - exact).abs().max()) < 0.01 * float(exact.max())
    if centre == (0.0, 0.0):
        assert divmod(int(out.argmax()), box) == (box // 2, box // 2)
    fourier = downsample(_blob(n, sigma, centre, grid, grid)[None], box, "fourier")[0]
    assert float((out - fourier).abs().max()) < 0.03 * float(fourier.max())


@pytest.mark.parametrize("n, box", [(128, 64), (100, 64)])
def test_lanczos_suppresses_a_checkerboard_above_the_new_nyquist_and_keeps_a_constant(n, box):
    i = torch.arange(n)
    checkerboard = ((-1.0) ** (i[:, None] + i[None, :])).double()[None]
    out = downsample(checkerboard, box, "lanczos")
    assert float(out.pow(2).mean().sqrt()) < 0.1  # input RMS is 1
    constant = downsample(torch.full((1, n, n), 2.5, dtype=torch.float64), box, "lanczos")
    assert float((constant - 2.5).abs().max()) < 1e-12


def test_downsampling_to_the_same_box_is_the_identity_and_upsampling_is_refused():
    images = torch.randn(2, 32, 32)
    assert downsample(images, 32, "lanczos") is images
    with pytest.raises(InvalidValueError, match="cannot downsample"):
        downsample(images, 48, "lanczos")


# ---------------------------------------------------------------- float16 cache

class CountingStack:
    """Particle images held in memory, counting how many are read."""

    def __init__(self, images: torch.Tensor):
        self.images, self.reads = images.float(), 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: np.ndarray) -> torch.Tensor:
        self.reads += np.atleast_1d(index).size
        return self.images[torch.as_tensor(index)]


N_IMG, BOX, RADIUS = 40, 32, 10


@pytest.fixture
def stack() -> CountingStack:
    return CountingStack(_discs(N_IMG + 5, BOX, RADIUS, 2.0, noise=0.5))


def _build(stack, path, box=16, resample="lanczos", method="contrast") -> ImageCache:
    return build_cache(stack, np.arange(N_IMG), path, box, RADIUS, method, resample, batch_size=16, progress=False)


def test_cache_round_trips_to_float16_precision_and_leaves_no_temporary_files(stack, tmp_path):
    cache = _build(stack, tmp_path / "cache.npy")
    images = stack.images[:N_IMG]
    scale = fit_normalisation(images, RADIUS, "contrast")
    expected = downsample(normalise(images, RADIUS, "contrast", scale), 16, "lanczos")
    assert (len(cache), cache.box) == (N_IMG, 16)
    assert cache.scale == pytest.approx(scale, rel=1e-6)
    got = cache[torch.arange(N_IMG)]
    assert got.dtype == torch.float32 and got.shape == (N_IMG, 16, 16)
    assert float((got - expected).abs().max()) < 1e-3 * float(expected.abs().max())
    assert torch.equal(cache[np.array([3, 1])], got[[3, 1]])
    assert sorted(os.listdir(tmp_path)) == ["cache.json", "cache.npy"]


def test_cache_is_reused_when_the_request_matches_and_rebuilt_when_it_differs(stack, tmp_path):
    path = tmp_path / "cache.npy"
    _build(stack, path)
    first = path.stat().st_mtime_ns, path.stat().st_ino
    stack.reads = 0
    _build(stack, path)
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == first
    assert stack.reads < N_IMG  # only the fingerprint's few probe images
    lanczos = ImageCache(path)[np.arange(N_IMG)]
    fourier = _build(stack, path, resample="fourier")
    assert path.stat().st_ino != first[1]
    assert not torch.equal(fourier[np.arange(N_IMG)], lanczos)
    assert _build(stack, path, box=8).box == 8
    assert sorted(os.listdir(tmp_path)) == ["cache.json", "cache.npy"]


def test_cache_of_a_particle_stack_is_rebuilt_when_the_stack_file_changes(tmp_path):
    mrcs = tmp_path / "particles.mrcs"
    images = _discs(12, BOX, RADIUS, 2.0, noise=0.5).float()
    write_stack(mrcs, images, 1.5)
    path = tmp_path / "cache" / "images.npy"
    before = build_cache(ParticleStack.open(mrcs), np.arange(12), path, 16, RADIUS, "standard", "fourier", progress=False)[np.arange(12)]
    write_stack(mrcs, images.flip(0), 1.5)
    after = build_cache(ParticleStack.open(mrcs), np.arange(12), path, 16, RADIUS, "standard", "fourier", progress=False)
    assert torch.allclose(after[np.arange(12)], before.flip(0), atol=2e-3)


def test_cache_refuses_out_of_range_positions_naming_the_file(stack, tmp_path):
    cache = _build(stack, tmp_path / "cache.npy")
    with pytest.raises(InvalidValueError, match="out of range") as err:
        cache[np.array([0, N_IMG])]
    assert "cache.npy" in str(err.value) and "\n" not in str(err.value)


def test_cache_refuses_values_beyond_float16_instead_of_storing_inf(stack, tmp_path):
    stack.images[7, BOX // 2, BOX // 2] = 1e7  # a hot pixel 2e7 noise standard deviations high
    with pytest.raises(InvalidValueError, match="float16"):
        _build(stack, tmp_path / "cache.npy", method="standard")
    assert os.listdir(tmp_path) == []
