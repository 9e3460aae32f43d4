"""The likelihood engine (EM refinement and classification, ab-initio) makes every tensor on an explicit device: the
particles' device for the numerics, the CPU for per-particle state (what `--device cuda` needs).

Checked without a GPU (`meta_device`): a few helpers outside the engine build small tables on the CPU by design and
move them where they are used, or work on the CPU only (`CPU_HELPERS`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_likelihood_em import BOX, simulate
from test_likelihood_scoring import blob_map

from cryoscope.likelihood.abinitio import abinitio
from cryoscope.likelihood.em import EMSettings, classify, refine
from cryoscope.physics.filters import lowpass

# (function, modules that hold it by name): tables made on the CPU by design (then moved), or CPU-only results
CPU_HELPERS = [
    ("cryoscope.physics.projection", "slice_layout",
     ["cryoscope.physics.projection", "cryoscope.likelihood.scoring", "cryoscope.reconstruction.direct"]),
    ("cryoscope.geometry.symmetry", "symmetry_group", ["cryoscope.geometry.symmetry", "cryoscope.likelihood.em"]),
    ("cryoscope.validation.fsc", "resolution_at", ["cryoscope.validation.fsc", "cryoscope.likelihood.em"]),
]


class _NumpyStack:
    """A stack indexed by numpy arrays that returns CPU tensors, like `io.mrc.ParticleStack`."""

    def __init__(self, images: torch.Tensor):
        self.images = images.numpy()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.images[index])


@pytest.fixture(scope="module")
def data():
    truth = blob_map(BOX, 0, 16, torch.float32)
    particles, R, origins, _ = simulate([truth], 32, 0.5)
    particles.stack = _NumpyStack(particles.stack)
    return particles, lowpass(truth, 0.15), R.float(), origins.float()


def _settings(**kw) -> EMSettings:
    return EMSettings(**{"max_shift": 1.0, "initial_cutoff": 0.15, "max_poses": 8, "batch_size": 16, **kw})


def _check(result) -> None:
    for x in (result.maps, result.half_maps, result.sigma2, result.rotations, result.shifts_px, result.class_posterior):
        assert x.device.type == "cpu"


def test_refinement_stays_on_the_particles_device(meta_default, data):
    particles, initial, _, _ = data
    # iterations: global (30°), global (15°) with local shifts, then local
    _check(refine(particles, initial, _settings(n_iter=3, global_min_step_deg=15.0)))


def test_refinement_from_prior_poses_with_symmetry_stays_on_the_particles_device(meta_default, data):
    particles, initial, R, origins = data
    _check(refine(particles, initial, _settings(n_iter=1, symmetry="C2"), prior_rotations=R, prior_shifts_px=origins))


def test_classification_stays_on_the_particles_device(meta_default, data):
    particles, initial, _, _ = data
    _check(classify(particles, initial, 2, _settings(n_iter=2)))


def test_abinitio_stays_on_the_particles_device(meta_default, data):
    particles, _, _, _ = data
    result = abinitio(particles, n_classes=2, n_iter=2, batch_size=16, max_shift=1.0)
    assert result.maps.device.type == "cpu" and result.rotations.device.type == "cpu"
