"""Mean and covariance of the expansion coefficients of the mechanical model's density in a box basis (thesis
Eqs. 4.142-4.181) or a sine (Sturm-Liouville) basis (Sec. 4.4), both on the cube [-R, R]³ around `centre` (Å).

Box: Φ_n(x) = (2R)^-3/2 exp(-iπ n·x/R), c_n = ∫ρ Φ_n = (2R)^-3/2 F(n/2R); the real representation interleaves
(Re c_n, Im c_n), 2Nc numbers (Eq. 4.177, 4.181). Sine: φ_k(x) = Π_j R^-1/2 sin(k_j π (x_j + R)/(2R)), k_j = 1..K
(the thesis' √2 sin(kπt) on [0, 1] moved to [-R, R]), written as 8 Fourier terms each. Integrals run over R³: the
Gaussians must lie inside the cube (the densities vanish at its faces).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.hetero.moments import covariance_series, fourier_factors, fourier_second_moment, series_order


@dataclass(frozen=True)
class SineBasis:
    """K³ products of sines on the cube of half-width R (Å) around `centre` (Å); real coefficients, Nc = K³."""

    half_width: float
    per_axis: int
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def size(self) -> int:
        return self.per_axis**3

    def fourier_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Frequencies [M, 3] (1/Å) and weights [Nc, M] complex (on the CPU) with
        φ_c(x + centre) = Σ_k w[c, k] exp(-2πi k·x).

        sin(kπ(x + R)/2R) = Σ_s (s / 2i) e^{isπk/2} exp(-2πi (-s k / 4R) x), s = ±1."""
        kk, r = self.per_axis, self.half_width
        vals = [v for v in range(-kk, kk + 1) if v != 0]  # κ = v / 4R with v = -s k
        freqs = torch.tensor(list(itertools.product(vals, repeat=3)), dtype=torch.float64, device="cpu") / (4 * r)
        col = {v: i for i, v in enumerate(vals)}
        weights = torch.zeros(self.size, len(vals) ** 3, dtype=torch.complex128, device="cpu")
        for c, ks in enumerate(itertools.product(range(1, kk + 1), repeat=3)):
            for signs in itertools.product((1, -1), repeat=3):
                w = complex(r ** -1.5)
                for k, s in zip(ks, signs):
                    w *= s * complex(math.cos(s * math.pi * k / 2), math.sin(s * math.pi * k / 2)) / 2j
                j = (col[-signs[0] * ks[0]] * len(vals) + col[-signs[1] * ks[1]]) * len(vals) + col[-signs[2] * ks[2]]
                weights[c, j] = w
        return freqs, weights

    def values(self, points: torch.Tensor) -> torch.Tensor:
        """φ_c at points [P, 3] (Å): [P, Nc] (zero outside the cube)."""
        x = points.double() - torch.tensor(self.centre, dtype=torch.float64, device=points.device)
        r = self.half_width
        k = torch.arange(1, self.per_axis + 1, dtype=torch.float64, device=points.device)
        one = torch.sin(k * math.pi * (x[..., None] + r) / (2 * r)) / math.sqrt(r) * (x.abs() <= r)[..., None]  # [P, 3, K]
        return torch.einsum("pa,pb,pc->pabc", one[:, 0], one[:, 1], one[:, 2]).reshape(points.shape[0], -1)


