"""The separable, tree-structured assignment sampler for binned images against the dense evaluation."""

from __future__ import annotations

import pytest
import torch

from cryoscope.bayes.assignments import assignment_stats
from cryoscope.bayes.counts import GridPoints
from cryoscope.bayes.image_assignments import PixelCounts, image_assignment_stats


def _dense(counts, centres, weights, s, px):
    return [assignment_stats(GridPoints.from_counts(c, px), centres[i], weights, s, soft=True, truncation=None)
            for i, c in enumerate(counts)]


def _check_moments(counts, centres, weights, s, px, draws=300, compute_dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    data = PixelCounts.from_counts(counts, px)
    exact = _dense(counts, centres, weights, s, px)
    runs = [image_assignment_stats(data, centres, weights, s, g, compute_dtype=compute_dtype) for _ in range(draws)]
    ll = sum(e.log_likelihood for e in exact)
    assert torch.allclose(runs[0].log_likelihood, ll, rtol=1e-6 if compute_dtype == torch.float32 else 1e-12)
    n = torch.stack([r.n for r in runs]).mean(0)
    sx = torch.stack([r.s for r in runs]).mean(0)
    for i, e in enumerate(exact):
        # counts per component are sums of independent categorical draws: Var <= E; the sample mean of `draws` runs
        # lies within 5 standard errors
        assert ((n[i] - e.n).abs() <= 5 * (e.n / draws).sqrt() + 1e-9).all()
        spread = (counts.shape[-1] * px) * (e.n / draws).sqrt()  # |x| < box: Var(S) <= box² E[N]
        assert ((sx[i] - e.s).abs() <= 5 * spread[:, None] + 1e-9).all()
        assert torch.equal(runs[0].n[i].sum(), counts[i].sum().to(runs[0].n.dtype))


def test_draws_have_the_exact_responsibilities_as_mean():
    g = torch.Generator().manual_seed(0)
    p, k, box, px = 3, 37, 20, 4.0  # K = 37: padded tree (b1, b2, b3) = (3, 4, 4)
    centres = torch.randn(p, k, 2, generator=g, dtype=torch.float64) * 15
    weights = torch.rand(k, generator=g, dtype=torch.float64)
    counts = torch.randint(0, 4, (p, box, box), generator=g)
    _check_moments(counts, centres, weights / weights.sum(), torch.tensor(1 / 36, dtype=torch.float64), px)
    _check_moments(counts, centres, weights / weights.sum(), torch.tensor(1 / 36, dtype=torch.float64), px,
                   compute_dtype=torch.float32)


@pytest.mark.parametrize("precision,block", [(0.5, 2**22), (0.05, 6)])  # block 6: one pixel per exact block
def test_pixels_far_from_every_component_are_evaluated_exactly(precision, block, monkeypatch):
    monkeypatch.setattr("cryoscope.bayes.image_assignments._EXACT_BLOCK", block)
    # components near (-15, 15) Å and (15, -15) Å; pixel (0, 0) at (-40, -40) Å is nearest in x to the first and in y
    # to the second, so each product of the scaled 1-D factors is below exp(-300) (s = 0.5): zero in float32; or
    # about exp(-60) (s = 0.05): a normal float32, but made of factors below the sampler's floor, so set to zero
    g = torch.Generator().manual_seed(2)
    p, k, box, px = 2, 6, 16, 5.0
    centres = torch.randn(p, k, 2, generator=g, dtype=torch.float64)
    centres[:, :3] += torch.tensor([-15.0, 15.0], dtype=torch.float64)
    centres[:, 3:] += torch.tensor([15.0, -15.0], dtype=torch.float64)
    counts = torch.zeros(p, box, box, dtype=torch.long)
    counts[:, 8, 8] = 5
    counts[:, 0, 0] = 3
    counts[1, 0, 1] = 2
    _check_moments(counts, centres, torch.full((k,), 1 / k, dtype=torch.float64),
                   torch.tensor(precision, dtype=torch.float64), px, draws=100, compute_dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # the sampler draws float32 uniforms
def test_bins_of_zero_mass_are_never_drawn_and_the_carried_uniform_is_uniform(dtype):
    from cryoscope.bayes.image_assignments import _U_MAX, _pick

    n = 200_000
    masses = [torch.full((n,), m, dtype=dtype) for m in (0.0, 0.0, 1.0, 0.0, 2.0, 0.0)]
    u = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=dtype)
    u[:100] = _U_MAX  # the largest uniform still lands in the last bin of positive mass
    index, rest = _pick(masses, u)
    hits = torch.bincount(index, minlength=6)
    assert hits[[0, 1, 3, 5]].sum() == 0
    assert abs(float(hits[2]) / n - 1 / 3) < 5 * (2 / 9 / n) ** 0.5
    # the position inside the chosen bin is a fresh uniform, independent of the bin
    for b in (2, 4):
        r = rest[index == b]
        assert abs(float(r.mean()) - 0.5) < 5 * (1 / 12 / r.numel()) ** 0.5
        assert abs(float((r < 0.25).double().mean()) - 0.25) < 5 * (3 / 16 / r.numel()) ** 0.5


def test_hashed_uniforms_are_uniform_and_independent_across_counts_and_seeds():
    from cryoscope.bayes.image_assignments import _uniforms

    n, bins = 1_000_000, 64
    u = _uniforms(torch.tensor(12345, dtype=torch.int32), n, torch.float64)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    expected = n / bins
    chi2 = float(((torch.bincount((u * bins).long(), minlength=bins) - expected) ** 2 / expected).sum())
    assert chi2 < bins + 5 * (2 * bins) ** 0.5  # chi-square with 63 dof: mean 63, sd 11
    # neighbouring counts, and the same count under neighbouring seeds, are uncorrelated (sd of r: 1/sqrt(n))
    v = _uniforms(torch.tensor(12346, dtype=torch.int32), n, torch.float64)
    for a, b in ((u[:-1], u[1:]), (u, v)):
        r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
        assert abs(r) < 5 / n**0.5
    # pairs of neighbours fill the unit square evenly (an 8 x 8 grid of cells)
    cells = torch.bincount((u[:-1:2] * 8).long() * 8 + (u[1::2] * 8).long(), minlength=64)
    expected = n / 2 / 64
    assert float(((cells - expected) ** 2 / expected).sum()) < 64 + 5 * 128**0.5


def test_int64_offsets_give_the_same_draws_as_int32():
    # the descent gathers by int32 offsets, and by int64 ones past 2^31 table entries (or off the CPU): the same draws
    g = torch.Generator().manual_seed(4)
    p, k, box, px = 2, 30, 12, 4.0
    centres = torch.randn(p, k, 2, generator=g, dtype=torch.float64) * 10
    weights = torch.full((k,), 1 / k, dtype=torch.float64)
    data = PixelCounts.from_counts(torch.randint(0, 6, (p, box, box), generator=g), px)
    wide = PixelCounts(**{**data.__dict__, "count_index": data.count_index.long()})
    assert data.count_index.dtype == torch.int32
    a, b = (image_assignment_stats(d, centres, weights, 0.02, torch.Generator().manual_seed(9)) for d in (data, wide))
    assert torch.equal(a.n, b.n) and torch.equal(a.s, b.s) and a.n.sum() == data.counts.sum()
