"""Handwritten effective Hessian: (H_xx - H_xω H_ωω⁻¹ H_ωx) v with one rotation of v and one back-rotation per image.

For image j with template S = M ⊙ Sl(D F) (M = CTF · T), residual r = S - Â, derivatives ∂_i S = M ⊙ Sl(G_i D F)
(G_i = -iJ_i, image-frame rotations) and ⟨a, b⟩ = Re Σ_{n,q} a_n conj(a) b (Eq. 93-96):
  H_xx[v, v'] = ⟨δS, δS'⟩,  H_ωx[i, v] = ⟨∂_i S, δS⟩ + ⟨r, ∂_i δS⟩,  H_ωω[i, k] = ⟨∂_i S, ∂_k S⟩ + ⟨r, ∂_i ∂_k S⟩,
with δS = M ⊙ Sl(D V). For an objective Σ φ(ℓ_j) the blocks are φ' ∇²ℓ + φ'' ∇ℓ ∇ℓᵀ. With offset marginalisation
every ring is projected orthogonally to the offset ring first. The result equals `ImplicitAlignments` (autograd) to
rounding and costs about three template evaluations instead of twenty.
"""

from __future__ import annotations

import torch

from cryoscope.distributed import DistContext, all_reduce_sum_
from cryoscope.errors import InvalidValueError
from cryoscope.geometry.spherical_harmonics import apply_generator
from cryoscope.representations.shells import from_real
from cryoscope.uncertainty.likelihood import RingLikelihood


