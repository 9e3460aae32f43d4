"""EM over poses and classes (cryoscope.likelihood.em) on small simulated data."""

from __future__ import annotations

import math

import pytest
import torch
from test_likelihood_scoring import blob_map

from cryoscope.geometry.alignment import pose_error
from cryoscope.geometry.sampling import random_rotations
from cryoscope.geometry.symmetry import symmetry_group
from cryoscope.io.checkpoint import load_checkpoint, save_checkpoint
from cryoscope.io.metadata import ParticleMetadata
from cryoscope.likelihood.data import ParticleSource
from cryoscope.likelihood.em import (
    EMSettings,
    classify,
    from_state_dict,
    refine,
    state_dict,
)
from cryoscope.physics.ctf import CTFParams, compute_ctf
from cryoscope.physics.filters import soft_mask
from cryoscope.physics.forward import ImageFormation
from cryoscope.physics.fourier import centered_coords, fft2c
from cryoscope.representations.voxel import VoxelMap
from cryoscope.validation.fsc import fsc
from cryoscope.validation.metrics import cross_correlation
from cryoscope.physics.filters import lowpass
from cryoscope.workflows.likelihood import truth_metrics

BOX, VOXEL = 24, 4.0


def simulate(maps: list[torch.Tensor], n: int, snr: float, seed: int = 0):
    """Particles of `maps` (class i for particle i % len(maps)): uniform poses, origins in [-1.5, 1.5] px, CTF 1-2.5 µm."""
    g = torch.Generator().manual_seed(seed)
    R = random_rotations(n, g)
    origins = (torch.rand(n, 2, generator=g) - 0.5) * 3
    df = 10000 + 15000 * torch.rand(n, generator=g)
    labels = torch.arange(n) % len(maps)
    ctf = compute_ctf(CTFParams.create(df), BOX, VOXEL)
    clean = torch.zeros(n, BOX, BOX)
    for k, vol in enumerate(maps):
        sel = labels == k
        clean[sel] = ImageFormation()(VoxelMap(vol.float(), VOXEL), R[sel], origins_px=origins[sel], ctf=ctf[sel])
    stack = clean + float(clean.std()) / math.sqrt(snr) * torch.randn(clean.shape, generator=g)
    full = lambda v: torch.full((n,), v, dtype=torch.float64)
    meta = ParticleMetadata(
        n=n, defocus_u=df.double(), defocus_v=df.double(), defocus_angle=full(0.0), voltage=full(300.0), cs=full(2.7),
        amplitude_contrast=full(0.1), pixel_size=full(VOXEL), box=BOX,
    )
    return ParticleSource(meta, stack), R, origins, labels