@dataclass(frozen=True)
class BoxBasis:
    """Fourier-series functions Φ_n on the cube of half-width R (Å) around `centre`, for integer vectors n
    [Nc, 3]; real representation of 2Nc numbers (Re c_n, Im c_n interleaved)."""

    half_width: float
    indices: tuple[tuple[int, int, int], ...]
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def half_space(cls, half_width: float, max_index: int, centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> BoxBasis:
        """All n with |n_i| <= max_index whose first non-zero component is positive (one of each ±n pair, no n = 0:
        c_-n = conj(c_n) for a real density, and c_0, the total weight, does not fluctuate)."""
        idx = [n for n in itertools.product(range(-max_index, max_index + 1), repeat=3)
               if any(n) and next(v for v in n if v) > 0]
        return cls(half_width, tuple(idx), centre)

    @property
    def size(self) -> int:
        return 2 * len(self.indices)

    def frequencies(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Frequencies n / 2R [Nc, 3] (1/Å)."""
        return torch.tensor(self.indices, dtype=torch.float64, device=device).reshape(-1, 3) / (2 * self.half_width)

    def fourier_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Frequencies n / 2R [Nc, 3] (1/Å) and weights (2R)^-3/2 I [Nc, Nc], on the CPU."""
        freqs = self.frequencies()
        return freqs, (2 * self.half_width) ** -1.5 * torch.eye(freqs.shape[0], dtype=torch.complex128, device="cpu")

    def values(self, points: torch.Tensor) -> torch.Tensor:
        """Φ_n at points [P, 3] (Å): [P, Nc] complex (zero outside the cube)."""
        x = points.double() - torch.tensor(self.centre, dtype=torch.float64, device=points.device)
        freqs = self.frequencies(points.device)
        inside = (x.abs() <= self.half_width).all(-1, keepdim=True)
        return (2 * self.half_width) ** -1.5 * torch.polar(inside.double(), -2 * math.pi * x @ freqs.T)


Basis = SineBasis | BoxBasis


def realify(c: torch.Tensor, basis: Basis) -> torch.Tensor:
    """Real representation [..., n] of complex coefficients [..., Nc]: real part (sine) or interleaved Re, Im (box)."""
    return torch.stack([c.real, c.imag], -1).flatten(-2) if isinstance(basis, BoxBasis) else c.real


def _frame(basis: Basis, x0: torch.Tensor) -> torch.Tensor:
    x = x0 - torch.tensor(basis.centre, dtype=x0.dtype, device=x0.device)
    if bool((x.abs() > basis.half_width).any()):
        raise InvalidValueError(f"masses lie outside the basis cube (half-width {basis.half_width:g} Å around {basis.centre})")
    return x


def density_coefficients(basis: Basis, positions: torch.Tensor, f: torch.Tensor, q: float) -> torch.Tensor:
    """Coefficients [..., n] (real representation) of Σ_α f_α N(x_α, q² I) for configurations [..., N, 3] (Å)."""
    freqs, weights = (t.to(positions.device) for t in basis.fourier_terms())
    x = positions - torch.tensor(basis.centre, dtype=positions.dtype, device=positions.device)
    damp = torch.exp(-2 * math.pi**2 * q**2 * (freqs**2).sum(-1))
    fourier = (f[..., None, :] * torch.polar(torch.ones((), dtype=x.dtype, device=x.device), -2 * math.pi * (freqs @ x.transpose(-1, -2)))).sum(-1)
    return realify((fourier * damp) @ weights.T, basis)


def coefficient_mean(basis: Basis, x0: torch.Tensor, cov: torch.Tensor, f: torch.Tensor, q: float) -> torch.Tensor:
    """Mean [n] of the coefficients (Eq. 4.153 for the box basis; the sine basis through its Fourier terms)."""
    freqs, weights = (t.to(x0.device) for t in basis.fourier_terms())
    return realify(weights @ fourier_factors(freqs, _frame(basis, x0), cov, f, q).sum(-1), basis)


def coefficient_covariance(basis: Basis, x0: torch.Tensor, cov: torch.Tensor, f: torch.Tensor, q: float,
                           tol: float = 1e-10, max_order: int = 12) -> torch.Tensor:
    """Covariance [n, n] of the coefficients (Eqs. 4.176-4.181): by `covariance_series` when its error bound
    reaches `tol` within `max_order` terms (fluctuations small against the basis' wavelengths), else by the exact
    pair sum (cost N² M², M Fourier terms)."""
    freqs, weights = (t.to(x0.device) for t in basis.fourier_terms())
    x = _frame(basis, x0)
    order, _ = series_order(freqs, cov, tol)
    split = isinstance(basis, BoxBasis)
    if order <= max_order:
        return covariance_series(weights, split, freqs, x, cov, f, q, order, tol)
    p = fourier_second_moment(freqs, freqs, x, cov, f, q, centred=True)  # E F F - E F E F
    m = fourier_second_moment(freqs, -freqs, x, cov, f, q, centred=True)  # with F(-k) = conj F(k)
    pp, mm = weights @ p @ weights.T, weights @ m @ weights.conj().T
    if not split:
        return 0.5 * (pp.real + mm.real)
    out = torch.empty(2 * pp.shape[0], 2 * pp.shape[0], dtype=cov.dtype, device=cov.device)
    out[0::2, 0::2] = 0.5 * (pp.real + mm.real)  # E Re Re
    out[0::2, 1::2] = 0.5 * (pp.imag - mm.imag)  # E Re Im
    out[1::2, 0::2] = 0.5 * (pp.imag + mm.imag)  # E Im Re
    out[1::2, 1::2] = 0.5 * (mm.real - pp.real)  # E Im Im
    return out
