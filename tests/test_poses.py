"""Pose samplers: uniformity on SO(3), caps, bands, concentrated and empirical distributions."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch
from scipy import stats

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.rotations import (
    euler_to_matrix,
    geodesic_distance,
    matrix_to_axis_angle,
    matrix_to_euler,
)
from cryoscope.physics.poses import (
    concentrated_rotations,
    empirical_rotations,
    equatorial_band_rotations,
    polar_cap_rotations,
    uniform_rotations,
    viewing_directions,
)

D = torch.float64


def _is_rotation(R):
    eye = torch.eye(3, dtype=R.dtype).expand_as(R)
    return torch.allclose(R @ R.transpose(-1, -2), eye, atol=1e-10) and torch.allclose(torch.linalg.det(R), torch.ones(len(R), dtype=R.dtype))


def _psi(R):
    return matrix_to_euler(R)[:, 2].numpy()


def test_uniform_rotations_are_haar():
    g = torch.Generator().manual_seed(0)
    R = uniform_rotations(20000, generator=g, dtype=D)
    assert R.shape == (20000, 3, 3) and _is_rotation(R)
    # Viewing directions uniform on the sphere: z uniform on [-1, 1] (Archimedes).
    z = viewing_directions(R)[:, 2].numpy()
    assert stats.kstest(z, stats.uniform(loc=-1, scale=2).cdf).pvalue > 1e-3
    # Rotation angle density (1 - cos w) / pi on [0, pi]: CDF (w - sin w) / pi.
    w = matrix_to_axis_angle(R).norm(dim=-1).numpy()
    assert stats.kstest(w, lambda x: (x - torch.sin(torch.as_tensor(x)).numpy()) / math.pi).pvalue > 1e-3
    # Uniform Euler angles would fail the same test (the test can fail).
    bad = euler_to_matrix(torch.rand(20000, 3, generator=g, dtype=D) * torch.tensor([360.0, 180.0, 360.0], dtype=D))
    assert stats.kstest(viewing_directions(bad)[:, 2].numpy(), stats.uniform(loc=-1, scale=2).cdf).pvalue < 1e-6
    assert stats.kstest(_psi(R), stats.uniform(loc=-180, scale=360).cdf).pvalue > 1e-3


def test_polar_caps_and_equatorial_band():
    g = torch.Generator().manual_seed(1)
    R = polar_cap_rotations(5000, 20.0, generator=g, dtype=D)
    assert _is_rotation(R)
    tilt = matrix_to_euler(R)[:, 1]
    assert float(tilt.max()) <= 20 + 1e-9
    z = viewing_directions(R)[:, 2].numpy()  # uniform area on the cap: z uniform on [cos 20, 1]
    c = math.cos(math.radians(20))
    assert stats.kstest(z, stats.uniform(loc=c, scale=1 - c).cdf).pvalue > 1e-3
    assert stats.kstest(_psi(R), stats.uniform(loc=-180, scale=360).cdf).pvalue > 1e-3
    both = matrix_to_euler(polar_cap_rotations(4000, 15.0, both_poles=True, generator=g, dtype=D))[:, 1]
    assert bool(((both <= 15 + 1e-9) | (both >= 165 - 1e-9)).all()) and 0.45 < float((both < 90).double().mean()) < 0.55
    band = equatorial_band_rotations(5000, 10.0, generator=g, dtype=D)
    bt = matrix_to_euler(band)[:, 1]
    assert float((bt - 90).abs().max()) <= 10 + 1e-9 and float((bt - 90).abs().max()) > 9.5
    d = viewing_directions(band)
    rot = torch.atan2(d[:, 1], d[:, 0]).numpy()
    assert stats.kstest(rot, stats.uniform(loc=-math.pi, scale=2 * math.pi).cdf).pvalue > 1e-3
    with pytest.raises(InvalidValueError):
        polar_cap_rotations(10, 0.0)
    with pytest.raises(InvalidValueError):
        equatorial_band_rotations(10, 95.0)


def test_concentrated_views_follow_von_mises_fisher():
    g = torch.Generator().manual_seed(2)
    centres = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.3, -0.2, -0.9]], dtype=D)
    centres_u = centres / centres.norm(dim=-1, keepdim=True)
    R = concentrated_rotations(9000, centres, spread=5.0, weights=torch.tensor([1.0, 1.0, 2.0]), generator=g, dtype=D)
    assert _is_rotation(R)
    d = viewing_directions(R)
    ang = torch.rad2deg(torch.acos((d @ centres_u.T).clamp(-1, 1)))
    nearest, which = ang.min(dim=1)
    counts = torch.bincount(which, minlength=3).double() / 9000
    torch.testing.assert_close(counts, torch.tensor([0.25, 0.25, 0.5], dtype=D), atol=0.02, rtol=0)
    # Small spread: angle to the centre ~ Rayleigh(sigma = 5 deg); test the CDF 1 - exp(-a^2 / (2 sigma^2)).
    assert stats.kstest(nearest.numpy(), lambda a: 1 - torch.exp(-torch.as_tensor(a) ** 2 / 50).numpy()).pvalue > 1e-3
    with pytest.raises(InvalidValueError):
        concentrated_rotations(5, torch.zeros(1, 3), 5.0)


def test_empirical_resampling():
    g = torch.Generator().manual_seed(3)
    euler = torch.tensor([[10.0, 20.0, 30.0], [100.0, 80.0, -40.0], [-150.0, 150.0, 170.0]], dtype=D)
    R = empirical_rotations(3000, euler, generator=g, dtype=D)
    ref = euler_to_matrix(euler)
    dist = geodesic_distance(R[:, None], ref[None])
    assert float(dist.min(dim=1).values.max()) < 1e-5
    frac = torch.bincount(dist.argmin(dim=1), minlength=3).double() / 3000
    assert float((frac - 1 / 3).abs().max()) < 0.04
    with pytest.raises(InvalidValueError):
        empirical_rotations(3, torch.zeros(0, 3))


@pytest.mark.parametrize("around", ["poles", "equator"])
def test_latitude_concentrated_rotations_follow_their_density(around):
    """cos(tilt) = t has density ∝ exp(-f(t) / 2σ²) on [-1, 1], f = 1 - t² (poles) or t² (equator)."""
    from cryoscope.physics.poses import latitude_concentrated_rotations

    g = torch.Generator().manual_seed(3)
    sigma = 0.3
    R = latitude_concentrated_rotations(6000, sigma, around, generator=g, dtype=D)
    assert _is_rotation(R)
    t = np.linspace(-1, 1, 4001)
    f = (1 - t * t) if around == "poles" else t * t
    cdf = np.cumsum(np.exp(-f / (2 * sigma**2)))
    cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0])
    z = viewing_directions(R)[:, 2].numpy()
    assert stats.kstest(z, lambda v: np.interp(v, t, cdf)).pvalue > 1e-3
    assert stats.kstest(z, stats.uniform(loc=-1, scale=2).cdf).pvalue < 1e-6  # and not uniform
