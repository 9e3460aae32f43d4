"""Expectation-maximisation over class, rotation and in-plane shift: refinement (K = 1) and 3-D classification (K > 1).

One iteration, for each gold-standard half-set h independently (its particles scored only against the
K half-h maps, their poses backprojected only into half-h grids):

- E-step (`likelihood.scoring`): log-likelihoods [n, K, R, T] over classes x a rotation grid x a shift grid
  within the current resolution cutoff (frequency marching), plus log class fractions; posteriors over
  (class, rotation, shift) jointly, best pose, posterior spread, class posterior, pruning.
- M-step: every kept (i, k, r, t) with weight w adds w · C_i · T_{+t} Y_i at the slice of rotation r, and
  w · C_i^2 to the weights, of class k's `reconstruction.direct.DirectReconstructor` (as folded half-slices,
  the shifts of one (i, k, r) summed first); with point-group symmetry every pose
  is added once per group element g as A g (weight w / |G|), so the maps come out symmetric. The expected
  residual power w |T_{+t} Y_i - C_i S_r|^2 goes to the per-shell noise sums; class fractions are the mean
  class posteriors.
- Half-maps: solved with the default (light Tikhonov) regulariser; their (unmasked) FSC is each class's FSC. Inside
  a soft spherical mask (`mask_radius`) and scaled per shell by that FSC (`halfmaps.masked_half_maps`), they score
  the next iteration. The FSC = `fsc_threshold` crossing is each class's resolution; the best class resolution
  plus `score_margin_shells` is the next scoring cutoff (one cutoff for all classes keeps their likelihoods
  comparable). Full maps are the FSC-weighted averages of the masked half-maps.

Grids, coarse to fine: iteration j searches the global HEALPix grid of order `healpix_order` + j (step
60 / 2**(order + j) degrees; restricted to one asymmetric unit of directions under symmetry; in-plane angles
scored by polar resampling and FFT, `likelihood.inplane`) while that step is at least `global_min_step_deg`,
with the square shift grid (±`max_shift` at `shift_step` around the box centre) at iteration 0, and after
it that square plus a fine local shift grid around each particle's previous origin (an origin misjudged at
low resolution is otherwise never corrected: on 10,000 ribosome particles at SNR 0.05, 98.8 % of the 7.7 %
of particles that ended > 30° off had origins > 1.5 px off), unless prior poses are given; later
iterations (or every iteration, from prior poses) search a local grid of
step step_0 / 2**j (at least `min_angular_step_deg`) within `local_range_steps` steps around each particle's
previous best rotation (of its best class), and shifts of step shift_step / 2**j (at least `min_shift_step`)
within as many steps around its previous best shift.

Classes start from one map: iteration 0 scores poses against it and assigns each particle to a random
class (seeded) for the M-step, RELION's random-subset initialisation; a class left with no particles is
reported (`IterationStats.empty_classes`), keeps its map and gets zero fraction. The half-sets are classified
independently, so each breaks the symmetry of equal starting classes with labels of its own: every M-step gives
half-set 2's classes the labels of half-set 1's that maximise the summed correlation of their half-maps.

Sharding: with a `distributed.DistContext` of world size > 1 every process handles its slice of each
half-set and the sufficient statistics (reconstructor sums, noise sums, class weights) are all-reduced,
the per-particle results gathered, so every process ends with the same state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cryoscope.distributed import (
    DistContext,
    all_reduce_sum_,
    gather_rows,
    shard_indices,
)
from cryoscope.errors import InvalidValueError
from cryoscope.geometry.sampling import healpix_step_deg, local_grid
from cryoscope.geometry.symmetry import asymmetric_unit_mask, symmetry_group
from cryoscope.likelihood.data import ParticleSource
from cryoscope.likelihood.inplane import (
    healpix_base_rotations,
    inplane_rotations,
    score_poses_inplane,
)
from cryoscope.likelihood.noise import n_shells, noise_spectrum, shell_power_sums
from cryoscope.likelihood.scoring import (
    best_poses,
    half_multiplicity,
    score_poses,
    SignificantPoses,
    shift_grid,
    significant_poses,
)
from cryoscope.physics.filters import soft_mask
from cryoscope.physics.projection import SliceLayout, fourier_volume, slice_fourier_volume
from cryoscope.physics.shift import phase_ramp, translate
from cryoscope.reconstruction.direct import DirectReconstructor
from cryoscope.reconstruction.halfmaps import masked_half_maps, random_half_sets
from cryoscope.validation.fsc import fsc, resolution_at, shell_frequencies
from cryoscope.validation.metrics import cross_correlation

# M-step chunk: at most this many (image, class, rotation) groups, and image x shift ramps, of one half-slice each.
_POSE_CHUNK = 2048


@dataclass
class EMSettings:
    """Search and reconstruction settings. Shifts in pixels, cutoffs in cycles/pixel, mask radius in pixels.

    healpix_order: global grid (step 60 / 2**order degrees); local_range_steps: half-width of local grids in
    grid steps; global_min_step_deg: iterations whose step is at least this search globally (RELION searches
    globally down to a fine step: a particle given a wrong pose by a coarse search is otherwise never recovered);
    min_angular_step_deg / min_shift_step: finest local steps (degrees / pixels; later iterations
    repeat the finest grid); local_sigmas / steps_per_sigma: local grids are sized by the previous iteration's
    posterior spreads (per axis sigma, `_axis_sigma`): they reach at least
    `local_sigmas` sigma from the previous pose, in steps no finer than sigma / `steps_per_sigma` (a window that
    truncates the posterior turns the M-step into near-hard assignment and costs resolution: measured on 10,000
    ribosome particles at SNR 0.05, a ±1° window around poses with sigma ~1.1° took the masked FSC 0.5 vs truth
    from 0.266 to 0.233 in two iterations); prior_sigma_deg: per-axis sigma of the prior poses' error (RELION's
    --sigma_ang), which sizes the first local grid from prior poses the same way (0: the scheduled grid); initial_cutoff: first scoring cutoff (and the lowest ever used); score_margin_shells:
    shells beyond the half-map FSC resolution that the next iteration scores (RELION's incr_size: the FSC-filtered
    references still carry pose information there); march_shells: shells beyond the scoring cutoff that the
    reconstructions keep; rel_threshold / mass / max_poses: pruning of
    negligible poses (`scoring.significant_poses`; max_poses caps only global searches);
    mask_radius: soft spherical mask on the references (None: 0.45 N); symmetry: point group (C1, Cn, Dn, T, O, I);
    max_cutoff: highest scoring cutoff (classification works best at limited resolution); once scoring reaches
    it, and in the last iteration, the maps are reconstructed to Nyquist; solver_iterations: conjugate-gradient steps per map solve.
    """

    n_iter: int = 4
    healpix_order: int = 1
    max_shift: float = 3.0
    shift_step: float = 1.0
    initial_cutoff: float = 0.1
    local_range_steps: float = 2.0
    global_min_step_deg: float = 7.5
    min_angular_step_deg: float = 0.5
    min_shift_step: float = 0.1
    local_sigmas: float = 3.0
    steps_per_sigma: float = 1.0
    prior_sigma_deg: float = 0.0
    score_margin_shells: int = 3
    march_shells: int = 4
    fsc_threshold: float = 0.143
    rel_threshold: float = 1e-4
    mass: float = 0.999
    max_poses: int | None = 32
    batch_size: int = 128
    oversample: float = 2.0
    mask_radius: float | None = None
    symmetry: str = "C1"
    max_cutoff: float = 0.5
    solver_iterations: int = 15

    def validate(self) -> None:
        if not (0 < self.initial_cutoff <= 0.5) or self.n_iter < 1 or self.batch_size < 1:
            raise InvalidValueError(
                f"need 0 < initial_cutoff <= 0.5 cycles/pixel, n_iter >= 1 and batch_size >= 1, "
                f"got {self.initial_cutoff}, {self.n_iter}, {self.batch_size}"
            )
        if not (self.min_angular_step_deg > 0 and self.global_min_step_deg > 0 and self.min_shift_step > 0 and self.score_margin_shells >= 0
                and self.local_sigmas >= 0 and self.steps_per_sigma > 0 and self.prior_sigma_deg >= 0):
            raise InvalidValueError(
                f"need positive steps and a non-negative score margin, got min_angular_step_deg={self.min_angular_step_deg}, "
                f"global_min_step_deg={self.global_min_step_deg}, min_shift_step={self.min_shift_step}, "
                f"score_margin_shells={self.score_margin_shells}, local_sigmas={self.local_sigmas}, steps_per_sigma={self.steps_per_sigma}, "
                f"prior_sigma_deg={self.prior_sigma_deg}"
            )
        symmetry_group(self.symmetry)


@dataclass
class IterationStats:
    """What one iteration searched and found; cutoffs and resolutions in cycles/pixel."""

    iteration: int
    cutoff: float
    reconstruction_cutoff: float
    resolution: list[float]
    angular_step_deg: float
    n_rotations: int
    n_shifts: int
    mean_poses_kept: float
    median_angular_spread_deg: float
    class_fractions: list[float]
    empty_classes: list[int]


@dataclass
class EMResult:
    """State after an iteration (also the resume point).

    maps [K, N, N, N] (FSC-weighted full maps); half_maps [2, K, N, N, N] (masked and FSC-filtered: the next references);
    fsc_half [K, N // 2 + 1]; resolution: per class (cycles/pixel); class_fractions [K];
    class_posterior [n, K]; per particle: rotations [n, 3, 3] and origins shifts_px [n, 2] (x, y, pixels)
    of the best pose, posterior spreads (degrees, pixels), best class; noise spectrum sigma2 [N // 2 + 1];
    half-set ids [n]; scoring cutoff of the next iteration; iterations done; history; unfiltered_half_maps
    [2, K, N, N, N]: the same half-maps lightly regularised, unmasked (RELION's *_unfil: what post-processing needs;
    None before the first M-step).
    """

    maps: torch.Tensor
    half_maps: torch.Tensor
    fsc_half: torch.Tensor
    resolution: list[float]
    class_fractions: torch.Tensor
    class_posterior: torch.Tensor
    rotations: torch.Tensor
    shifts_px: torch.Tensor
    angular_spread_deg: torch.Tensor
    shift_spread_px: torch.Tensor
    sigma2: torch.Tensor
    half: torch.Tensor
    next_cutoff: float
    iterations_done: int
    history: list[IterationStats] = field(default_factory=list)
    unfiltered_half_maps: torch.Tensor | None = None

    @property
    def map(self) -> torch.Tensor:
        """The first (for refinement: the only) class map [N, N, N]."""
        return self.maps[0]

    @property
    def best_class(self) -> torch.Tensor:
        """[n] class of highest posterior."""
        return self.class_posterior.argmax(-1)


def _axis_sigma(spread: torch.Tensor, n_axes: int) -> float:
    """Per-axis posterior spread that sizes the next local grids: the 0.9-quantile over particles of the rms spread
    `spread` [n] (over `n_axes` axes) / sqrt(n_axes). Posterior widths vary between particles (with defocus, view
    and noise), and a window of 3 median sigma cuts the widest ones (measured: 20-65 % of their mass)."""
    return float(torch.quantile(spread.double(), 0.9)) / n_axes**0.5


def _is_global(it: int, s: EMSettings, from_prior: bool) -> bool:
    """Whether iteration `it` searches the global grid (see `_search_grids`)."""
    return not from_prior and (it == 0 or healpix_step_deg(s.healpix_order) / 2**it >= s.global_min_step_deg)


def _local_extent(step: float, range_steps: float, sigma: float, s: EMSettings) -> tuple[float, float]:
    """Step and half-width of a local grid: the step is no finer than sigma / steps_per_sigma, the half-width at
    least range_steps steps and local_sigmas sigma (sigma: the previous posterior's per-axis spread, 0 if unknown)."""
    step = max(step, sigma / s.steps_per_sigma)
    return step, max(range_steps * step, s.local_sigmas * sigma)


def _search_grids(
    it: int, prev_R: torch.Tensor | None, prev_t: torch.Tensor | None, s: EMSettings, device: torch.device, from_prior: bool,
    sigma_deg: float = 0.0, sigma_px: float = 0.0,
) -> tuple[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], float, int, int, tuple[torch.Tensor, int] | None]:
    """Per-batch grid builder (particle indices -> rotations, shifts), angular step, grid sizes, and for a
    global grid its factorisation (base rotations [D, 3, 3], n_psi) for in-plane scoring by FFT.

    Iteration j searches at step step_0 / 2**j: globally (HEALPix order healpix_order + j) while that step is at
    least `global_min_step_deg` and the run did not start from prior poses, else locally around the previous pose.
    Shifts: the full grid at iteration 0, later a local grid of step shift_step / 2**j around the previous origin.
    Local grids are widened (and their steps coarsened) to the previous posterior's per-axis spread sigma_deg /
    sigma_px (`_local_extent`; 0: the scheduled grid).
    """
    step0 = healpix_step_deg(s.healpix_order)
    j = max(it, 1) if from_prior else it
    sstep, srange = _local_extent(max(s.shift_step / 2**j, s.min_shift_step), s.local_range_steps, sigma_px, s)
    offsets = shift_grid(srange, sstep, torch.float32, device)
    if _is_global(it, s, from_prior):
        base, n_psi = healpix_base_rotations(s.healpix_order + it, torch.float64, device)
        if s.symmetry.upper() != "C1":
            base = base[asymmetric_unit_mask(base[:, 2, :], s.symmetry)]  # viewing direction = third row of A
        base = base.to(torch.float32)
        grid = inplane_rotations(base, n_psi)
        if it == 0:
            shifts = shift_grid(s.max_shift, s.shift_step, torch.float32, device)
            return (lambda b: (grid, shifts)), step0, grid.shape[0], shifts.shape[0], (base, n_psi)
        square = shift_grid(s.max_shift, s.shift_step, torch.float32, device)

        def build_global(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            local = prev_t[b].to(device)[:, None, :] + offsets
            return grid, torch.cat([local, square.expand(local.shape[0], -1, -1)], 1)

        return build_global, step0 / 2**it, grid.shape[0], offsets.shape[0] + square.shape[0], (base, n_psi)
    step, half_width = _local_extent(max(step0 / 2**j, s.min_angular_step_deg), s.local_range_steps, sigma_deg, s)
    K = local_grid(torch.eye(3, dtype=torch.float64, device=device)[None], half_width, step).shape[1]

    def build(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        R = local_grid(prev_R[b].to(device, torch.float64), half_width, step).to(torch.float32)
        return R, prev_t[b].to(device)[:, None, :] + offsets

    return build, step, K, offsets.shape[0], None


def _score(fvol, Y, C, R_grid, t_grid, sigma2, cutoff, inplane: tuple[torch.Tensor, int] | None) -> torch.Tensor:
    """Log-likelihoods [n, R, T]: in-plane angles by polar FFT on the global grid, brute force on local grids."""
    if inplane is None:
        return score_poses(fvol, Y, C, R_grid, t_grid, sigma2, cutoff)
    base, n_psi = inplane
    ll = score_poses_inplane(fvol, Y, C, base, n_psi, t_grid, sigma2, cutoff)
    return ll.reshape(Y.shape[0], -1, ll.shape[-1])


class _Accumulator:
    """M-step sums of one iteration: K reconstructors (2 half-sets each), noise sums, class weights."""

    def __init__(self, n_classes: int, box: int, cutoff: float, s: EMSettings, group: torch.Tensor, device: torch.device):
        self.recs = [DirectReconstructor(box, s.oversample, cutoff, n_halves=2, device=device) for _ in range(n_classes)]
        self.noise = torch.zeros(2, n_shells(box), dtype=torch.float64, device=device)
        self.class_weight = torch.zeros(2, n_classes, dtype=torch.float64, device=device)  # per half-set
        self.group = group.to(device, torch.float32)
        self.box, self.cutoff = box, cutoff

    def add(self, fvols: list[torch.Tensor], Y, C, rotations, shifts, sig: SignificantPoses, n_rot: int, quantile, half: int) -> None:
        """Add the kept poses `sig` (rotation index = class * n_rot + rotation) of images Y [n, N, N] (CTFs C).

        Poses of one image, class and rotation share their slice, so their shifts are summed first: the
        rotation gets sum_t w_t C T_{+t} Y = C Y sum_t w_t T_{+t} (one matmul of weights and phase ramps,
        `_ramp_sums`) and weight sum_t w_t C^2 (exactly what adding each pose gives). The
        noise sums take one pose per image, drawn from its kept posterior at `quantile` [n] in [0, 1): an
        unbiased estimate of the expected residual power, for one slice per image.
        """
        i, w = sig.image, sig.weight.to(torch.float32)
        k, r, t = sig.rotation_index // n_rot, sig.rotation_index % n_rot, sig.shift_index
        self.class_weight[half].index_add_(0, k, sig.weight.double())
        n_img = Y.shape[0]
        C = torch.ones(n_img, self.box, self.box, device=Y.device) if C is None else C
        pick = posterior_draw(sig, n_img, quantile.to(Y.device))
        for c in k[pick].unique().tolist():
            p = pick[k[pick] == c]
            R = rotations[r[p]] if rotations.dim() == 3 else rotations[i[p], r[p]]
            o = shifts[t[p]] if shifts.dim() == 2 else shifts[i[p], t[p]]
            S = slice_fourier_volume(fvols[c], R.to(torch.float32), self.box, self.cutoff)
            sums, counts = shell_power_sums(translate(Y[i[p]], o.to(torch.float32)) - C[i[p]] * S)
            self.noise[0] += sums.double()
            self.noise[1] += counts.double()
        # data: one slice per (image, class, rotation) with its shifts folded into one weighted phase ramp; on the
        # Hermitian half of the slice (Y, C and the ramps are Hermitian: folding doubles the mirrored pixels)
        layout = self.recs[0].layout
        mult = half_multiplicity(layout).to(torch.float32)
        Yh, Ch = Y.reshape(n_img, -1)[:, layout.computed] * mult, C.reshape(n_img, -1)[:, layout.computed]
        n_cls = len(self.recs)
        uniq, gid = torch.unique((i * n_cls + k) * n_rot + r, return_inverse=True)  # groups, image-major
        gi, gk, gr = uniq // (n_cls * n_rot), (uniq // n_rot) % n_cls, uniq % n_rot
        W = torch.zeros(uniq.numel(), device=Y.device).index_add_(0, gid, w)
        n_groups = torch.bincount(gi, minlength=n_img)
        first = torch.cat([n_groups.new_zeros(1), n_groups.cumsum(0)]).tolist()
        step = max(1, _POSE_CHUNK // max(1, int(n_groups.max()), shifts.shape[-2]))
        for lo in range(0, n_img, step):
            hi = min(n_img, lo + step)
            g = slice(first[lo], first[hi])
            sel = torch.nonzero((i >= lo) & (i < hi)).flatten()
            ramps = _ramp_sums(gid[sel] - first[lo], t[sel], w[sel], shifts if shifts.dim() == 2 else shifts[lo:hi], gi[g] - lo, layout)
            gR = rotations[gr[g]] if rotations.dim() == 3 else rotations[gi[g], gr[g]]
            c = Ch[gi[g]]
            self._add_symmetric(Yh[gi[g]] * ramps * c, c * c * mult * W[g, None], gR.to(torch.float32), gk[g], half)

    def _add_symmetric(self, values: torch.Tensor, ctf2: torch.Tensor, R: torch.Tensor, cls: torch.Tensor, half: int) -> None:
        """Add folded half-slices (values and CTF², `DirectReconstructor.add_half_slices`) at rotations R to their
        classes' half-set `half`; with point-group symmetry every slice is added once per group element g as R g
        with weight 1 / |G|."""
        G = self.group
        g = G.shape[0]
        if g > 1:
            values, ctf2 = values.repeat_interleave(g, 0) / g, ctf2.repeat_interleave(g, 0) / g
        for c in cls.unique().tolist():
            m = (cls == c).repeat_interleave(g)
            Rg = (R[cls == c][:, None] @ G).reshape(-1, 3, 3)
            ids = torch.full((Rg.shape[0],), half, dtype=torch.long, device=values.device)
            self.recs[c].add_half_slices(values[m], ctf2[m], Rg, ids)

    def tensors(self) -> list[torch.Tensor]:
        """Every sum, for an all-reduce across processes."""
        out = [self.noise, self.class_weight]
        for rec in self.recs:
            out += [rec.sums.rows, rec.count]
        return out


def _ramp_sums(row: torch.Tensor, t: torch.Tensor, w: torch.Tensor, shifts: torch.Tensor, image: torch.Tensor,
               layout: SliceLayout) -> torch.Tensor:
    """Per group (image, class, rotation) the weighted sum of its kept shifts' phase ramps, sum_t w_t T_{+t}, on
    the half-slice pixels of `layout` [G, P] (complex): Y sum_t w_t T_{+t} is the sum of the translated images.
    Kept poses: group `row` [m], shift index `t` [m] and weight `w` [m]; shifts [T, 2] shared or [n, T, 2] per
    image (for the n images of the chunk; `image` [G], sorted, is each group's image among them). One (batched)
    real matmul of the dense group x shift weights with the shifts' ramps."""
    n_g, n_t = image.numel(), shifts.shape[-2]
    dense = torch.zeros(n_g, n_t, dtype=torch.float32, device=w.device).index_put_((row, t), w, accumulate=True)
    ramps = phase_ramp(shifts.to(torch.float32), layout.box).flatten(-2)[..., layout.computed]
    ramps = torch.view_as_real(ramps).flatten(-2)  # [(n,) T, 2P]
    if shifts.dim() == 2:
        return torch.view_as_complex((dense @ ramps).reshape(n_g, -1, 2))
    per_image = torch.bincount(image, minlength=shifts.shape[0])
    rank = torch.arange(n_g, device=w.device) - (per_image.cumsum(0) - per_image)[image]  # position among its image's groups
    padded = torch.zeros(shifts.shape[0], int(per_image.max()), n_t, dtype=torch.float32, device=w.device)
    padded[image, rank] = dense
    return torch.view_as_complex(torch.bmm(padded, ramps)[image, rank].reshape(n_g, -1, 2))


def posterior_draw(sig: SignificantPoses, n_images: int, quantile: torch.Tensor) -> torch.Tensor:
    """[n_images] indices into the kept poses `sig` (listed image by image, weights summing to 1 per image): for
    each image the pose at `quantile` [n_images] in [0, 1) of its cumulative posterior (inverse-CDF draw)."""
    n_kept = torch.bincount(sig.image, minlength=n_images)
    first = n_kept.cumsum(0) - n_kept
    below = (sig.weight.double().cumsum(0) - sig.image.double()) <= quantile.double()[sig.image]
    return first + torch.minimum(torch.zeros_like(n_kept).index_add_(0, sig.image, below.long()), n_kept - 1)


def _noise_quantile(particles: torch.Tensor, it: int) -> torch.Tensor:
    """[m] low-discrepancy numbers in [0, 1) from global particle indices and the iteration (the same on any
    sharding): which kept pose of each particle enters the noise sums."""
    golden = 0.6180339887498949
    return torch.frac((particles.double() + 1) * golden + it * 0.7548776662466927)


def _initial_state(
    particles: ParticleSource, initial_maps: torch.Tensor, s: EMSettings, seed: int, ctx: DistContext, half: torch.Tensor | None
) -> EMResult:
    """Iteration-0 state: references = the initial maps in both half-sets (`half` [n] 0/1, or random from `seed`),
    sigma2 = the image power spectrum."""
    n, K, box = particles.n, initial_maps.shape[0], initial_maps.shape[-1]
    if half is None:
        half = random_half_sets(n, seed)
    elif half.shape != (n,) or not bool(((half == 0) | (half == 1)).all()):
        raise InvalidValueError(f"half-sets must be [{n}] values 0 or 1, got shape {tuple(half.shape)}")
    sums, counts = particles.power_spectrum(shard_indices(torch.arange(n, device="cpu"), ctx), s.batch_size)
    sc = torch.stack([sums.double(), counts.double()])
    all_reduce_sum_([sc], ctx)
    sigma2 = noise_spectrum(sc[0], sc[1]).float()
    maps = initial_maps.to(particles.device, torch.float32)
    return EMResult(
        maps=maps, half_maps=torch.stack([maps, maps]), fsc_half=torch.zeros(K, n_shells(box), device="cpu"),
        resolution=[0.0] * K, class_fractions=torch.full((K,), 1.0 / K, device="cpu"),
        class_posterior=torch.full((n, K), 1.0 / K, device="cpu"), rotations=torch.zeros(n, 3, 3, device="cpu"),
        shifts_px=torch.zeros(n, 2, device="cpu"), angular_spread_deg=torch.zeros(n, device="cpu"),
        shift_spread_px=torch.zeros(n, device="cpu"), sigma2=sigma2, half=half, next_cutoff=s.initial_cutoff,
        iterations_done=0,
    )


def expectation_maximization(
    particles: ParticleSource,
    initial_maps: torch.Tensor,
    settings: EMSettings | None = None,
    prior_rotations: torch.Tensor | None = None,
    prior_shifts_px: torch.Tensor | None = None,
    seed: int = 0,
    ctx: DistContext | None = None,
    state: EMResult | None = None,
    on_iteration: Callable[[EMResult], None] | None = None,
    half: torch.Tensor | None = None,
) -> EMResult:
    """Gold-standard EM of K maps from `initial_maps` [K, N, N, N] (or one map [N, N, N]) in the particles' frame.

    K = 1 is refinement, K > 1 classification (module docstring). prior_rotations [n, 3, 3] /
    prior_shifts_px [n, 2] (e.g. from ab-initio or a consensus refinement) replace the global search of
    iteration 0 by a local one. `state` resumes from an `EMResult` passed to `on_iteration` (e.g. loaded
    from a checkpoint): the remaining iterations then give the same result as an uninterrupted run. `half` [n] (0/1,
    e.g. a STAR file's rlnRandomSubset - 1) fixes the half-sets; by default they are drawn from `seed`.
    """
    s = settings or EMSettings()
    s.validate()
    device = particles.device
    ctx = ctx or DistContext(0, 1, device)
    maps0 = initial_maps[None] if initial_maps.dim() == 3 else initial_maps
    if maps0.dim() != 4 or len(set(maps0.shape[1:])) != 1:
        raise InvalidValueError(f"initial maps must be [N, N, N] or [K, N, N, N], got {tuple(initial_maps.shape)}")
    K, box = maps0.shape[0], maps0.shape[-1]
    n = particles.n
    half = None if half is None else half.cpu()  # per-particle state (half-sets, poses) is held on the CPU
    st = state or _initial_state(particles, maps0, s, seed, ctx, half)
    if st.maps.shape != maps0.shape or st.half.numel() != n:
        raise InvalidValueError("the resumed state does not match these particles and maps")
    group = symmetry_group(s.symmetry, torch.float32)
    mask = soft_mask(box, s.mask_radius or 0.45 * box, edge_width=0.05 * box, ndim=3, device=device)
    have_prior = prior_rotations is not None
    if have_prior and (prior_rotations.shape != (n, 3, 3) or prior_shifts_px is None or prior_shifts_px.shape != (n, 2)):
        raise InvalidValueError(f"prior poses must be rotations [{n}, 3, 3] with shifts [{n}, 2] pixels")
    random_start = K > 1 and st.iterations_done == 0 and bool((maps0 == maps0[:1]).all())
    for it in range(st.iterations_done, s.n_iter):
        if it == 0:
            prev_R, prev_t = (prior_rotations.float(), prior_shifts_px.float()) if have_prior else (None, None)
        else:
            prev_R, prev_t = st.rotations, st.shifts_px
        # posterior widths size the local grids only after a local iteration: a global one's spreads include the
        # distant modes of ambiguous particles (measured: 0.9-quantile 32° after a 15° search, median 9°)
        local_before = it > 0 and not _is_global(it - 1, s, have_prior)
        sigma_deg = _axis_sigma(st.angular_spread_deg, 3) if local_before else s.prior_sigma_deg if have_prior and it == 0 else 0.0
        sigma_px = _axis_sigma(st.shift_spread_px, 2) if local_before else 0.0
        build, step, n_rot, n_shift, inplane = _search_grids(it, prev_R, prev_t, s, device, have_prior, sigma_deg, sigma_px)
        cutoff = st.next_cutoff
        cap = s.max_poses if inplane is not None else None  # local grids are sized to the posterior: keep its mass
        # the last iteration reconstructs to Nyquist (as RELION's final iteration), so the written maps and the half-map
        # FSC are not cut at the marching limit
        last = it == s.n_iter - 1
        recon_cutoff = 0.5 if cutoff >= s.max_cutoff or last else min(0.5, cutoff + s.march_shells / box)
        acc = _Accumulator(K, box, recon_cutoff, s, group, device)
        log_prior = st.class_fractions.to(device).clamp_min(1e-30).log()
        # per-particle results are held on the CPU (indexed by the CPU particle indices `b`)
        out_R, out_t = torch.zeros(n, 3, 3, device="cpu"), torch.zeros(n, 2, device="cpu")
        out_sa, out_st = torch.zeros(n, device="cpu"), torch.zeros(n, device="cpu")
        out_cls = torch.zeros(n, K, device="cpu")
        kept = torch.zeros(1, dtype=torch.float64, device="cpu")
        mine = []
        g_assign = torch.Generator(device="cpu").manual_seed(seed + 1)
        assign = torch.randint(K, (n,), generator=g_assign, device="cpu") if random_start and it == 0 else None
        for h in (0, 1):
            fvols = [fourier_volume(st.half_maps[h, k].to(device), s.oversample) for k in range(K)]
            idx_h = shard_indices(torch.nonzero(st.half == h).flatten(), ctx)
            mine.append(idx_h)
            for b in idx_h.split(s.batch_size):
                Y, C = particles.load(b)
                R_grid, t_grid = build(b)
                ll = torch.stack([_score(fvols[k], Y, C, R_grid, t_grid, st.sigma2, cutoff, inplane) for k in range(K)], 1)
                ll = ll + log_prior[None, :, None, None]
                m, Rn, T = ll.shape[0], ll.shape[2], ll.shape[3]
                post = torch.softmax(ll.reshape(m, -1), -1).reshape(m, K, Rn, T)
                cls_post = post.sum((2, 3))
                best_k = cls_post.argmax(-1)
                ll_best = ll[torch.arange(m, device=ll.device), best_k]
                est = best_poses(ll_best, R_grid, t_grid)
                if assign is not None:  # random-subset start: poses from the common map, classes at random
                    one_hot = torch.zeros_like(post)
                    one_hot[torch.arange(m, device=post.device), assign[b].to(post.device)] = post.sum(1)
                    post = one_hot
                sig = significant_poses(post.reshape(m, K * Rn, T), s.rel_threshold, s.mass, cap)
                acc.add(fvols, Y, C, R_grid, t_grid, sig, Rn, _noise_quantile(b, it), h)
                out_R[b], out_t[b] = est.rotations.cpu(), est.shifts.cpu()
                out_sa[b], out_st[b] = est.angular_spread_deg.cpu().float(), est.shift_spread_px.cpu().float()
                out_cls[b] = cls_post.cpu().float()
                kept += sig.image.numel()
        all_reduce_sum_([*acc.tensors(), kept], ctx)
        mine_idx = torch.cat(mine)
        out_R, out_t, out_sa, out_st, out_cls = (
            gather_rows(x[mine_idx], mine_idx, n, ctx) for x in (out_R, out_t, out_sa, out_st, out_cls)
        )
        st = _maximization(st, acc, mask, s, it, cutoff, recon_cutoff, step, n_rot, n_shift, float(kept) / n,
                           out_R, out_t, out_sa, out_st, out_cls)
        if on_iteration is not None:
            on_iteration(st)
    return st


def _maximization(
    st: EMResult, acc: _Accumulator, mask: torch.Tensor, s: EMSettings, it: int, cutoff: float, recon_cutoff: float,
    step: float, n_rot: int, n_shift: int, kept: float, R, t, spread_a, spread_t, cls_post,
) -> EMResult:
    """New maps, resolutions, noise spectrum and class fractions from the reduced sums."""
    box, n_cg = acc.box, s.solver_iterations
    filled = [bool((rec.count > 0).all()) and bool((acc.class_weight[:, k] > 0).all()) for k, rec in enumerate(acc.recs)]
    solved = [[rec.volume(h, n_iter=n_cg) if ok else None for rec, ok in zip(acc.recs, filled)] for h in (0, 1)]
    if len(acc.recs) > 1 and all(filled):
        perm = _matched_half_labels(solved[0], solved[1], mask)
        cls_post = _relabel_half(acc, solved, perm, cls_post, st.half)
    fractions = (acc.class_weight.sum(0) / acc.class_weight.sum().clamp_min(1e-30)).float().cpu()
    halves, fulls, fscs, res, empty = st.half_maps.clone(), st.maps.clone(), st.fsc_half.clone(), list(st.resolution), []
    unfiltered = halves.clone() if st.unfiltered_half_maps is None else st.unfiltered_half_maps.clone()
    for k, ok in enumerate(filled):
        if not ok:
            empty.append(k)
            fractions[k] = 0.0
            continue
        h0, h1 = solved[0][k], solved[1][k]
        unfiltered[0, k], unfiltered[1, k] = h0, h1
        # The FSC of these lightly regularised, unmasked half-maps is the resolution and sets the filter. Not
        # the FSC of filtered or masked maps: their weak shells are dominated by content common to both
        # halves (shrunk values, mask leakage of the low frequencies): measured 0.9 where this FSC and the truth
        # FSC are 0.0-0.3, which sent the scoring cutoff to Nyquist.
        f = _reconstructed_fsc(h0, h1, acc.cutoff)
        halves[0, k], halves[1, k], fulls[k] = masked_half_maps(h0, h1, mask, f)
        fscs[k] = f.float().cpu()
        res[k] = min(resolution_at(f, s.fsc_threshold, box)[0], acc.cutoff)  # no claim beyond the reconstructed shells
    sigma2 = noise_spectrum(acc.noise[0], acc.noise[1]).float().cpu()
    stats = IterationStats(
        it, cutoff, recon_cutoff, res, step, n_rot, n_shift, kept, float(spread_a.median()),
        [float(x) for x in fractions], empty,
    )
    live = [r for k, r in enumerate(res) if k not in empty] or [s.initial_cutoff]
    next_cutoff = min(s.max_cutoff, max(s.initial_cutoff, max(live) + s.score_margin_shells / box))
    return EMResult(
        maps=fulls, half_maps=halves, fsc_half=fscs, resolution=res, class_fractions=fractions,
        class_posterior=cls_post, rotations=R, shifts_px=t, angular_spread_deg=spread_a, shift_spread_px=spread_t,
        sigma2=sigma2, half=st.half, next_cutoff=next_cutoff, iterations_done=it + 1, history=[*st.history, stats],
        unfiltered_half_maps=unfiltered,
    )


def _matched_half_labels(maps0: list[torch.Tensor], maps1: list[torch.Tensor], mask: torch.Tensor) -> list[int]:
    """perm with half-set 2's class perm[k] the same state as half-set 1's class k: the assignment maximising the
    summed masked correlation of the half-maps [N, N, N]. The half-sets are classified independently, so when the
    classes start equal (random-subset start) each half-set breaks the symmetry with its own labels."""
    from scipy.optimize import linear_sum_assignment

    cc = torch.stack([torch.stack([cross_correlation(a, b, mask) for b in maps1]) for a in maps0])
    return linear_sum_assignment(-cc.double().cpu().numpy())[1].tolist()  # rows come back as 0..K-1


def _relabel_half(acc: _Accumulator, solved: list[list[torch.Tensor]], perm: list[int], cls_post: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """Give half-set 2's class perm[k] the label k: its reconstruction sums, counts, class weight, solved map
    (`solved[1]`, in place) and the class posteriors of its particles [n, K] (returned)."""
    if perm == list(range(len(perm))):
        return cls_post
    cells = acc.recs[0].sums.rows.shape[0] // 2
    rows = [rec.sums.rows[cells:].clone() for rec in acc.recs]
    counts = [int(rec.count[1]) for rec in acc.recs]
    for k, rec in enumerate(acc.recs):
        rec.sums.rows[cells:] = rows[perm[k]]
        rec.count[1] = counts[perm[k]]
    acc.class_weight[1] = acc.class_weight[1, perm]
    solved[1][:] = [solved[1][j] for j in perm]
    out = cls_post.clone()
    second = half == 1
    out[second] = cls_post[second][:, perm]
    return out


def _reconstructed_fsc(h0: torch.Tensor, h1: torch.Tensor, cutoff: float) -> torch.Tensor:
    """FSC of two half-maps [N, N, N], 0 in shells beyond `cutoff` (cycles/pixel): those hold no data, only
    rounding residue, whose FSC is noise (and would set their filter at random)."""
    f = fsc(h0, h1)
    return torch.where(shell_frequencies(h0.shape[-1], f.device, f.dtype) > cutoff + 1e-9, torch.zeros_like(f), f)


def refine(particles: ParticleSource, initial_map: torch.Tensor, settings: EMSettings | None = None, **kw) -> EMResult:
    """Gold-standard refinement of one map [N, N, N] (`expectation_maximization` with K = 1)."""
    if initial_map.dim() != 3:
        raise InvalidValueError(f"refinement takes one map [N, N, N], got {tuple(initial_map.shape)}")
    return expectation_maximization(particles, initial_map, settings, **kw)


def classify(
    particles: ParticleSource, initial_map: torch.Tensor, n_classes: int, settings: EMSettings | None = None, **kw
) -> EMResult:
    """3-D classification into `n_classes` maps, all started from `initial_map` [N, N, N] or given as [K, N, N, N]."""
    if n_classes < 1:
        raise InvalidValueError(f"need at least one class, got {n_classes}")
    maps = initial_map if initial_map.dim() == 4 else initial_map[None].expand(n_classes, -1, -1, -1).clone()
    if maps.shape[0] != n_classes:
        raise InvalidValueError(f"{maps.shape[0]} initial maps for {n_classes} classes")
    return expectation_maximization(particles, maps, settings, **kw)


def state_dict(result: EMResult) -> dict:
    """Checkpointable dict of tensors and plain values."""
    d = {k: getattr(result, k) for k in EMResult.__dataclass_fields__ if k != "history"}
    d["history"] = [vars(h) for h in result.history]
    return d


def from_state_dict(d: dict) -> EMResult:
    """Inverse of `state_dict`."""
    kw = {k: v for k, v in d.items() if k != "history"}
    return EMResult(**kw, history=[IterationStats(**h) for h in d["history"]])


__all__ = [
    "EMResult",
    "EMSettings",
    "IterationStats",
    "classify",
    "expectation_maximization",
    "from_state_dict",
    "posterior_draw",
    "refine",
    "state_dict",
]