def score(vol: torch.Tensor, truth: torch.Tensor) -> float:
    return float(fsc(vol, truth)[1 : BOX // 2].mean())


def test_refinement_from_lowpass_recovers_poses_and_improves_fsc():
    truth = blob_map(BOX, 0, 16, torch.float32)
    particles, R_true, origins, _ = simulate([truth], 200, 0.5)
    initial = lowpass(truth, 0.15)  # 27 Å at 4 Å/pixel
    scores, states = [score(initial, truth)], []
    settings = EMSettings(n_iter=2, healpix_order=1, max_shift=2.0, initial_cutoff=0.15, max_poses=30)
    refine(particles, initial, settings, on_iteration=lambda r: (scores.append(score(r.map, truth)), states.append(r)))
    assert scores[0] < scores[1] < scores[2], scores
    last = states[-1]
    err = pose_error(last.rotations.double(), R_true.double())
    assert float(err.median()) < 15.0  # the finest grid searched has a 15° step
    assert float((last.shifts_px - origins).norm(dim=1).median()) < 1.0
    # iteration 1 searches globally again, on the 15° grid (a particle misplaced at 30° gets a second chance)
    assert last.history[1].angular_step_deg == 15.0 and last.history[1].n_rotations == 8 * last.history[0].n_rotations
    assert bool((last.angular_spread_deg >= 0).all()) and last.resolution[0] > 0.15


def test_refinement_is_deterministic_and_resumes_exactly_through_a_checkpoint(tmp_path):
    truth = blob_map(BOX, 3, 16, torch.float32)
    particles, _, _, _ = simulate([truth], 48, 1.0, seed=3)
    initial = lowpass(truth, 0.15)
    settings = EMSettings(n_iter=2, healpix_order=0, max_shift=1.0, initial_cutoff=0.15, max_poses=10)
    a = refine(particles, initial, settings, seed=7)
    b = refine(particles, initial, settings, seed=7)
    assert torch.equal(a.map, b.map) and torch.equal(a.rotations, b.rotations) and torch.equal(a.shifts_px, b.shifts_px)
    # checkpoint after the first iteration (as `run_em` does), load, resume: the same final state
    def save(st):
        if st.iterations_done == 1:
            save_checkpoint(tmp_path / "c.pt", state_dict(st), {"seed": 7})

    refine(particles, initial, settings, seed=7, on_iteration=save)
    resumed = refine(particles, initial, settings, seed=7, state=from_state_dict(load_checkpoint(tmp_path / "c.pt", {"seed": 7})))
    assert resumed.iterations_done == 2 and len(resumed.history) == 2
    assert torch.allclose(resumed.map, a.map, atol=1e-6) and torch.equal(resumed.rotations, a.rotations)


def test_maps_do_not_depend_on_the_batch_size():
    """Batches only reorder float32 sums; shells beyond the reconstructed cutoff hold rounding residue whose FSC must
    not set their filter (it did, as Wiener terms: 2 % of the map maximum between batch sizes 8 and 16)."""
    truth = blob_map(BOX, 0, 16, torch.float32)
    particles, _, _, _ = simulate([truth], 64, 1.0, seed=6)
    initial = lowpass(truth, 0.15)
    settings = EMSettings(n_iter=2, healpix_order=0, max_shift=1.0, initial_cutoff=0.15, max_poses=10)
    maps = [refine(particles, initial, EMSettings(**{**vars(settings), "batch_size": bs}), seed=4).map for bs in (8, 16, 32)]
    scale = float(maps[0].abs().max())
    for m in maps[1:]:
        assert float((m - maps[0]).abs().max()) < 1e-4 * scale


def rot_z(vol: torch.Tensor, k: int) -> torch.Tensor:
    """Rotation by k x 90° about the z axis through the centre N // 2 (even N: the first row and column are dropped)."""
    out = torch.zeros_like(vol)
    out[:, 1:, 1:] = torch.rot90(vol[:, 1:, 1:], k, dims=(1, 2))
    return out


def test_symmetric_refinement_gives_a_symmetric_map_and_poses_modulo_symmetry():
    base = blob_map(BOX, 5, 4, torch.float32)
    group = symmetry_group("C4", torch.float32)
    truth = sum(rot_z(base, k) for k in range(4)) / 4  # C4-symmetric about z
    particles, R_true, _, _ = simulate([truth], 160, 1.0, seed=5)
    settings = EMSettings(n_iter=2, healpix_order=1, max_shift=2.0, initial_cutoff=0.15, max_poses=30, symmetry="C4")
    res = refine(particles, lowpass(truth, 0.15), settings)
    # An even box is not symmetric about N // 2 at its edge, so the least-squares map is symmetric inside the particle
    # (C1 refinement of these data: 14 % asymmetry there).
    m = res.map * soft_mask(BOX, 8.0, 0.0, ndim=3)
    assert group.shape[0] == 4
    sym_err = max(float((rot_z(m, k) - m)[:, 1:, 1:].norm() / m.norm()) for k in (1, 2, 3))
    assert sym_err < 0.02, sym_err
    assert res.history[0].n_rotations < 4608 / 3  # the global search covers one asymmetric unit of directions
    err = pose_error(res.rotations.double(), R_true.double(), symmetry="C4")
    assert float(err.median()) < 15.0
    assert score(res.map, truth) > 0.5


def test_classification_separates_two_compositional_states():
    a = blob_map(BOX, 11, 14, torch.float32)
    b = a + blob_map(BOX, 13, 4, torch.float32)  # a complex with and without a bound part
    n = 160
    particles, _R_true, _origins, labels = simulate([a, b], n, 2.0, seed=2)
    consensus = lowpass((a + b) / 2, 0.15)
    settings = EMSettings(n_iter=4, healpix_order=1, max_shift=2.0, initial_cutoff=0.15, max_cutoff=0.15, max_poses=30)
    res = classify(particles, consensus, 2, settings, seed=1)
    best = res.best_class
    accuracy = max(float((best == labels).float().mean()), float((best != labels).float().mean()))
    assert accuracy >= 0.85, accuracy  # a random split starts at 0.5
    assert res.history[-1].reconstruction_cutoff == 0.5  # scoring capped: maps to Nyquist
    assert abs(float(res.class_fractions.sum()) - 1) < 1e-5 and bool((res.class_fractions > 0.35).all())
    assert torch.allclose(res.class_posterior.sum(-1), torch.ones(n), atol=1e-4)
    # each class map resembles its own structure more than the other one
    k_a = int(best[labels == 0].mode().values)
    assert score(res.maps[k_a], a) > score(res.maps[k_a], b)


def test_a_class_that_loses_all_particles_is_reported_not_fatal():
    truth = blob_map(BOX, 0, 16, torch.float32)
    particles, _, _, _ = simulate([truth], 60, 2.0, seed=4)
    maps = torch.stack([lowpass(truth, 0.15), torch.zeros(BOX, BOX, BOX)])
    settings = EMSettings(n_iter=1, healpix_order=0, max_shift=1.0, initial_cutoff=0.15, max_poses=10)
    res = classify(particles, maps, 2, settings)
    assert res.history[-1].empty_classes == [1]
    assert float(res.class_fractions[1]) == 0.0 and float((res.best_class == 0).float().mean()) > 0.9
    assert torch.isfinite(res.maps).all()


def _kept_poses(n: int, n_rot: int, n_shift: int, per_image: int, g: torch.Generator):
    """Random kept poses, image by image and best first (as `significant_poses` lists them), weights summing to 1."""
    from cryoscope.likelihood.scoring import SignificantPoses

    image = torch.arange(n).repeat_interleave(per_image)
    rot = torch.randint(n_rot, (n * per_image,), generator=g)  # repeats: several shifts of one rotation
    shift = torch.randint(n_shift, (n * per_image,), generator=g)
    w = torch.rand(n, per_image, generator=g, dtype=torch.float64).sort(-1, descending=True).values
    return SignificantPoses(image, rot, shift, (w / w.sum(-1, keepdim=True)).reshape(-1))


@pytest.mark.parametrize("per_image", [False, True])
def test_m_step_sums_equal_adding_every_kept_pose(per_image, monkeypatch):
    """Summing the kept shifts of one (image, rotation) before the slice is added, on the Hermitian half of the
    slice, is exact: the reconstructor's sums equal those of adding each pose with weight w as (sqrt(w) T Y,
    sqrt(w) C), for real images and a CTF even in k; for grids shared by all images and for per-image (local)
    grids, over several M-step chunks."""
    from cryoscope.likelihood import em
    from cryoscope.particles import ParticleBatch
    from cryoscope.reconstruction.direct import DirectReconstructor

    monkeypatch.setattr(em, "_POSE_CHUNK", 16)  # chunks of 3 images
    g = torch.Generator().manual_seed(3)
    n, box = 6, 16
    Y = fft2c(torch.randn(n, box, box, generator=g))
    k = centered_coords(box)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    C = torch.cos(k2[None] * torch.rand(n, 1, 1, generator=g) * 0.1) + 0.1 * torch.cos(k[None, :, None] * k[None, None, :])
    rotations = random_rotations(n * 5 if per_image else 5, generator=g).float()
    shifts = torch.randn(n * 4 if per_image else 4, 2, generator=g)
    if per_image:
        rotations, shifts = rotations.reshape(n, 5, 3, 3), shifts.reshape(n, 4, 2)
    sig = _kept_poses(n, 5, 4, 7, g)
    s = EMSettings()
    acc = em._Accumulator(1, box, 0.5, s, symmetry_group("C1", torch.float32), torch.device("cpu"))
    fvol = [torch.zeros(box * 2 + 3, box * 2 + 3, box * 2 + 3, dtype=torch.complex64)]
    acc.add(fvol, Y, C, rotations, shifts, sig, 5, torch.rand(n, generator=g), 1)
    naive = DirectReconstructor(box, s.oversample, 0.5, n_halves=2)
    q = sig.weight.float().sqrt()[:, None, None]
    i, r, t = sig.image, sig.rotation_index, sig.shift_index
    R, o = (rotations[i, r], shifts[i, t]) if per_image else (rotations[r], shifts[t])
    naive.add(ParticleBatch(Y[i] * q, R, o, C[i] * q, torch.ones_like(i), fourier=True))
    rec = acc.recs[0]
    assert torch.allclose(rec.sums.rows, naive.sums.rows, atol=1e-4 * float(naive.sums.rows.abs().max()))


def test_noise_pose_is_drawn_with_the_posterior_weights():
    """The pose each image gives the noise sums is drawn from its kept posterior: over many images the draw
    frequencies match the weights (4,000 images, quasi-random quantiles)."""
    from cryoscope.likelihood import em

    from cryoscope.likelihood.scoring import SignificantPoses

    n = 4000
    weights = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    image = torch.arange(n).repeat_interleave(4)
    sig = SignificantPoses(image, torch.arange(4).repeat(n), torch.zeros(4 * n, dtype=torch.long), weights.repeat(n))
    pick = em.posterior_draw(sig, n, em._noise_quantile(torch.arange(n), 2))
    assert bool((sig.image[pick] == torch.arange(n)).all())  # one pose of each image
    freq = torch.bincount(sig.rotation_index[pick], minlength=4).double() / n
    assert torch.allclose(freq, weights, atol=0.01), freq


def test_class_pose_errors_use_one_gauge_per_class():
    """Class maps come out in independent frames: each class's poses are aligned to the truth with their own gauge."""
    g = torch.Generator().manual_seed(5)
    true_R = random_rotations(200, g, torch.float64)
    gauges = random_rotations(2, g, torch.float64)
    classes = torch.arange(200) % 2
    est = true_R @ gauges[classes].transpose(-1, -2)  # class k's frame is turned by gauge k
    maps = {"class001": torch.zeros(4, 4, 4), "class002": torch.zeros(4, 4, 4)}
    per_class, _ = truth_metrics(maps, None, est, true_R, 1.0, classes=classes)
    pooled, _ = truth_metrics(maps, None, est, true_R, 1.0)
    assert per_class["pose_error_median_deg"] < 1e-3 and per_class["class002_pose_error_median_deg"] < 1e-3
    assert per_class["pose_error_mean_deg"] < 1e-3 and pooled["pose_error_mean_deg"] > 10.0  # one gauge fits one class only


def test_global_iterations_correct_a_misjudged_origin():
    """A global iteration searches the whole ±max_shift square as well as the neighbourhood of the previous origin,
    so a particle whose origin was misjudged by ~3 px (beyond any local shift range) gets it back, with its pose."""
    from cryoscope.likelihood.em import _score, _search_grids
    from cryoscope.likelihood.scoring import best_poses
    from cryoscope.physics.projection import fourier_volume

    truth = blob_map(BOX, 0, 16, torch.float32)
    particles, R, origins, _ = simulate([truth], 8, 50.0, seed=3)
    s = EMSettings(healpix_order=1, max_shift=2.0, shift_step=1.0)
    wrong = origins - 3.0 * torch.sign(origins)  # off by 3 px on each axis, on the other side of the centre
    build, _, _, n_shift, inplane = _search_grids(1, R.float(), wrong, s, torch.device("cpu"), False)
    idx = torch.arange(8)
    Y, C = particles.load(idx)
    R_grid, t_grid = build(idx)
    sigma2 = torch.ones(BOX // 2 + 1)
    est = best_poses(_score(fourier_volume(truth), Y, C, R_grid, t_grid, sigma2, 0.3, inplane), R_grid, t_grid)
    assert n_shift == t_grid.shape[1]
    assert float((est.shifts - origins).abs().max()) <= 0.75
    assert float(pose_error(est.rotations, R, align=False).max()) < 20.0


def test_local_grid_sized_by_the_previous_posterior_keeps_its_mass():
    """A local grid sized by the previous posterior's spread (`local_sigmas` per-axis sigma, steps of ~sigma) holds
    that posterior; the fixed grid of `local_range_steps` fine steps (what every local iteration searched before)
    cuts most of it away, and its M-step then nears hard assignment (see EMSettings)."""
    from cryoscope.geometry.sampling import local_grid
    from cryoscope.likelihood.em import _axis_sigma, _score, _search_grids
    from cryoscope.likelihood.scoring import pose_posterior
    from cryoscope.physics.projection import fourier_volume

    truth = blob_map(BOX, 0, 16, torch.float32)
    particles, R, origins, _ = simulate([truth], 8, 1.0, seed=4)
    idx = torch.arange(8)
    Y, C = particles.load(idx)
    sigma2 = torch.ones(BOX // 2 + 1) * float(Y.abs().pow(2).mean())
    wide = local_grid(R.double(), 12.0, 1.25).float()  # the whole posterior, around the true poses
    post = pose_posterior(_score(fourier_volume(truth), Y, C, wide, origins[:, None, :], sigma2, 0.5, None))[..., 0]
    angle = torch.rad2deg(torch.arccos(((torch.einsum("nij,nkij->nk", R.float(), wide) - 1) / 2).clamp(-1, 1)))
    spread = (post * angle.pow(2)).sum(1).sqrt()  # rms, degrees
    sigma = _axis_sigma(spread, 3)
    assert 1.0 < sigma < 4.0  # a posterior much wider than the finest step, well inside the wide grid

    def lost_mass(sigma_deg: float) -> tuple[float, float]:
        """Posterior mass beyond the half-width of the grid that `_search_grids` builds, and its step."""
        s = EMSettings(healpix_order=3, min_angular_step_deg=0.5)
        build, step, _, _, _ = _search_grids(3, R.float(), origins, s, torch.device("cpu"), True, sigma_deg, 0.0)
        R_grid = build(idx)[0]
        half_width = float(torch.rad2deg(torch.arccos(((torch.einsum("ij,kij->k", R[0].float(), R_grid[0]) - 1) / 2).clamp(-1, 1))).max())
        return float((post * (angle > half_width + 0.01)).sum(1).mean()), step

    fixed, fixed_step = lost_mass(0.0)
    sized, sized_step = lost_mass(sigma)
    assert fixed > 0.5 and fixed_step < sigma  # the fixed fine grid truncates the posterior
    assert sized < 0.06 and sized_step <= sigma * 1.001  # 3 sigma: a chi(3) tail of 3 %, for most particles


def test_masked_truth_fsc_compares_maps_from_any_frame_alike():
    """A map made in another frame keeps, once rotated onto the truth, only the box's inscribed ball. The unmasked FSC
    against the truth then penalises it for the lost corners; the masked FSC (radius 0.45 N) does not."""
    from cryoscope.physics.fourier import fft3c, ifft3c, radial_index_3d

    n, g = 24, torch.Generator().manual_seed(2)
    core = blob_map(n, 0, 16, torch.float64)
    inside = soft_mask(n, 0.45 * n, 0.05 * n, 3, dtype=torch.float64)
    smooth = ifft3c(fft3c(torch.randn(n, n, n, generator=g, dtype=torch.float64)) * torch.exp(-(radial_index_3d(n).double() / 4) ** 2)).real
    truth = core + 3 * smooth * (1 - inside) * core.std() / smooth.std()  # strong density in the box corners
    noise = 0.2 * core.std() * torch.randn(n, n, n, generator=g, dtype=torch.float64)
    ball = (radial_index_3d(n) <= n // 2).double()
    out = {}
    for name, vol in [("kept", truth + noise), ("lost", truth * ball + noise)]:
        out[name], _ = truth_metrics({"map": vol.float()}, truth[None].float(), torch.eye(3)[None], None, 1.0)
    key, masked = "map_truth_fsc_0.5_cycles_per_pixel", "map_truth_masked_fsc_0.5_cycles_per_pixel"
    assert out["lost"][key] < out["kept"][key] - 0.1
    assert abs(out["lost"][masked] - out["kept"][masked]) <= 1.0 / n


def test_half_set_class_labels_are_matched_by_map_correlation():
    """Half-set 2 holding the states of half-set 1's classes under a 3-cycle is relabelled by the inverse cycle:
    its reconstruction sums, class weights, solved maps and its particles' class posteriors (a 3-cycle is not its
    own inverse, so a permutation applied the wrong way round fails)."""
    from cryoscope.likelihood import em
    from cryoscope.particles import ParticleBatch
    from cryoscope.physics.projection import project

    box, n_views = 16, 60
    g = torch.Generator().manual_seed(5)
    states = [blob_map(box, seed, 6, torch.float32) for seed in (1, 2, 3)]
    held = [1, 2, 0]  # half-set 2's class j holds state held[j]
    acc = em._Accumulator(3, box, 0.5, EMSettings(), symmetry_group("C1", torch.float32), torch.device("cpu"))
    for j, rec in enumerate(acc.recs):
        for h, state in ((0, j), (1, held[j])):
            R = random_rotations(n_views, generator=g).float()
            rec.add(ParticleBatch(project(states[state], R), R, half=torch.full((n_views,), h)))
            acc.class_weight[h, j] = state + 1.0
    half = torch.tensor([0, 1, 1, 0])
    posterior = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]])
    solved = [[rec.volume(h, n_iter=20) for rec in acc.recs] for h in (0, 1)]
    mask = soft_mask(box, 0.45 * box, 0.05 * box, ndim=3)
    perm = em._matched_half_labels(solved[0], solved[1], mask)
    assert perm == [2, 0, 1]
    relabelled = em._relabel_half(acc, solved, perm, posterior, half)
    assert torch.equal(acc.class_weight[1], acc.class_weight[0])
    assert torch.equal(relabelled[half == 0], posterior[half == 0])
    assert torch.equal(relabelled[half == 1], posterior[half == 1][:, perm])
    for k, rec in enumerate(acc.recs):
        assert int(rec.count[1]) == n_views
        for vol in (solved[1][k], rec.volume(1, n_iter=20)):
            cc = [float(cross_correlation(vol, s, mask)) for s in states]
            assert max(range(3), key=cc.__getitem__) == k and cc[k] > 0.9


def test_prior_sigma_sizes_the_first_local_search_from_prior_poses():
    """RELION's --sigma_ang: from prior poses whose errors have per-axis sigma 3°, the first local grid reaches
    3 sigma in steps of sigma, wide enough for poses 7° off, which the scheduled grid (a ball of 3.75°) cannot reach."""
    truth = blob_map(BOX, 0, 16, torch.float32)
    particles, R, origins, _ = simulate([truth], 16, 20.0, seed=6)
    axis = torch.nn.functional.normalize(torch.randn(16, 3, generator=torch.Generator().manual_seed(7)), dim=-1)
    from cryoscope.geometry.rotations import axis_angle_to_matrix

    off = R @ axis_angle_to_matrix(axis * math.radians(7.0)).float()  # every prior pose 7° from the truth
    runs = {}
    for sigma in (0.0, 3.0):
        s = EMSettings(n_iter=1, healpix_order=4, initial_cutoff=0.3, prior_sigma_deg=sigma)
        runs[sigma] = refine(particles, truth, s, prior_rotations=off, prior_shifts_px=origins)
    assert runs[3.0].history[0].angular_step_deg == pytest.approx(3.0)
    assert runs[0.0].history[0].angular_step_deg == pytest.approx(1.875)
    err = {k: float(pose_error(r.rotations, R, align=False).median()) for k, r in runs.items()}
    assert err[3.0] < 2.5 and err[0.0] > 3.0
