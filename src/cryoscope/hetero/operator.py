"""The linear image model y = L(θ) c of a spherical-basis density (dissertation Eq. 2.7, 2.10) in real measurements.

An image's measurements are the Fourier pixels of its Hermitian half-plane inside the band |κ| <= k_max, from the
centred DFT divided by the box size N and split into √2 Re / √2 Im (the κ = 0 pixel: Re only). With this scaling,
white real-space noise of variance λ² per pixel gives i.i.d. N(0, λ²) measurements (Parseval), so λ² is the pixel
noise variance.

Because Ψ_{l,n} is real and the transform carries (-i)^l, even-l coefficients produce only the real parts and odd-l
coefficients only the imaginary parts: L splits into two independent channels, `even` (Re rows × even-l columns)
and `odd` (Im rows × odd-l columns). Projection follows the core: F_image(κ) = P(A^T (κ, 0)) (RELION matrices A,
frequencies κ / N cycles per pixel), CTF multiplies, origins are undone on the data (`physics.shift`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.fourier import fft2c
from cryoscope.physics.projection import slice_layout
from cryoscope.physics.shift import translate
from cryoscope.representations.spherical_basis import SphericalBasis

CHANNELS = ("even", "odd")


@dataclass(frozen=True)
class Channel:
    """One independent block of the model: measurement rows `rows` of the half-plane pixels and coefficient columns."""

    name: str
    pixels: torch.Tensor  # [P] indices into the half-plane pixel list
    columns: torch.Tensor  # [N] coefficient indices
    radial: torch.Tensor | None  # [P, N] measurement weight × (-i)^l part × H_{l,p}(|κ|) / box (parity channels)
    angular_index: torch.Tensor | None  # [N] which Ψ each column uses (parity channels)


class ProjectionOperator:
    """L(θ) for a `SphericalBasis` on box × box images, band-limited to `k_max` cycles/pixel.

    `joint`: one channel holding both parity blocks (block-diagonal L), which a full covariance V needs because it
    couples even and odd degrees."""

    def __init__(self, basis: SphericalBasis, box: int, k_max: float, dtype: torch.dtype = torch.float64, device="cpu", joint: bool = False):
        if not 0 < k_max <= 0.5:
            raise InvalidValueError(f"band limit must be in (0, 0.5] cycles/pixel, got {k_max}")
        self.basis, self.box, self.k_max, self.dtype, self.device = basis, int(box), float(k_max), dtype, torch.device(device)
        layout = slice_layout(self.box, self.k_max)
        self.flat_index = layout.computed.to(self.device)
        self.freqs = layout.freqs[:, :2].to(dtype=dtype, device=self.device)  # (kx, ky) cycles per box
        kn = self.freqs.norm(dim=-1)
        self.zero = int(torch.nonzero(kn == 0).squeeze())
        self.equator = basis.equator_table(torch.atan2(self.freqs[:, 1], self.freqs[:, 0]))  # Y_l^m at the pixels' azimuths
        H = basis.hankel(kn / self.box).to(dtype=dtype, device=self.device) / self.box  # [P, N_c]
        l = basis.l.to(self.device)
        phase = (-1j) ** l.cpu().to(torch.complex128)
        w = torch.full_like(kn, math.sqrt(2))
        w[self.zero] = 1.0
        everything = torch.arange(kn.shape[0], device=self.device)
        im_pixels = everything[everything != self.zero]
        even = torch.nonzero(l % 2 == 0).squeeze(1)
        odd = torch.nonzero(l % 2 == 1).squeeze(1)
        ang = basis.angular_index.to(self.device)
        re_sign = phase.real.to(dtype=dtype, device=self.device)
        im_sign = phase.imag.to(dtype=dtype, device=self.device)
        self.parity = (
            Channel("even", everything, even, w[:, None] * H[:, even] * re_sign[even], ang[even]),
            Channel("odd", im_pixels, odd, math.sqrt(2) * H[im_pixels][:, odd] * im_sign[odd], ang[odd]),
        )
        self.joint = joint
        self.channels = self.parity
        if joint:
            e, o = self.parity
            self.channels = (Channel("joint", torch.cat([e.pixels, o.pixels]), torch.cat([e.columns, o.columns]), None, None),)

    @property
    def n_measurements(self) -> int:
        return sum(int(ch.pixels.numel()) for ch in self.channels)

    def frequencies_angstrom(self, pixel_size: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(kx, ky) [P] of the half-plane pixels in 1/Å (for CTFs)."""
        f = self.freqs / (self.box * pixel_size)
        return f[:, 0], f[:, 1]

    def measurements(self, images: torch.Tensor, origins_px: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Real images [n, N, N] -> per-channel measurements ([n, P_even], [n, P_odd]) with origins undone."""
        if images.shape[-2:] != (self.box, self.box):
            raise InvalidValueError(f"images are {tuple(images.shape[-2:])}, the model expects {self.box} x {self.box}")
        F = fft2c(images.to(self.dtype).to(self.device))
        if origins_px is not None:
            F = translate(F, origins_px.to(dtype=self.dtype, device=self.device))
        v = F.reshape(F.shape[0], -1)[:, self.flat_index] / self.box
        out = []
        for ch in self.parity:
            part = v.real if ch.name == "even" else v.imag
            scale = torch.full((ch.pixels.numel(),), math.sqrt(2), dtype=self.dtype, device=self.device)
            if ch.name == "even":
                scale[self.zero] = 1.0
            out.append(part[:, ch.pixels] * scale)
        return (torch.cat(out, 1),) if self.joint else tuple(out)

    def matrices(self, rotations: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-channel L(θ) [J, P_ch, N_ch] (no CTF) for RELION matrices [J, 3, 3]."""
        ang = self.basis.equatorial(rotations.to(dtype=self.dtype, device=self.device), self.equator)  # Ψ(A^T u) [J, P, n_ang]
        blocks = [ang[:, ch.pixels][:, :, ch.angular_index] * ch.radial for ch in self.parity]
        if not self.joint:
            return tuple(blocks)
        (P0, N0), (P1, N1) = (b.shape[1:] for b in blocks)
        L = blocks[0].new_zeros(blocks[0].shape[0], P0 + P1, N0 + N1)
        L[:, :P0, :N0], L[:, P0:, N0:] = blocks
        return (L,)

    def split(self, coeffs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Coefficient vectors [..., N_c] -> per-channel parts."""
        return tuple(coeffs[..., ch.columns] for ch in self.channels)

    def merge(self, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Inverse of `split`."""
        out = parts[0].new_zeros(parts[0].shape[:-1] + (self.basis.size,))
        for ch, part in zip(self.channels, parts):
            out[..., ch.columns] = part
        return out

    def images(self, coeffs: torch.Tensor, rotations: torch.Tensor, ctf: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Noise-free measurements of densities coeffs [J, N_c] (or [N_c]) at rotations [J, 3, 3]; ctf [J, P] on the
        half-plane pixels or None."""
        coeffs = coeffs.to(dtype=self.dtype, device=self.device).expand(rotations.shape[0], -1)
        out = []
        for ch, L, c in zip(self.channels, self.matrices(rotations), self.split(coeffs)):
            y = torch.einsum("jpn,jn->jp", L, c)
            out.append(y if ctf is None else y * ctf[:, ch.pixels].to(y))
        return tuple(out)
