"""Fourier phase-ramp shifts: T_s f(x) = f(x - s)."""

import torch

from cryoscope.physics.fourier import fft2c, ifft2c
from cryoscope.physics.shift import translate


def test_integer_shift_equals_roll():
    for n in (16, 17):
        img = torch.randn(3, n, n, dtype=torch.float64)
        s = torch.tensor([[2.0, -3.0], [0.0, 5.0], [-7.0, 1.0]], dtype=torch.float64)
        out = ifft2c(translate(fft2c(img), s)).real
        for i in range(3):
            sx, sy = int(s[i, 0]), int(s[i, 1])
            assert torch.allclose(out[i], torch.roll(img[i], (sy, sx), (0, 1)), atol=1e-12)


def test_shifts_compose_and_invert():
    F = fft2c(torch.randn(2, 15, 15, dtype=torch.float64))
    a = torch.randn(2, 2, dtype=torch.float64)
    b = torch.randn(2, 2, dtype=torch.float64)
    assert torch.allclose(translate(translate(F, a), b), translate(F, a + b), atol=1e-10)
    assert torch.allclose(translate(translate(F, a), -a), F, atol=1e-10)


def test_subpixel_shift_moves_centroid():
    n = 32
    k = torch.arange(n, dtype=torch.float64) - n // 2
    y, x = torch.meshgrid(k, k, indexing="ij")
    img = torch.exp(-(x**2 + y**2) / 8)
    out = ifft2c(translate(fft2c(img), torch.tensor([1.3, -0.6], dtype=torch.float64))).real
    cx, cy = (out * x).sum() / out.sum(), (out * y).sum() / out.sum()
    assert abs(cx - 1.3) < 1e-6 and abs(cy + 0.6) < 1e-6


def test_shift_gradient_matches_finite_differences():
    F = fft2c(torch.randn(2, 12, 12, dtype=torch.float64))
    target = torch.randn(2, 12, 12, dtype=torch.float64)
    s = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)

    def loss(shift):
        return ((ifft2c(translate(F, shift)).real - target) ** 2).sum()

    (g,) = torch.autograd.grad(loss(s), s)
    eps = 1e-6
    for i in range(2):
        for j in range(2):
            d = torch.zeros_like(s)
            d[i, j] = eps
            fd = (loss(s.detach() + d) - loss(s.detach() - d)) / (2 * eps)
            assert torch.isclose(g[i, j], fd, rtol=1e-6, atol=1e-8)
