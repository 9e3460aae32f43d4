"""Known-pose reconstruction: direct Fourier inversion, CG least squares, half-maps."""

import torch

from cryoscope.geometry.rotations import euler_to_matrix
from cryoscope.particles import ParticleBatch
from cryoscope.physics.ctf import CTFParams, compute_ctf
from cryoscope.physics.forward import ImageFormation
from cryoscope.reconstruction import (
    DirectReconstructor,
    fsc_weighted_average,
    masked_half_maps,
    random_half_sets,
    reconstruct_cg,
    reconstruct_direct,
    reg_from_fsc,
    shell_filter,
)
from cryoscope.physics.filters import radial_average, soft_mask
from cryoscope.physics.fourier import fft3c
from cryoscope.representations.voxel import VoxelMap
from cryoscope.validation.fsc import fsc

CENTRES = [(3, -2, 1), (-5, 4, 2), (1, 6, -4), (0, 0, 0)]
SIGMAS = [1.5, 1.2, 2.0, 1.0]


def blobs(n, dtype=torch.float32):
    k = torch.arange(n, dtype=dtype) - n // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    v = torch.zeros(n, n, n, dtype=dtype)
    for (cx, cy, cz), s in zip(CENTRES, SIGMAS):
        v += torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s * s))
    return v


def simulate(v, n_particles, shifts=False, ctf=False, pixel_size=3.0, batch=500):
    """Noiseless particles of map v at random poses, in batches."""
    box = v.shape[-1]
    R = euler_to_matrix(torch.rand(n_particles, 3) * torch.tensor([360.0, 180.0, 360.0]))
    o = 4 * torch.randn(n_particles, 2) if shifts else None
    c = None
    if ctf:
        df = 8000 + 12000 * torch.rand(n_particles)
        c = compute_ctf(CTFParams.create(df, df * 0.95, 30.0), box, pixel_size)
    rep, model = VoxelMap(v, pixel_size), ImageFormation()
    out = []
    for i in range(0, n_particles, batch):
        s = slice(i, i + batch)
        osl = None if o is None else o[s]
        csl = None if c is None else c[s]
        img = model(rep, R[s], origins_px=osl, ctf=csl)
        out.append(ParticleBatch(img, R[s], osl, csl))
    return out


def resolved_to(curve, box, freq):
    """True when the FSC exceeds 0.9 for every shell up to `freq` cycles/pixel."""
    return bool((curve[1 : int(freq * box) + 1] > 0.9).all())


def test_direct_inversion_recovers_map():
    v = blobs(32)
    vol = reconstruct_direct(simulate(v, 2000), 32)
    assert resolved_to(fsc(vol.double(), v.double()), 32, 0.4)


def test_direct_inversion_with_shifts_and_ctf():
    v = blobs(32)
    vol = reconstruct_direct(simulate(v, 2000, shifts=True, ctf=True), 32, reg=1e-2)
    assert resolved_to(fsc(vol.double(), v.double()), 32, 0.4)


def test_half_sets_accumulate_in_one_pass():
    v = blobs(24)
    batches = simulate(v, 1200, shifts=True)
    ids = random_half_sets(1200, seed=3)
    rec = DirectReconstructor(24)
    for i, b in enumerate(batches):
        b.half = ids[500 * i : 500 * (i + 1)]
        rec.add(b)
    assert rec.count.tolist() == [600, 600]
    num, wt = rec.fourier_grids()
    n0, w0 = rec.fourier_grids(0)
    n1, w1 = rec.fourier_grids(1)
    assert torch.allclose(num, n0 + n1) and torch.allclose(wt, w0 + w1)
    h0, h1 = rec.volume(half=0), rec.volume(half=1)
    curve = fsc(h0.double(), h1.double())
    assert resolved_to(curve, 24, 0.35)
    final, used = fsc_weighted_average(h0, h1)
    assert resolved_to(fsc(final.double(), v.double()), 24, 0.35)
    # a per-shell Wiener term derived from the half-map FSC gives a good full map too
    full = rec.volume(reg=reg_from_fsc(used, rec.shell_weights(), full_map=True))
    assert resolved_to(fsc(full.double(), v.double()), 24, 0.35)


