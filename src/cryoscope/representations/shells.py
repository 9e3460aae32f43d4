"""A map as spherical harmonics on Fourier shells (Rangan et al. §9-11).

F̂(k_n, u) = Σ_{l <= L_n, |m| <= l} f_l^m(k_n) Y_l^m(u) on Gauss–Legendre radial nodes k_n in (0, k_max)
(cycles per box, box = N voxels), with degree L_n tied to the frequency: L_n = min(L, ceil(2π k_n r) + 2) for an
object of radius r (box units, default 0.5), so L = 2πK at the outer shell as in the paper. Coefficients are stored
padded, [n_k, L+1, 2L+1] (see `cryoscope.geometry.spherical_harmonics`).

A real map has F̂(-κ) = conj F̂(κ), i.e. f_l^{-m} = (-1)^{l+m} conj(f_l^m). `to_real` / `from_real` map the
coefficients to an unconstrained real vector, isometrically per shell (Σ_m |f_l^m|^2 = Σ x^2), which is the space
the Hessian and its eigenvectors live in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.spherical_harmonics import SphereGrid, coefficient_mask, direction_angles, spherical_harmonics
from cryoscope.physics.fourier import centered_coords, ifft3c
from cryoscope.physics.polar import polar_grid
from cryoscope.physics.projection import fourier_volume, sample_fourier_volume


def k_max_from_two_pi_k(two_pi_k: float) -> float:
    """Paper's resolution 2πK (radians per half box) -> k_max in cycles per box (2πK / π)."""
    return two_pi_k / math.pi


@dataclass(frozen=True)
class ShellBasis:
    """Radial nodes k [n_k] (cycles per box) and weights for ∫_0^k_max dk, per-shell degrees [n_k], box size N."""

    k: torch.Tensor
    radial_weights: torch.Tensor
    degrees: torch.Tensor
    box: int

    @property
    def L(self) -> int:
        """Largest degree."""
        return int(self.degrees.max())

    @property
    def n_shells(self) -> int:
        return int(self.k.shape[0])

    @property
    def k_max(self) -> float:
        return float(self.k[-1] + (self.k[0]))  # Gauss–Legendre nodes are symmetric in (0, k_max)

    @property
    def mask(self) -> torch.Tensor:
        """Boolean [n_k, L+1, 2L+1]: coefficients in the basis."""
        L = self.L
        l = torch.arange(L + 1, device=self.k.device)
        return coefficient_mask(L, self.k.device)[None] & (l[None, :, None] <= self.degrees[:, None, None])

    @property
    def n_params(self) -> int:
        """Number of real parameters (= Σ_n (L_n + 1)^2)."""
        return int(((self.degrees + 1) ** 2).sum())

    def volume_weights(self) -> torch.Tensor:
        """[n_k] w_n k_n^2: Σ_n w Σ_lm |f|^2 = ∫ |F̂|^2 dκ over the ball (cycles/box)^3."""
        return self.radial_weights * self.k**2

    def likelihood_weights(self) -> torch.Tensor:
        """[n_k] w_n k_n: the measure dκ / |κ| of the volumetric likelihood (Eq. 77)."""
        return self.radial_weights * self.k


def shell_basis(
    k_max: float, n_shells: int, degree: int, box: int, radius: float = 0.5, dtype=torch.float64, device=None
) -> ShellBasis:
    """Gauss–Legendre shells on (0, k_max) cycles per box with degrees min(degree, ceil(2π k radius) + 2)."""
    if not 0 < k_max <= box / 2:
        raise InvalidValueError(f"k_max must be in (0, {box / 2}] cycles per box (Nyquist), got {k_max}")
    if n_shells < 1 or degree < 0:
        raise InvalidValueError(f"need n_shells >= 1 and degree >= 0, got {n_shells} and {degree}")
    radial = polar_grid(k_max, n_shells, 1, dtype, device)  # the same Gauss–Legendre rings the images use
    degrees = torch.clamp(torch.ceil(2 * math.pi * radial.k * radius).long() + 2, max=degree)
    return ShellBasis(radial.k, radial.radial_weights, degrees, box)


