"""Gaussian-mixture fitting of binned 3-D data: conditionals against brute force, EM monotonicity, recovery of a
known mixture by Gibbs and EM."""

from __future__ import annotations

import math

import pytest
import torch

from cryoscope.bayes.assignments import assignment_stats
from cryoscope.bayes.fit_map import binned_map, fit_map, posterior_maps, render
from cryoscope.bayes.mixture import MixtureState, _precision_shape_rate, draw_means, squared_residual
from cryoscope.bayes.prior import MixturePrior
from cryoscope.physics import gmm

BOX, VOXEL = 20, 2.0


def _true_map(g: torch.Generator, k: int = 5, sigma: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.randn(k, 3, generator=g, dtype=torch.float64) * 5
    vol = gmm.render_volume(centres, torch.ones(k, dtype=torch.float64), torch.full((k,), sigma, dtype=torch.float64), BOX, VOXEL)
    return centres, vol


def _complete_log_joint(points, z, means, s, weights, prior: MixturePrior):
    """log p(x, z | θ) + log p(μ | s) + log p(s), written out directly from eqs. 2.16 and 2.22-2.23."""
    d = points.shape[1]
    d2 = ((points[:, None, :] - means[None]) ** 2).sum(-1)
    ll = (z * (torch.log(weights) + 0.5 * d * torch.log(s / (2 * math.pi)) - 0.5 * s * d2)).sum()
    prec = prior.r * s if prior.mean_prior == "scaled" else torch.as_tensor(prior.r, dtype=s.dtype)
    lp = 0.5 * means.numel() * torch.log(prec) - 0.5 * prec * (means**2).sum() + (prior.a - 1) * torch.log(s) - prior.b * s
    return ll + lp


@pytest.mark.parametrize("mean_prior", ["scaled", "fixed"])
def test_precision_and_mean_conditionals_match_brute_force(mean_prior):
    g = torch.Generator().manual_seed(1)
    _, vol = _true_map(g)
    data = binned_map(vol, VOXEL, 3000)
    points, counts = data.points, data.counts
    prior = MixturePrior.from_data(points, counts, mean_prior=mean_prior)
    k = 4
    means = torch.randn(k, 3, generator=g, dtype=torch.float64) * 4
    weights = torch.full((k,), 1 / k, dtype=torch.float64)
    s0 = torch.tensor(1 / 9.0, dtype=torch.float64)
    # one fixed draw of the assignments, then the conditionals of s and of one mean coordinate
    z = torch.zeros(points.shape[0], k, dtype=torch.float64)
    gz = torch.Generator().manual_seed(5)
    probs = torch.softmax(torch.log(weights) - 0.5 * s0 * ((points[:, None] - means[None]) ** 2).sum(-1), -1)
    for j in range(points.shape[0]):
        z[j] = torch.bincount(torch.multinomial(probs[j], int(counts[j]), replacement=True, generator=gz), minlength=k).double()
    stats_n, stats_s, stats_q = z.sum(0), z.T @ points, z.T @ (points**2).sum(-1)

    class _Stats:
        n, s, q = stats_n, stats_s, stats_q

    shape, rate = _precision_shape_rate(squared_residual(_Stats, means), stats_n.sum(), means, prior)
    grid = torch.linspace(float(shape / rate) * 0.7, float(shape / rate) * 1.3, 4001, dtype=torch.float64)
    logp = torch.stack([_complete_log_joint(points, z, means, s, weights, prior) for s in grid])
    p = torch.softmax(logp, 0)
    mean_bf = (p * grid).sum()
    var_bf = (p * (grid - mean_bf) ** 2).sum()
    assert float(mean_bf) == pytest.approx(float(shape / rate), rel=1e-4)
    assert float(var_bf) == pytest.approx(float(shape / rate**2), rel=2e-3)
    # mean of component 0, x coordinate, at s0: Gaussian with the moments of draw_means
    draws = torch.stack([draw_means(stats_n, stats_s, s0, prior, torch.Generator().manual_seed(i)) for i in range(4000)])
    m_mc, v_mc = float(draws[:, 0, 0].mean()), float(draws[:, 0, 0].var())
    xs = torch.linspace(m_mc - 8 * v_mc**0.5, m_mc + 8 * v_mc**0.5, 4001, dtype=torch.float64)
    lp = []
    for x in xs:
        mu = means.clone()
        mu[0, 0] = x
        lp.append(_complete_log_joint(points, z, mu, s0, weights, prior))
    p = torch.softmax(torch.stack(lp), 0)
    m_bf = float((p * xs).sum())
    v_bf = float((p * (xs - m_bf) ** 2).sum())
    assert abs(m_mc - m_bf) < 5 * (v_bf / 4000) ** 0.5
    assert v_mc == pytest.approx(v_bf, rel=0.1)


def test_em_never_lowers_the_log_posterior_and_recovers_the_map():
    g = torch.Generator().manual_seed(2)
    _, vol = _true_map(g)
    fit = fit_map(vol, VOXEL, 12, 30000, 80, method="em", generator=g)
    lp = torch.tensor(fit.log_posterior)
    assert bool((lp[1:] - lp[:-1] >= -1e-8 * lp.abs()[1:]).all())
    assert lp[-1] > lp[0]
    m = render(fit.state, BOX, VOXEL)
    assert float((m * vol).sum() / (m.norm() * vol.norm())) > 0.995
    assert fit.state.sigma == pytest.approx(3.0, rel=0.15)


def test_gibbs_posterior_mean_recovers_a_known_mixture():
    g = torch.Generator().manual_seed(4)
    _, vol = _true_map(g)
    fit = fit_map(vol, VOXEL, 12, 30000, 120, burn_in=60, thin=5, generator=g)
    assert len(fit.samples) == 12
    mean, sd = posterior_maps(fit.samples, BOX, VOXEL)
    cc = float((mean * vol).sum() / (mean.norm() * vol.norm()))
    assert cc > 0.995
    assert 0 < float(sd.max()) < 0.2 * float(mean.max())
    one = render(fit.samples[-1], BOX, VOXEL)
    assert cc >= float((one * vol).sum() / (one.norm() * vol.norm()))
    st = fit.state
    data = binned_map(vol, VOXEL, 30000)
    dense = assignment_stats(data, st.means, st.weights, st.precision, soft=True, truncation=None)
    cut = assignment_stats(data, st.means, st.weights, st.precision, soft=True)
    assert float(dense.n.sum()) == pytest.approx(float(data.counts.sum()))
    # the 5σ truncation changes the expected statistics and the likelihood only negligibly (here ~1e-6 of the counts)
    total = float(data.counts.sum())
    assert float((cut.n - dense.n).abs().max()) < 1e-5 * total
    assert float((cut.s - dense.s).abs().max()) < 1e-5 * total * st.sigma
    assert float(cut.log_likelihood) == pytest.approx(float(dense.log_likelihood), rel=5e-6)
    assert isinstance(st, MixtureState)


def test_multinomial_split_keeps_every_count_and_has_the_multinomial_mean():
    from cryoscope.bayes.assignments import sample_split

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(6, 5, generator=g, dtype=torch.float64) * 2, -1)
    counts = torch.tensor([0, 1, 3, 7, 20, 2])
    draws = torch.stack([sample_split(probs, counts, g) for _ in range(4000)])
    assert bool((draws.sum(-1) == counts.double()).all())
    expected = counts[:, None] * probs
    sd = (counts[:, None] * probs * (1 - probs) / 4000).sqrt()
    assert bool(((draws.mean(0) - expected).abs() <= 5 * sd + 1e-12).all())


def test_truncated_draws_have_the_expected_split():
    g = torch.Generator().manual_seed(6)
    _, vol = _true_map(g)
    data = binned_map(vol, VOXEL, 5000)
    k = 6
    means = torch.randn(k, 3, generator=g, dtype=torch.float64) * 4
    weights = torch.full((k,), 1 / k, dtype=torch.float64)
    s = torch.tensor(1 / 16.0, dtype=torch.float64)
    expected = assignment_stats(data, means, weights, s, soft=True, truncation=None)
    draws = [assignment_stats(data, means, weights, s, g) for _ in range(120)]
    assert all(float(d.n.sum()) == float(data.counts.sum()) for d in draws)
    n = torch.stack([d.n for d in draws])
    sx = torch.stack([d.s[:, 0] for d in draws])
    assert bool(((n.mean(0) - expected.n).abs() <= 5 * n.std(0) / 120**0.5 + 1e-9).all())
    assert bool(((sx.mean(0) - expected.s[:, 0]).abs() <= 5 * sx.std(0) / 120**0.5 + 1e-9).all())
