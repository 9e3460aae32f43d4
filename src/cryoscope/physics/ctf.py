"""Contrast transfer function, as RELION's `CTF` class (relion/src/ctf.h, ctf.cpp; CTFFIND4 parameters).

For a spatial frequency k = (kx, ky) in 1/Å at azimuth phi = atan2(ky, kx):

    lambda   = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))          (Å, V in volts, relativistic)
    df(phi)  = -(dU + dV)/2 - (dU - dV)/2 cos(2 (phi - angle))   (RELION's signs; dU, dV > 0 underfocus)
    gamma    = K1 df |k|^2 + K2 |k|^4 - K5 - K3
    CTF      = -scale sin(gamma) exp(K4 |k|^2)

with K1 = pi lambda, K2 = pi/2 Cs lambda^3 (Cs in Å), K3 = atan(Q / sqrt(1 - Q^2)) (Q the amplitude
contrast), K4 = -B / 4 (B in Å^2) and K5 the phase shift in radians. At k = 0, CTF = scale sin(K3 + K5),
which is +Q for no phase shift. The defocus along the astigmatism angle is dU, perpendicular to it dV.
Images use the centred grid of `cryoscope.physics.fourier`: k = (index - N // 2) / (N * pixel_size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import lru_cache

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.fourier import fft2c, freq_grid_2d, ifft2c


def electron_wavelength(voltage_kv: torch.Tensor | float) -> torch.Tensor:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV (0.019687 Å at 300 kV)."""
    v = (voltage_kv if torch.is_tensor(voltage_kv) else torch.tensor(float(voltage_kv), dtype=torch.float64)) * 1e3
    return 12.2643247 / torch.sqrt(v * (1 + v * 0.978466e-6))


