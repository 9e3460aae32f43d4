"""The Bayesian engines make every tensor on the device of their inputs and generator (what `--device cuda` needs).

Checked without a GPU (`meta_device`). Inputs are made on the CPU first; generators
are CPU generators (a run on a GPU gives the engines a generator on the GPU: `workflows.gmm_initial_model._seed`)."""

from __future__ import annotations

import math

import pytest
import torch

from cryoscope.bayes import gaussian_pipeline, gaussian_sampler, pipeline, projected
from cryoscope.bayes.class_averages import class_averages_from_particles
from cryoscope.bayes.fit_map import fit_map, posterior_maps
from cryoscope.bayes.gaussian_model import GaussianPrior, GaussianState, ImageSet
from cryoscope.bayes.image_assignments import image_assignment_stats
from cryoscope.bayes.mixture import MixtureState
from cryoscope.bayes.projected import BinnedImages, Poses
from cryoscope.geometry.sampling import random_rotations
from cryoscope.geometry.symmetry import symmetry_group
from cryoscope.io.mrc import Map
from cryoscope.physics import gmm
from cryoscope.physics.ctf import CTFParams
from cryoscope.workflows.gmm import FitMapSettings, run_fit_map
from cryoscope.workflows.gmm_initial_model import InitialModelSettings, run_initial_model

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")  # many small steps: see conftest


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def _c2() -> torch.Tensor:
    """The point group C2: `symmetry_group` builds its table on the default device by design, then moves it."""
    with torch.device("cpu"):
        return symmetry_group("C2")


def _cpu_finite(*xs: torch.Tensor) -> bool:
    return all(x.device.type == "cpu" and bool(torch.isfinite(x).all()) for x in xs)


def _projections(p: int = 4, k: int = 6, box: int = 16, px: float = 4.0, seed: int = 1):
    """A mixture [K, 3] (σ 4 Å), P rotations and its exact projections [P, box, box], on the CPU."""
    g = _gen(seed)
    means = torch.randn(k, 3, generator=g, dtype=F64, device="cpu") * 8
    rotations = random_rotations(p, g, dtype=F64, device="cpu")
    ones = torch.ones(k, dtype=F64, device="cpu")
    images = gmm.project(means, ones / k, 4 * ones, rotations, box, px)
    state = MixtureState(means, torch.tensor(1 / 16, dtype=F64, device="cpu"), ones / k)
    return state, rotations, images, px


@pytest.mark.parametrize("mean_prior", ["scaled", "fixed"])
def test_poisson_gibbs_sweeps_stay_on_the_input_device(meta_default, mean_prior):
    state, rotations, images, px = _projections()
    group = _c2()
    shifts = torch.randn(rotations.shape[0], 2, generator=_gen(2), dtype=F64, device="cpu")
    g = _gen()
    data = BinnedImages.from_images(images, px, 400)
    prior = pipeline.data_prior(data, mean_prior=mean_prior)
    poses = Poses(rotations, shifts)
    for sym in (group, None):  # the draws below take the stats of the whole mixture
        stats = projected.draw_latents(projected.symmetric_copies(state, sym), poses, data, g)
        lp = projected.log_posterior(state, stats.log_likelihood, prior)
        new = projected.draw_mixture(state, stats, poses, prior, g, sym)
        assert _cpu_finite(stats.n, stats.nu, stats.ss, lp, new.means, new.precision, new.weights)
    rot = projected.draw_rotations(state, stats, poses, g)
    t = projected.draw_shifts(state, stats, poses, 0.1, g)
    scores = projected.rotation_scores(state, rotations, shifts, data)  # one shift per image
    glob = projected.global_rotations(state, poses, data, 8, g, keep_current=True)
    assert _cpu_finite(rot, t, scores, glob, projected.global_rotations(state, poses, data, 4))  # and the global RNG


def test_poisson_assignments_of_underflowing_pixels_stay_on_the_input_device(meta_default):
    # a count at (-20, -20) Å, between components at (-20, 0) and (0, -20) of σ 2 Å: its mass underflows in the
    # scaled factors and is evaluated exactly
    counts = torch.zeros(1, 24, 24, dtype=torch.long, device="cpu")
    counts[0, 2, 2], counts[0, 12, 2], counts[0, 2, 12] = 1, 5, 5  # pixel 2 is at -20 Å (pixel size 2, centre 12)
    data = BinnedImages(counts, 2.0)
    centres = torch.tensor([[[-20.0, 0.0], [0.0, -20.0]]], dtype=F64, device="cpu")
    weights = torch.full((2,), 0.5, dtype=F64, device="cpu")
    st = image_assignment_stats(data.pixels, centres, weights, 0.25, _gen())
    assert _cpu_finite(st.n, st.s, st.q, st.log_likelihood) and float(st.n.sum()) == 11


@pytest.mark.parametrize("symmetric", [False, True])
def test_poisson_pipeline_stays_on_the_input_device(meta_default, symmetric):
    _, _, images, px = _projections()
    group = _c2() if symmetric else None
    g = _gen()
    data = BinnedImages.from_images(images, px, 300)
    start = pipeline.initial_stage(data, 4, rounds=1, mixture_steps=2, local_steps=2, n_rotations=10, generator=g,
                                   group=group)
    ref = pipeline.refinement_stage(data, 6, start.poses, steps=3, burn_in=1, thin=1, generator=g, group=group)
    s, p = ref.samples[-1]
    assert _cpu_finite(ref.state.means, ref.state.precision, ref.poses.rotations, ref.poses.shifts, s.means, p.shifts)


