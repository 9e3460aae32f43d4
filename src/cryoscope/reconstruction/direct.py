"""CTF-weighted direct Fourier inversion (RELION-style), streaming, with two half-sets at once.

For every particle the phase-corrected, CTF-multiplied transform CTF · T_o F is scattered into a
padded 3-D Fourier grid with the transpose of the projector's trilinear interpolation, and CTF²
into a weight grid. The map is F = num / (weight + reg) (Wiener), inverse transformed, cropped and
divided by the gridding correction. Grids hold a complex numerator and a real weight per voxel per half-set:
12 bytes x (2N + 3)^3 x 2 half-sets in float32 (about 420 MB at N = 128).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.fourier import centered_coords, ifft3c
from cryoscope.physics.projection import (
    fold_half_slices,
    grid_interior,
    grid_size,
    gridding_correction,
    padded_size,
    scatter_half_slices,
    slice_layout,
)
from cryoscope.reconstruction.batch import ParticleBatch


class DirectReconstructor:
    """Accumulates particles into `n_halves` Fourier grids; `volume()` gives the Wiener-filtered map.

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
        complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        self.num = torch.zeros(n_halves * self.size**3, dtype=complex_dtype, device=self.device)
        self.weight = torch.zeros(n_halves * self.size**3, dtype=dtype, device=self.device)
        self.count = torch.zeros(n_halves, dtype=torch.long)

    def add(self, batch: ParticleBatch) -> None:
        """Scatter one batch (its `half` ids choose the grid; all to grid 0 when None)."""
        if batch.images.shape[-1] != self.box:
            raise InvalidValueError(f"particle box {batch.images.shape[-1]} differs from reconstruction box {self.box}")
        F = batch.corrected_transforms(self.dtype).to(self.device, self.num.dtype)
        if batch.ctf is None:
            ctf2 = torch.ones(F.shape, dtype=self.dtype, device=self.device)
        else:
            ctf2 = batch.ctf.to(self.device, self.dtype) ** 2
        half = batch.half
        if half is not None:
            if half.min() < 0 or half.max() >= self.n_halves:
                raise InvalidValueError(f"half-set ids must be in [0, {self.n_halves - 1}]")
            half = half.to(self.device)
            self.count += torch.bincount(half.cpu().long(), minlength=self.n_halves)
        else:
            self.count[0] += F.shape[0]
        targets = [(fold_half_slices(F, self.layout), self.num), (fold_half_slices(ctf2, self.layout), self.weight)]
        scatter_half_slices(targets, batch.rotations.to(self.device, self.dtype), self.layout, self.size, half)

    def add_all(self, batches: Iterable[ParticleBatch]) -> "DirectReconstructor":
        """Stream an iterable of batches; returns self."""
        for batch in batches:
            self.add(batch)
        return self

    def fourier_grids(self, half: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hermitian-completed numerator (complex) and weights (real), each [M, M, M] centred.

        `half` selects one half-set; None sums all.
        """
        shape = (self.n_halves, self.size, self.size, self.size)
        num, wt = self.num.view(shape), self.weight.view(shape)
        num, wt = (num.sum(0), wt.sum(0)) if half is None else (num[half], wt[half])
        return _hermitian_sum(grid_interior(num)), _hermitian_sum(grid_interior(wt))

    def volume(self, half: int | None = None, reg: float | torch.Tensor | None = None) -> torch.Tensor:
        """Map [N, N, N] from num / (weight + reg).

        `reg`: Wiener term (1/SNR, 1/tau^2) in units of the CTF² weights: a float, or per-shell
        values [N // 2 + 1] (shell i = frequency i / N cycles/pixel, e.g. from `reg_from_fsc`);
        None uses 1e-3 x the mean positive weight. Frequencies beyond the cutoff are zero.
        """
        num, wt = self.fourier_grids(half)
        if reg is None:
            reg = 1e-3 * wt[wt > 0].mean() if (wt > 0).any() else 1.0
        m = num.shape[-1]
        shell = self._shells(m)
        if isinstance(reg, torch.Tensor) and reg.dim() == 1:
            table = torch.cat([reg.to(wt), reg.new_full((1,), float("inf")).to(wt)])
            reg = table[shell.clamp(max=reg.numel())]
        den = wt + reg
        F = torch.where((den > 0) & (shell <= self.cutoff * self.box), num / den.clamp_min(1e-30), torch.zeros_like(num))
        vol = ifft3c(F).real
        lo = m // 2 - self.box // 2
        vol = vol[lo : lo + self.box, lo : lo + self.box, lo : lo + self.box]
        return vol / gridding_correction(self.box, m, vol.device, vol.dtype)

    def shell_weights(self, half: int | None = None) -> torch.Tensor:
        """Mean CTF² weight per shell [N // 2 + 1] (shell i at i / N cycles/pixel), for `reg_from_fsc`."""
        _, wt = self.fourier_grids(half)
        shell = self._shells(wt.shape[-1]).reshape(-1)
        n = self.box // 2 + 1
        keep = shell < n
        sums = torch.zeros(n, dtype=wt.dtype, device=wt.device).index_add_(0, shell[keep], wt.reshape(-1)[keep])
        counts = torch.bincount(shell[keep], minlength=n).to(wt.dtype)
        return sums / counts.clamp_min(1)

    def _shells(self, m: int) -> torch.Tensor:
        """[M, M, M] shell index round(|k| / scale) in cycles per N box."""
        k = centered_coords(m, self.device, torch.float64) * (self.box / padded_size(self.box, self.oversample))
        kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
        return torch.sqrt(kx**2 + ky**2 + kz**2).round().long()


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
