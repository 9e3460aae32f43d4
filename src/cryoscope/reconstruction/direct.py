"""CTF-weighted direct Fourier inversion (RELION-style data accumulation), streaming, with half-sets at once.

For every particle the phase-corrected, CTF-multiplied transform CTF · T_o F is inserted into a
padded 3-D Fourier grid with the transpose of the projector's trilinear interpolation (RELION's
data array). Instead of RELION's weight array (CTF² spread with the same kernel), each half-set
keeps the exact grid normal operator Interp* CTF² Interp, as per-cell moments (`cells.CellSums`,
one row per trilinear cell) that become a 27-point stencil (14 coupling grids) when a map is
asked for. `volume()` then solves the regularised normal equations (P* C² P + R) v = P* C T_o^* y
for the map by preconditioned conjugate gradients on grids alone, without touching the data again:
the same least-squares problem as `cryoscope.reconstruction.iterative.reconstruct_cg`, for the
price of one backprojection.

Why not num / weight: the slice samples are spaced 1/N but the padded grid 1/(2N), so the trilinear
weight is not a sampling density; the ratio lost ~21 % of the map's total density and had ~4 %
error on noiseless data. The preconditioner of the solver is exactly that ratio (as a Fourier filter).

Memory per half-set: ~45 bytes per voxel of the (2N + 3)^3 grid in float32 (`cells`), independent
of the number of particles: ~0.8 GB at N = 128; `volume()` adds the stencil of one half-set
(56 bytes per voxel) while it runs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.particles import ParticleBatch
from cryoscope.physics.fourier import centered_coords, fft3c, ifft3c
from cryoscope.physics.projection import (
    fold_half_slices,
    fourier_volume,
    fourier_volume_adjoint,
    grid_interior,
    grid_size,
    gridding_correction,
    padded_size,
    slice_layout,
)
from cryoscope.reconstruction.cells import CellSums, apply_normal_stencil, stencil_row_sums

_DEFAULT_TIKHONOV = 5e-3


class DirectReconstructor:
    """Accumulates particles into `n_halves` Fourier grids; `volume()` gives the regularised least-squares map.

    box N (pixels); oversample: padding factor; cutoff: highest frequency used (cycles/pixel,
    default Nyquist); dtype: accumulation precision (float32 default).
    """

    def __init__(
        self,
        box: int,
        oversample: float = 2.0,
        cutoff: float = 0.5,
        n_halves: int = 2,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.box, self.oversample, self.cutoff, self.n_halves = box, oversample, cutoff, n_halves
        self.size = grid_size(box, oversample)
        self.dtype = dtype
        self.device = torch.device(device)
        self.layout = slice_layout(box, cutoff, self.device)
        self.sums = CellSums(box, self.size, cutoff, n_halves, self.device, dtype)
        self.count = torch.zeros(n_halves, dtype=torch.long, device="cpu")  # particles per half-set, on the CPU

    def add(self, batch: ParticleBatch) -> None:
        """Scatter one batch (its `half` ids choose the grid; all to grid 0 when None)."""
        if batch.images.shape[-1] != self.box:
            raise InvalidValueError(f"particle box {batch.images.shape[-1]} differs from reconstruction box {self.box}")
        complex_dtype = torch.complex64 if self.dtype == torch.float32 else torch.complex128
        F = batch.corrected_transforms(self.dtype).to(self.device, complex_dtype)
        if batch.ctf is None:
            ctf2 = torch.ones(F.shape, dtype=self.dtype, device=self.device)
        else:
            ctf2 = batch.ctf.to(self.device, self.dtype) ** 2
        rot = batch.rotations.to(self.device, self.dtype)
        self.add_half_slices(fold_half_slices(F, self.layout), fold_half_slices(ctf2, self.layout), rot, batch.half)

    def add_half_slices(self, values: torch.Tensor, ctf2: torch.Tensor, rotations: torch.Tensor, half: torch.Tensor | None = None) -> None:
        """Scatter folded half-slices (`self.layout`): values [n, P] (complex, CTF · F summed with its Hermitian
        mirror, `fold_half_slices`), CTF² [n, P] folded alike, at rotations [n, 3, 3]; `half` [n] chooses the grid
        (all to grid 0 when None)."""
        if half is not None:
            if half.min() < 0 or half.max() >= self.n_halves:
                raise InvalidValueError(f"half-set ids must be in [0, {self.n_halves - 1}]")
            half = half.to(self.device)
            self.count += torch.bincount(half.cpu().long(), minlength=self.n_halves)
        else:
            self.count[0] += values.shape[0]
        values, ctf2 = values.to(self.device), ctf2.to(self.device)
        self.sums.add(values, ctf2, rotations.to(self.device, self.dtype), self.layout, half)

    def add_all(self, batches: Iterable[ParticleBatch]) -> "DirectReconstructor":
        """Stream an iterable of batches; returns self."""
        for batch in batches:
            self.add(batch)
        return self

    def _grids(self, half: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bordered numerator [S, S, S], stencil slab [14, S - z0, S, S] (`CellSums.stencil`) and spread weights
        [S, S, S] of one half-set (None: all summed)."""
        st = self.sums.stencil(half)
        weight = torch.zeros((self.size,) * 3, dtype=st.dtype, device=st.device)
        weight[self.sums.slab_start :] = stencil_row_sums(st)
        return self.sums.numerator(half), st, weight

    def fourier_grids(self, half: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hermitian-completed numerator (complex) and trilinear-spread CTF² weights (real), each [M, M, M] centred.

        `half` selects one half-set; None sums all.
        """
        num, _, weight = self._grids(half)
        return _hermitian_sum(grid_interior(num)), _hermitian_sum(grid_interior(weight))

    def volume(
        self,
        half: int | None = None,
        reg: float | torch.Tensor | None = None,
        n_iter: int = 30,
        tol: float = 1e-4,
    ) -> torch.Tensor:
        """Map [N, N, N] solving (P* C² P + R) v = P* C y by preconditioned CG (at most `n_iter` iterations,
        until the residual falls below `tol` x the right-hand side).

        `reg` R: Wiener term (1/SNR, 1/tau^2) in units of the CTF² weights: a float, or per-shell
        values [N // 2 + 1] (shell i = frequency i / N cycles/pixel, e.g. from `reg_from_fsc`);
        None uses `_DEFAULT_TIKHONOV` x the mean weight of each shell (a light Tikhonov term that tames
        sparse views and biases every shell by the same ~0.5 %). Frequencies beyond the cutoff are removed.
        """
        num, st, weight = self._grids(half)
        weight = _hermitian_sum(grid_interior(weight))  # [M, M, M], full (both Hermitian halves)
        m = weight.shape[-1]
        shell = self._shells(m)
        if reg is None:
            reg = _DEFAULT_TIKHONOV * self._shell_means(weight).clamp_min(1e-12 * float(weight.max().clamp_min(1e-30)))
        if isinstance(reg, torch.Tensor) and reg.dim() == 1:
            reg_grid = reg.to(weight)[shell.clamp(max=reg.numel() - 1)]
        else:
            reg_grid = torch.full_like(weight, float(reg))
        # The stencil holds the half-slice samples folded to z >= centre; the real part in
        # `fourier_volume_adjoint` symmetrises, so on that slab the operator is stencil + reg, with reg / 2 on
        # the plane z = centre, whose Hermitian partners lie in the same plane.
        z0 = self.sums.slab_start
        extra = torch.nn.functional.pad(reg_grid, (1, 2) * 3)[z0:]
        extra[1] /= 2
        box, os = self.box, self.oversample

        def normal(v: torch.Tensor) -> torch.Tensor:
            fv = fourier_volume(v, os)
            fv[z0:] = apply_normal_stencil(st, fv[z0:], extra)
            fv[:z0] = 0
            return fourier_volume_adjoint(fv, box)

        b = fourier_volume_adjoint(num, box)
        # Preconditioner: a Fourier filter on the padded box dividing by the symbol of the cropped operator,
        # (weight + reg) smoothed by the transform of the box's autocorrelation (a tent of half-width N).
        # Everything is real and even, so it runs on half spectra in FFT (uncentred) order.
        lo = m // 2 - box // 2
        h = m // 2 + 1
        dims = (-3, -2, -1)
        spectrum = torch.fft.ifftshift(weight + reg_grid, dim=dims)[..., :h]
        spatial = torch.fft.irfftn(spectrum.to(torch.promote_types(spectrum.dtype, torch.complex64)), s=(m, m, m))
        del spectrum
        f = torch.fft.fftfreq(m, 1.0 / m, device=b.device, dtype=weight.dtype)  # integer frequencies, FFT order
        tent = (box - f.abs()).clamp_min(0) / box
        spatial *= tent[:, None, None] * tent[None, :, None] * tent[None, None, :]
        symbol = torch.fft.rfftn(spatial).real
        del spatial
        radius2 = f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :h] ** 2
        floor = 1e-2 * float(symbol[radius2 <= (m / 2) ** 2].mean().clamp_min(1e-30))
        filt = 2.0 / symbol.clamp_min(floor)
        del symbol, radius2
        corr = gridding_correction(box, m, b.device, b.dtype)
        scale = 1.0 / m**3

        def precondition(r: torch.Tensor) -> torch.Tensor:
            padded = torch.fft.ifftshift(torch.nn.functional.pad(r * corr, (lo, m - box - lo) * 3), dim=dims)
            out = torch.fft.fftshift(torch.fft.irfftn(torch.fft.rfftn(padded) * filt, s=(m, m, m)), dim=dims)
            return out[lo : lo + box, lo : lo + box, lo : lo + box] * corr * scale

        x = _pcg(normal, precondition, b, n_iter, tol)
        return self._lowpass(x)

    def _lowpass(self, vol: torch.Tensor) -> torch.Tensor:
        """Remove shells beyond the cutoff (shell index round(|k|), as `fsc`; at Nyquist only the cube corners go)."""
        k2 = centered_coords(self.box, vol.device, torch.float64) ** 2
        keep = (k2[:, None, None] + k2[None, :, None] + k2[None, None, :]).sqrt().round() <= self.cutoff * self.box + 1e-9
        return ifft3c(fft3c(vol) * keep).real.to(vol.dtype)

    def shell_weights(self, half: int | None = None) -> torch.Tensor:
        """Mean CTF² weight per shell [N // 2 + 1] (shell i at i / N cycles/pixel), for `reg_from_fsc`."""
        return self._shell_means(self.fourier_grids(half)[1])

    def _shell_means(self, wt: torch.Tensor) -> torch.Tensor:
        """Mean per shell [N // 2 + 1] of a centred [M, M, M] grid."""
        shell = self._shells(wt.shape[-1]).reshape(-1)
        n = self.box // 2 + 1
        keep = shell < n
        sums = torch.zeros(n, dtype=wt.dtype, device=wt.device).index_add_(0, shell[keep], wt.reshape(-1)[keep])
        counts = torch.bincount(shell[keep], minlength=n).to(wt.dtype)
        return sums / counts.clamp_min(1)

    def _shells(self, m: int) -> torch.Tensor:
        """[M, M, M] shell index round(|k| / scale) in cycles per N box."""
        k2 = (centered_coords(m, self.device, torch.float32) * (self.box / padded_size(self.box, self.oversample))) ** 2
        r = k2[:, None, None] + k2[None, :, None] + k2[None, None, :]
        return r.sqrt_().round_().long()


def _pcg(normal, precondition, b: torch.Tensor, n_iter: int, tol: float) -> torch.Tensor:
    """Preconditioned conjugate gradients for normal(x) = b (SPD), starting from precondition(b)."""
    x = precondition(b)
    r = b - normal(x)
    z = precondition(r)
    p = z.clone()
    rz = (r.double() * z).sum()
    stop = tol * b.norm()
    for _ in range(n_iter):
        if r.norm() <= stop:
            break
        Ap = normal(p)
        alpha = (rz / (p.double() * Ap).sum()).to(b.dtype)
        x = x + alpha * p
        r = r - alpha * Ap
        z = precondition(r)
        rz_new = (r.double() * z).sum()
        p = z + (rz_new / rz).to(b.dtype) * p
        rz = rz_new
    return x


def reg_from_fsc(fsc: torch.Tensor, shell_weights: torch.Tensor, full_map: bool = False) -> torch.Tensor:
    """Per-shell Wiener term weight / SSNR with SSNR = FSC / (1 - FSC) (x 2 for the full map, RELION's tau² update).

    fsc, shell_weights [N // 2 + 1]; shells with FSC <= 0.001 get a large term (1000 x the weight).
    """
    f = fsc.to(shell_weights).clamp(1e-3, 1 - 1e-6)
    ssnr = f / (1 - f) * (2 if full_map else 1)
    return shell_weights / ssnr


def reconstruct_direct(
    batches: Iterable[ParticleBatch],
    box: int,
    oversample: float = 2.0,
    cutoff: float = 0.5,
    reg: float | torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One-call direct Fourier inversion of all batches (half-set ids ignored) -> map [N, N, N]."""
    rec = DirectReconstructor(box, oversample, cutoff, n_halves=1, device=device, dtype=dtype)
    for b in batches:
        rec.add(ParticleBatch(b.images, b.rotations, b.origins_px, b.ctf, None, b.fourier))
    return rec.volume(reg=reg)


def _hermitian_sum(x: torch.Tensor) -> torch.Tensor:
    """x(k) + conj(x(-k)) on a centred grid [M, M, M] (-k outside the grid counts as 0)."""
    m = x.shape[-1]
    lo = 2 * (m // 2) - (m - 1)  # 1 for even M (index 0 has no partner), 0 for odd M
    mirror = torch.zeros_like(x)
    mirror[lo:, lo:, lo:] = x[lo:, lo:, lo:].flip(0, 1, 2)
    return x + mirror.conj()
