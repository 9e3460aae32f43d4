"""Refinement by expectation-maximisation with full marginalisation over rotations and in-plane shifts.

One iteration, for each gold-standard half-set h independently (its particles scored only against its
own half-map, its poses backprojected only into its own grid):

- E-step (`likelihood.scoring`): log-likelihoods over a rotation grid x shift grid within the current
  resolution cutoff (frequency marching), posteriors, best pose, posterior spread, pruning.
- M-step: every kept pose (i, r, t) with weight w adds w · C_i · T_{+t} Y_i at the slice of rotation r
  and w · C_i^2 to the weights of a `reconstruction.direct.DirectReconstructor` (the weight enters as
  sqrt(w) on both the image and the CTF of an expanded `ParticleBatch`), and w |T_{+t} Y_i - C_i S_r|^2 to
  the per-shell noise sums (expected residual power under the posterior).
- Half-maps: solved with the default regulariser, then `n_wiener` times re-solved with a per-shell
  Wiener term from their FSC (`reg_from_fsc`, as in the known-pose workflow); they are the next
  references. The FSC = `fsc_threshold` crossing is the resolution, which becomes the next scoring
  cutoff; the full map is their FSC-weighted average (`halfmaps.fsc_weighted_average`).

Grids, coarse to fine: iteration 0 searches the global HEALPix grid of `healpix_order` (step
60 / 2**order degrees) and a square shift grid; iteration j >= 1 searches a local grid of step
step_0 / 2**j within `local_range_steps` steps around each particle's previous best rotation, and
shifts of step shift_step / 2**j within the same number of steps around its previous best shift.
Prior over poses: uniform on the searched grid. No point-group symmetry, no solvent mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.sampling import healpix_grid, healpix_step_deg, local_grid
from cryoscope.io.metadata import ParticleMetadata
from cryoscope.likelihood.data import ParticleSource, image_power_spectrum
from cryoscope.likelihood.noise import n_shells, noise_spectrum, shell_power_sums
from cryoscope.likelihood.scoring import (
    PoseEstimate,
    SignificantPoses,
    best_poses,
    pose_posterior,
    score_poses,
    shift_grid,
    significant_poses,
)
from cryoscope.particles import ParticleBatch
from cryoscope.physics.projection import fourier_volume, slice_fourier_volume
from cryoscope.physics.shift import translate
from cryoscope.reconstruction.direct import DirectReconstructor, reg_from_fsc
from cryoscope.reconstruction.halfmaps import fsc_weighted_average, random_half_sets
from cryoscope.validation.fsc import fsc, resolution_at

# Kept poses expanded per M-step chunk (each is one N x N complex image).
_POSE_CHUNK = 2048


@dataclass
class IterationStats:
    """What one iteration searched and found; cutoffs and resolution in cycles/pixel."""

    iteration: int
    cutoff: float
    reconstruction_cutoff: float
    resolution: float
    angular_step_deg: float
    n_rotations: int
    n_shifts: int
    mean_poses_kept: float
    median_angular_spread_deg: float


@dataclass
class RefinementResult:
    """State after an iteration: maps [N, N, N], half-map FSC [N // 2 + 1], resolution (cycles/pixel),
    per-particle best rotations [n, 3, 3], origins shifts_px [n, 2] (x, y, pixels), posterior spreads
    (degrees, pixels), noise spectrum sigma2 [N // 2 + 1], half-set ids [n], scoring cutoff for the next
    iteration, and the per-iteration history."""

    map: torch.Tensor
    half_maps: tuple[torch.Tensor, torch.Tensor]
    fsc_half: torch.Tensor
    resolution: float
    rotations: torch.Tensor
    shifts_px: torch.Tensor
    angular_spread_deg: torch.Tensor
    shift_spread_px: torch.Tensor
    sigma2: torch.Tensor
    half: torch.Tensor
    next_cutoff: float
    history: list[IterationStats] = field(default_factory=list)


def _maximise(
    rec: DirectReconstructor,
    noise: list[torch.Tensor],
    fvol: torch.Tensor,
    Y: torch.Tensor,
    C: torch.Tensor | None,
    rotations: torch.Tensor,
    shifts: torch.Tensor,
    sig: SignificantPoses,
    half: int,
) -> None:
    """M-step accumulation of the kept poses of one batch into `rec` and the noise sums [sums, counts]."""
    box = Y.shape[-1]
    for lo in range(0, sig.image.numel(), _POSE_CHUNK):
        sl = slice(lo, lo + _POSE_CHUNK)
        i, r, t, w = sig.image[sl], sig.rotation_index[sl], sig.shift_index[sl], sig.weight[sl].to(torch.float32)
        R = rotations[r] if rotations.dim() == 3 else rotations[i, r]
        o = shifts[t] if shifts.dim() == 2 else shifts[i, t]
        Ci = torch.ones(i.numel(), box, box, device=Y.device) if C is None else C[i]
        sq = w.sqrt()[:, None, None]
        ids = torch.full((i.numel(),), half, dtype=torch.long, device=Y.device)
        rec.add(ParticleBatch(Y[i] * sq, R.to(torch.float32), o.to(torch.float32), Ci * sq, ids, fourier=True))
        S = slice_fourier_volume(fvol, R.to(torch.float32), box, rec.cutoff)
        sums, counts = shell_power_sums(translate(Y[i], o.to(torch.float32)) - Ci * S, w)
        noise[0] += sums
        noise[1] += counts


def _search_grids(
    it: int, prev_R: torch.Tensor | None, prev_t: torch.Tensor | None, order: int,
    max_shift: float, shift_step: float, local_range_steps: float, device: torch.device,
) -> tuple[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], float, int, int]:
    """Per-batch grid builder (batch indices -> rotations, shifts), angular step, grid sizes."""
    step0 = healpix_step_deg(order)
    if it == 0 or prev_R is None:
        grid = healpix_grid(order, torch.float32, device)
        shifts = shift_grid(max_shift, shift_step, torch.float32, device)
        return (lambda b: (grid, shifts)), step0, grid.shape[0], shifts.shape[0]
    step = step0 / 2**it
    sstep = shift_step / 2**it
    offsets = shift_grid(local_range_steps * sstep, sstep, torch.float32, device)
    K = local_grid(torch.eye(3)[None], local_range_steps * step, step).shape[1]

    def build(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        R = local_grid(prev_R[b].to(device, torch.float64), local_range_steps * step, step).to(torch.float32)
        return R, prev_t[b].to(device)[:, None, :] + offsets

    return build, step, K, offsets.shape[0]


def refine(
    meta: ParticleMetadata,
    stack,
    initial_map: torch.Tensor,
    n_iter: int = 4,
    healpix_order: int = 1,
    max_shift: float = 3.0,
    shift_step: float = 1.0,
    initial_cutoff: float = 0.1,
    local_range_steps: float = 2.0,
    march_shells: int = 4,
    fsc_threshold: float = 0.143,
    rel_threshold: float = 1e-4,
    mass: float = 0.999,
    max_poses: int | None = 200,
    batch_size: int = 128,
    oversample: float = 2.0,
    n_wiener: int = 1,
    use_ctf: bool = True,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_iteration: Callable[[RefinementResult], None] | None = None,
) -> RefinementResult:
    """Gold-standard EM refinement of `initial_map` [N, N, N] (same frame and voxel size as the particles).

    meta: particle metadata (pixel size, CTF; poses are not used); stack: indexable by numpy index
    arrays -> images [m, N, N] (e.g. `io.mrc.ParticleStack`). Shifts in pixels; cutoffs in cycles/pixel:
    iteration 0 scores up to `initial_cutoff`, later ones up to the previous FSC resolution (never below
    `initial_cutoff`); reconstructions go `march_shells` shells beyond the scoring cutoff. Half-sets are
    a seeded random split. Each iteration costs 2 + 2 `n_wiener` `DirectReconstructor.volume` solves.
    `on_iteration` is called with the state after every iteration.
    """
    device = torch.device(device)
    n, box = meta.n, initial_map.shape[-1]
    if initial_map.dim() != 3 or len(set(initial_map.shape)) != 1:
        raise InvalidValueError(f"initial map must be cubic [N, N, N], got {tuple(initial_map.shape)}")
    if not (0 < initial_cutoff <= 0.5) or n_iter < 1:
        raise InvalidValueError(f"need 0 < initial_cutoff <= 0.5 cycles/pixel and n_iter >= 1, got {initial_cutoff}, {n_iter}")
    particles = ParticleSource(meta, stack, device, use_ctf)
    half = random_half_sets(n, seed)
    refs = [initial_map.to(device, torch.float32)] * 2
    sigma2 = image_power_spectrum(particles, batch_size)
    cutoff = initial_cutoff
    rotations = shifts = None
    history: list[IterationStats] = []
    result = None
    for it in range(n_iter):
        build, step, n_rot, n_shift = _search_grids(
            it, rotations, shifts, healpix_order, max_shift, shift_step, local_range_steps, device
        )
        recon_cutoff = min(0.5, cutoff + march_shells / box)
        rec = DirectReconstructor(box, oversample, recon_cutoff, n_halves=2, device=device)
        noise = [torch.zeros(n_shells(box), device=device), torch.zeros(n_shells(box), device=device)]
        new_R = torch.zeros(n, 3, 3)
        new_t = torch.zeros(n, 2)
        spread_a, spread_t = torch.zeros(n), torch.zeros(n)
        kept = 0
        for h in (0, 1):
            fvol = fourier_volume(refs[h], oversample)
            for b in torch.nonzero(half == h).flatten().split(batch_size):
                Y, C = particles.load(b)
                R_grid, t_grid = build(b)
                ll = score_poses(fvol, Y, C, R_grid, t_grid, sigma2, cutoff)
                post = pose_posterior(ll)
                est: PoseEstimate = best_poses(ll, R_grid, t_grid, post)
                sig = significant_poses(post, rel_threshold, mass, max_poses)
                _maximise(rec, noise, fvol, Y, C, R_grid, t_grid, sig, h)
                new_R[b], new_t[b] = est.rotations.cpu(), est.shifts.cpu()
                spread_a[b], spread_t[b] = est.angular_spread_deg.cpu().float(), est.shift_spread_px.cpu().float()
                kept += sig.image.numel()
        rotations, shifts = new_R, new_t
        h0, h1 = rec.volume(0), rec.volume(1)
        for _ in range(n_wiener):
            f = fsc(h0, h1)
            h0 = rec.volume(0, reg=reg_from_fsc(f, rec.shell_weights(0)))
            h1 = rec.volume(1, reg=reg_from_fsc(f, rec.shell_weights(1)))
        f = fsc(h0, h1)
        full = fsc_weighted_average(h0, h1, f)[0]
        res = resolution_at(f, fsc_threshold, box)[0]
        sigma2 = noise_spectrum(noise[0], noise[1])
        history.append(
            IterationStats(it, cutoff, recon_cutoff, res, step, n_rot, n_shift, kept / n, float(spread_a.median()))
        )
        cutoff = min(0.5, max(initial_cutoff, res))
        refs = [h0, h1]
        result = RefinementResult(
            full, (h0, h1), f, res, rotations.clone(), shifts.clone(), spread_a, spread_t, sigma2, half, cutoff, list(history)
        )
        if on_iteration is not None:
            on_iteration(result)
    return result


__all__ = ["IterationStats", "RefinementResult", "refine"]
