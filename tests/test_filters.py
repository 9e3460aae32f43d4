"""Fourier resampling, shells, radial averages and masks."""

from __future__ import annotations

import math

import pytest
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.filters import (
    distance_to_mask,
    fourier_resize,
    radial_average,
    radial_to_grid,
    shell_index,
    soft_mask,
    threshold_mask,
)
from cryoscope.physics.fourier import (
    centered_coords,
    fft2c,
    radial_index_2d,
    radial_index_3d,
)

D = torch.float64


@pytest.mark.parametrize("n,m", [(64, 40), (64, 33), (45, 32), (45, 27)])
def test_crop_then_pad_keeps_low_frequencies(n, m):
    g = torch.Generator().manual_seed(0)
    img = torch.randn(2, n, n, generator=g, dtype=D)
    back = fourier_resize(fourier_resize(img, m), n)
    F, G = fft2c(img), fft2c(back)
    low = (centered_coords(n, dtype=D).abs()[:, None] < m / 2) & (centered_coords(n, dtype=D).abs()[None, :] < m / 2)
    torch.testing.assert_close(G[:, low], F[:, low])
    high = (centered_coords(n, dtype=D).abs() > m / 2 + 0.5)
    assert float(G[:, high, :].abs().max()) < 1e-9


def test_resize_keeps_values_of_bandlimited_function_and_mean():
    # A sinusoid below the new Nyquist is re-sampled exactly; sample values are kept (RELION convention).
    n, m, p = 48, 32, 1.0
    x = centered_coords(n, dtype=D) * p
    f = 3 + torch.cos(2 * math.pi * 5 * x / (n * p))[None, :] * torch.sin(2 * math.pi * 3 * x / (n * p))[:, None]
    small = fourier_resize(f, m)
    xs = centered_coords(m, dtype=D) * p * n / m
    ref = 3 + torch.cos(2 * math.pi * 5 * xs / (n * p))[None, :] * torch.sin(2 * math.pi * 3 * xs / (n * p))[:, None]
    torch.testing.assert_close(small, ref)
    vol = torch.randn(24, 24, 24, dtype=D) + 2
    big = fourier_resize(vol, 40, ndim=3)
    assert float(big.mean()) == pytest.approx(float(vol.mean()), rel=1e-12)
    torch.testing.assert_close(fourier_resize(big, 24, ndim=3), vol)  # padding then cropping is exact
    assert fourier_resize(torch.randn(3, 30, 50, dtype=D), (20, 40)).shape == (3, 20, 40)


def test_shell_index_matches_fourier_module():
    assert torch.equal(shell_index(17, 2), radial_index_2d(17))
    assert torch.equal(shell_index(16, 3), radial_index_3d(16))


@pytest.mark.parametrize("ndim", [2, 3])
def test_radial_average_recovers_radial_function(ndim):
    n = 32
    grid = torch.stack(torch.meshgrid(*([centered_coords(n, dtype=D)] * ndim), indexing="ij"))
    r = grid.norm(dim=0)
    idx = shell_index(n, ndim)
    # A function of the shell index round(r) is recovered exactly (real and complex) ...
    step = torch.stack([torch.cos(0.3 * idx.to(D)), torch.exp(-idx.to(D) / 4)])
    expect = torch.stack([torch.cos(0.3 * torch.arange(n // 2 + 1, dtype=D)), torch.exp(-torch.arange(n // 2 + 1, dtype=D) / 4)])
    torch.testing.assert_close(radial_average(step, ndim), expect)
    torch.testing.assert_close(radial_average(step * (1 + 2j), ndim), expect * (1 + 2j))
    # ... a smooth one to within its variation over a shell of width 1.
    prof = radial_average(2 + r, ndim)
    dev = (prof - (2 + torch.arange(n // 2 + 1, dtype=D))).abs()
    assert float(dev.max()) < 0.3 and float(dev.mean()) < 0.12  # lattice points within a shell of half-width 0.5


def test_radial_to_grid_interpolates_profile():
    prof = torch.arange(17, dtype=D) ** 2 / 10
    grid = radial_to_grid(prof, 32)
    r = torch.stack(torch.meshgrid(centered_coords(32, dtype=D), centered_coords(32, dtype=D), indexing="ij")).norm(dim=0)
    on_shell = (r - r.round()).abs() < 1e-12
    torch.testing.assert_close(grid[on_shell], (r[on_shell] ** 2 / 10).clamp(max=25.6))
    torch.testing.assert_close(radial_average(radial_to_grid(torch.linspace(1, 2, 17, dtype=D), 32))[:5], torch.linspace(1, 2, 17, dtype=D)[:5], atol=0.02, rtol=0)


def test_soft_mask_values_and_smooth_edge():
    m = soft_mask(64, radius=20, edge_width=6, dtype=D)
    r = torch.stack(torch.meshgrid(centered_coords(64, dtype=D), centered_coords(64, dtype=D), indexing="ij")).norm(dim=0)
    assert bool((m[r <= 20] == 1).all()) and bool((m[r >= 26] == 0).all())
    edge = (r > 20) & (r < 26)
    assert bool(((m[edge] > 0) & (m[edge] < 1)).all())
    torch.testing.assert_close(m[32, 32 + 23], torch.tensor(0.5, dtype=D))  # half-way down the cosine
    prof = m[32, 32:]  # monotone, and the largest step is pi/2/width of the unit height
    assert bool((torch.diff(prof) <= 0).all()) and float(-torch.diff(prof).min()) <= math.pi / 2 / 6 + 1e-12
    v = soft_mask(33, 10, 0, ndim=3)
    assert v.shape == (33, 33, 33) and float(v.sum()) == pytest.approx(4 / 3 * math.pi * 10**3, rel=0.03)
    with pytest.raises(InvalidValueError):
        soft_mask(32, -1)


def test_distance_transform_is_euclidean():
    b = torch.zeros(21, 21, 21, dtype=torch.bool)
    b[10, 10, 10] = True
    b[3, 15, 4] = True
    d = distance_to_mask(b)
    z, y, x = torch.meshgrid(*([torch.arange(21, dtype=D)] * 3), indexing="ij")
    ref = torch.minimum(((z - 10) ** 2 + (y - 10) ** 2 + (x - 10) ** 2).sqrt(), ((z - 3) ** 2 + (y - 15) ** 2 + (x - 4) ** 2).sqrt())
    torch.testing.assert_close(d, ref)


def test_threshold_mask_dilates_and_softens():
    n = 40
    r = torch.stack(torch.meshgrid(*([centered_coords(n, dtype=D)] * 3), indexing="ij")).norm(dim=0)
    vol = torch.exp(-(r**2) / (2 * 5**2))  # vol >= exp(-1/2) inside r <= 5
    m = threshold_mask(vol, math.exp(-0.5), extend=3, soft_edge=4)
    assert bool((m[r <= 7.5] == 1).all()) and bool((m[r >= 13] == 0).all())  # lattice: distances within 0.5 px
    edge = (r > 9) & (r < 11)
    assert bool(((m[edge] > 0) & (m[edge] < 1)).all())
    assert m.dtype == D and float(m.max()) == 1 and float(m.min()) == 0
    with pytest.raises(InvalidValueError):
        threshold_mask(vol, 2.0)