def _phi_derivatives(lik: RingLikelihood, ell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """φ'(ℓ_j), φ''(ℓ_j) [J] of the likelihood's noise model."""
    n = lik.noise
    if n.kind == "low-temperature":
        return torch.full_like(ell, 1 / n.temperature), torch.zeros_like(ell)
    dof1 = (n.dof - 1) / 2
    if n.kind == "marginal":
        return dof1 / ell, -dof1 / ell**2
    return torch.full_like(ell, dof1 * n.affine[0]), torch.zeros_like(ell)


class _ImageTerms:
    """Per-image residuals, template derivatives and the ℓ-blocks ∂²ℓ/∂ω² at the likelihood's current poses."""

    def __init__(self, lik: RingLikelihood, x: torch.Tensor):
        self.lik, self.x = lik, x
        self.area = lik.area  # [n_k, 1]
        F = from_real(x, lik.basis)
        res, dS, ell, dl, blocks = [], [], [], [], []
        for s in lik.chunks():
            g = lik.slicer.rotate(F, lik.data.rotations[s])
            r = self._rings(g, s) - self.lik.project(lik.data.rings[s])
            d = torch.stack([self._rings(apply_generator(g, i), s) for i in range(3)], 1)
            H = torch.empty(r.shape[0], 3, 3, dtype=x.dtype, device=x.device)
            for i in range(3):
                for k in range(i, 3):
                    gik = 0.5 * (apply_generator(apply_generator(g, k), i) + apply_generator(apply_generator(g, i), k))
                    H[:, i, k] = H[:, k, i] = self._dot(d[:, i], d[:, k]) + self._dot(r, self._rings(gik, s))
            res.append(r)
            dS.append(d)
            ell.append(0.5 * self._dot(r, r))
            dl.append(torch.stack([self._dot(r, d[:, i]) for i in range(3)], -1))
            blocks.append(H)
        self.residuals, self.dS = torch.cat(res), torch.cat(dS)
        self.ell, self.grad_omega = torch.cat(ell), torch.cat(dl)
        self.phi1, self.phi2 = _phi_derivatives(lik, self.ell)
        g1 = self.grad_omega
        self.blocks = self.phi1[:, None, None] * torch.cat(blocks) + self.phi2[:, None, None] * g1[:, :, None] * g1[:, None, :]

    def _rings(self, g: torch.Tensor, index: slice) -> torch.Tensor:
        """Projected, modulated slices P(M ⊙ Sl(g)) [j, ..., n_k, n_psi] of rotated coefficients."""
        S = self.lik.slicer.slice(g)
        mod = self.lik.data.modulation(index)
        if mod is not None:
            S = S * (mod if S.dim() == mod.dim() else mod[:, None])
        return self.lik.project(S)

    def _dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (self.area * (a.conj() * b).real).sum((-2, -1))

    def _adjoint(self, rings: torch.Tensor, index: slice) -> torch.Tensor:
        """Adjoint of `_rings` (data already projected): coefficients [j, n_k, L+1, 2L+1]."""
        mod = self.lik.data.modulation(index)
        w = self.area * rings
        return self.lik.slicer.adjoint_slice(w if mod is None else mod.conj() * w)



def alignment_newton_terms(lik: RingLikelihood, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ∂²φ/∂ω² [J, 3, 3] and ∂φ/∂ω [J, 3] at ω = 0 (handwritten; the autograd reference is
    `RingLikelihood.alignment_hessians`)."""
    t = _ImageTerms(lik, x)
    return t.blocks, t.phi1[:, None] * t.grad_omega


class EffectiveHessian(_ImageTerms):
    """Effective Hessian of `lik` at map x with the poses' first-order implicit alignments (poses polished).

    Under torch.distributed (`ctx`), each process holds a shard of the particles; the per-image sums are all-reduced,
    so every process gets the whole H_eff v (and its own particles' z1)."""

    def __init__(self, lik: RingLikelihood, x: torch.Tensor, ctx: DistContext | None = None):
        super().__init__(lik, x)
        self.ctx = ctx
        lam = torch.linalg.eigvalsh(self.blocks)
        if bool((lam[:, 0] <= 0).any()):
            raise InvalidValueError(f"{int((lam[:, 0] <= 0).sum())} image(s) are not at a minimum in their alignment; polish the poses first")
        self.inverse = torch.linalg.inv(self.blocks)

    def apply(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(H_eff v [P], implicit first-order alignments z1 = -H_ωω⁻¹ H_ωx v [J, 3])."""
        lik, slicer = self.lik, self.lik.slicer
        V = from_real(v, lik.basis)
        total = torch.zeros_like(V)
        zs = []
        for s in lik.chunks():
            R = lik.data.rotations[s]
            mod = lik.data.modulation(s)
            D = slicer.derivative_slices(lik.slicer.rotate(V, R)).transpose(1, 2)  # [j, 4, n_k, n_psi]: δS, ∂_i δS
            D = self.lik.project(D if mod is None else D * mod[:, None])
            dS, ddS = D[:, 0], D[:, 1:]
            r, d = self.residuals[s], self.dS[s]
            p1, p2 = self.phi1[s], self.phi2[s]
            dx_ell = self._dot(r, dS)
            b = p1[:, None] * (self._dot(d, dS[:, None]) + self._dot(r[:, None], ddS)) + p2[:, None] * self.grad_omega[s] * dx_ell[:, None]
            z = -(self.inverse[s] @ b[..., None])[..., 0]
            rho = p1[:, None, None] * (dS + (z[:, :, None, None] * d).sum(1))
            rho = rho + (p2 * (dx_ell + (z * self.grad_omega[s]).sum(-1)))[:, None, None] * r
            back = torch.cat([rho[:, None], (p1[:, None] * z)[:, :, None, None] * r[:, None]], 1) * self.area
            if mod is not None:
                back = back * mod.conj()[:, None]
            h = slicer.derivative_adjoint(back.transpose(1, 2))  # Sl^H ρ + Σ_i (Sl G_i)^H (φ' z_i r)
            total = total + slicer.rotation(h, R.transpose(-1, -2), reduce=True)
            zs.append(z)
        if self.ctx is not None:
            all_reduce_sum_([total], self.ctx)
        xr = torch.zeros_like(v).requires_grad_(True)
        with torch.enable_grad():
            grad = torch.autograd.grad((total.conj() * from_real(xr, lik.basis)).real.sum(), xr)[0]
        return grad, torch.cat(zs) if zs else v.new_zeros(0, 3)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.apply(v)[0]

    def first_order(self, v: torch.Tensor) -> torch.Tensor:
        return self.apply(v)[1]
