"""In-plane (psi) scoring by polar resampling + FFT along the angle (cryoscope.likelihood.inplane)."""

from __future__ import annotations

import pytest
import torch

import cryoscope.likelihood.inplane as inplane
from cryoscope.errors import InvalidValueError
from cryoscope.geometry.sampling import healpix_grid
from cryoscope.likelihood.inplane import (
    healpix_base_rotations,
    inplane_rotations,
    polar_grid,
    score_poses_inplane,
)
from cryoscope.likelihood.noise import cutoff_mask, n_shells
from cryoscope.likelihood.scoring import best_poses, score_poses, shift_grid
from cryoscope.physics.ctf import CTFParams, compute_ctf
from cryoscope.physics.fourier import fft2c, fft3c, ifft3c
from cryoscope.physics.projection import fourier_volume, slice_fourier_volume
from cryoscope.physics.shift import phase_ramp

PIXEL = 3.0


def smooth_map(box: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Gaussian random field low-passed at box / 10 cycles, inside a soft sphere of radius box / 3."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(box, box, box, generator=g, dtype=torch.float64)
    k = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    r = (x**2 + y**2 + z**2).sqrt()
    v = ifft3c(fft3c(v) * torch.exp(-(r**2) / (2 * (box / 10) ** 2))).real
    return (v * torch.sigmoid((box / 3 - r) / 1.5)).to(dtype)


def noisy_images(fvol, rotations, shifts, box: int, n: int, seed: int = 1):
    """Images C T_{-t} S_A + white noise at unit SNR at random grid poses; returns (Y, CTF params, CTF grid, sigma2, truth)."""
    g = torch.Generator().manual_seed(seed)
    r_true = torch.randint(rotations.shape[0], (n,), generator=g)
    t_true = torch.randint(shifts.shape[0], (n,), generator=g)
    params = CTFParams.create(
        torch.linspace(8000, 20000, n, dtype=torch.float64),
        torch.linspace(6000, 15000, n, dtype=torch.float64),
        torch.linspace(0, 170, n, dtype=torch.float64),
    )
    C = compute_ctf(params, box, PIXEL).to(fvol.real.dtype)
    clean = C * slice_fourier_volume(fvol, rotations[r_true], box) * phase_ramp(-shifts[t_true], box)
    noise = fft2c(torch.randn(n, box, box, generator=g, dtype=fvol.real.dtype))
    noise = noise * (clean.abs().pow(2).mean() / noise.abs().pow(2).mean()).sqrt()
    sigma2 = torch.full((n_shells(box),), float(noise.abs().pow(2).mean()), dtype=fvol.real.dtype)
    return clean + noise, params, C, sigma2, r_true * shifts.shape[0] + t_true


@pytest.mark.parametrize("box", [32, 33])
def test_scores_agree_with_brute_force(box):
    fvol = fourier_volume(smooth_map(box))
    base, n_psi = healpix_base_rotations(1)
    rotations = inplane_rotations(base, n_psi)
    shifts = shift_grid(1.0, 1.0)
    n, cutoff = 12, 0.25
    Y, params, C, sigma2, _ = noisy_images(fvol, rotations, shifts, box, n)
    brute = score_poses(fvol, Y, C, rotations, shifts, sigma2, cutoff).reshape(n, -1)
    for ctf, pixel in ((C, None), (params, PIXEL)):
        polar = score_poses_inplane(fvol, Y, ctf, base, n_psi, shifts, sigma2, cutoff, pixel_size=pixel)
        assert polar.shape == (n, base.shape[0], n_psi, shifts.shape[0])
        polar = polar.reshape(n, -1)
        corr = torch.stack([torch.corrcoef(torch.stack([brute[i], polar[i]]))[0, 1] for i in range(n)])
        assert float(corr.min()) > 0.99
        assert float((brute.argmax(1) == polar.argmax(1)).float().mean()) >= 0.9


def test_best_pose_matches_truth_and_plugs_into_best_poses():
    box = 32
    fvol = fourier_volume(smooth_map(box, seed=3))
    base, n_psi = healpix_base_rotations(1)
    rotations = inplane_rotations(base, n_psi)
    shifts = shift_grid(1.0, 1.0)
    Y, _, C, sigma2, truth = noisy_images(fvol, rotations, shifts, box, 10, seed=4)
    ll = score_poses_inplane(fvol, Y, C, base, n_psi, shifts, sigma2, 0.25).reshape(10, -1, shifts.shape[0])
    est = best_poses(ll, rotations, shifts)
    found = est.rotation_index * shifts.shape[0] + est.shift_index
    assert float((found == truth).float().mean()) >= 0.9
    assert torch.allclose(est.rotations, rotations[truth // shifts.shape[0]])


def test_rot90_of_image_shifts_best_psi_by_quarter_turn():
    # torch.rot90 on [y, x] gives y'(x, y) = y(-y', x') about the centre of an odd box, so
    # Y'(r, phi) = Y(r, phi + 90 deg); with Y = S_0(r, phi + psi) the rotated image has psi + 90 deg:
    # index j -> j + n_psi / 4 (the polar samples permute exactly when n_angles is a multiple of 4).
    box, n_psi = 33, 12
    fvol = fourier_volume(smooth_map(box, seed=5, dtype=torch.float64))
    base, _ = healpix_base_rotations(0, torch.float64)
    truth = torch.tensor([3 * n_psi + 1, 7 * n_psi + 5, 10 * n_psi + 10])
    img = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(slice_fourier_volume(fvol, inplane_rotations(base, n_psi)[truth], box), dim=(-2, -1))), dim=(-2, -1)).real
    rotated = torch.rot90(img, 1, dims=(-2, -1))
    zero = torch.zeros(1, 2, dtype=torch.float64)
    sigma2 = torch.ones(n_shells(box), dtype=torch.float64)
    ll = score_poses_inplane(fvol, fft2c(img), None, base, n_psi, zero, sigma2, 0.3)
    ll_rot = score_poses_inplane(fvol, fft2c(rotated), None, base, n_psi, zero, sigma2, 0.3)
    assert torch.allclose(ll_rot, torch.roll(ll, n_psi // 4, dims=2), rtol=1e-9, atol=1e-6 * float(ll.abs().max()))
    best = ll.reshape(3, -1).argmax(1)
    best_rot = ll_rot.reshape(3, -1).argmax(1)
    assert torch.equal(best, truth)
    assert torch.equal(best_rot // n_psi, truth // n_psi)
    assert torch.equal(best_rot % n_psi, (truth + n_psi // 4) % n_psi)


def test_psi_grids_that_are_multiples_agree_and_chunking_is_invisible(monkeypatch):
    box = 24
    fvol = fourier_volume(smooth_map(box, seed=6, dtype=torch.float64))
    base, _ = healpix_base_rotations(0, torch.float64)
    shifts = shift_grid(1.0, 1.0, torch.float64)
    g = torch.Generator().manual_seed(7)
    Y = fft2c(torch.randn(3, box, box, generator=g, dtype=torch.float64))
    C = compute_ctf(CTFParams.create(torch.tensor([9000.0, 15000.0, 21000.0], dtype=torch.float64)), box, PIXEL)
    sigma2 = torch.linspace(3.0, 1.0, n_shells(box), dtype=torch.float64) * box**2
    kw = dict(shifts=shifts, sigma2=sigma2, cutoff=0.4, n_angles=48)
    coarse = score_poses_inplane(fvol, Y, C, base, n_psi=8, **kw)
    fine = score_poses_inplane(fvol, Y, C, base, n_psi=24, **kw)
    assert torch.allclose(fine[:, :, ::3], coarse, rtol=1e-10, atol=1e-8)
    monkeypatch.setattr(inplane, "_CHUNK_VALUES", 1 << 10)
    assert torch.allclose(score_poses_inplane(fvol, Y, C, base, n_psi=24, **kw), fine, rtol=1e-10, atol=1e-8)


def test_grid_helpers():
    base, n_psi = healpix_base_rotations(1, torch.float64)
    assert torch.allclose(inplane_rotations(base, n_psi), healpix_grid(1), atol=1e-12)
    for box, cutoff in ((32, 0.25), (33, 0.3), (24, None)):
        grid = polar_grid(box, cutoff, dtype=torch.float64)
        # ring weights x samples = full-grid pixels inside the cutoff (polar sums of constants are exact)
        assert float((grid.weight * grid.n_angles).sum()) == pytest.approx(float(cutoff_mask(box, cutoff or 0.5).sum()))
        assert grid.n_angles % 4 == 0 and grid.points.shape == (grid.radius.numel(), grid.n_angles, 2)


def test_bad_input_is_rejected():
    box = 16
    fvol = fourier_volume(smooth_map(box))
    base, _ = healpix_base_rotations(0)
    Y = fft2c(torch.randn(2, box, box))
    shifts = torch.zeros(1, 2)
    sigma2 = torch.ones(n_shells(box))
    with pytest.raises(InvalidValueError):
        score_poses_inplane(fvol, Y, None, base, 0, shifts, sigma2)
    with pytest.raises(InvalidValueError):
        score_poses_inplane(fvol, Y, torch.ones(2, box, box + 1), base, 6, shifts, sigma2)
    with pytest.raises(InvalidValueError):
        score_poses_inplane(fvol, Y, CTFParams.create(torch.tensor([1e4, 1e4])), base, 6, shifts, sigma2)
    with pytest.raises(InvalidValueError):
        score_poses_inplane(fvol, Y, None, base, 6, shifts, sigma2, cutoff=0.7)
