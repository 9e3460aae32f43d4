"""Per-shell noise model, batched pose scoring, posteriors and pruning (cryoscope.likelihood)."""

from __future__ import annotations

import math

import pytest
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.sampling import healpix_grid, local_grid, random_rotations
from cryoscope.likelihood.noise import (
    estimate_noise_spectrum,
    gaussian_log_likelihood,
    n_shells,
)
from cryoscope.likelihood.scoring import (
    best_poses,
    pose_posterior,
    score_poses,
    shift_grid,
    significant_poses,
)
from cryoscope.physics.ctf import CTFParams, compute_ctf
from cryoscope.physics.forward import ImageFormation
from cryoscope.physics.fourier import fft2c
from cryoscope.physics.shift import translate
from cryoscope.representations.voxel import VoxelMap

BOX, VOXEL = 24, 4.0


def blob_map(box: int, seed: int = 0, n_blobs: int = 12, dtype=torch.float64) -> torch.Tensor:
    """Asymmetric map: a sum of Gaussian blobs (sigma 1.5 px) at seeded positions within box / 4 of the centre."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(n_blobs, 3, generator=g, dtype=dtype) - 0.5) * (box / 2)
    amp = 0.5 + torch.rand(n_blobs, generator=g, dtype=dtype)
    k = torch.arange(box, dtype=dtype) - box // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    pts = torch.stack([x, y, z], -1)
    d2 = ((pts[None] - centres[:, None, None, None]) ** 2).sum(-1)
    return (amp[:, None, None, None] * torch.exp(-d2 / (2 * 1.5**2))).sum(0)


def ctfs(n: int, box: int, dtype=torch.float64) -> torch.Tensor:
    df = torch.linspace(10000, 25000, n, dtype=dtype)
    return compute_ctf(CTFParams.create(df, dtype=dtype), box, VOXEL)


def test_noise_spectrum_of_white_noise_and_likelihood_normalisation():
    g = torch.Generator().manual_seed(1)
    s = 0.7
    noise = fft2c(s * torch.randn(400, BOX, BOX, generator=g, dtype=torch.float64))
    sigma2 = estimate_noise_spectrum(noise)
    # unnormalised FFT: E|F|^2 = N^2 s^2 in every shell
    assert torch.allclose(sigma2[1:], torch.full_like(sigma2[1:], BOX**2 * s**2), rtol=0.1)
    # E[-|r|^2 / (2 sigma2)] = -1/2 per full-grid pixel
    ll = gaussian_log_likelihood(noise, torch.zeros_like(noise), sigma2)
    assert float(ll.mean()) == pytest.approx(-(BOX**2) / 2, rel=0.02)
    with pytest.raises(InvalidValueError):
        gaussian_log_likelihood(noise, noise, sigma2[:-1])


def _setup(n_images: int, order: int = 0, seed: int = 0):
    vmap = VoxelMap(blob_map(BOX, seed), VOXEL)
    grid = healpix_grid(order)
    shifts = shift_grid(2.0, 1.0, torch.float64)
    g = torch.Generator().manual_seed(seed)
    r_true = torch.randint(grid.shape[0], (n_images,), generator=g)
    t_true = torch.randint(shifts.shape[0], (n_images,), generator=g)
    C = ctfs(n_images, BOX)
    clean = ImageFormation()(vmap, grid[r_true], origins_px=shifts[t_true], ctf=C)
    return vmap, grid, shifts, r_true, t_true, C, clean


def test_noiseless_best_pose_is_exact_and_scores_match_naive_loop():
    vmap, grid, shifts, r_true, t_true, C, clean = _setup(3)
    Y = fft2c(clean)
    sigma2 = torch.linspace(2.0, 0.5, n_shells(BOX), dtype=torch.float64)
    cutoff = 0.3
    ll = score_poses(vmap.fourier_volume(), Y, C, grid, shifts, sigma2, cutoff)
    assert ll.shape == (3, grid.shape[0], shifts.shape[0])
    est = best_poses(ll, grid, shifts)
    assert torch.equal(est.rotation_index, r_true) and torch.equal(est.shift_index, t_true)
    assert torch.allclose(est.max_log_likelihood, torch.zeros(3, dtype=torch.float64), atol=1e-8)
    # naive: model = T_{-t} C S_r on the full grid, one pose at a time
    S = vmap.slice(grid)
    for i in range(3):
        for r in range(0, grid.shape[0], 7):
            for t in range(shifts.shape[0]):
                model = translate(C[i] * S[r], -shifts[t])
                ref = gaussian_log_likelihood(Y[i : i + 1], model[None], sigma2, cutoff)
                assert float(ll[i, r, t]) == pytest.approx(float(ref), rel=1e-9, abs=1e-9)


def test_local_grids_score_like_the_shared_grid():
    vmap, grid, shifts, r_true, t_true, C, clean = _setup(4, seed=2)
    Y = fft2c(clean)
    sigma2 = torch.ones(n_shells(BOX), dtype=torch.float64)
    centres = random_rotations(4, torch.Generator().manual_seed(3), torch.float64)
    local = local_grid(centres, 20.0, 10.0)  # [4, K, 3, 3]
    per_image_shifts = shifts[None] + torch.tensor([[0.5, -0.25]], dtype=torch.float64)[:, None]
    ll = score_poses(vmap.fourier_volume(), Y, C, local, per_image_shifts.expand(4, -1, -1), sigma2, 0.25)
    for i in range(4):
        ref = score_poses(vmap.fourier_volume(), Y[i : i + 1], C[i : i + 1], local[i], per_image_shifts[0], sigma2, 0.25)
        assert torch.allclose(ll[i], ref[0], rtol=1e-10, atol=1e-8)


def test_posterior_is_a_distribution_and_narrows_with_snr():
    vmap, grid, shifts, r_true, t_true, C, clean = _setup(24, order=1, seed=4)
    g = torch.Generator().manual_seed(5)
    white = torch.randn(clean.shape, generator=g, dtype=torch.float64)
    signal_std = float(clean.std())
    spreads = []
    for snr in (0.02, 0.1, 1.0):
        s = signal_std / math.sqrt(snr)
        Y = fft2c(clean + s * white)
        sigma2 = torch.full((n_shells(BOX),), BOX**2 * s**2, dtype=torch.float64)
        ll = score_poses(vmap.fourier_volume(), Y, C, grid, shifts, sigma2, 0.3)
        post = pose_posterior(ll)
        assert bool((post >= 0).all())
        assert torch.allclose(post.sum((1, 2)), torch.ones(24, dtype=torch.float64), atol=1e-12)
        spreads.append(float(best_poses(ll, grid, shifts, post).angular_spread_deg.mean()))
    assert spreads[0] > spreads[1] > spreads[2]


def test_pruning_keeps_the_mass_and_renormalises():
    g = torch.Generator().manual_seed(6)
    ll = 5 * torch.randn(5, 40, 9, generator=g, dtype=torch.float64)
    post = pose_posterior(ll)
    sig = significant_poses(post, rel_threshold=0.0, mass=0.9)
    total = torch.zeros(5, dtype=torch.float64).index_add_(0, sig.image, sig.weight)
    assert torch.allclose(total, torch.ones(5, dtype=torch.float64))
    kept = post[sig.image, sig.rotation_index, sig.shift_index]
    mass = torch.zeros(5, dtype=torch.float64).index_add_(0, sig.image, kept)
    assert bool((mass >= 0.9 - 1e-12).all())
    # dropping the smallest kept pose of any image would fall below the mass
    for i in range(5):
        assert float(mass[i] - kept[sig.image == i].min()) < 0.9
    capped = significant_poses(post, rel_threshold=1e-3, mass=1.0, max_poses=3)
    assert int(torch.bincount(capped.image).max()) <= 3
    assert bool((post[capped.image, capped.rotation_index, capped.shift_index] >= 1e-3 * post.flatten(1).max(1).values[capped.image]).all())