def _parity(L: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(-1)^(l+m) [L+1, L] for m = 1..L, and i^l [L+1]."""
    l = torch.arange(L + 1, device=device)
    m = torch.arange(1, L + 1, device=device)
    sign = (1 - 2 * ((l[:, None] + m[None, :]) % 2)).to(dtype)
    il = torch.tensor([1, 1j, -1, -1j], dtype=torch.complex128, device=device)[l % 4]
    return sign, il


def from_real(x: torch.Tensor, basis: ShellBasis) -> torch.Tensor:
    """Real parameters [..., P] -> coefficients of a real map [..., n_k, L+1, 2L+1] (complex, differentiable)."""
    L = basis.L
    full = x.new_zeros(x.shape[:-1] + tuple(basis.mask.shape))
    full[..., basis.mask] = x
    sign, il = _parity(L, x.dtype, x.device)
    pos = full[..., L + 1 :]
    neg = full[..., :L].flip(-1)
    f_pos = torch.complex(pos, neg) / math.sqrt(2)
    f_neg = sign * f_pos.conj()
    f_0 = full[..., L] * il.to(torch.complex64 if x.dtype == torch.float32 else torch.complex128)
    return torch.cat([f_neg.flip(-1), f_0[..., None], f_pos], -1)


def to_real(coeffs: torch.Tensor, basis: ShellBasis) -> torch.Tensor:
    """Coefficients [..., n_k, L+1, 2L+1] -> real parameters [..., P] (the conjugate-symmetric part, exactly)."""
    L = basis.L
    _, il = _parity(L, coeffs.real.dtype, coeffs.device)
    f_pos = coeffs[..., L + 1 :]
    full = coeffs.real.new_zeros(coeffs.shape)
    full[..., L + 1 :] = math.sqrt(2) * f_pos.real
    full[..., :L] = (math.sqrt(2) * f_pos.imag).flip(-1)
    full[..., L] = (coeffs[..., L] * il.conj().to(coeffs.dtype)).real
    return full[..., basis.mask]


def from_voxels(volume: torch.Tensor, basis: ShellBasis, kernel: str = "kb6", oversample: float = 2.0) -> torch.Tensor:
    """Coefficients [n_k, L+1, 2L+1] of a map [N, N, N] ([z, y, x], centre N // 2).

    The centred 3-D transform is sampled on a Gauss–Legendre sphere grid on each shell (separable Kaiser–Bessel
    interpolation of the padded transform, ~1e-4 relative) and projected onto the harmonics by quadrature.
    """
    if volume.dim() != 3 or volume.shape[-1] != basis.box or len(set(volume.shape)) != 1:
        raise InvalidValueError(f"map must be [{basis.box}]^3 to match the shell basis, got {tuple(volume.shape)}")
    L = basis.L
    grid = SphereGrid(2 * L, basis.k.dtype, volume.device)
    st = torch.sqrt(1 - grid.cos_theta**2)
    u = torch.stack(
        [st[:, None] * torch.cos(grid.phi), st[:, None] * torch.sin(grid.phi), grid.cos_theta[:, None].expand(-1, grid.n_phi)], -1
    )
    freqs = (basis.k.to(volume.device)[:, None, None, None] * u).reshape(-1, 3)
    fvol = fourier_volume(volume.to(basis.k.dtype), oversample, kernel)
    eye = torch.eye(3, dtype=basis.k.dtype, device=volume.device)[None]
    vals = sample_fourier_volume(fvol, eye, freqs, basis.box, kernel).reshape(basis.n_shells, *u.shape[:2])
    return grid.analysis(vals, L) * basis.mask


def _lagrange_weights(nodes: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Barycentric Lagrange interpolation weights [P, n] of the polynomial through `nodes` [n] at points x [P]."""
    diff = nodes[:, None] - nodes[None, :]
    diff.fill_diagonal_(1.0)
    bary = 1.0 / diff.prod(1)
    d = x[:, None] - nodes[None, :]
    exact = d == 0
    d = torch.where(exact, torch.ones_like(d), d)
    t = bary / d
    w = t / t.sum(1, keepdim=True)
    hit = exact.any(1)
    return torch.where(hit[:, None], exact.to(w.dtype), w)


def evaluate(coeffs: torch.Tensor, basis: ShellBasis, points: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """F̂ at 3-D frequencies points [P, 3] (x, y, z; cycles per box, |κ| <= k_max): harmonics on each shell, then
    Lagrange interpolation through the radial nodes -> [..., P] for coefficients [..., n_k, L+1, 2L+1]."""
    L = basis.L
    out = []
    flat = coeffs.reshape(-1, basis.n_shells, (L + 1) * (2 * L + 1))
    for i in range(0, points.shape[0], chunk):
        p = points[i : i + chunk].to(basis.k.dtype)
        r = p.norm(dim=-1)
        theta, phi = direction_angles(p / r.clamp_min(1e-30)[:, None])
        Y = spherical_harmonics(L, theta, phi).reshape(p.shape[0], -1)
        on_shell = torch.einsum("pc,bnc->bpn", Y.to(flat.dtype), flat)
        out.append((on_shell * _lagrange_weights(basis.k, r).to(flat.dtype)).sum(-1))
    return torch.cat(out, -1).reshape(coeffs.shape[:-3] + (points.shape[0],))


def to_voxels(coeffs: torch.Tensor, basis: ShellBasis) -> torch.Tensor:
    """Real map [N, N, N] whose centred transform is F̂ inside the ball |κ| < k_max and zero outside."""
    N = basis.box
    c = centered_coords(N, coeffs.device, basis.k.dtype)
    kz, ky, kx = torch.meshgrid(c, c, c, indexing="ij")
    grid = torch.stack([kx, ky, kz], -1).reshape(-1, 3)
    inside = grid.norm(dim=-1) < basis.k_max
    F = torch.zeros(N**3, dtype=coeffs.dtype, device=coeffs.device)
    F[inside] = evaluate(coeffs, basis, grid[inside])
    return ifft3c(F.reshape(N, N, N)).real
