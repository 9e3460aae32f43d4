"""Exact component assignments of the counts of binned images (thesis eq. C.27), all images at once.

On a pixel grid an isotropic 2-D Gaussian is separable: w_k N(x, y | c_k, 1/s) ∝ w_k g_k(y) h_k(x). So every
pixel's responsibilities are available without truncation. Components form a three-level tree (b1 groups of b2
leaves of b3 components, each about K^(1/3); component k is in leaf k mod L of the L = b1 b2 leaves, leaf l in
group l mod b1). The per-pixel mass of every leaf, T[p, y, x, leaf] = Σ_{k∈leaf} g_k(y) h_k(x), is b3 outer
products, and the group masses are sums of it. Each count then descends the tree by inverse CDF: its group, its
leaf, and its component among the leaf's b3 products g_k(y) h_k(x). One uniform (in the compute dtype, float32 by
default, like the masses) serves all three levels (its position inside the chosen bin is again uniform). The work
per sweep is O(P K N²) multiply-adds for T and O(counts · K^(1/3)) for the draws, against O(counts · K) for a dense
evaluation. Factors, masses (with the log-likelihood) and the descent are fused kernels (`cryoscope.fusion`).

The 1-D factors are scaled per image row/column (the largest factor is 1), which keeps them finite far from
the mixture. Factors below `_floor` (the square root of the smallest normal number) are set to 0, so that no product
or sum is subnormal (subnormal arithmetic made the descent 1.5x slower). The mass so dropped from a pixel is below
K · floor; a pixel whose mass is not above `_min_mass` (where that drop could exceed a rounding error) is evaluated
densely in log space (`assignments`), as is one whose mass underflows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryoscope.bayes.assignments import component_logits, sample_split
from cryoscope.fusion import fused
from cryoscope.physics.fourier import centered_coords

_U_MAX = 1.0 - 2.0**-20  # uniforms are kept below 1 so that u · total < total: bins of zero mass are never drawn
_EXACT_BLOCK = 2**22  # pixel-component pairs per block of the exact (log-space) evaluation


@dataclass
class PixelCounts:
    """The occupied pixels of P binned images of edge `box`: image, row (y) and column (x) index and count [R] each;
    the dense counts [P, N, N]; and per single count (C = total counts): its pixel `count_row` [C], its image and
    its pixel, row and column as flat int32 offsets `count_index` [4, C] (image, (image N + y) N + x, image N + x,
    image N + y) and `count_values` [3, C] = rows x, y, x² + y² of its pixel centre (Å, about pixel N // 2)."""

    image: torch.Tensor
    iy: torch.Tensor
    ix: torch.Tensor
    counts: torch.Tensor
    dense: torch.Tensor
    count_row: torch.Tensor
    count_index: torch.Tensor
    count_values: torch.Tensor
    box: int
    pixel_size: float

    @staticmethod
    def from_counts(counts: torch.Tensor, pixel_size: float) -> PixelCounts:
        """From counts [P, N, N] (int64, C order: y then x)."""
        n = counts.shape[-1]
        p, iy, ix = (counts > 0).nonzero(as_tuple=True)
        c = counts[p, iy, ix]
        row = torch.repeat_interleave(torch.arange(c.numel(), device=counts.device), c)
        grid = centered_coords(n, counts.device, torch.float64) * pixel_size
        x, y = grid[ix[row]], grid[iy[row]]
        values = torch.stack([x, y, x * x + y * y])
        img, cy, cx = p[row], iy[row], ix[row]
        index = torch.stack([img, (img * n + cy) * n + cx, img * n + cx, img * n + cy]).to(torch.int32)
        return PixelCounts(p, iy, ix, c, counts, row, index, values, n, float(pixel_size))

    @property
    def points(self) -> torch.Tensor:
        """Pixel centres [R, 2] (x, y; Å about pixel N // 2)."""
        grid = centered_coords(self.box, self.counts.device, torch.float64) * self.pixel_size
        return torch.stack([grid[self.ix], grid[self.iy]], -1)


@dataclass
class ImageStats:
    """Per (image, component): counts N [P, K], sums of the 2-D pixel centres S [P, K, 2] (x, y; Å) and of their
    squared norms Q [P, K]; and log p(D | θ) = Σ_j y_j log Σ_k w_k N(x_j | c_k, 1/s) (densities per Å²)."""

    n: torch.Tensor
    s: torch.Tensor
    q: torch.Tensor
    log_likelihood: torch.Tensor


def _level_sizes(k: int) -> tuple[int, int, int]:
    """Branching (b1, b2, b3) of the three-level component tree, about K^(1/3) each, b1 b2 b3 >= K."""
    b = max(1, math.ceil(k ** (1 / 3) - 1e-9))
    return -(-k // (b * b)), b, b


def _floor(dtype: torch.dtype) -> float:
    """Factors below this are set to 0: a product of two factors at or above it is a normal number."""
    return math.sqrt(torch.finfo(dtype).tiny)


def _min_mass(dtype: torch.dtype, k: int) -> float:
    """A pixel mass above this is exact to rounding although factors below `_floor` were dropped (at most K of
    them, each term below the floor)."""
    return _floor(dtype) * k / torch.finfo(dtype).eps


def _flushed(f: torch.Tensor) -> torch.Tensor:
    """f with values below `_floor` set to 0."""
    return torch.where(f < _floor(f.dtype), 0.0, f)


def _axis_factors(centres: torch.Tensor, grid: torch.Tensor, precision: torch.Tensor, b3: int):
    """1-D factors exp(-s (x - c)² / 2) [P, N, b3, leaves] (component k = j · leaves + leaf at [..., j, leaf]) for
    centre coordinates [P, leaves · b3] along one axis, scaled so that the largest over the components is 1 at every
    grid line (those below `_floor` are 0), and the log of the scales [P, N]."""
    c = centres.reshape(centres.shape[0], 1, b3, -1)  # [P, 1, b3, leaves]
    e = -0.5 * precision * (grid[None, :, None, None] - c) ** 2
    top = e.amax((2, 3), keepdim=True)
    return _flushed(torch.exp(e - top)), top.reshape(centres.shape[0], -1)


@fused
def _factors(cx: torch.Tensor, cy: torch.Tensor, weights: torch.Tensor, grid: torch.Tensor, precision: torch.Tensor,
             b3: int):
    """h along x and g = w · factor along y, [P, N, b3, leaves] each, for centre coordinates cx, cy [P, b3 · leaves]
    (each contiguous), and their log scales [P, N]."""
    hx, top_x = _axis_factors(cx, grid, precision, b3)
    gy, top_y = _axis_factors(cy, grid, precision, b3)
    return hx, _flushed(gy * weights.reshape(b3, -1)), top_x, top_y


@fused
def _masses(hx: torch.Tensor, gy: torch.Tensor, top_x: torch.Tensor, top_y: torch.Tensor, counts: torch.Tensor,
            norm: torch.Tensor, b1: int, min_mass: float):
    """Per pixel the mass of every leaf, T [P, N (y), N (x), leaves] = Σ_j g_j(y) h_j(x) over the leaf's components,
    and of every group [P, N, N, b1]. Leaf l belongs to group l mod b1, so a group's mass is a sum of b2 vectors of
    b1 consecutive leaves (a strided reduction within b1 leaves vectorises poorly: measured 3.5 against 2.0 ms).
    Also which pixels are `good` [P, N, N] (a mass above `min_mass` in the scaled factors), Σ_j y_j log p(x_j) over
    them for counts [P, N, N] (float64; `norm` = log(s / 2π)) and the number of occupied pixels that are not good."""
    leaf = gy[:, :, None, 0] * hx[:, None, :, 0]
    for j in range(1, hx.shape[2]):
        leaf = leaf + gy[:, :, None, j] * hx[:, None, :, j]
    blocks = leaf.reshape(*leaf.shape[:3], -1, b1)
    group = blocks[..., 0, :]
    for j in range(1, blocks.shape[3]):
        group = group + blocks[..., j, :]
    total = group.sum(-1)
    good = total > min_mass
    log_mass = torch.log(torch.where(good, total, 1.0)).double() + top_x[:, None, :].double()
    log_mass = log_mass + top_y[:, :, None].double()
    loglik = torch.where(good, counts * (log_mass + norm), 0.0).sum()
    return leaf, group, good, loglik, ((counts > 0) & ~good).sum()


def _pick(masses: list[torch.Tensor], u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse CDF over bins with masses [C] each for uniforms u [C] in [0, 1): the first bin whose running sum
    exceeds u · total, and the position of u · total inside that bin (a fresh uniform; NaN where the total is 0)."""
    run = [masses[0]]
    for m in masses[1:]:
        run.append(run[-1] + m)
    target = u * run[-1]
    index = torch.zeros_like(u, dtype=torch.int32)
    below = torch.zeros_like(u)
    chosen = masses[0]
    for j, r in enumerate(run[:-1]):
        passed = r <= target
        index = index + passed.to(torch.int32)
        below = torch.where(passed, r, below)
        chosen = torch.where(passed, masses[j + 1], chosen)
    return index, ((target - below) / chosen).clamp(0.0, _U_MAX)


def _uniforms(seed: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """n uniforms in [0, 1) with 24 random bits, a counter-based hash (lowbias32, C. Wellons) of (seed, index) in
    wrapping int32 arithmetic: generated inside the fused kernel, where a generator's stream costs a pass of its own."""
    x = torch.arange(n, dtype=torch.int32, device=seed.device) * -1640531535 + seed  # 0x9E3779B1
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * -2073254261  # 0x846CA68B
    x = x ^ ((x >> 16) & 0xFFFF)
    return ((x >> 8) & 0xFFFFFF).to(dtype) * 2.0**-24


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[index] for 1-D values and in-range indices: as a gather, which the compiler does not wrap for negative
    indices (plain indexing adds a compare and select per gathered element)."""
    return torch.gather(values, 0, index)


@fused
def _descend(group_mass: torch.Tensor, leaf_mass: torch.Tensor, hx: torch.Tensor, gy: torch.Tensor, index: torch.Tensor,
             good: torch.Tensor, seed: torch.Tensor, k: int) -> torch.Tensor:
    """(image, component) of each count as the row image · K + component [C] of a [P K, ...] table: its group from
    group_mass [P, N, N, b1], its leaf from leaf_mass [P, N, N, L] and its component from the products of hx, gy
    [P, N, b3, L], for the counts' `PixelCounts.count_index` [4, C] and uniforms hashed from an int32 seed. A count
    whose pixel is not `good` [P, N, N] gets row P K, past the table. Index arithmetic is in the dtype of `index`
    (int32 unless the tables need more)."""
    b1, b3, leaves = group_mass.shape[-1], hx.shape[2], hx.shape[3]
    b2 = leaves // b1
    img, flat, at_x, at_y = index[0], index[1], index[2], index[3]
    gm, lm, hf, gf = group_mass.reshape(-1), leaf_mass.reshape(-1), hx.reshape(-1), gy.reshape(-1)
    u = _uniforms(seed, img.shape[0], hx.dtype)
    group, u = _pick([_take(gm, flat * b1 + j) for j in range(b1)], u.clamp_max(_U_MAX))
    block, u = _pick([_take(lm, flat * leaves + j * b1 + group) for j in range(b2)], u)
    leaf = (block * b1 + group).to(index.dtype)
    at_x = at_x * (b3 * leaves) + leaf
    at_y = at_y * (b3 * leaves) + leaf
    comp, _ = _pick([_take(hf, at_x + j * leaves) * _take(gf, at_y + j * leaves) for j in range(b3)], u)
    chosen = img.long() * k + (comp * leaves + leaf).clamp_max(k - 1)
    return torch.where(_take(good.reshape(-1), flat), chosen, group_mass.shape[0] * k)


def image_assignment_stats(
    data: PixelCounts,
    centres: torch.Tensor,
    weights: torch.Tensor,
    precision,
    generator: torch.Generator | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> ImageStats:
    """Drawn assignments of every count to components with centres [P, K, 2] (x, y; Å, per image), shared weights [K]
    and precision s (Å⁻²); their sufficient statistics per image (in the dtype of `centres`). The responsibilities
    are evaluated in `compute_dtype`."""
    p, k, _ = centres.shape
    n_px = data.box
    s = float(precision)
    b1, b2, b3 = _level_sizes(k)
    leaves = b1 * b2
    pad = leaves * b3 - k  # padding components have weight 0 and are never drawn
    grid = centered_coords(n_px, centres.device, compute_dtype) * data.pixel_size
    # padding repeats the last centre (so the factor scales are those of the real components) with weight 0
    padded = torch.cat([centres, centres[:, -1:].expand(p, pad, 2)], 1).to(compute_dtype).permute(2, 0, 1).contiguous()
    padded_weights = torch.nn.functional.pad(weights.to(compute_dtype), (0, pad))
    # scalars go in as 0-d tensors: a new value then reuses the compiled kernels
    s_t = torch.tensor(s, dtype=compute_dtype, device=centres.device)
    hx, gy, top_x, top_y = _factors(padded[0], padded[1], padded_weights, grid, s_t, b3)
    norm = math.log(s / (2 * math.pi))
    leaf_mass, group_mass, good, loglik, n_bad = _masses(
        hx, gy, top_x, top_y, data.dense, torch.tensor(norm, dtype=torch.float64, device=centres.device), b1,
        _min_mass(compute_dtype, k))
    seed = torch.randint(-(2**31), 2**31, (), generator=generator, dtype=torch.int32, device=centres.device)
    index = data.count_index
    if max(leaf_mass.numel(), hx.numel()) >= 2**31 or index.device.type != "cpu":
        index = index.long()  # offsets past int32; int32 gathers are a CPU gain, not checked on GPUs
    at = _descend(group_mass, leaf_mass, hx, gy, index, good, seed, k)
    # per-column bincounts: 3-5x faster than one index_add_ of [C, 4] rows on a CPU; the last bin takes bad pixels' counts
    m = p * k + 1
    acc = [torch.bincount(at, weights=v, minlength=m)[:-1].to(centres.dtype) for v in data.count_values.to(centres.dtype)]
    n = torch.bincount(at, minlength=m)[:-1].to(centres.dtype).reshape(p, k)
    sums, q = torch.stack(acc[:2], -1).reshape(p, k, 2), acc[2].reshape(p, k)
    if int(n_bad):
        bad = ~good[data.image, data.iy, data.ix]
        n, sums, q, loglik = _add_underflowed(data, bad, centres, weights, s, norm, generator, n, sums, q, loglik)
    return ImageStats(n, sums, q, loglik.to(centres.dtype))


def _add_underflowed(data, bad, centres, weights, s, norm, generator, n, sums, q, loglik):
    """Pixels whose mixture mass underflows (or is not above `_min_mass`) in the scaled factors: evaluated exactly
    in log space, all images at once in blocks of about `_EXACT_BLOCK` pixel-component pairs."""
    grid = centered_coords(data.box, centres.device, centres.dtype) * data.pixel_size
    log_w = torch.log(weights.clamp_min(1e-300))
    for rows in bad.nonzero()[:, 0].split(max(1, _EXACT_BLOCK // centres.shape[1])):
        img, counts = data.image[rows], data.counts[rows]
        pts = torch.stack([grid[data.ix[rows]], grid[data.iy[rows]]], -1)  # [B, 2]
        logits = component_logits(pts, centres[img], log_w, s)  # [B, K]
        lse = torch.logsumexp(logits, -1)
        z = sample_split(torch.exp(logits - lse[:, None]), counts, generator)  # [B, K]
        loglik = loglik + (counts.to(lse.dtype) * (lse + norm)).sum()
        n = n.index_add(0, img, z)
        sums = sums.index_add(0, img, z[..., None] * pts[:, None, :])
        q = q.index_add(0, img, z * (pts * pts).sum(-1, keepdim=True))
    return n, sums, q, loglik