def test_random_half_sets_are_seeded_and_balanced():
    a, b, c = random_half_sets(101, seed=1), random_half_sets(101, seed=1), random_half_sets(101, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.sum() == 50 and set(a.tolist()) == {0, 1}


def test_fsc_weighting_filter_value():
    n = 16
    a = torch.randn(n, n, n, dtype=torch.float64)
    curve = torch.full((n // 2 + 1,), 1 / 3, dtype=torch.float64)  # sqrt(2 FSC / (1 + FSC)) = sqrt(1/2)
    out, _ = fsc_weighted_average(a, a, curve)
    lowpassed, _ = fsc_weighted_average(a, a, torch.ones_like(curve))
    assert torch.allclose(out, lowpassed * 0.5**0.5, atol=1e-12)


def test_shell_filter_scales_each_shell_power_by_the_weight_squared():
    n = 16
    a = torch.randn(n, n, n, dtype=torch.float64)
    weight = torch.linspace(1.0, 0.0, n // 2 + 1, dtype=torch.float64)
    out = shell_filter(a, weight)
    power = lambda v: radial_average(fft3c(v).abs() ** 2, ndim=3)[: n // 2 + 1]  # noqa: E731
    assert torch.allclose(power(out), power(a) * weight**2, rtol=1e-9, atol=1e-12)


def test_masked_half_maps_mask_before_filtering():
    n = 16
    g = torch.Generator().manual_seed(5)
    h1, h2 = torch.randn(n, n, n, generator=g, dtype=torch.float64), torch.randn(n, n, n, generator=g, dtype=torch.float64)
    mask = soft_mask(n, 0.3 * n, 2.0, 3, dtype=torch.float64)
    curve = torch.linspace(0.9, 0.1, n // 2 + 1, dtype=torch.float64)
    a, b, full = masked_half_maps(h1, h2, mask, curve)
    assert torch.allclose(a, shell_filter(h1 * mask, curve)) and torch.allclose(b, shell_filter(h2 * mask, curve))
    assert torch.allclose(full, fsc_weighted_average(h1 * mask, h2 * mask, curve)[0])


def test_streaming_matches_single_batch():
    v = blobs(16)
    batches = simulate(v, 300, shifts=True, batch=100)
    one = ParticleBatch(
        torch.cat([b.images for b in batches]),
        torch.cat([b.rotations for b in batches]),
        torch.cat([b.origins_px for b in batches]),
    )
    streamed, single = DirectReconstructor(16, n_halves=1).add_all(batches), DirectReconstructor(16, n_halves=1).add_all([one])
    assert torch.allclose(streamed.sums.rows, single.sums.rows, atol=1e-3)
    a, b = streamed.volume(), single.volume()
    assert (a - b).norm() < 1e-3 * b.norm()


def test_noiseless_inversion_keeps_density_and_matches_cg():
    """The one-pass solver solves the same least-squares problem as streamed CG: exact on noiseless data."""
    torch.manual_seed(1)
    v = blobs(24)
    batches = simulate(v, 1000, shifts=True, ctf=True)
    vol = DirectReconstructor(24, n_halves=1).add_all(batches).volume()
    assert abs(float(vol.sum() / v.sum()) - 1) < 0.01
    assert (vol - v).norm() < 0.01 * v.norm()
    cg = reconstruct_cg(batches, 24, n_iter=15)
    assert torch.corrcoef(torch.stack([cg.flatten(), vol.flatten()]))[0, 1] > 0.999


def test_cg_and_direct_agree_on_noiseless_data():
    v = blobs(20)
    batches = simulate(v, 600, shifts=True, ctf=True, batch=300)
    direct = reconstruct_direct(batches, 20, reg=1e-2)
    cg = reconstruct_cg(batches, 20, n_iter=12)
    assert torch.corrcoef(torch.stack([cg.flatten(), direct.flatten()]))[0, 1] > 0.99
    assert resolved_to(fsc(cg.double(), v.double()), 20, 0.4)
