"""Orthonormal basis for a particle inside a ball: symmetry-adapted real harmonics × spherical-Bessel radial functions.

φ_{l,n,p}(x) = h_{l,p}(|x|) Ψ_{l,n}(x/|x|) for |x| <= R (zero outside), the expansion of the dissertation's Eq. 2.8:
- Ψ_{l,n} = Σ_m B_l[n, m] Y^r_{l,m}: an orthonormal basis of the real degree-l harmonics invariant under a rotation
  point group G (RELION axes, `geometry.symmetry`), from the +1 eigenspace of the group average of the real Wigner
  matrices; its dimension N_l is the Molien count (1/|G|) Σ_g χ_l(g).
- h_{l,p}(r) = N_{l,p} j_l(z_{l,p} r / R), z_{l,p} the p-th positive zero of j_l, N_{l,p} = sqrt(2) / (R^{3/2} |j_{l+1}(z_{l,p})|),
  so ∫_0^R h_{l,p} h_{l,p'} r² dr = δ_{pp'} and the φ are orthonormal in L²(R³).
- The Fourier transform P(k) = ∫ ρ(x) e^{-2πi k·x} dx of ρ = Σ c φ is Σ c (-i)^l H_{l,p}(|k|) Ψ_{l,n}(k/|k|) with
  H_{l,p}(k) = 4π ∫_0^R h_{l,p}(r) j_l(2πkr) r² dr in closed form (Eq. 2.9; Eq. 2.10 omits the (-i)^l, a typo).

Lengths are in pixels (voxels) and frequencies in cycles per pixel unless stated; coefficients are ordered by l,
then n, then p, keeping those with z_{l,p} <= 2π k_max R when a band limit k_max is given.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import spherical_jn

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.spherical_harmonics import (
    WignerRotation,
    _real_transform,
    equator_harmonics,
    m_values,
    real_spherical_harmonics,
    real_wigner_matrices,
)
from cryoscope.geometry.symmetry import symmetry_group
from cryoscope.physics.fourier import centered_coords

_CHUNK = 4096  # points per harmonic evaluation ([chunk, L+1, 2L+1] float64 transient)


def invariant_count(l: int, group: str) -> int:
    """N_l = (1/|G|) Σ_g χ_l(g), χ_l(ω) = sin((2l+1)ω/2) / sin(ω/2): the number of G-invariant degree-l harmonics."""
    G = symmetry_group(group)
    cos_w = ((G.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    w = torch.acos(cos_w)
    small = w < 1e-9
    chi = torch.where(small, torch.full_like(w, 2 * l + 1.0), torch.sin((2 * l + 1) * w / 2) / torch.sin(w / 2).clamp_min(1e-300))
    return int(round(float(chi.mean())))


@lru_cache(maxsize=512)
def _symmetric_harmonics(l: int, group: str) -> np.ndarray:
    D = real_wigner_matrices(l, symmetry_group(group)).mean(0).numpy()  # orthogonal projector onto invariants
    rows: list[np.ndarray] = []
    for m in range(2 * l + 1):  # Gram–Schmidt on the projected unit vectors, in order of m: deterministic
        v = D[:, m].copy()
        for b in rows:
            v -= (b @ v) * b
        norm = np.linalg.norm(v)
        if norm > 1e-6:
            rows.append(v / norm)
    return np.array(rows).reshape(len(rows), 2 * l + 1)


def symmetric_harmonics(l: int, group: str = "C1") -> torch.Tensor:
    """B_l [N_l, 2l+1] (float64): orthonormal rows with Ψ_{l,n} = Σ_m B_l[n, m] Y^r_{l,m} invariant under `group`."""
    if l < 0:
        raise InvalidValueError(f"harmonic degree must be >= 0, got {l}")
    return torch.from_numpy(_symmetric_harmonics(l, str(group).upper()))


@lru_cache(maxsize=256)
def bessel_zeros(l: int, count: int) -> np.ndarray:
    """The first `count` positive zeros z_{l,1} < z_{l,2} < ... of the spherical Bessel function j_l."""
    hi = (count + l / 2 + 2) * math.pi
    x = np.arange(max(l / 2, 0.5), hi, 0.05)
    f = spherical_jn(l, x)
    idx = np.nonzero(np.sign(f[:-1]) * np.sign(f[1:]) < 0)[0][:count]
    if len(idx) < count:
        raise RuntimeError(f"found {len(idx)} zeros of j_{l} below {hi}, wanted {count}")
    return np.array([brentq(lambda t: spherical_jn(l, t), x[i], x[i + 1], xtol=1e-14) for i in idx])


def quadratic_form(phi: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """φ^T V φ [...] for basis values φ [..., N_c] and V [N_c] (diagonal) or [N_c, N_c] (full)."""
    return (phi * phi) @ covariance if covariance.dim() == 1 else ((phi @ covariance) * phi).sum(-1)


class SphericalBasis:
    """The basis φ_{l,n,p} for a ball of radius `radius` pixels, degrees l <= l_max, p <= p_max radial functions,
    symmetry group `symmetry`, optionally limited to z_{l,p} <= 2π k_max R (`k_max` in cycles/pixel)."""

    def __init__(self, radius: float, l_max: int, p_max: int, symmetry: str = "C1", k_max: float | None = None):
        if radius <= 0 or l_max < 0 or p_max < 1:
            raise InvalidValueError(f"spherical basis needs radius > 0, l_max >= 0, p_max >= 1 (got {radius}, {l_max}, {p_max})")
        self.radius, self.l_max, self.p_max, self.symmetry, self.k_max = float(radius), int(l_max), int(p_max), str(symmetry).upper(), k_max
        self.blocks: list[torch.Tensor] = []  # B_l per degree (empty when N_l = 0)
        l_idx, n_idx, p_idx, zeros, angular = [], [], [], [], []
        n_angular = 0
        for l in range(self.l_max + 1):
            B = symmetric_harmonics(l, self.symmetry)
            self.blocks.append(B)
            z = bessel_zeros(l, self.p_max)
            if k_max is not None:
                z = z[z <= 2 * math.pi * k_max * self.radius]
            for n in range(B.shape[0]):
                for p, zp in enumerate(z, start=1):
                    l_idx.append(l), n_idx.append(n), p_idx.append(p), zeros.append(zp), angular.append(n_angular + n)
            n_angular += B.shape[0]
        if not l_idx:
            raise InvalidValueError(f"the spherical basis (l <= {l_max}, p <= {p_max}, {self.symmetry}, k_max {k_max}) is empty")
        # index tables on the CPU (the radial tables are computed with scipy); moved where they are used
        self.l = torch.tensor(l_idx, device="cpu")
        self.n = torch.tensor(n_idx, device="cpu")
        self.p = torch.tensor(p_idx, device="cpu")
        self.zeros = torch.tensor(zeros, dtype=torch.float64, device="cpu")
        self.angular_index = torch.tensor(angular, device="cpu")  # which Ψ (row of `angular`) each coefficient uses
        self.n_angular = n_angular
        self._cache: dict = {}
        self.norms = math.sqrt(2) / (self.radius**1.5 * np.abs(spherical_jn(self.l.numpy() + 1, self.zeros.numpy())))

    @property
    def size(self) -> int:
        """Number of coefficients N_c."""
        return int(self.l.shape[0])

    def spec(self) -> dict:
        """What rebuilds this basis: `SphericalBasis(**spec)`."""
        return {"radius": self.radius, "l_max": self.l_max, "p_max": self.p_max, "symmetry": self.symmetry, "k_max": self.k_max}

    def band_limit(self) -> float:
        """Largest z_{l,p} / (2π R) in cycles/pixel: the frequency where the highest radial function peaks."""
        return float(self.zeros.max()) / (2 * math.pi * self.radius)

    def angular(self, u: torch.Tensor) -> torch.Tensor:
        """Ψ_{l,n}(u) [..., n_angular] at unit vectors u [..., 3] (x, y, z)."""
        flat = u.reshape(-1, 3)
        out = flat.new_zeros(flat.shape[0], self.n_angular)
        for s in range(0, flat.shape[0], _CHUNK):
            Y = real_spherical_harmonics(self.l_max, flat[s : s + _CHUNK])
            col = 0
            for l, B in enumerate(self.blocks):
                if B.shape[0]:
                    sl = slice(self.l_max - l, self.l_max + l + 1)
                    out[s : s + _CHUNK, col : col + B.shape[0]] = Y[:, l, sl] @ B.to(u.dtype).to(u.device).T
                    col += B.shape[0]
        return out.reshape(tuple(u.shape[:-1]) + (self.n_angular,))

    def equator_table(self, phi: torch.Tensor) -> torch.Tensor:
        """Y_l^m(π/2, φ) [P, L+1, 2L+1] (complex) at azimuths φ [P] (radians), for `equatorial`."""
        L = self.l_max
        m = m_values(L, phi.dtype, phi.device)
        return equator_harmonics(L, phi.dtype, phi.device)[None] * torch.exp(1j * phi[:, None, None] * m)

    def equatorial(self, rotations: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Ψ_{l,n}(A^T u) [J, P, n_angular] for rotations A [J, 3, 3] and the equatorial directions u = (cos φ, sin φ, 0)
        of `table = equator_table(φ)`: the angular part of the central slices, by Wigner rotation of each Ψ's complex
        coefficients and the equatorial harmonics (cheaper than evaluating at J × P directions)."""
        dtype, device = rotations.dtype, rotations.device
        L = self.l_max
        coeffs = self._complex_coefficients(dtype, device)
        rotated = self._wigner(dtype, device)(coeffs, rotations)  # [J, S, L+1, 2L+1]
        out = rotations.new_zeros(rotations.shape[0], table.shape[0], self.n_angular)
        col = 0
        for l, B in enumerate(self.blocks):
            if B.shape[0]:  # only this degree's orders, and only the functions of this degree
                sl = slice(L - l, L + l + 1)
                out[:, :, col : col + B.shape[0]] = torch.einsum("jsm,pm->jps", rotated[:, : B.shape[0], l, sl], table[:, l, sl]).real
                col += B.shape[0]
        return out

    def _complex_coefficients(self, dtype, device) -> torch.Tensor:
        """Complex harmonic coefficients of every Ψ, padded [S, L+1, 2L+1] (S = max N_l, Ψ_{l,n} at [n, l])."""
        key = (dtype, str(device))
        if key not in self._cache:
            L, S = self.l_max, max(B.shape[0] for B in self.blocks)
            cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
            coeffs = torch.zeros(S, L + 1, 2 * L + 1, dtype=cdtype, device=device)
            for l, B in enumerate(self.blocks):
                if B.shape[0]:
                    U = torch.as_tensor(_real_transform(l), device=B.device)
                    a = U.T @ B.T.to(torch.complex128)  # Ψ = Σ (U^T b)_m Y_l^m
                    coeffs[: B.shape[0], l, L - l : L + l + 1] = a.T.to(device=device, dtype=cdtype)
            self._cache[key] = coeffs
        return self._cache[key]

    def _wigner(self, dtype, device) -> WignerRotation:
        key = ("wigner", dtype, str(device))
        if key not in self._cache:
            self._cache[key] = WignerRotation(self.l_max, torch.complex128 if dtype == torch.float64 else torch.complex64, device)
        return self._cache[key]

    def _per_unique(self, values: torch.Tensor, fn) -> torch.Tensor:
        """fn(unique |values| as float64 numpy [u]) -> [u, N_c], gathered back to [..., N_c] in values' dtype."""
        uniq, inverse = torch.unique(values.detach().reshape(-1).cpu().to(torch.float64), return_inverse=True)
        table = torch.from_numpy(fn(uniq.numpy())).to(dtype=values.dtype, device=values.device)
        return table[inverse.to(values.device)].reshape(tuple(values.shape) + (self.size,))

    def radial(self, r: torch.Tensor) -> torch.Tensor:
        """h_{l,p}(r) [..., N_c] at radii r [...] (pixels); zero for r > R."""
        l, z, N, R = self.l.numpy(), self.zeros.numpy(), self.norms, self.radius

        def table(ru: np.ndarray) -> np.ndarray:
            h = N * spherical_jn(l[None], z[None] * ru[:, None] / R)
            return np.where(ru[:, None] <= R, h, 0.0)

        return self._per_unique(r, table)

    def hankel(self, k: torch.Tensor) -> torch.Tensor:
        """H_{l,p}(k) = 4π ∫_0^R h_{l,p}(r) j_l(2πkr) r² dr [..., N_c] at |frequencies| k [...] (cycles/pixel).

        Lommel's integral with j_l(z) = 0: ∫_0^R j_l(ar) j_l(br) r² dr = R² a j_{l+1}(z) j_l(bR) / (a² - b²), a = z/R,
        b = 2πk, whose limit at b = a is R³ j_{l+1}(z)² / 2.
        """
        l, z, N, R = self.l.numpy(), self.zeros.numpy(), self.norms, self.radius
        jz = spherical_jn(l + 1, z)
        a = z / R

        def table(ku: np.ndarray) -> np.ndarray:
            b = 2 * math.pi * ku[:, None]
            near = np.abs(b - a[None]) * R < 1e-7
            lommel = R**2 * a * jz * spherical_jn(l[None], b * R) / np.where(near, 1.0, a**2 - b**2)
            return 4 * math.pi * N * np.where(near, R**3 * jz**2 / 2, lommel)

        return self._per_unique(k, table)

    def fourier(self, k: torch.Tensor) -> torch.Tensor:
        """The basis' Fourier transforms (-i)^l H_{l,p}(|k|) Ψ_{l,n}(k/|k|) [..., N_c] (complex) at frequencies k [..., 3]
        (cycles/pixel, x y z); at k = 0 only l = 0 survives."""
        kn = k.norm(dim=-1)
        u = k / kn.clamp_min(1e-300)[..., None]
        u = torch.where(kn[..., None] > 0, u, torch.tensor([0.0, 0.0, 1.0], dtype=k.dtype, device=k.device))
        ang = self.angular(u)[..., self.angular_index.to(k.device)]
        phase = (-1j) ** self.l.to(k.device)
        values = self.hankel(kn) * ang * phase
        return torch.where((kn[..., None] > 0) | (self.l.to(k.device) == 0), values, torch.zeros_like(values))

    def functions(self, x: torch.Tensor) -> torch.Tensor:
        """φ_{l,n,p}(x) [..., N_c] at points x [..., 3] (pixels from the centre, x y z)."""
        r = x.norm(dim=-1)
        u = x / r.clamp_min(1e-300)[..., None]
        u = torch.where(r[..., None] > 0, u, torch.tensor([0.0, 0.0, 1.0], dtype=x.dtype, device=x.device))
        return self.radial(r) * self.angular(u)[..., self.angular_index.to(x.device)]

    def _voxel_points(self, box: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Points (x, y, z) [m, 3] of the box's voxels inside the ball, and their flat indices in [z, y, x] order."""
        c = centered_coords(box, device, dtype)
        z, y, x = torch.meshgrid(c, c, c, indexing="ij")
        pts = torch.stack([x, y, z], -1).reshape(-1, 3)
        inside = torch.nonzero(pts.norm(dim=-1) <= self.radius).squeeze(1)
        return pts[inside], inside

    def to_voxels(self, coeffs: torch.Tensor, box: int) -> torch.Tensor:
        """Map ρ = Σ c φ sampled on a [box]^3 grid (centre at index box // 2, [z, y, x]) from coeffs [N_c]."""
        return self._map(box, coeffs.dtype, coeffs.device, lambda phi: phi @ coeffs)

    def variance_to_voxels(self, covariance: torch.Tensor, box: int) -> torch.Tensor:
        """Variance map v(x) = φ(x)^T V φ(x) (Eq. 2.5) from V [N_c] (diagonal) or [N_c, N_c] (full)."""
        return self._map(box, covariance.dtype, covariance.device, lambda phi: quadratic_form(phi, covariance))

    def _map(self, box: int, dtype, device, fn) -> torch.Tensor:
        pts, inside = self._voxel_points(box, dtype, device)
        out = torch.zeros(box**3, dtype=dtype, device=device)
        for s in range(0, pts.shape[0], _CHUNK):
            out[inside[s : s + _CHUNK]] = fn(self.functions(pts[s : s + _CHUNK]))
        return out.reshape(box, box, box)

    def from_voxels(self, volume: torch.Tensor) -> torch.Tensor:
        """Coefficients c_α = Σ_voxels ρ(x) φ_α(x) (the L² projection with unit voxel volume) of a map [N, N, N]."""
        box = volume.shape[-1]
        pts, inside = self._voxel_points(box, volume.dtype, volume.device)
        flat = volume.reshape(-1)
        c = volume.new_zeros(self.size)
        for s in range(0, pts.shape[0], _CHUNK):
            c += flat[inside[s : s + _CHUNK]] @ self.functions(pts[s : s + _CHUNK])
        return c
