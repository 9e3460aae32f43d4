"""CTF: RELION's formula, its zeros, astigmatism, signs and the correction filters."""

from __future__ import annotations

import math

import pytest
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.ctf import (
    CTFParams,
    compute_ctf,
    ctf_at,
    electron_wavelength,
    phase_flip,
    wiener_filter,
)
from cryoscope.physics.fourier import fft2c

D = torch.float64


def test_relativistic_wavelength():
    # Tabulated relativistic electron wavelengths (pm): 300 kV 1.9687, 200 kV 2.5079, 100 kV 3.7014.
    for kv, lam in [(300, 0.019687), (200, 0.025079), (100, 0.037014)]:
        assert float(electron_wavelength(kv)) == pytest.approx(lam, abs=2e-6)


def test_zeros_at_analytic_frequencies():
    df, kv = 15000.0, 300.0
    p = CTFParams.create(df, voltage=kv, cs=0.0, amplitude_contrast=0.0, dtype=D)
    k = torch.linspace(0, 0.5, 200001, dtype=D)
    c = ctf_at(p, k, torch.zeros_like(k))[0]
    changes = torch.nonzero(torch.sign(c[1:]) * torch.sign(c[:-1]) < 0).flatten()
    lam = float(electron_wavelength(kv))
    zeros = [math.sqrt(n / (lam * df)) for n in range(1, 1000) if math.sqrt(n / (lam * df)) < 0.5]
    assert len(changes) == len(zeros) > 20
    for i, z in zip(changes.tolist(), zeros):
        assert float(k[i]) <= z <= float(k[i + 1])


def test_matches_textbook_form():
    # CTF = sqrt(1-Q^2) sin(chi) + Q cos(chi), chi = pi lambda df k^2 - pi/2 Cs lambda^3 k^4 + phase shift,
    # df(phi) = dU cos^2(phi - a) + dV sin^2(phi - a): an independent writing of RELION's formula.
    g = torch.Generator().manual_seed(1)
    n = 6
    du = 5000 + 20000 * torch.rand(n, generator=g, dtype=D)
    dv = du - 2000 * torch.rand(n, generator=g, dtype=D)
    ang = 180 * torch.rand(n, generator=g, dtype=D)
    q = 0.2 * torch.rand(n, generator=g, dtype=D)
    ps = 90 * torch.rand(n, generator=g, dtype=D)
    cs = 1 + 2 * torch.rand(n, generator=g, dtype=D)
    p = CTFParams.create(du, dv, ang, 300.0, cs, q, ps, dtype=D)
    c = compute_ctf(p, 64, 1.5)
    k = (torch.arange(64, dtype=D) - 32) / (64 * 1.5)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    phi = torch.atan2(ky, kx)
    lam = float(electron_wavelength(300.0))
    for i in range(n):
        a = math.radians(float(ang[i]))
        dfp = du[i] * torch.cos(phi - a) ** 2 + dv[i] * torch.sin(phi - a) ** 2
        k2 = kx**2 + ky**2
        chi = math.pi * lam * dfp * k2 - math.pi / 2 * cs[i] * 1e7 * lam**3 * k2**2 + math.radians(float(ps[i]))
        ref = torch.sqrt(1 - q[i] ** 2) * torch.sin(chi) + q[i] * torch.cos(chi)
        torch.testing.assert_close(c[i], ref, atol=1e-10, rtol=0)


def test_astigmatism_axes_and_point_symmetry():
    du, dv, ang = 20000.0, 14000.0, 30.0
    astig = CTFParams.create(du, dv, ang, cs=2.7, amplitude_contrast=0.07, dtype=D)
    iso_u = CTFParams.create(du, dtype=D, cs=2.7, amplitude_contrast=0.07)
    iso_v = CTFParams.create(dv, dtype=D, cs=2.7, amplitude_contrast=0.07)
    r = torch.linspace(0, 0.3, 500, dtype=D)
    a = math.radians(ang)
    along = ctf_at(astig, r * math.cos(a), r * math.sin(a))
    perp = ctf_at(astig, -r * math.sin(a), r * math.cos(a))
    torch.testing.assert_close(along, ctf_at(iso_u, r, 0 * r), atol=1e-12, rtol=0)
    torch.testing.assert_close(perp, ctf_at(iso_v, r, 0 * r), atol=1e-12, rtol=0)
    assert not torch.allclose(along, perp, atol=1e-3)
    img = compute_ctf(astig, 65, 1.2)[0]  # odd box: every k has its -k on the grid
    torch.testing.assert_close(img, img.flip(0, 1), atol=1e-12, rtol=0)


