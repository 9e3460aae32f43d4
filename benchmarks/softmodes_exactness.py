"""Exactness numbers of the soft-mode engine (float64) for benchmarks/RESULTS.md: the 70S map at 2πK = 8 (4 shells,
degree 6), 128 images with CTF and shifts. Run by hand: .venv/bin/python benchmarks/softmodes_exactness.py"""

from __future__ import annotations

import mrcfile
import numpy as np
import torch

from cryoscope.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from cryoscope.physics.ctf import CTFParams
from cryoscope.physics.polar import polar_ctf, shift_phases
from cryoscope.physics.poses import uniform_rotations
from cryoscope.representations.shells import from_voxels, k_max_from_two_pi_k, shell_basis, to_real
from cryoscope.uncertainty.alignments import ImplicitAlignments, polish_alignments
from cryoscope.uncertainty.data import ParticleRings, polar_grid_of
from cryoscope.uncertainty.hessian import EffectiveHessian
from cryoscope.uncertainty.likelihood import RingLikelihood
from cryoscope.uncertainty.moments import VolumetricLikelihood, accumulate_moments
from cryoscope.uncertainty.slicing import default_n_psi
from cryoscope.uncertainty.softmodes import EffectiveOperator, rigid_directions, soft_modes

torch.set_default_dtype(torch.float64)
g = torch.Generator().manual_seed(0)
vol = torch.tensor(mrcfile.read("tests/data/maps/ribosome70S_65.mrc").astype("float64"))
basis = shell_basis(k_max_from_two_pi_k(8), 4, 6, 65, radius=2.0)
x = to_real(from_voxels(vol, basis), basis)
J = 128
R = uniform_rotations(J, g, torch.float64)
n_psi = default_n_psi(basis.L)
grid = polar_grid_of(basis, n_psi)
df = 1e4 + 2e4 * torch.rand(J, generator=g)
ctf = polar_ctf(CTFParams.create(defocus_u=df, defocus_v=1.05 * df, defocus_angle=30.0), grid, 65, 4.0)
ph = shift_phases(torch.randn(J, 2, generator=g), grid, 65)
empty = ParticleRings(torch.zeros(J, 4, n_psi, dtype=torch.complex128), R, ctf, ph)
clean = RingLikelihood(basis, empty, chunk=J)
S = clean.templates(x, slice(0, J))
noisy = clean.with_data(empty.with_rings(S + 0.1 * S.abs().mean() * torch.complex(*torch.randn(2, *S.shape, generator=g))))
rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
rows = []

vl = VolumetricLikelihood(basis, accumulate_moments(basis, noisy.data))
ys = [torch.randn(x.shape, generator=g) * x.std() for _ in range(5)]
rows.append(("volumetric (Eq. 77) vs image sum (Eq. 90), 5 random maps, max relative", max(abs(float(vl.value(y) - noisy.value(y))) / abs(float(noisy.value(y))) for y in ys)))
gx, gw = noisy.gradient(x)
u = torch.randn(x.shape, generator=g) * x.std()
z = torch.randn(J, 3, generator=g)
h = 1e-4
fd = (noisy.value(x + h * u) - noisy.value(x - h * u)) / (2 * h)
rows.append(("gradient (map) vs central difference, relative", abs(float(fd - (gx * u).sum())) / abs(float(fd))))
Rr = noisy.data.rotations
cd = lambda t: (noisy.value(x, axis_angle_to_matrix(t * z) @ Rr) - noisy.value(x, axis_angle_to_matrix(-t * z) @ Rr)) / (2 * t)  # noqa: E731
fd = (4 * cd(h / 2) - cd(h)) / 3  # Richardson: O(h^4)
rows.append(("gradient (alignments) vs central difference (Richardson), relative", abs(float(fd - (gw * z).sum())) / abs(float(fd))))
lik, _ = polish_alignments(noisy, x, tol=1e-13)
hx, hw = lik.hvp(x, u)
(gp, wp), (gm, wm) = lik.gradient(x + h * u), lik.gradient(x - h * u)
rows.append(("H_FF v, H_τF v vs central differences of the gradient, relative", max(rel(hx, (gp - gm) / (2 * h)), rel(hw, (wp - wm) / (2 * h)))))
hx, hw = lik.hvp(x, torch.zeros_like(x), z)


