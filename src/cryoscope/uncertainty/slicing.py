"""The template operator on shells: Ŝ_j = CTF_j · T(δ_j) · Sl ∘ E(ω_j) ∘ D(R_j) F̂ (Rangan et al. Eq. 40-43).

D(R_j) rotates the shell coefficients into the particle's frame (Wigner-D, Eq. 39); Sl evaluates them on the
equator, i.e. on the image rings (Eq. 41); E(ω) = exp(-i ω·J) is a small rotation in the image frame (ω_z is an
in-plane rotation, ω_x, ω_y tilt the viewing direction), applied through the so(3) generators as a Taylor series,
so derivatives with respect to ω at ω = 0 are exact to the series' order. The adjoint of Sl is `adjoint_slice`.
"""

from __future__ import annotations

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.spherical_harmonics import WignerRotation, apply_generator, equator_harmonics, ladder_coefficients, m_values


def perturb(g: torch.Tensor, omega: torch.Tensor, order: int = 3) -> torch.Tensor:
    """E(ω) g ≈ Σ_{n <= order} (ω·(-iJ))^n g / n! for coefficients g [J, ..., L+1, 2L+1] and ω [J, 3] (radians)."""
    w = omega.to(g.real.dtype).reshape(omega.shape[0], 3, *([1] * (g.dim() - 1)))
    out, term = g, g
    for n in range(1, order + 1):
        term = sum(w[:, i] * apply_generator(term, i) for i in range(3)) / n
        out = out + term
    return out


class ShellSlicer:
    """Equatorial slices of rotated shell coefficients on rings of `n_psi` angles ψ_q = 2π q / n_psi."""

    def __init__(self, L: int, n_psi: int, dtype=torch.float64, device=None):
        if n_psi < 1:
            raise InvalidValueError(f"n_psi must be >= 1, got {n_psi}")
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        self.L, self.n_psi = L, n_psi
        self.rotation = WignerRotation(L, cdtype, device)
        self.equator = equator_harmonics(L, dtype, device).to(cdtype)
        self.m_index = torch.arange(-L, L + 1, device=device) % n_psi
        # Sl(J_+ g) at order m is Σ_l Y(l, m) c+(l, m-1) g(l, m-1); Sl(J_- g) at m is Σ_l Y(l, m) c-(l, m+1) g(l, m+1)
        cplus, cminus = ladder_coefficients(L, dtype, device)
        eq = self.equator.real
        up = torch.zeros_like(eq)
        up[:, :-1] = eq[:, 1:] * cplus[:, :-1]
        down = torch.zeros_like(eq)
        down[:, 1:] = eq[:, :-1] * cminus[:, 1:]
        self.weights = torch.stack([eq, up, down]).to(cdtype)  # [3, L+1, 2L+1]
        self.m = m_values(L, dtype, device)

    def rotate(self, coeffs: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        """[n_k, L+1, 2L+1] -> [J, n_k, L+1, 2L+1] in the frames of rotations [J, 3, 3] (G_j(u) = F(R_j^T u))."""
        return self.rotation(coeffs, rotations)

    def slice(self, g: torch.Tensor) -> torch.Tensor:
        """Ring values [..., n_psi] of coefficients g [..., L+1, 2L+1] on the equator: Σ_lm g Y_l^m(π/2, ψ_q)."""
        s = (g * self.equator).sum(-2)
        spec = s.new_zeros(s.shape[:-1] + (self.n_psi,)).index_add(-1, self.m_index, s)
        return torch.fft.ifft(spec, dim=-1) * self.n_psi

    def _rings(self, spectra: torch.Tensor) -> torch.Tensor:
        spec = spectra.new_zeros(spectra.shape[:-1] + (self.n_psi,)).index_add(-1, self.m_index, spectra)
        return torch.fft.ifft(spec, dim=-1) * self.n_psi

    def derivative_slices(self, g: torch.Tensor) -> torch.Tensor:
        """Ring values [..., 4, n_psi] of Sl(g) and Sl(G_i g), i = x, y, z (G_i = -iJ_i), for g [..., L+1, 2L+1],
        from one weighted sum over l (no generator is applied to g itself)."""
        t = torch.einsum("...lm,clm->...cm", g, self.weights)  # [..., 3, 2L+1]: s0, the J_+ and J_- sources
        plus = torch.nn.functional.pad(t[..., 1, :-1], (1, 0))  # (Sl J_+ g)_m = up-source at m - 1
        minus = torch.nn.functional.pad(t[..., 2, 1:], (0, 1))  # (Sl J_- g)_m = down-source at m + 1
        s0 = t[..., 0, :]
        spectra = torch.stack([s0, -0.5j * (plus + minus), -0.5 * (plus - minus), -1j * self.m * s0], -2)
        return self._rings(spectra)

    def derivative_adjoint(self, rings: torch.Tensor) -> torch.Tensor:
        """Adjoint of `derivative_slices`: rings [..., 4, n_psi] -> coefficients [..., L+1, 2L+1]."""
        spec = torch.fft.fft(rings, dim=-1)[..., self.m_index]  # [..., 4, 2L+1]
        a0 = spec[..., 0, :] + 1j * self.m * spec[..., 3, :]
        a_plus = 0.5j * spec[..., 1, :] - 0.5 * spec[..., 2, :]
        a_minus = 0.5j * spec[..., 1, :] + 0.5 * spec[..., 2, :]
        b_plus = torch.nn.functional.pad(a_plus[..., 1:], (0, 1))  # a+ at m' + 1
        b_minus = torch.nn.functional.pad(a_minus[..., :-1], (1, 0))  # a- at m' - 1
        return torch.einsum("...cm,clm->...lm", torch.stack([a0, b_plus, b_minus], -2), self.weights)

    def adjoint_slice(self, rings: torch.Tensor, L: int | None = None) -> torch.Tensor:
        """Adjoint of `slice` (complex inner product Σ conj(a) b) up to degree L (default self.L):
        rings [..., n_psi] -> coefficients [..., L+1, 2L+1], h_l^m = Y_l^m(π/2, 0) Σ_q r_q e^{-imψ_q}."""
        L = self.L if L is None else L
        spec = torch.fft.fft(rings, dim=-1)
        idx = torch.arange(-L, L + 1, device=rings.device) % self.n_psi
        eq = self.equator if L == self.L else equator_harmonics(L, rings.real.dtype, rings.device).to(rings.dtype)
        return spec[..., None, idx] * eq


def check_rings(rings: torch.Tensor, n_shells: int, n_psi: int, name: str) -> None:
    if rings.dim() != 3 or rings.shape[1:] != (n_shells, n_psi):
        raise InvalidValueError(f"{name} must have shape [J, {n_shells}, {n_psi}], got {tuple(rings.shape)}")


def default_n_psi(L: int) -> int:
    """Angles per ring: the smallest even number > 2L, so ring values and orders |m| <= L are in one-to-one FFT relation."""
    return 2 * L + 2
