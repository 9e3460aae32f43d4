"""The Bayesian engines make every tensor on the device of their inputs and generator (what `--device cuda` needs).

Checked without a GPU: with torch's default device set to "meta", a tensor made without an explicit device is a meta
tensor, and the first operation that mixes it with the CPU inputs fails."""

from __future__ import annotations

import pytest
import torch

from cryoscope.bayes import gaussian_pipeline, pipeline
from cryoscope.bayes.fit_map import fit_map
from cryoscope.bayes.gaussian_model import ImageSet
from cryoscope.bayes.projected import BinnedImages


@pytest.fixture
def meta_default():
    torch.set_default_device("meta")
    yield
    torch.set_default_device(None)


def _inputs():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 16, 16, dtype=torch.float64, generator=g, device="cpu")
    volume = torch.rand(12, 12, 12, dtype=torch.float64, generator=g, device="cpu")
    return images, volume, torch.Generator(device="cpu").manual_seed(0)


def test_poisson_pipeline_stays_on_the_input_device(meta_default):
    images, _, g = _inputs()
    data = BinnedImages((images * 3).long(), 5.0)
    start = pipeline.initial_stage(data, 10, rounds=2, mixture_steps=2, local_steps=2, n_rotations=20, generator=g)
    ref = pipeline.refinement_stage(data, 20, start.poses, steps=4, burn_in=2, thin=1, generator=g)
    assert ref.state.means.device.type == "cpu" and ref.poses.shifts.device.type == "cpu"


def test_gaussian_pipeline_stays_on_the_input_device(meta_default):
    images, _, g = _inputs()
    data = ImageSet(images, 5.0)
    start = gaussian_pipeline.initial_stage(data, 6, rounds=1, mixture_steps=1, local_steps=1, n_rotations=10, generator=g)
    ref = gaussian_pipeline.refinement_stage(data, 12, start, steps=3, burn_in=1, thin=1, generator=g)
    assert ref.state.means.device.type == "cpu"


@pytest.mark.parametrize("method", ["gibbs", "em"])
def test_map_fitting_stays_on_the_input_device(meta_default, method):
    _, volume, g = _inputs()
    assert fit_map(volume, 5.0, 8, 2000, 3, method=method, generator=g).state.means.device.type == "cpu"
