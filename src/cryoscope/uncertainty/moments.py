"""The volumetric (3-D) form of the low-temperature likelihood (Rangan et al. §15-17, Eq. 77-81).

ℒ = ½ Σ_n w_n k_n [ ∫ M20 |F̂|² dΩ - 2 Re Σ_lm conj(M11_lm) f_lm + M02 ] on each shell, with the data moments
M20 = Σ_j |CTF_j|², M11 = Σ_j CTF_j conj(T_j) Â_j and M02 = Σ_j |Â_j|² back-propagated through the exact adjoint of
the slice operator: M_lm = Σ_{j,q} (2π/n_psi) r_jq conj(Y_l^m(R_j^T e(ψ_q))). M11 is kept to degree L and M20 to 2L
(|F̂|² has degree <= 2L, so nothing is lost), which makes the 3-D form equal to the 2-D image sum to rounding, with
no mollifier (§16.1) needed. ∫ M20 |F̂|² dΩ is evaluated on a sphere grid exact to degree 4L.
The gradient is M20·F̂ - M11 (projected to degree L; Eq. 97 as printed is garbled) and H_FF = M20 (Eq. 99).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryoscope.geometry.spherical_harmonics import SphereGrid, WignerRotation
from cryoscope.representations.shells import ShellBasis, from_real
from cryoscope.uncertainty.data import ParticleRings
from cryoscope.uncertainty.slicing import ShellSlicer


@dataclass
class Moments:
    """Data moments on each shell: m20 [n_k, 2L+1, 4L+1], m11 [n_k, L+1, 2L+1] (coefficients), m02 [n_k]."""

    m20: torch.Tensor
    m11: torch.Tensor
    m02: torch.Tensor


def accumulate_moments(basis: ShellBasis, data: ParticleRings, chunk: int = 32) -> Moments:
    """Back-propagate the particles' CTF and image rings into the moments M20, M11, M02 (Eq. 79-81)."""
    L, n_psi = basis.L, data.n_psi
    slicer = ShellSlicer(L, n_psi, basis.k.dtype, basis.k.device)
    wide = ShellSlicer(2 * L, n_psi, basis.k.dtype, basis.k.device)
    rot_l, rot_2l = (WignerRotation(l, data.rings.dtype, basis.k.device) for l in (L, 2 * L))
    dpsi = 2 * math.pi / n_psi
    m20 = data.rings.new_zeros(basis.n_shells, 2 * L + 1, 4 * L + 1)
    m11 = data.rings.new_zeros(basis.n_shells, L + 1, 2 * L + 1)
    m02 = data.rings.real.new_zeros(basis.n_shells)
    for i in range(0, len(data), chunk):
        s = slice(i, min(len(data), i + chunk))
        back = data.rotations[s].transpose(-1, -2)
        A = data.rings[s]
        ctf = data.ctf[s] if data.ctf is not None else None
        mod = data.modulation(s)
        c2 = torch.ones_like(A.real) if ctf is None else ctf**2
        m20 += rot_2l(wide.adjoint_slice(c2.to(A.dtype)), back).sum(0) * dpsi
        r = A if mod is None else mod.conj() * A
        m11 += rot_l(slicer.adjoint_slice(r), back).sum(0) * dpsi
        m02 += (A.real**2 + A.imag**2).sum((0, -1)) * dpsi
    return Moments(m20, m11 * basis.mask, m02)


class VolumetricLikelihood:
    """ℒ(x) of Eq. 77 from precomputed `Moments` (cost independent of the number of images)."""

    def __init__(self, basis: ShellBasis, moments: Moments):
        self.basis, self.moments = basis, moments
        L = basis.L
        self.grid = SphereGrid(4 * L, basis.k.dtype, basis.k.device)
        self.m20_grid = self.grid.synthesis(moments.m20).real
        self.shell_weights = basis.likelihood_weights()

    def value(self, x: torch.Tensor) -> torch.Tensor:
        f = from_real(x, self.basis)
        vals = self.grid.synthesis(f)
        quad = ((vals.real**2 + vals.imag**2) * self.m20_grid * self.grid.weights[:, None]).sum((-2, -1))
        cross = (self.moments.m11.conj() * f).real.sum((-2, -1))
        return 0.5 * (self.shell_weights * (quad - 2 * cross + self.moments.m02)).sum()

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        xr = x.detach().requires_grad_(True)
        return torch.autograd.grad(self.value(xr), xr)[0]

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H_FF v (the form is quadratic, so independent of the point)."""
        return self.gradient(v) - self.gradient(torch.zeros_like(v))

    def least_squares_map(self, tol: float = 1e-10, max_iter: int = 500, x0: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Minimiser of ℒ (the least-squares / back-propagation map of Eq. 57-66) by conjugate gradients."""
        b = -self.gradient(torch.zeros(self.basis.n_params, dtype=self.basis.k.dtype, device=self.basis.k.device))
        x = torch.zeros_like(b) if x0 is None else x0.clone()
        r = b - self.hvp(x)
        p, rr = r.clone(), (r * r).sum()
        bnorm = b.norm()
        it = 0
        for it in range(1, max_iter + 1):
            if rr.sqrt() <= tol * bnorm:
                break
            Ap = self.hvp(p)
            alpha = rr / (p * Ap).sum()
            x, r = x + alpha * p, r - alpha * Ap
            rr_new = (r * r).sum()
            p, rr = r + (rr_new / rr) * p, rr_new
        return x, {"iterations": it, "relative_residual": float(rr.sqrt() / bnorm)}
