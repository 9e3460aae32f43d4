"""VAE-GAN invariant layers: APS picks the max-norm phase and passes gradients; conv + APS + pooling is exactly
invariant to circular shifts (the ablation is not); the polar warp turns 90° rotations into angle shifts; the polar
and Gabor feature extractors are invariant to 90° rotations (float64)."""

from __future__ import annotations

import pytest
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.vaegan.layers import GaborBank, InvariantFeatures, PolarWarp, aps_downsample

CHANNELS = [8, 16, 16]


def rotate90(images: torch.Tensor) -> torch.Tensor:
    """Images [..., N, N] (N even) rotated by 90° about the centre pixel N // 2: (dy, dx) -> (-dx, dy), periodic."""
    return torch.roll(torch.rot90(images, 1, dims=(-2, -1)), 1, dims=-2)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def features(seed: int = 0, **kwargs) -> InvariantFeatures:
    torch.manual_seed(seed)
    return InvariantFeatures(CHANNELS, **kwargs).double()


def test_rotate90_turns_about_the_centre_pixel():
    n, c = 16, 8
    for dy, dx in [(3, -2), (0, 5), (-7, 7)]:
        delta = torch.zeros(n, n)
        delta[c + dy, c + dx] = 1
        assert rotate90(delta)[c - dx, c + dy] == 1 and rotate90(delta).sum() == 1


def test_aps_keeps_the_largest_phase_and_passes_gradients():
    x = torch.randn(3, 2, 8, 6, dtype=torch.float64)
    x[0, :, 1::2, 0::2] *= 10
    x[1, :, 0::2, 1::2] *= 10
    x[2] = 1.0  # all four phases tie: the first wins
    x.requires_grad_(True)
    out = aps_downsample(x)
    assert out.shape == (3, 2, 4, 3)
    assert torch.equal(out[0], x[0, :, 1::2, 0::2]) and torch.equal(out[1], x[1, :, 0::2, 1::2])
    assert torch.equal(out[2], x[2, :, 0::2, 0::2])
    out.square().sum().backward()
    assert torch.equal(x.grad[0, :, 1::2, 0::2], 2 * x[0, :, 1::2, 0::2].detach())
    assert x.grad[0, :, 0::2, :].abs().sum() == 0
    with pytest.raises(InvalidValueError):
        aps_downsample(torch.zeros(1, 1, 5, 4))


@pytest.mark.parametrize("size", [32, 64])
def test_shift_invariance_and_the_ablation(size):
    images = torch.randn(4, size, size, dtype=torch.float64)
    shifted = torch.roll(images, shifts=(int(torch.randint(1, size, ())), int(torch.randint(1, size, ()))), dims=(-2, -1))
    net = features()
    pooled, maps = net(images)
    assert pooled.shape == (4, 16) and maps.shape == (4, 16, size // 8, size // 8)
    assert relative(net(shifted)[0], pooled) < 1e-10
    ablation = features(invariant=False)
    assert relative(ablation(shifted)[0], ablation(images)[0]) > 1e-2


def test_polar_warp_turns_rotations_into_angle_shifts():
    images = torch.randn(3, 32, 32, dtype=torch.float64)
    warp = PolarWarp()
    polar = warp(images)
    assert polar.shape == (3, 1, 16, 32)
    assert relative(warp(rotate90(images)), torch.roll(polar, -8, dims=-1)) < 1e-12
    delta = torch.zeros(1, 32, 32, dtype=torch.float64)
    delta[0, 16, 16 + 5] = 1  # on the x axis at r = 5: θ = 0
    on_ray = PolarWarp(n_radii=15, n_angles=8, radius=15.0)(delta)[0, 0]  # r_j = j + 0.5
    assert on_ray[4, 0] == pytest.approx(0.5) and on_ray[5, 0] == pytest.approx(0.5) and on_ray[:, 1:].abs().max() < 1e-12


def test_polar_features_invariant_to_rotation():
    images = torch.randn(4, 32, 32, dtype=torch.float64)
    net = features(rotation="polar")
    pooled, maps = net(images)
    assert maps.shape == (4, 16, 2, 4)
    assert relative(net(rotate90(images))[0], pooled) < 1e-10
    assert relative(features(rotation="polar", invariant=False)(rotate90(images))[0],
                    features(rotation="polar", invariant=False)(images)[0]) > 1e-2


def test_gabor_bank_commutes_with_rotation():
    torch.manual_seed(1)
    bank = GaborBank(2, 6, n_orientations=8, kernel_size=5).double()
    x = torch.randn(3, 2, 16, 16, dtype=torch.float64)
    out = bank(x)
    assert out.shape == (3, 6, 16, 16)
    assert relative(bank(rotate90(x)), rotate90(out)) < 1e-12
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bank.parameters())


def test_gabor_features_invariant_to_shift_and_first_layer_equivariant_to_rotation():
    images = torch.randn(4, 32, 32, dtype=torch.float64)
    net = features(rotation="gabor")
    pooled = net(images)[0]
    assert relative(net(torch.roll(images, (5, -3), dims=(-2, -1)))[0], pooled) < 1e-10
    first = net.blocks[0]  # Gabor bank + 1x1 mix: its response maps rotate with the image
    assert relative(first(rotate90(images)[:, None]), rotate90(first(images[:, None]))) < 1e-12
    ablation = features(rotation="gabor", invariant=False)
    assert relative(ablation(torch.roll(images, (5, -3), dims=(-2, -1)))[0], ablation(images)[0]) > 1e-2


def test_size_checks():
    with pytest.raises(InvalidValueError):
        features()(torch.zeros(1, 24, 24, dtype=torch.float64))
    with pytest.raises(InvalidValueError):
        features(rotation="polar")(torch.zeros(1, 8, 8, dtype=torch.float64))
    with pytest.raises(InvalidValueError):
        InvariantFeatures(CHANNELS, rotation="affine")
