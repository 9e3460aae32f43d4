"""Stochastic-gradient ab-initio reconstruction (cryoscope.likelihood.abinitio) on small simulated data."""

from __future__ import annotations

import math

import pytest
import torch
from test_likelihood_scoring import blob_map

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.alignment import pose_error
from cryoscope.geometry.sampling import random_rotations
from cryoscope.io.metadata import ParticleMetadata
from cryoscope.likelihood.abinitio import abinitio
from cryoscope.likelihood.data import ParticleSource
from cryoscope.physics.ctf import CTFParams, compute_ctf
from cryoscope.physics.forward import ImageFormation
from cryoscope.representations.voxel import VoxelMap
from cryoscope.validation.align import fsc_after_alignment
from cryoscope.validation.metrics import adjusted_rand_index

BOX, VOXEL = 24, 4.0
FAST = dict(batch_size=64, initial_cutoff=0.1, final_cutoff=0.25, max_shift=2.0, max_poses=8)


def dataset(maps: list[torch.Tensor], n: int, snr: float, seed: int = 0):
    """Particles of `maps` (class i = i mod len(maps)): uniform poses, origins in [-1.5, 1.5] px, CTF 1-2.5 µm, white noise at `snr`."""
    g = torch.Generator().manual_seed(seed)
    R = random_rotations(n, g)
    origins = (torch.rand(n, 2, generator=g) - 0.5) * 3
    df = 10000 + 15000 * torch.rand(n, generator=g)
    ctf = compute_ctf(CTFParams.create(df), BOX, VOXEL)
    labels = torch.arange(n) % len(maps)
    clean = torch.empty(n, BOX, BOX)
    for k, vol in enumerate(maps):
        m = labels == k
        clean[m] = ImageFormation()(VoxelMap(vol, VOXEL), R[m], origins_px=origins[m], ctf=ctf[m])
    stack = clean + float(clean.std()) / math.sqrt(snr) * torch.randn(clean.shape, generator=g)
    full = lambda v: torch.full((n,), v, dtype=torch.float64)  # noqa: E731
    meta = ParticleMetadata(
        n=n, defocus_u=df.double(), defocus_v=df.double(), defocus_angle=full(0.0), voltage=full(300.0), cs=full(2.7),
        amplitude_contrast=full(0.1), pixel_size=full(VOXEL), box=BOX,
    )
    return ParticleSource(meta, stack), R, labels


def test_recovers_an_asymmetric_map_and_its_poses():
    truth = blob_map(BOX, 0, 16, torch.float32)
    particles, R_true, _ = dataset([truth], 300, snr=1.0)
    res = abinitio(particles, n_iter=40, seed=1, **FAST)
    assert res.maps.shape == (1, BOX, BOX, BOX) and bool((res.maps >= 0).all())
    aligned = fsc_after_alignment(res.maps[0], truth, n_rotations=500, refine_box=BOX)
    assert aligned.resolution_05[0] >= 0.2, aligned.fsc  # 0.5 crossing at 20 Å or finer (4 Å/pixel)
    err = pose_error(res.rotations.double(), R_true.double())  # after the global gauge and hand
    assert float(err.median()) < 20.0  # the grid has a 30° step
    assert [h.cutoff for h in res.history] == sorted(h.cutoff for h in res.history)
    assert res.history[0].cutoff == pytest.approx(0.1) and res.history[-1].cutoff == pytest.approx(0.25)


def test_two_classes_separate_two_structures():
    maps = [blob_map(BOX, 0, 16, torch.float32), blob_map(BOX, 5, 16, torch.float32)]
    particles, _, labels = dataset(maps, 300, snr=1.0, seed=2)
    res = abinitio(particles, n_classes=2, n_iter=40, seed=0, **FAST)
    assert res.class_posterior.shape == (300, 2) and torch.allclose(res.class_posterior.sum(1), torch.ones(300))
    accuracy = max(float((res.best_class == labels).float().mean()), float((res.best_class != labels).float().mean()))
    assert accuracy >= 0.9 and adjusted_rand_index(res.best_class, labels) >= 0.7
    assert res.empty_classes == []


def test_resumed_run_equals_uninterrupted_run():
    truth = blob_map(BOX, 0, 16, torch.float32)
    particles, _, _ = dataset([truth], 40, snr=1.0, seed=3)
    kw = dict(n_classes=2, n_iter=4, batch_size=16, healpix_order=0, max_shift=1.0, initial_cutoff=0.1, final_cutoff=0.2, seed=4)
    states = []
    straight = abinitio(particles, on_iteration=states.append, **kw)
    assert [s.iteration for s in states] == [1, 2, 3, 4]
    resumed = abinitio(particles, state=states[1], **kw)
    assert torch.allclose(straight.maps, resumed.maps, rtol=1e-5, atol=1e-6 * float(straight.maps.abs().max()))
    assert torch.allclose(straight.sigma2, resumed.sigma2) and torch.allclose(straight.class_fractions, resumed.class_fractions)
    assert torch.equal(straight.best_class, resumed.best_class) and len(resumed.history) == 4
    different_seed = abinitio(particles, **{**kw, "seed": 5})
    assert not torch.allclose(straight.maps, different_seed.maps)


@pytest.mark.parametrize(
    "bad",
    [dict(n_classes=0), dict(initial_cutoff=0.3, final_cutoff=0.2), dict(final_cutoff=0.6), dict(mask_radius=20.0),
     dict(momentum=1.0), dict(batch_size=0), dict(class_similarity=1.5)],
)
def test_invalid_settings_are_rejected(bad):
    particles, _, _ = dataset([blob_map(BOX, 0, 4, torch.float32)], 4, snr=1.0)
    with pytest.raises(InvalidValueError):
        abinitio(particles, **bad)
