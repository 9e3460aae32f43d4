"""Noise: SNR definition, coloured noise spectra, spectrum estimation, real background patches."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import torch

from cryoscope.errors import InputFormatError, InvalidValueError, MissingDataError
from cryoscope.physics.filters import fourier_resize, radial_average, radial_to_grid
from cryoscope.physics.fourier import fft2c
from cryoscope.physics.noise import (
    add_background_noise,
    add_white_noise,
    coloured_noise,
    estimate_noise_spectrum,
    load_background_patches,
    masked_variance,
    noise_std_for_snr,
    particle_mask,
    snr_ratio,
)
from cryoscope.physics.poses import uniform_rotations
from cryoscope.representations.gaussian_mixture import GaussianMixture

D = torch.float64


def _clean(n=64, box=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    gm = GaussianMixture((torch.rand(30, 3, generator=g, dtype=D) - 0.5) * 20, 1.0, 3.0, box=box, voxel_size=1.0)  # |r| < 26 Å
    with torch.no_grad():
        return gm.project(uniform_rotations(n, generator=g, dtype=D))


def test_white_noise_hits_snr_inside_mask():
    clean = _clean()
    g = torch.Generator().manual_seed(1)
    noisy, std = add_white_noise(clean, -10.0, radius=20, db=True, generator=g)
    mask = particle_mask(64, 20, 3.0, dtype=D)
    assert snr_ratio(-10, db=True) == pytest.approx(0.1)
    signal = masked_variance(clean, mask).mean()
    assert float(signal / std**2) == pytest.approx(0.1, rel=1e-12)
    measured = (noisy - clean).var()
    assert float(measured / std**2) == pytest.approx(1.0, abs=0.01)
    # Weighted variance: a constant image has none; a +-1 checkerboard has 1.
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 2.0 - 1
    torch.testing.assert_close(masked_variance(torch.stack([checker.double(), torch.full((64, 64), 3.0, dtype=D)]), mask), torch.tensor([1.0, 0.0], dtype=D), atol=1e-3, rtol=0)
    assert float(noise_std_for_snr(clean, 1.0, mask)) == pytest.approx(float(signal.sqrt()))
    with pytest.raises(InvalidValueError):
        snr_ratio(0.0)


def test_coloured_noise_matches_target_spectrum():
    box = 64
    s = torch.arange(box // 2 + 1, dtype=D)
    target = 1 / (1 + (s / 6) ** 2) + 0.1
    g = torch.Generator().manual_seed(2)
    x = coloured_noise(500, box, target, generator=g, dtype=D)
    F = fft2c(x)
    measured = radial_average((F.abs() ** 2).mean(0)) / box**2
    rel = (measured / target - 1)[2:]
    assert float(rel.abs().max()) < 0.05
    # Per-pixel variance is the mean of P over the grid (Parseval).
    assert float(x.var()) == pytest.approx(float(radial_to_grid(target, box).mean()), rel=0.02)


def test_estimate_noise_spectrum_ignores_particle():
    box = 64
    s = torch.arange(box // 2 + 1, dtype=D)
    target = 2 / (1 + (s / 5) ** 2) + 0.3
    g = torch.Generator().manual_seed(3)
    noise = coloured_noise(400, box, target, generator=g, dtype=D)
    clean = 50 * _clean(400, box) / _clean(1, box).max()
    mask = particle_mask(box, 24, 4, dtype=D)  # the clean projections vanish outside r ~ 26 px
    est = estimate_noise_spectrum(clean + noise, mask)
    est_noise_only = estimate_noise_spectrum(noise, mask)
    torch.testing.assert_close(est, est_noise_only, rtol=1e-3, atol=0)
    rel = (est / target - 1)[3:]
    assert float(rel.abs().max()) < 0.1
    white = estimate_noise_spectrum(torch.randn(400, box, box, generator=g, dtype=D) * 1.7, mask)
    assert float((white[2:] / 1.7**2 - 1).abs().max()) < 0.06  # shell 1 is biased by the mean removal


def test_background_patches_load_resample_and_snr(data_dir):
    paths = sorted((data_dir / "background").glob("*.mrc"))
    assert len(paths) >= 2
    with pytest.raises(MissingDataError):
        load_background_patches(paths)  # the headers carry no pixel size
    bg = load_background_patches(paths, pixel_size=1.0)
    g = torch.Generator().manual_seed(4)
    crops = bg.sample(200, 48, 1.0, generator=g, dtype=D)
    assert crops.shape == (200, 48, 48)
    torch.testing.assert_close(crops.mean((-1, -2)), torch.zeros(200, dtype=D), atol=1e-10, rtol=0)
    torch.testing.assert_close(crops.var((-1, -2), unbiased=False), torch.ones(200, dtype=D))
    # At the patches' own pixel size a crop is a normalised sub-array of one patch.
    c0 = crops[0]
    found = False
    for p in bg.patches:
        windows = p.double().unfold(0, 48, 1).unfold(1, 48, 1)
        w = (windows - windows.mean((-1, -2), keepdim=True)) / windows.std((-1, -2), unbiased=False, keepdim=True)
        found |= bool(((w - c0).abs().amax((-1, -2)) < 1e-5).any())
    assert found
    # Coarser pixels: the patches are Fourier-resampled (128 px at 1 Å -> 64 px at 2 Å).
    coarse = bg.sample(50, 48, 2.0, generator=g, dtype=D)
    ref = fourier_resize(bg.patches[0].double(), 64)
    assert coarse.shape == (50, 48, 48) and ref.shape == (64, 64)
    clean = _clean(20, 48)
    noisy, std = add_background_noise(clean, bg, 0.05, 1.0, radius=18, generator=g)
    mask = particle_mask(48, 18, 3.0, dtype=D)
    assert float(masked_variance(clean, mask).mean() / std**2) == pytest.approx(0.05)
    torch.testing.assert_close(((noisy - clean) ** 2).mean((-1, -2)), std**2 * torch.ones(20, dtype=D))
    with pytest.raises(InvalidValueError):
        bg.sample(2, 48, 3.0)  # 128 px at 1 Å is 43 px at 3 Å


def test_background_loading_errors(tmp_path):
    with pytest.raises(MissingDataError):
        load_background_patches([tmp_path / "missing.mrc"])
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"not an mrc file at all" * 10)
    with pytest.raises(InputFormatError):
        load_background_patches([bad], pixel_size=1.0)
    good = tmp_path / "px.mrc"
    with mrcfile.new(good) as m:
        m.set_data(np.zeros((32, 32), dtype=np.float32))
        m.voxel_size = 1.3
    assert load_background_patches([good]).pixel_size == pytest.approx(1.3)