def cdg(t: float) -> tuple[torch.Tensor, torch.Tensor]:
    p_, m_ = (lik.with_data(lik.data.with_rotations(axis_angle_to_matrix(s_ * t * z) @ lik.data.rotations)).gradient(x) for s_ in (1, -1))
    return (p_[0] - m_[0]) / (2 * t), (p_[1] - m_[1]) / (2 * t)


(ax1, aw1), (ax2, aw2) = cdg(h), cdg(h / 2)
rows.append(("H_Fτ z, H_ττ z vs central differences of the gradient (Richardson), relative",
             max(rel(hx, (4 * ax2 - ax1) / 3), rel(hw, (4 * aw2 - aw1) / 3))))
u2, z2 = torch.randn(x.shape, generator=g), torch.randn(J, 3, generator=g)
a, b = lik.hvp(x, u, z), lik.hvp(x, u2, z2)
lhs, rhs = (a[0] * u2).sum() + (a[1] * z2).sum(), (b[0] * u).sum() + (b[1] * z).sum()
rows.append(("symmetry |<u, Hv> - <Hu, v>| / |<u, Hv>|", abs(float(lhs - rhs)) / abs(float(lhs))))
fast, auto = EffectiveHessian(lik, x), ImplicitAlignments(lik, x)
rows.append(("handwritten effective Hessian vs autograd Schur complement, relative", rel(fast.matvec(u), auto.matvec(u))))
env = [polish_alignments(lik, x + s * h * u, iterations=30, tol=1e-14)[0].gradient(x + s * h * u)[0] for s in (1, -1)]
rows.append(("effective Hessian vs central differences of the gradient with poses re-optimised", rel(fast.matvec(u), (env[0] - env[1]) / (2 * h))))
z1 = auto.first_order(u)
zz2 = auto.second_order(u, z1)
for eps in (4e-3, 2e-3, 1e-3):
    moved, _ = polish_alignments(lik, x + eps * u, iterations=30, tol=1e-14)
    dw = matrix_to_axis_angle(moved.data.rotations @ lik.data.rotations.transpose(-1, -2))
    sc = float((eps * z1).norm())
    rows.append((f"implicit alignments at ε = {eps:g}: first order, second order (relative error)",
                 f"{float((dw - eps * z1).norm()) / sc:.3e}, {float((dw - eps * z1 - eps**2 * zz2).norm()) / sc:.3e}"))
# dense effective Hessian on noiseless data: rigid null modes and Lanczos vs eigh
op = EffectiveOperator(EffectiveHessian(clean.with_data(empty.with_rings(S)), x), basis)
H = torch.stack([op(e) for e in torch.eye(op.dim)], 1)
typical = float(torch.linalg.matrix_norm(H, 2))
rows.append(("noiseless: ‖H r‖ / (‖H‖ ‖r‖) for the 3 rigid rotations, before deflation", max(float(op(q).norm()) / typical for q in op.deflate.T)))
P = torch.eye(op.dim) - op.deflate @ op.deflate.T
lam = np.sort(np.linalg.eigvalsh((P @ (0.5 * (H + H.T)) @ P).numpy()))[3:10]
modes = soft_modes(op, k=7, max_iter=op.dim, tol=1e-12)
rows.append(("Lanczos 7 softest vs numpy eigh (deflated, 196 parameters), max relative", float(np.max(np.abs(modes.eigenvalues.numpy() - lam) / lam))))
rows.append(("  Lanczos iterations", modes.iterations))
check = soft_modes(op, k=7, method="eigsh")
rows.append(("eigsh vs eigh, max relative", float(np.max(np.abs(check.eigenvalues.numpy() - lam) / lam))))
print("| quantity | measured |\n|---|---|")
for k, v in rows:
    print(f"| {k} | {v if isinstance(v, str) else f'{v:.3g}'} |")
