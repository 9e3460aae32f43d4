"""Negative log-likelihood of particle rings given a shell map and small pose corrections, with its derivatives.

Per image (Rangan et al. Eq. 103, 165): ℓ_j = ½ Σ_{n,q} a_n |Â_j - Ŝ_j|², a_n = w_n k_n 2π / n_psi (the polar
quadrature of ∫ d²k). The objective sums φ(ℓ_j) over images:
- "low-temperature" (Eq. 54): φ(ℓ) = ℓ / σ̂², with σ̂² the temperature (1 gives the σ̂²-scaled ℒ of Eq. 78);
- "marginal" (§23, Eq. 169/175): φ(ℓ) = dof' log ℓ, the noise-marginalised form, dof' = (dof - 1) / 2;
- "affine" (Eq. 176): φ(ℓ) = dof' (a ℓ + b), the affine approximation of log ℓ.
With `offset=True`, ℓ is the offset-marginalised ℓ# (Eq. 174): the residual minus its least-squares fit by a
constant real-space offset μ, whose transform is the box's Dirichlet kernel sampled on the rings.

Parameters are the real shell coordinates x (`representations.shells.to_real`) and image-frame rotation vectors
ω [J, 3] (radians; `slicing.perturb`). Gradients and Hessian-vector products are exact autograd derivatives of
the same discrete objective, evaluated in chunks of images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.representations.shells import ShellBasis, from_real
from cryoscope.uncertainty.data import ParticleRings
from cryoscope.uncertainty.slicing import ShellSlicer, perturb

NOISE_MODELS = ("low-temperature", "marginal", "affine")


@dataclass(frozen=True)
class NoiseModel:
    """How per-image residuals ℓ_j enter the negative log-likelihood (see the module docstring)."""

    kind: str = "low-temperature"
    temperature: float = 1.0
    dof: float | None = None
    affine: tuple[float, float] = (1.0, 0.0)
    offset: bool = False

    def __post_init__(self):
        if self.kind not in NOISE_MODELS:
            raise InvalidValueError(f"noise model must be one of {', '.join(NOISE_MODELS)}, got {self.kind!r}")
        if not self.temperature > 0:
            raise InvalidValueError(f"temperature σ̂² must be positive, got {self.temperature}")
        if self.kind != "low-temperature" and (self.dof is None or self.dof <= 1):
            raise InvalidValueError(f"the {self.kind} noise model needs dof > 1 (independent values per image)")

    def transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.kind == "low-temperature":
            return lambda ell: ell / self.temperature
        dof1 = (self.dof - 1) / 2
        if self.kind == "marginal":
            return lambda ell: dof1 * torch.log(ell)
        a, b = self.affine
        return lambda ell: dof1 * (a * ell + b)


def offset_rings(grid_k: torch.Tensor, n_psi: int, box: int) -> torch.Tensor:
    """Transform of a unit constant over the N x N box on the rings [n_k, n_psi]: D_N(kx) D_N(ky) with
    D_N(k) = Σ_{x=-N//2}^{N-1-N//2} exp(-2πi k x / N)."""
    psi = torch.arange(n_psi, dtype=grid_k.dtype, device=grid_k.device) * (2 * math.pi / n_psi)
    x = torch.arange(box, dtype=grid_k.dtype, device=grid_k.device) - box // 2

    def dirichlet(k: torch.Tensor) -> torch.Tensor:
        return torch.exp(-2j * math.pi * k[..., None] * x / box).sum(-1)

    return dirichlet(grid_k[:, None] * torch.cos(psi)) * dirichlet(grid_k[:, None] * torch.sin(psi))


class RingLikelihood:
    """Σ_j φ(ℓ_j(x, ω_j)) for the particles `data` on the rings of `basis` (see the module docstring)."""

    def __init__(self, basis: ShellBasis, data: ParticleRings, noise: NoiseModel | None = None, chunk: int = 32, taylor_order: int = 3):
        if data.rings.shape[1] != basis.n_shells:
            raise InvalidValueError(f"data have {data.rings.shape[1]} rings but the map has {basis.n_shells} shells")
        if chunk < 1:
            raise InvalidValueError(f"chunk must be >= 1, got {chunk}")
        self.basis, self.data = basis, data
        self.noise = noise or NoiseModel()
        self.chunk, self.order = chunk, taylor_order
        self.slicer = ShellSlicer(basis.L, data.n_psi, basis.k.dtype, basis.k.device)
        self.area = (basis.radial_weights * basis.k * (2 * math.pi / data.n_psi))[:, None]
        self._phi = self.noise.transform()
        self._offset = None
        if self.noise.offset:
            c = offset_rings(basis.k, data.n_psi, basis.box)
            self._offset = (c, (self.area * c.abs() ** 2).sum())

    def __len__(self) -> int:
        return len(self.data)

    def chunks(self) -> list[slice]:
        J = len(self.data)
        return [slice(i, min(J, i + self.chunk)) for i in range(0, J, self.chunk)]

    def templates(self, x: torch.Tensor, index: slice, omega: torch.Tensor | None = None, rotations: torch.Tensor | None = None) -> torch.Tensor:
        """Model rings Ŝ_j [j, n_k, n_psi] of the particles at `index` (rotations override the data's poses)."""
        R = self.data.rotations[index] if rotations is None else rotations
        g = self.slicer.rotate(from_real(x, self.basis), R)
        if omega is not None:
            g = perturb(g, omega, self.order)
        S = self.slicer.slice(g)
        mod = self.data.modulation(index)
        return S if mod is None else S * mod

    def residual_terms(self, x: torch.Tensor, index: slice, omega: torch.Tensor | None = None, rotations: torch.Tensor | None = None) -> torch.Tensor:
        """ℓ_j (or ℓ#_j) [j] of the particles at `index`."""
        r = self.project(self.data.rings[index] - self.templates(x, index, omega, rotations))
        return 0.5 * (self.area * (r.real**2 + r.imag**2)).sum((-2, -1))

    def project(self, rings: torch.Tensor) -> torch.Tensor:
        """Rings [..., n_k, n_psi] minus their least-squares fit by a real-space constant (the offset ring), when the
        noise model marginalises the offset; unchanged otherwise. Self-adjoint in the area-weighted inner product."""
        if self._offset is None:
            return rings
        c, cc = self._offset
        return rings - ((self.area * (c.conj() * rings).real).sum((-2, -1)) / cc)[..., None, None] * c

    def per_image(self, x: torch.Tensor, rotations: torch.Tensor | None = None) -> torch.Tensor:
        """ℓ_j [J] at the data's poses (or at `rotations` [J, 3, 3])."""
        with torch.no_grad():
            return torch.cat([self.residual_terms(x, s, None, None if rotations is None else rotations[s]) for s in self.chunks()])

    def value(self, x: torch.Tensor, rotations: torch.Tensor | None = None) -> torch.Tensor:
        """The objective Σ_j φ(ℓ_j)."""
        return self._phi(self.per_image(x, rotations)).sum()

    def _chunk_graph(self, x: torch.Tensor, index: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Leaf copies (x, ω = 0) and first derivatives with a graph, for one chunk."""
        xr = x.detach().requires_grad_(True)
        w = torch.zeros(index.stop - index.start, 3, dtype=x.dtype, device=x.device, requires_grad=True)
        f = self._phi(self.residual_terms(xr, index, w)).sum()
        gx, gw = torch.autograd.grad(f, (xr, w), create_graph=True)
        return xr, w, f, gx, gw

    def gradient(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(∂/∂x [P], ∂/∂ω [J, 3]) at ω = 0."""
        gx, gws = torch.zeros_like(x), []
        for s in self.chunks():
            xr = x.detach().requires_grad_(True)
            w = torch.zeros(s.stop - s.start, 3, dtype=x.dtype, device=x.device, requires_grad=True)
            f = self._phi(self.residual_terms(xr, s, w)).sum()
            a, b = torch.autograd.grad(f, (xr, w))
            gx += a
            gws.append(b)
        return gx, torch.cat(gws)

    def hvp(self, x: torch.Tensor, v: torch.Tensor, z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint Hessian-vector product at ω = 0: (H_xx v + H_xω z [P], H_ωx v + H_ωω z [J, 3]) (Eq. 102)."""
        hx, hws = torch.zeros_like(x), []
        for s in self.chunks():
            xr, w, _, gx, gw = self._chunk_graph(x, s)
            dot = (gx * v).sum() + (0 if z is None else (gw * z[s]).sum())
            a, b = torch.autograd.grad(dot, (xr, w), allow_unused=True)
            hx += a if a is not None else 0
            hws.append(b if b is not None else torch.zeros_like(w))
        return hx, torch.cat(hws)

    def alignment_hessians(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image 3 x 3 blocks H_ωω [J, 3, 3] (X0 of Eq. 116) and gradients ∂/∂ω [J, 3] at ω = 0."""
        blocks, grads = [], []
        for s in self.chunks():
            _, w, _, _, gw = self._chunk_graph(x, s)
            cols = [torch.autograd.grad(gw[:, i].sum(), w, retain_graph=i < 2)[0] for i in range(3)]
            blocks.append(torch.stack(cols, -1))
            grads.append(gw.detach())
        H = torch.cat(blocks)
        return 0.5 * (H + H.transpose(-1, -2)), torch.cat(grads)

    def with_data(self, data: ParticleRings) -> RingLikelihood:
        """The same objective on other particles (e.g. re-aligned poses)."""
        return RingLikelihood(self.basis, data, self.noise, self.chunk, self.order)

    def reduced_hvp(self, x: torch.Tensor, v: torch.Tensor, inverse_blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Schur complement (H_xx - H_xω H_ωω^{-1} H_ωx) v [P] and the implicit first-order alignments
        z1 = -H_ωω^{-1} H_ωx v [J, 3] (Eq. 118), given the inverse blocks H_ωω^{-1} [J, 3, 3]; one pass per chunk."""
        hx, zs = torch.zeros_like(x), []
        for s in self.chunks():
            xr, w, _, gx, gw = self._chunk_graph(x, s)
            a, b = torch.autograd.grad((gx * v).sum(), (xr, w), retain_graph=True)
            z = -(inverse_blocks[s] @ b[..., None])[..., 0]
            hx += a + torch.autograd.grad((gw * z).sum(), xr)[0]
            zs.append(z)
        return hx, torch.cat(zs)

    def third_derivative(self, x: torch.Tensor, v: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """D³ℓ[e_ω, u, u] [J, 3] for the joint direction u = (v, z): the second-order term of ∂ℓ/∂ω along u
        (Y0, Y1, Y2 of Eq. 119-121 contracted with the first-order alignments)."""
        out = []
        for s in self.chunks():
            xr, w, _, gx, gw = self._chunk_graph(x, s)
            a, b = torch.autograd.grad((gx * v).sum() + (gw * z[s]).sum(), (xr, w), create_graph=True)
            out.append(torch.autograd.grad((a * v).sum() + (b * z[s]).sum(), w)[0])
        return torch.cat(out)
