"""FSC / FRC statistics, resolution interpolation and the Rosenthal-Henderson relation."""

from __future__ import annotations

import math

import pytest
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.fourier import fft3c, ifft3c, radial_index_3d
from cryoscope.validation.fsc import (
    frc,
    fsc,
    fsc_truth_from_half,
    fsc_weighting,
    resolution_at,
    shell_frequencies,
)

N = 32


def _shell_counts(n: int) -> torch.Tensor:
    return torch.bincount(radial_index_3d(n).flatten())[: n // 2 + 1].double()


def _filtered(noise: torch.Tensor, amplitude_per_shell: torch.Tensor) -> torch.Tensor:
    """White noise filtered by an amplitude that is constant on each shell round(|k|)."""
    idx = radial_index_3d(noise.shape[-1]).clamp(max=amplitude_per_shell.numel() - 1)
    return ifft3c(fft3c(noise) * amplitude_per_shell[idx]).real


def test_fsc_of_map_with_itself_is_one():
    v = torch.randn(N, N, N, dtype=torch.float64)
    assert torch.allclose(fsc(v, v), torch.ones(N // 2 + 1, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(fsc(v, 3 * v + 0.0), torch.ones(N // 2 + 1, dtype=torch.float64), atol=1e-12)


def test_fsc_of_independent_noise_is_within_three_sigma_of_zero():
    a, b = torch.randn(2, N, N, N, dtype=torch.float64)
    curve = fsc(a, b)
    sigma = 1 / torch.sqrt(_shell_counts(N))
    assert (curve[1:].abs() < 3 * sigma[1:]).all(), (curve / sigma)[1:]


def test_fsc_matches_spectral_snr():
    # half maps = truth + independent noise; SNR per shell known exactly: FSC -> SNR / (1 + SNR)
    shells = torch.arange(N // 2 + 1, dtype=torch.float64)
    snr = 20 * torch.exp(-shells / 3)
    truth = _filtered(torch.randn(N, N, N, dtype=torch.float64), snr.sqrt())
    h1 = truth + torch.randn(N, N, N, dtype=torch.float64)
    h2 = truth + torch.randn(N, N, N, dtype=torch.float64)
    curve = fsc(h1, h2)
    expected = snr / (1 + snr)
    tol = 4 / torch.sqrt(_shell_counts(N))
    assert ((curve - expected)[2:].abs() < tol[2:]).all(), torch.stack([curve, expected])

    # Rosenthal & Henderson: FSC(full map, truth) = sqrt(2 FSC_half / (1 + FSC_half))
    full = (h1 + h2) / 2
    predicted = fsc_truth_from_half(curve)
    assert ((fsc(full, truth) - predicted)[2:].abs() < tol[2:]).all()
    assert torch.equal(fsc_weighting(curve), predicted)


def test_truth_relation_clips_negative_values():
    f = torch.tensor([1.0, 0.5, 0.0, -0.2])
    w = fsc_truth_from_half(f)
    assert torch.allclose(w, torch.tensor([1.0, math.sqrt(2 / 3), 0.0, 0.0]))


def test_mask_restricts_the_comparison():
    c = torch.arange(N, dtype=torch.float64) - N // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    inside = (x**2 + y**2 + z**2 < 8**2).double()
    common = torch.randn(N, N, N, dtype=torch.float64)
    a = common * inside + torch.randn(N, N, N, dtype=torch.float64) * (1 - inside)
    b = common * inside + torch.randn(N, N, N, dtype=torch.float64) * (1 - inside)
    assert torch.allclose(fsc(a, b, mask=inside), torch.ones(N // 2 + 1, dtype=torch.float64), atol=1e-12)
    assert fsc(a, b)[4:].max() < 0.5


def test_frc_is_batched_and_matches_single_images():
    imgs = torch.randn(3, 24, 24, dtype=torch.float64)
    other = imgs + 0.5 * torch.randn(3, 24, 24, dtype=torch.float64)
    batch = frc(imgs, other)
    assert batch.shape == (3, 13)
    for i in range(3):
        assert torch.allclose(batch[i], frc(imgs[i], other[i]))
    assert torch.allclose(frc(imgs, imgs), torch.ones(3, 13, dtype=torch.float64))
    # corr(s, s + n) with white noise of variance 1/4: 1 / sqrt(1 + 0.25)
    assert abs(float(batch[:, 2:].mean()) - 1 / math.sqrt(1.25)) < 0.02


def test_resolution_interpolates_first_crossing():
    box, voxel = 20, 1.5
    curve = 1 - 0.1 * torch.arange(11, dtype=torch.float64)  # shell i at i / 20 cycles/pixel
    f05, a05 = resolution_at(curve, 0.5, box, voxel)
    assert f05 == pytest.approx(5 / 20) and a05 == pytest.approx(voxel / 0.25)
    f, a = resolution_at(curve, 0.143, box, voxel)
    assert f == pytest.approx(8.57 / 20) and a == pytest.approx(voxel * 20 / 8.57)
    # a later rise above the threshold does not matter: the first crossing counts
    bumpy = curve.clone()
    bumpy[9] = 0.9
    assert resolution_at(bumpy, 0.5, box)[0] == pytest.approx(0.25)
    assert resolution_at(curve, 0.5, box)[1] is None


def test_resolution_of_curve_that_never_crosses_is_nyquist():
    f, a = resolution_at(torch.ones(17), 0.143, 32, 2.0)
    assert f == pytest.approx(0.5) and a == pytest.approx(4.0)
    f, a = resolution_at(torch.tensor([0.1, 0.05, 0.0]), 0.143, 4, 1.0)
    assert f == 0 and a == math.inf


def test_shell_frequencies_and_errors():
    assert torch.allclose(shell_frequencies(10), torch.arange(6, dtype=torch.float64) / 10)
    with pytest.raises(InvalidValueError):
        fsc(torch.zeros(8, 8, 8), torch.zeros(8, 8, 9))
    with pytest.raises(InvalidValueError):
        resolution_at(torch.ones(1), 0.5, 2)