@dataclass
class CTFParams:
    """Per-particle CTF parameters, each a tensor [n] (units as in RELION's STAR columns).

    defocus_u, defocus_v: Å (positive = underfocus); defocus_angle: degrees from x to the U axis;
    voltage: kV; cs: spherical aberration in mm; amplitude_contrast: Q in [0, 1);
    phase_shift: degrees; bfactor: Å^2 (envelope exp(-B |k|^2 / 4)); scale: dimensionless.
    """

    defocus_u: torch.Tensor
    defocus_v: torch.Tensor
    defocus_angle: torch.Tensor
    voltage: torch.Tensor
    cs: torch.Tensor
    amplitude_contrast: torch.Tensor
    phase_shift: torch.Tensor
    bfactor: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def create(
        cls,
        defocus_u,
        defocus_v=None,
        defocus_angle=0.0,
        voltage=300.0,
        cs=2.7,
        amplitude_contrast=0.1,
        phase_shift=0.0,
        bfactor=0.0,
        scale=1.0,
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> "CTFParams":
        """Build from scalars, sequences, numpy arrays or tensors, broadcast to a common length n.

        defocus_v defaults to defocus_u (no astigmatism). Raises InvalidValueError on NaN/Inf,
        non-positive voltage, negative Cs or Q outside [0, 1).
        """
        values = dict(
            defocus_u=defocus_u,
            defocus_v=defocus_u if defocus_v is None else defocus_v,
            defocus_angle=defocus_angle,
            voltage=voltage,
            cs=cs,
            amplitude_contrast=amplitude_contrast,
            phase_shift=phase_shift,
            bfactor=bfactor,
            scale=scale,
        )
        tensors = {k: torch.as_tensor(v, dtype=dtype, device=device).reshape(-1) for k, v in values.items()}
        try:
            n = torch.broadcast_shapes(*(t.shape for t in tensors.values()))
        except RuntimeError:
            lengths = {k: t.shape[0] for k, t in tensors.items()}
            raise InvalidValueError(f"CTF parameters have inconsistent lengths: {lengths}") from None
        params = cls(**{k: t.expand(n).contiguous() for k, t in tensors.items()})
        params.validate()
        return params

    def validate(self) -> None:
        """Raise InvalidValueError for NaN/Inf or physically impossible values."""
        for f in fields(self):
            t = getattr(self, f.name)
            if not bool(torch.isfinite(t).all()):
                raise InvalidValueError(f"CTF parameter {f.name} contains NaN or Inf")
        if bool((self.voltage <= 0).any()):
            raise InvalidValueError("CTF voltage must be positive (kV)")
        if bool((self.cs < 0).any()):
            raise InvalidValueError("CTF spherical aberration Cs must be >= 0 (mm)")
        q = self.amplitude_contrast
        if bool(((q < 0) | (q >= 1)).any()):
            raise InvalidValueError(f"CTF amplitude contrast must be in [0, 1), got values in [{float(q.min())}, {float(q.max())}]")

    def __len__(self) -> int:
        return self.defocus_u.shape[0]

    def __getitem__(self, index) -> "CTFParams":
        """Select particles (int, slice, index tensor or boolean mask); always returns [n'] tensors."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return CTFParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device=None, dtype: torch.dtype | None = None) -> "CTFParams":
        """Copy to a device and/or floating dtype."""
        return CTFParams(**{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)})

    @property
    def device(self) -> torch.device:
        return self.defocus_u.device


def _gamma_basis(kx: torch.Tensor, ky: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened frequency terms [5, m] (u2, kx^2 - ky^2, 2 kx ky, u2^2, 1) and u2 [m] for `_ctf_from_basis`.

    u2 cos(2 phi) = kx^2 - ky^2 and u2 sin(2 phi) = 2 kx ky, so no atan2 or cos is evaluated per pixel.
    """
    kx, ky = kx.reshape(-1), ky.reshape(-1)
    u2 = kx * kx + ky * ky
    return torch.stack([u2, kx * kx - ky * ky, 2 * kx * ky, u2 * u2, torch.ones_like(u2)]), u2


@lru_cache(maxsize=16)
def _grid_basis(box: int, pixel_size: float, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """`_gamma_basis` of the centred box x box grid in 1/Å, cached per (box, pixel size, device, dtype)."""
    k = freq_grid_2d(box, device, dtype) / (box * pixel_size)
    return _gamma_basis(k[..., 0], k[..., 1])


def _ctf_from_basis(params: CTFParams, basis: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """CTF [n, m] from the [5, m] basis: gamma is one [n, 5] @ [5, m] product, then sin and the envelope."""
    dtype = basis.dtype

    def p(name: str) -> torch.Tensor:
        return getattr(params, name).to(dtype)

    lam = electron_wavelength(p("voltage"))
    k1 = math.pi * lam
    k2 = 0.5 * math.pi * p("cs") * 1e7 * lam**3
    q = p("amplitude_contrast")
    k3 = torch.atan(q / torch.sqrt(1 - q * q))
    k5 = torch.deg2rad(p("phase_shift"))
    df_avg = -(p("defocus_u") + p("defocus_v")) / 2
    df_dev = -(p("defocus_u") - p("defocus_v")) / 2
    two_a = 2 * torch.deg2rad(p("defocus_angle"))
    # gamma = K1 (df_avg u2 + df_dev (cos 2a u2 cos 2phi + sin 2a u2 sin 2phi)) + K2 u2^2 - K5 - K3
    coeffs = torch.stack([k1 * df_avg, k1 * df_dev * torch.cos(two_a), k1 * df_dev * torch.sin(two_a), k2, -(k5 + k3)], 1)
    out = torch.sin(coeffs @ basis)
    bfactor = p("bfactor")
    if bool((bfactor != 0).any()):
        return out.mul_(torch.exp(torch.outer(-bfactor / 4, u2)).mul_(-p("scale")[:, None]))
    return out.mul_(-p("scale")[:, None])


def ctf_at(params: CTFParams, kx: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
    """CTF of each particle at frequencies (kx, ky) in 1/Å of any shape S -> [n, *S]."""
    basis, u2 = _gamma_basis(kx, ky)
    return _ctf_from_basis(params, basis, u2).reshape((len(params),) + tuple(kx.shape))


def compute_ctf(params: CTFParams, box: int, pixel_size: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """CTF images [n, box, box] on the centred Fourier grid (k = (index - box // 2) / (box * pixel_size) 1/Å)."""
    if pixel_size <= 0:
        raise InvalidValueError(f"pixel size must be positive, got {pixel_size} Å")
    basis, u2 = _grid_basis(int(box), float(pixel_size), params.device, dtype or params.defocus_u.dtype)
    return _ctf_from_basis(params, basis, u2).reshape(len(params), box, box)


def apply_ctf(images: torch.Tensor, ctfs: torch.Tensor) -> torch.Tensor:
    """Re IFFT(CTF · FFT(images)): real images [..., N, N] convolved (circularly) with the point-spread functions of
    CTFs [..., N, N] on the centred grid. Self-adjoint for a real CTF."""
    return ifft2c(ctfs * fft2c(images)).real


def phase_flip(F_img: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Multiply image transforms by sign(CTF) (+1 where CTF = 0, as RELION)."""
    return F_img * torch.where(ctf < 0, -1.0, 1.0).to(ctf.dtype)


def wiener_filter(F_img: torch.Tensor, ctf: torch.Tensor, snr: torch.Tensor | float) -> torch.Tensor:
    """Wiener-filtered transforms F * CTF / (CTF^2 + 1 / snr).

    `snr` (signal-to-noise power ratio, the 'tau^2 / sigma^2' of RELION) is a positive scalar or a
    tensor broadcastable to the images, e.g. a grid made with `filters.radial_to_grid`.
    """
    snr = torch.as_tensor(snr, dtype=ctf.dtype, device=ctf.device)
    if bool((snr <= 0).any()):
        raise InvalidValueError("Wiener filter SNR must be positive")
    return F_img * ctf / (ctf * ctf + 1 / snr)