def test_zero_frequency_sign_and_first_lobe():
    # RELION: CTF(0) = -sin(-K3 - K5) = scale * sin(asin(Q) + phase shift); +Q without a phase plate.
    p = CTFParams.create([15000.0, 15000.0], amplitude_contrast=[0.07, 0.1], phase_shift=[0.0, 90.0], scale=[1.0, 2.0], dtype=D)
    c0 = ctf_at(p, torch.zeros(1, dtype=D), torch.zeros(1, dtype=D))[:, 0]
    torch.testing.assert_close(c0, torch.tensor([0.07, 2 * math.sqrt(1 - 0.01)], dtype=D))
    # Underfocus: the first lobe is positive and rises from Q.
    k = torch.linspace(0, 0.01, 50, dtype=D)
    c = ctf_at(p[0], k, 0 * k)[0]
    assert bool((torch.diff(c) > 0).all()) and float(c[0]) == pytest.approx(0.07)


def test_phase_shift_quadrature_and_bfactor_envelope():
    k = torch.linspace(0, 0.4, 300, dtype=D)
    p = CTFParams.create([20000.0, 20000.0], amplitude_contrast=0.0, phase_shift=[0.0, 90.0], dtype=D)
    c = ctf_at(p, k, 0 * k)
    torch.testing.assert_close(c[0] ** 2 + c[1] ** 2, torch.ones_like(k))
    b = CTFParams.create([20000.0, 20000.0], bfactor=[0.0, 80.0], dtype=D)
    cb = ctf_at(b, k / math.sqrt(2), k / math.sqrt(2))
    torch.testing.assert_close(cb[1], cb[0] * torch.exp(-80 * k**2 / 4))


def test_phase_flip_and_wiener_filter():
    g = torch.Generator().manual_seed(2)
    img = torch.randn(3, 48, 48, generator=g, dtype=D)
    F = fft2c(img)
    ctf = compute_ctf(CTFParams.create([9000.0, 12000.0, 15000.0], dtype=D), 48, 1.0)
    torch.testing.assert_close(phase_flip(F * ctf, ctf), F * ctf.abs())
    rec = wiener_filter(F * ctf, ctf, 1e10)
    ok = ctf.abs() > 0.05
    torch.testing.assert_close(rec[ok], F[ok], rtol=1e-6, atol=1e-6)
    low = wiener_filter(F * ctf, ctf, 1.0)  # shrinks towards 0 by CTF^2 / (CTF^2 + 1)
    torch.testing.assert_close(low, F * ctf**2 / (ctf**2 + 1))


def test_params_batching_and_errors():
    p = CTFParams.create([1e4, 2e4, 3e4], defocus_angle=10.0, voltage=[300.0, 200.0, 300.0])
    assert len(p) == 3 and p.voltage.dtype == torch.float32
    sub = p[torch.tensor([2, 0])]
    assert sub.defocus_u.tolist() == [3e4, 1e4] and len(p[1]) == 1
    both = compute_ctf(p.to(dtype=D), 32, 2.0)
    torch.testing.assert_close(both[2], compute_ctf(p[2].to(dtype=D), 32, 2.0)[0])
    with pytest.raises(InvalidValueError):
        CTFParams.create([1e4, 2e4], voltage=[300.0, 300.0, 200.0])
    with pytest.raises(InvalidValueError):
        CTFParams.create(1e4, amplitude_contrast=1.0)
    with pytest.raises(InvalidValueError):
        CTFParams.create(float("nan"))
    with pytest.raises(InvalidValueError):
        compute_ctf(p, 32, 0.0)