@pytest.mark.parametrize("ctf", [False, True])
def test_gaussian_sampler_stays_on_the_input_device(meta_default, ctf):
    state, rotations, images, px = _projections(p=3, box=12)
    params = CTFParams.create([9000.0, 12000.0, 15000.0], dtype=F64, device="cpu")
    g = _gen()
    data = ImageSet.with_ctf(images, px, params) if ctf else ImageSet(images, px)
    prior = GaussianPrior.from_images(data.images, px)
    gs = GaussianState(state.means, state.precision, torch.tensor(0.5, dtype=F64, device="cpu"),
                       torch.tensor(2.0, dtype=F64, device="cpu"))
    poses = Poses(rotations, torch.zeros(3, 2, dtype=F64, device="cpu"))
    tuning = gaussian_sampler.Tuning.initial(gs, data)
    tuning.n_leapfrog = 2
    for _ in range(2):
        gs, poses = gaussian_sampler.sweep(gs, poses, data, prior, tuning, g)
    glob = gaussian_sampler.global_rotations(gs, poses, data, 6, g, keep_current=True)
    assert _cpu_finite(gaussian_sampler.global_rotations(gs, poses, data, 4))  # with the global RNG
    assert _cpu_finite(gs.means, gs.precision, gs.scale, gs.noise_precision, poses.rotations, poses.shifts, glob)
    assert _cpu_finite(gs.as_mixture().weights, gs.as_mixture(normalised=True).weights)


def test_gaussian_pipeline_stays_on_the_input_device(meta_default):
    _, _, images, px = _projections(p=3, box=12)
    group = _c2()
    g = _gen()
    data = ImageSet(images, px)
    start = gaussian_pipeline.initial_stage(data, 3, rounds=1, mixture_steps=1, local_steps=1, n_rotations=6,
                                            generator=g, group=group)
    ref = gaussian_pipeline.refinement_stage(data, 6, start, steps=2, burn_in=1, thin=1, generator=g)
    assert _cpu_finite(ref.state.means, ref.state.precision, ref.state.scale, ref.poses.rotations, ref.poses.shifts)


@pytest.mark.parametrize("method,truncation", [("gibbs", 5.0), ("gibbs", None), ("em", 5.0)])
def test_map_fitting_stays_on_the_input_device(meta_default, method, truncation):
    g = _gen()
    volume = torch.rand(12, 12, 12, dtype=F64, generator=_gen(1), device="cpu")
    fit = fit_map(volume, 5.0, 8, 2000, 3, burn_in=1, thin=1, method=method, generator=g, truncation=truncation)
    assert _cpu_finite(fit.state.means, fit.state.precision, fit.state.weights)
    if fit.samples:
        assert _cpu_finite(*posterior_maps(fit.samples, 12, 5.0))


def test_map_fitting_workflow_stays_on_the_input_device(meta_default):
    volume = torch.rand(12, 12, 12, generator=_gen(1), device="cpu")
    fit, metrics = run_fit_map(Map(volume, 5.0), FitMapSettings(8, 2000, 2, 1, 1), progress=False)
    assert _cpu_finite(fit.state.means, fit.samples[0].weights) and all(map(math.isfinite, metrics.values()))


class _NumpyStack:
    """A lazy stack whose slices are numpy arrays."""

    def __init__(self, images: torch.Tensor):
        self.images = images.numpy()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


def test_class_averages_stay_on_the_input_device(meta_default):
    g = _gen()
    n, box, px = 8, 16, 4.0
    images = torch.randn(n, box, box, generator=g, dtype=F64, device="cpu")
    psi = torch.rand(n, generator=g, dtype=F64, device="cpu") * 360
    origins = torch.rand(n, 2, generator=g, dtype=F64, device="cpu") - 0.5
    classes = torch.arange(2, device="cpu").repeat_interleave(n // 2)
    df = 10000 + 10000 * torch.rand(n, generator=g, dtype=F64, device="cpu")
    ctf = CTFParams.create(df + 200, df - 200, psi, dtype=F64, device="cpu")
    ids, averages = class_averages_from_particles(_NumpyStack(images), psi, origins, classes, ctf, px,
                                                  n_defocus_groups=2, mask_radius=5, centred=True, max_iter=10)
    assert ids.device.type == "cpu" and _cpu_finite(averages)


def test_initial_model_workflow_stays_on_the_input_device(meta_default, tmp_path):
    _, _, images, px = _projections(p=3, box=16)
    settings = InitialModelSettings("poisson", restarts=1, initial_components=3, components=4, initial_box=8, box=12,
                                    initial_counts=200, counts=300, rounds=1, n_rotations=6, steps=2, burn_in=1,
                                    checkpoint_every=1).resolved(16)
    ref, metrics = run_initial_model(images, px, settings, tmp_path, {"command": "test"}, progress=False)
    assert _cpu_finite(ref.state.means, ref.poses.rotations, ref.poses.shifts) and len(ref.samples) == 1
