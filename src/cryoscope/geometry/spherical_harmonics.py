"""Complex spherical harmonics, Gauss–Legendre sphere quadrature, Wigner-D rotation and so(3) generators.

Conventions (docs/uncertainty.md):
- Y_l^m(θ, φ) = Z_l^m P_l^m(cos θ) e^{imφ} (Rangan et al. Eq. 37-38) with the Condon–Shortley phase (-1)^m in
  P_l^m, so Y_l^{-m} = (-1)^m conj(Y_l^m) and the Y_l^m are orthonormal on the unit sphere (scipy's `sph_harm`).
- Coefficients are stored padded, [..., L+1, 2L+1]: entry [l, L + m] holds f_l^m; entries with |m| > l are zero.
- A rotation R acts on functions by (R f)(u) = f(R^{-1} u), so in coefficients f_l ↦ D^l(R) f_l with
  D^l(R) = exp(-i θ n·J) (J the angular-momentum matrices). For R = Rz(α) Ry(β) Rz(γ) (active rotations of
  vectors, Eq. 35) this is Eq. 39: D^l_{m m'} = e^{-imα} d^l_{m m'}(β) e^{-im'γ}, with the real Wigner matrix
  d^l(β) = exp(-iβ J_y) computed from the eigenbasis of J_y (no recurrences to get wrong).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from cryoscope.errors import InvalidValueError


def coefficient_mask(L: int, device=None) -> torch.Tensor:
    """Boolean [L+1, 2L+1]: True where |m| <= l."""
    l = torch.arange(L + 1, device=device)[:, None]
    m = torch.arange(-L, L + 1, device=device)[None, :]
    return m.abs() <= l


def m_values(L: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Orders m = -L..L [2L+1] along the last axis of padded coefficients."""
    return torch.arange(-L, L + 1, dtype=dtype, device=device)


def legendre(L: int, x: torch.Tensor) -> torch.Tensor:
    """Normalised associated Legendre functions [L+1, 2L+1, *x.shape] with Y_l^m(θ, φ) = out[l, L+m](cos θ) e^{imφ}.

    Stable three-term recursion in l for each m >= 0; negative m from P̄_l^{-m} = (-1)^m P̄_l^m.
    """
    if L < 0:
        raise InvalidValueError(f"spherical-harmonic degree must be >= 0, got {L}")
    out = x.new_zeros((L + 1, 2 * L + 1) + tuple(x.shape))
    s = torch.sqrt((1 - x * x).clamp_min(0))
    pmm = torch.full_like(x, 1 / math.sqrt(4 * math.pi))
    for m in range(L + 1):
        if m > 0:
            pmm = -math.sqrt((2 * m + 1) / (2 * m)) * s * pmm
        out[m, L + m] = pmm
        if m < L:
            out[m + 1, L + m] = math.sqrt(2 * m + 3) * x * pmm
        for l in range(m + 2, L + 1):
            a = math.sqrt((4 * l * l - 1) / (l * l - m * m))
            b = math.sqrt(((l - 1) ** 2 - m * m) / (4 * (l - 1) ** 2 - 1))
            out[l, L + m] = a * (x * out[l - 1, L + m] - b * out[l - 2, L + m])
        if m > 0:
            out[m:, L - m] = (-1) ** m * out[m:, L + m]
    return out


