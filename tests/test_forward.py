"""Image formation chain T_{-o} (CTF · P_A V): adjoint identity and gradients by finite differences."""

import torch

from cryoscope.geometry.rotations import axis_angle_to_matrix, euler_to_matrix
from cryoscope.physics.forward import ImageFormation
from cryoscope.physics.fourier import freq_grid_2d
from cryoscope.physics.shift import translate
from cryoscope.representations.voxel import VoxelMap

D = torch.float64


def _ctf(n, box):
    """A CTF-like real oscillation [n, N, N] (centred layout) with per-particle defocus."""
    k2 = (freq_grid_2d(box, dtype=D) ** 2).sum(-1)
    return torch.sin(0.05 * (1 + torch.rand(n, 1, 1, dtype=D)) * k2 + 0.1)


def _poses(n):
    R = euler_to_matrix(torch.rand(n, 3, dtype=D) * torch.tensor([360.0, 180.0, 360.0], dtype=D))
    return R, 3 * torch.randn(n, 2, dtype=D)


def test_forward_adjoint_identity_with_ctf_and_shifts():
    box, n = 14, 4
    R, o = _poses(n)
    ctf = _ctf(n, box)
    model = ImageFormation(cutoff=0.45)
    v = torch.randn(box, box, box, dtype=D)
    rep = VoxelMap(v, voxel_size=1.5)
    for fourier in (False, True):
        y = torch.randn(n, box, box, dtype=torch.complex128 if fourier else D)
        out = model(rep, R, origins_angst=1.5 * o, ctf=ctf, fourier=fourier)
        lhs = torch.vdot(out.flatten(), y.flatten()).real if fourier else (out * y).sum()
        rhs = (v * model.adjoint(rep, y, R, origins_px=o, ctf=ctf, fourier=fourier)).sum()
        assert torch.isclose(lhs, rhs, rtol=1e-12)


def test_origin_convention_moves_particle_to_minus_origin():
    box = 24
    k = torch.arange(box, dtype=D) - box // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    rep = VoxelMap(torch.exp(-(x**2 + y**2 + z**2) / 4), voxel_size=2.0)
    o = torch.tensor([[3.0, -2.0]], dtype=D)
    img = ImageFormation()(rep, torch.eye(3, dtype=D)[None], origins_px=o)[0]
    y2, x2 = torch.meshgrid(k, k, indexing="ij")
    centroid = torch.stack([(img * x2).sum(), (img * y2).sum()]) / img.sum()
    assert torch.allclose(centroid, -o[0], atol=1e-6)


def test_gradients_match_finite_differences():
    box, n = 10, 3
    R, o = _poses(n)
    ctf = _ctf(n, box)
    target = torch.randn(n, box, box, dtype=D)
    model = ImageFormation()
    v0 = torch.randn(box, box, box, dtype=D)

    def loss(v, delta, shifts):
        rep = VoxelMap(v, voxel_size=1.0)
        return ((model(rep, R @ axis_angle_to_matrix(delta), origins_px=shifts, ctf=ctf) - target) ** 2).sum()

    v = v0.clone().requires_grad_(True)
    delta = (1e-3 * torch.randn(n, 3, dtype=D)).requires_grad_(True)
    s = o.clone().requires_grad_(True)
    gv, gd, gs = torch.autograd.grad(loss(v, delta, s), (v, delta, s))
    eps = 1e-6
    args = (v.detach(), delta.detach(), s.detach())
    for which, grad, idx in [(0, gv, (1, 4, 6)), (0, gv, (5, 5, 5)), (1, gd, (0, 2)), (1, gd, (2, 0)), (2, gs, (1, 1))]:
        plus = [a.clone() for a in args]
        minus = [a.clone() for a in args]
        plus[which][idx] += eps
        minus[which][idx] -= eps
        fd = (loss(*plus) - loss(*minus)) / (2 * eps)
        assert torch.isclose(grad[idx], fd, rtol=1e-4, atol=1e-6), (which, idx, grad[idx].item(), fd.item())


def test_voxelmap_cache_follows_density_changes():
    v = torch.randn(8, 8, 8, dtype=D)
    rep = VoxelMap(v, voxel_size=1.0)
    R = torch.eye(3, dtype=D)[None]
    a = rep.slice(R)
    v.mul_(2)
    assert torch.allclose(rep.slice(R), 2 * a)
    # a shift of the slice is the same as shifting the model image
    o = torch.tensor([[1.5, 0.5]], dtype=D)
    F = ImageFormation()(rep, R, origins_px=o, fourier=True)
    assert torch.allclose(F, translate(rep.slice(R), -o))
