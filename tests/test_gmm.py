"""Gaussian mixtures: analytic projections vs numerical integration, analytic slices vs FFT, conventions."""

from __future__ import annotations

import pytest
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.rotations import euler_to_matrix
from cryoscope.physics import gmm
from cryoscope.physics.fourier import centered_coords, fft2c
from cryoscope.physics.poses import uniform_rotations
from cryoscope.representations.gaussian_mixture import GaussianMixture

D = torch.float64


def _mixture(box=40, vs=1.5, m=12, seed=0, spread=0.3, trainable=False):
    """Gaussians of 1.5-2.5 voxels within +-spread/2 of the box per axis (tails inside the box at any pose)."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(m, 3, generator=g, dtype=D) - 0.5) * box * vs * spread
    amps = 0.5 + torch.rand(m, generator=g, dtype=D)
    sig = vs * (1.5 + torch.rand(m, generator=g, dtype=D))
    return GaussianMixture(centres, amps, sig, box=box, voxel_size=vs, trainable=trainable)


def test_projection_equals_integral_of_rotated_density():
    gm = _mixture()
    box, vs = gm.box, gm.voxel_size
    R = uniform_rotations(4, generator=torch.Generator().manual_seed(1), dtype=D)
    img = gm.project(R)
    # image(x, y) = sum_z V(A^T (x, y, z)) * vs^3, the convention of docs/conventions.md.
    x = centered_coords(box, dtype=D) * vs
    z, y, xx = torch.meshgrid(x, x, x, indexing="ij")
    r = torch.stack([xx, y, z], -1)  # (x, y, z) at [z, y, x]
    for i in range(len(R)):
        pts = r @ R[i]  # A^T r as row vectors
        ref = (gm.density(pts) * vs**3).sum(0)
        assert float((img[i] - ref).abs().max()) < 1e-3 * float(ref.abs().max())
    # Rendering the rotated mixture (centres A c) and summing along z gives the same images.
    with torch.no_grad():
        for i in range(len(R)):
            rotated = GaussianMixture(gm.centres @ R[i].T, gm.amplitudes, gm.sigmas, box, vs)
            torch.testing.assert_close(rotated.render().sum(0), img[i], rtol=0, atol=1e-4 * float(img[i].max()))
    torch.testing.assert_close(img.sum((-1, -2)), gm.amplitudes.sum().expand(4).detach(), rtol=1e-6, atol=0)


def test_analytic_slice_equals_fft_of_projection():
    gm = _mixture(box=48, vs=2.0, seed=3)
    R = uniform_rotations(3, generator=torch.Generator().manual_seed(4), dtype=D)
    F = gm.slice(R)
    ref = fft2c(gm.project(R))
    assert float((F - ref).abs().max()) < 1e-6 * float(ref.abs().max())
    torch.testing.assert_close(F[:, 24, 24].real, gm.amplitudes.sum().expand(3).detach())
    cut = gm.slice(R, cutoff=0.25)
    k = centered_coords(48, dtype=D)
    outside = (k[:, None] ** 2 + k[None, :] ** 2).sqrt() > 12 + 1e-9
    assert bool((cut[:, outside] == 0).all()) and torch.equal(cut[:, ~outside], F[:, ~outside])


def test_matches_voxel_fourier_slice_projector():
    # The rendered map through the voxel projector gives the analytic slice (same A, not A^T).
    # Tolerance: the projector's gridding correction is exact only near the box centre.
    from cryoscope.representations.voxel import VoxelMap

    gm = _mixture(box=40, vs=1.5, seed=5, spread=0.2)
    R = euler_to_matrix(torch.tensor([[30.0, 70.0, -20.0], [120.0, 35.0, 60.0]], dtype=D))
    vm = VoxelMap(gm.render().detach(), gm.voxel_size)
    low = (centered_coords(40, dtype=D)[:, None] ** 2 + centered_coords(40, dtype=D)[None, :] ** 2).sqrt() <= 10
    Fa = gm.slice(R).detach()
    err = (vm.slice(R) - Fa)[:, low].abs().max() / Fa.abs().max()
    err_t = (vm.slice(R.transpose(-1, -2)) - Fa)[:, low].abs().max() / Fa.abs().max()
    assert float(err) < 2e-2 and float(err_t) > 0.2


def test_per_particle_mixtures_and_gradients():
    gm = _mixture(box=24, vs=2.0, m=5, seed=6)
    R = uniform_rotations(3, generator=torch.Generator().manual_seed(7), dtype=D)
    c = gm.centres.detach()
    shifted = torch.stack([c, c + 1.0, c * 0.9])
    amps = gm.amplitudes.detach().expand(3, -1)
    sig = gm.sigmas.detach().expand(3, -1)
    batch = gmm.project(shifted, amps, sig, R, 24, 2.0)
    for i in range(3):
        torch.testing.assert_close(batch[i], gmm.project(shifted[i], amps[i], sig[i], R[i : i + 1], 24, 2.0)[0])
    vols = gmm.render_volume(shifted, amps, sig, 24, 2.0)
    torch.testing.assert_close(vols[1], gmm.render_volume(shifted[1], amps[1], sig[1], 24, 2.0))

    def f(centres, sigmas):
        return torch.view_as_real(gmm.fourier_slice(centres, amps[0, :2], sigmas, R[:1], 12, 2.0))

    assert torch.autograd.gradcheck(f, (c[:2].clone().requires_grad_(), sig[0, :2].clone().requires_grad_()))
    trainable = _mixture(box=16, vs=2.0, m=3, trainable=True)
    trainable.slice(R).abs().sum().backward()
    assert trainable.centres.grad is not None and trainable.sigmas.grad is not None


def test_invalid_mixtures():
    with pytest.raises(InvalidValueError):
        GaussianMixture(torch.zeros(3, 2))
    with pytest.raises(InvalidValueError):
        GaussianMixture(torch.zeros(3, 3), sigmas=0.0)
    with pytest.raises(InvalidValueError):
        gmm.project(torch.zeros(3, 3), torch.ones(2), torch.ones(3), torch.eye(3)[None], 8, 1.0)


def test_projection_shifts_move_the_image_by_whole_pixels():
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(5, 3, generator=g, dtype=torch.float64) * 4
    a, s = torch.ones(5, dtype=torch.float64), torch.full((5,), 3.0, dtype=torch.float64)
    rot = uniform_rotations(2, generator=g, dtype=torch.float64)
    px = 2.0
    shifts = torch.tensor([[2.0, -3.0], [-1.0, 4.0]], dtype=torch.float64)  # pixels (x, y)
    moved = gmm.project(centres, a, s, rot, 32, px, shifts * px)
    plain = gmm.project(centres, a, s, rot, 32, px)
    for i in range(2):
        rolled = torch.roll(plain[i], (int(shifts[i, 1]), int(shifts[i, 0])), dims=(0, 1))
        assert torch.allclose(moved[i], rolled, atol=1e-8)  # only mass crossing the box edge differs