def spherical_harmonics(L: int, theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Y_l^m(θ, φ) [..., L+1, 2L+1] (complex) at polar angles θ and azimuths φ (radians) of equal shape [...]."""
    P = legendre(L, torch.cos(theta))
    phase = torch.exp(1j * m_values(L, theta.dtype, theta.device)[:, None] * phi.reshape(1, -1))
    Y = P.reshape(L + 1, 2 * L + 1, -1) * phase[None]
    return Y.permute(2, 0, 1).reshape(tuple(theta.shape) + (L + 1, 2 * L + 1))


def direction_angles(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Polar and azimuthal angles (θ, φ) of unit vectors u [..., 3] (x, y, z), Eq. 32."""
    return torch.acos(u[..., 2].clamp(-1, 1)), torch.atan2(u[..., 1], u[..., 0])


class SphereGrid:
    """Gauss–Legendre × uniform quadrature on the unit sphere, exact for spherical polynomials of degree <= `degree`.

    n_theta = ceil((degree + 1) / 2) Gauss–Legendre nodes in cos θ and n_phi = degree + 1 uniform azimuths.
    `synthesis` / `analysis` transform between coefficients of degree <= L and grid values (exact when 2L <= degree).
    """

    def __init__(self, degree: int, dtype=torch.float64, device=None):
        if degree < 0:
            raise InvalidValueError(f"quadrature degree must be >= 0, got {degree}")
        self.degree = degree
        n_theta = degree // 2 + 1
        x, w = np.polynomial.legendre.leggauss(n_theta)
        self.cos_theta = torch.tensor(x, dtype=dtype, device=device)
        self.n_phi = degree + 1
        self.phi = torch.arange(self.n_phi, dtype=dtype, device=device) * (2 * math.pi / self.n_phi)
        self.weights = torch.tensor(w, dtype=dtype, device=device) * (2 * math.pi / self.n_phi)
        self._legendre: dict[int, torch.Tensor] = {}

    def legendre(self, L: int) -> torch.Tensor:
        """P̄ table [L+1, 2L+1, n_theta] at the grid's nodes (cached)."""
        if L not in self._legendre:
            self._legendre[L] = legendre(L, self.cos_theta)
        return self._legendre[L]

    def _check(self, L: int) -> None:
        if 2 * L + 1 > self.n_phi:
            raise InvalidValueError(f"sphere grid of degree {self.degree} cannot carry degree-{L} harmonics")

    def synthesis(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Coefficients [..., L+1, 2L+1] -> values [..., n_theta, n_phi] on the grid."""
        L = coeffs.shape[-2] - 1
        self._check(L)
        P = self.legendre(L).to(coeffs.real.dtype)
        g = torch.einsum("...lm,lmt->...tm", coeffs, P.to(coeffs.dtype))
        spec = g.new_zeros(g.shape[:-1] + (self.n_phi,))
        idx = torch.arange(-L, L + 1, device=coeffs.device) % self.n_phi
        spec[..., idx] = g
        return torch.fft.ifft(spec, dim=-1) * self.n_phi

    def analysis(self, values: torch.Tensor, L: int) -> torch.Tensor:
        """Values [..., n_theta, n_phi] -> coefficients [..., L+1, 2L+1] by quadrature (exact projection when the
        values are a spherical polynomial of degree <= degree - L)."""
        self._check(L)
        spec = torch.fft.fft(values.to(torch.complex128 if values.dtype in (torch.float64, torch.complex128) else torch.complex64), dim=-1)
        idx = torch.arange(-L, L + 1, device=values.device) % self.n_phi
        g = spec[..., idx] * self.weights.to(spec.real.dtype)[:, None]
        P = self.legendre(L).to(spec.real.dtype)
        return torch.einsum("...tm,lmt->...lm", g, P.to(spec.dtype))


def _angular_momentum(l: int) -> tuple[np.ndarray, np.ndarray]:
    """J_+ ([m+1, m] entries) and J_y for degree l, basis m = -l..l."""
    m = np.arange(-l, l)
    jp = np.zeros((2 * l + 1, 2 * l + 1))
    jp[np.arange(1, 2 * l + 1), np.arange(0, 2 * l)] = np.sqrt(l * (l + 1) - m * (m + 1))
    return jp, (jp - jp.T) / 2j


@lru_cache(maxsize=8)
def _jy_eigenbases(L: int) -> tuple[np.ndarray, ...]:
    """Unitary W_l with J_y = W_l diag(-l..l) W_l^H, for l = 0..L (complex128)."""
    bases = []
    for l in range(L + 1):
        _, jy = _angular_momentum(l)
        _, W = np.linalg.eigh(jy)
        bases.append(W)
    return tuple(bases)


def wigner_small_d(l: int, beta: torch.Tensor) -> torch.Tensor:
    """Real Wigner matrices d^l(β) = exp(-iβ J_y) [..., 2l+1, 2l+1] (rows m, columns m', both -l..l)."""
    W = torch.as_tensor(_jy_eigenbases(l)[l], device=beta.device)
    m = torch.arange(-l, l + 1, dtype=beta.dtype, device=beta.device)
    ph = torch.exp(-1j * beta[..., None] * m)
    return torch.einsum("ab,...b,cb->...ac", W, ph, W.conj()).real


def zyz_angles(R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(α, β, γ) in radians with R = Rz(α) Ry(β) Rz(γ) (active rotations, Eq. 35), for matrices [..., 3, 3].

    At β = 0 or π (gimbal lock) γ = 0 and α carries the whole rotation about z.
    """
    beta = torch.atan2(torch.sqrt(R[..., 0, 2] ** 2 + R[..., 1, 2] ** 2), R[..., 2, 2])
    locked = torch.sqrt(R[..., 0, 2] ** 2 + R[..., 1, 2] ** 2) < 16 * torch.finfo(R.dtype).eps
    sign = torch.where(R[..., 2, 2] < 0, -1.0, 1.0).to(R.dtype)
    alpha = torch.where(locked, torch.atan2(sign * R[..., 1, 0], R[..., 1, 1]), torch.atan2(R[..., 1, 2], R[..., 0, 2]))
    gamma = torch.where(locked, torch.zeros_like(beta), torch.atan2(R[..., 2, 1], -R[..., 2, 0]))
    return alpha, beta, gamma


class WignerRotation:
    """Rotates padded coefficients [S, L+1, 2L+1] by a batch of rotations: out[j] = D(R_j) f (Eq. 39).

    d^l(β_j) is applied as W_l diag(e^{-imβ_j}) W_l^H, so each degree costs two dense products shared by the
    whole batch and no per-rotation matrix is stored.
    """

    def __init__(self, L: int, dtype=torch.complex128, device=None):
        self.L = L
        self.bases = [torch.as_tensor(W, dtype=dtype, device=device) for W in _jy_eigenbases(L)]

    def __call__(self, coeffs: torch.Tensor, rotations: torch.Tensor, reduce: bool = False) -> torch.Tensor:
        """coeffs [S, L+1, 2L+1] (shared) or [J, S, L+1, 2L+1] (one set per rotation); rotations [J, 3, 3].
        With `reduce`, the sum over the batch Σ_j D(R_j) f_j [S, L+1, 2L+1] (without the [J, ...] intermediate)."""
        alpha, beta, gamma = zyz_angles(rotations)
        return self.by_angles(coeffs, alpha, beta, gamma, reduce)

    def by_angles(self, coeffs: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor, reduce: bool = False) -> torch.Tensor:
        """Rotation by Rz(α) Ry(β) Rz(γ), angles [J] in radians (one degree at a time, so every product is contiguous)."""
        L = self.L
        if coeffs.shape[-2:] != (L + 1, 2 * L + 1):
            raise InvalidValueError(f"coefficients must have shape [..., {L + 1}, {2 * L + 1}], got {tuple(coeffs.shape)}")
        m = m_values(L, alpha.dtype, alpha.device)
        ea = torch.exp(-1j * alpha[:, None] * m)  # [J, 2L+1]
        eb = torch.exp(-1j * beta[:, None] * m)[:, None]
        eg = torch.exp(-1j * gamma[:, None] * m)[:, None]
        batch = coeffs.shape[-3]
        shape = (batch, L + 1, 2 * L + 1) if reduce else (alpha.shape[0], batch, L + 1, 2 * L + 1)
        out = coeffs.new_zeros(shape)
        for l in range(L + 1):
            W = self.bases[l]
            sl = slice(L - l, L + l + 1)
            y = ((coeffs[..., l, sl] * eg[..., sl]) @ W.conj()) * eb[..., sl]  # W^H applied to column vectors
            y = y @ W.T
            if reduce:
                out[:, l, sl] = torch.einsum("jm,jsm->sm", ea[:, sl], y)
            else:
                out[..., l, sl] = y * ea[:, None, sl]
        return out


def apply_generator(coeffs: torch.Tensor, axis: int) -> torch.Tensor:
    """-i J_axis f for padded coefficients [..., L+1, 2L+1]; axis 0, 1, 2 = x, y, z.

    d/dε D(exp(ε [e_axis]_×)) f at ε = 0, i.e. the derivative of f under an infinitesimal rotation about that axis.
    """
    L = coeffs.shape[-2] - 1
    cplus, cminus = ladder_coefficients(L, coeffs.real.dtype, coeffs.device)
    if axis == 2:
        return -1j * coeffs * m_values(L, coeffs.real.dtype, coeffs.device)
    up = torch.zeros_like(coeffs)  # (J_+ f)_m = c+_{m-1} f_{m-1}
    up[..., 1:] = coeffs[..., :-1] * cplus[:, :-1]
    down = torch.zeros_like(coeffs)  # (J_- f)_m = c-_{m+1} f_{m+1}
    down[..., :-1] = coeffs[..., 1:] * cminus[:, 1:]
    if axis == 0:
        return -0.5j * (up + down)
    if axis == 1:
        return -0.5 * (up - down)
    raise InvalidValueError(f"axis must be 0, 1 or 2, got {axis}")


@lru_cache(maxsize=16)
def _ladder_cached(L: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    l = torch.arange(L + 1, dtype=dtype, device=device)[:, None]
    m = torch.arange(-L, L + 1, dtype=dtype, device=device)[None, :]
    ok = m.abs() <= l
    cplus = torch.sqrt((l * (l + 1) - m * (m + 1)).clamp_min(0)) * ok
    cminus = torch.sqrt((l * (l + 1) - m * (m - 1)).clamp_min(0)) * ok
    return cplus, cminus


def ladder_coefficients(L: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """c+_m = sqrt(l(l+1) - m(m+1)) and c-_m = sqrt(l(l+1) - m(m-1)) [L+1, 2L+1], zero where |m| > l."""
    return _ladder_cached(L, dtype, str(torch.device(device) if device is not None else "cpu"))


def equator_harmonics(L: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Y_l^m(π/2, 0) = Z_l^m P_l^m(0) [L+1, 2L+1] (zero for odd l + m): the equatorial-slice weights of Eq. 41."""
    return legendre(L, torch.zeros((), dtype=dtype, device=device))


@lru_cache(maxsize=128)
def _real_transform(l: int) -> np.ndarray:
    """Unitary U_l [2l+1, 2l+1] with real harmonics Y^r = U_l Y (rows and columns m = -l..l).

    Y^r_m = sqrt(2) (-1)^m Re Y_l^m (m > 0), Y_l^0 (m = 0), sqrt(2) (-1)^m Im Y_l^|m| (m < 0): the usual real
    harmonics without the Condon–Shortley phase (√2 P̄_l^m cos mφ and √2 P̄_l^|m| sin |m|φ).
    """
    U = np.zeros((2 * l + 1, 2 * l + 1), dtype=np.complex128)
    U[l, l] = 1
    r = 1 / math.sqrt(2)
    for m in range(1, l + 1):
        U[l + m, l + m], U[l + m, l - m] = (-1) ** m * r, r
        U[l - m, l - m], U[l - m, l + m] = 1j * r, -1j * (-1) ** m * r
    return U


def real_spherical_harmonics(L: int, u: torch.Tensor) -> torch.Tensor:
    """Real harmonics Y^r_{l,m} [..., L+1, 2L+1] (padded, zero where |m| > l) at unit vectors u [..., 3] (x, y, z).

    Orthonormal on the unit sphere; stable to high degree (normalised Legendre recursion in l). Conventions in
    `_real_transform`.
    """
    theta, phi = direction_angles(u)
    P = legendre(L, torch.cos(theta)).movedim(0, -1).movedim(0, -1)  # [..., L+1, 2L+1]
    m = m_values(L, u.dtype, u.device)
    am = m.abs()
    trig = torch.where(m >= 0, torch.cos(am * phi[..., None]), torch.sin(am * phi[..., None]))  # [..., 2L+1]
    scale = torch.where(m == 0, 1.0, math.sqrt(2) * (-1.0) ** am).to(u.dtype)  # removes the Condon–Shortley phase
    Pm = torch.cat([P[..., L:].flip(-1)[..., :L], P[..., L:]], -1)  # P̄_l^|m| in every column
    return Pm * (trig * scale)[..., None, :]


def real_wigner_matrices(l: int, rotations: torch.Tensor) -> torch.Tensor:
    """Real Wigner matrices [J, 2l+1, 2l+1] for rotations [J, 3, 3]: the coefficients of f(R^{-1} u) are D^r(R) a
    when f = Σ_m a_m Y^r_{l,m} (same action as `WignerRotation`, in the real basis: D^r = conj(U) D U^T)."""
    alpha, beta, gamma = zyz_angles(rotations.to(torch.float64))
    m = m_values(l, torch.float64, rotations.device)
    D = torch.exp(-1j * alpha[:, None, None] * m[:, None]) * wigner_small_d(l, beta) * torch.exp(-1j * gamma[:, None, None] * m[None, :])
    U = torch.as_tensor(_real_transform(l), device=rotations.device)
    return (U.conj() @ D @ U.T).real.to(rotations.dtype)
