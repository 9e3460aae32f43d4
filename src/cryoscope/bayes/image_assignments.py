"""Exact component assignments of the counts of binned images (thesis eq. C.27), all images at once.

On a pixel grid an isotropic 2-D Gaussian is separable: w_k N(x, y | c_k, 1/s) ∝ w_k g_k(y) h_k(x) with
1-D factors g, h [P, K, N]. So every pixel's responsibilities are available without truncation. Components
form a three-level tree (b1 groups of b2 leaves of b3 components, each about K^(1/3)). The per-pixel mass of
every leaf, T[p, leaf, y, x] = Σ_{k∈leaf} g_k(y) h_k(x), is a small matrix product; sums of T give the groups.
Each count then descends the tree by inverse CDF: its group, its leaf, and its component among the leaf's b3
products g_k(y) h_k(x). The work per sweep is O(P K N²) multiply-adds for T and O(counts · K^(1/3)) for the
draws, against O(counts · K) for a dense evaluation.

The 1-D factors are scaled per image row/column (the largest factor is 1), which keeps them finite far from
the mixture; a pixel whose mass still underflows is evaluated densely in log space (`assignments`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryoscope.bayes.assignments import component_logits, sample_split
from cryoscope.physics.fourier import centered_coords


@dataclass
class PixelCounts:
    """The occupied pixels of P binned images of edge `box`: image, row (y) and column (x) index and count [R] each;
    and per single count (C = total counts): its pixel `count_row` [C] and `count_values` [C, 4] = (x, y, x² + y², 1)
    of its pixel centre (Å, about pixel N // 2)."""

    image: torch.Tensor
    iy: torch.Tensor
    ix: torch.Tensor
    counts: torch.Tensor
    count_row: torch.Tensor
    count_values: torch.Tensor
    box: int
    pixel_size: float

    @staticmethod
    def from_counts(counts: torch.Tensor, pixel_size: float) -> PixelCounts:
        """From counts [P, N, N] (int64, C order: y then x)."""
        p, iy, ix = (counts > 0).nonzero(as_tuple=True)
        c = counts[p, iy, ix]
        row = torch.repeat_interleave(torch.arange(c.numel(), device=counts.device), c)
        grid = centered_coords(counts.shape[-1], counts.device, torch.float64) * pixel_size
        x, y = grid[ix[row]], grid[iy[row]]
        values = torch.stack([x, y, x * x + y * y, torch.ones_like(x)], -1)
        return PixelCounts(p, iy, ix, c, row, values, counts.shape[-1], float(pixel_size))

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


def _factors(centres: torch.Tensor, precision: float, box: int, pixel_size: float):
    """1-D factors exp(-s (x - c)² / 2) along x and y [P, K, N], each scaled so its largest value over K is 1
    at every grid line, and the log of the removed scales [P, N] (x and y)."""
    grid = centered_coords(box, centres.device, centres.dtype) * pixel_size
    out = []
    for axis in (0, 1):
        e = -0.5 * precision * (grid - centres[..., axis, None]) ** 2  # [P, K, N]
        top = e.amax(1)  # [P, N]
        out.append((torch.exp(e - top[:, None, :]), top))
    return out


def _level_sizes(k: int) -> tuple[int, int, int]:
    """Branching (b1, b2, b3) of the three-level component tree, about K^(1/3) each, b1 b2 b3 >= K."""
    b = max(1, math.ceil(k ** (1 / 3) - 1e-9))
    return -(-k // (b * b)), b, b


def _draw_level(cdf_rows: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Index of the bin of one uniform draw per row of running sums [C, b] (inverse CDF): the first bin whose running
    sum exceeds u · total, with u · total kept below the total, so that bins of zero mass are never drawn (rows of
    zero total, which the caller discards, give the last bin)."""
    u = torch.rand(cdf_rows.shape[0], 1, generator=generator, dtype=cdf_rows.dtype, device=cdf_rows.device)
    top = cdf_rows[:, -1:]
    target = torch.minimum(u * top, torch.nextafter(top, torch.zeros_like(top)))
    return (cdf_rows <= target).sum(-1).clamp_max_(cdf_rows.shape[1] - 1)


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
    (hx, topx), (gy, topy) = _factors(centres.to(compute_dtype), s, n_px, data.pixel_size)
    gy = gy * weights.to(compute_dtype)[None, :, None]
    if leaves * b3 > k:  # zero-weight padding components are never drawn
        hx, gy = (torch.nn.functional.pad(f, (0, 0, 0, leaves * b3 - k)) for f in (hx, gy))
    hx_t = hx.reshape(p, leaves, b3, n_px).transpose(-1, -2).contiguous()  # [P, leaf, x, b3]
    gy_t = gy.reshape(p, leaves, b3, n_px).transpose(-1, -2).contiguous()  # [P, leaf, y, b3]
    mass = gy_t @ hx_t.transpose(-1, -2)  # [P, leaf, y, x]: Σ over the leaf's components
    leaf_mass = mass[data.image, :, data.iy, data.ix].reshape(-1, b1, b2)  # [R, b1, b2]
    cdf2 = leaf_mass.cumsum(-1)
    cdf1 = cdf2[..., -1].cumsum(-1)  # [R, b1]
    total = cdf1[:, -1].double()
    good = total > 0
    log_mass = torch.log(torch.where(good, total, torch.ones_like(total)))
    log_mass = log_mass + topx[data.image, data.ix].double() + topy[data.image, data.iy].double()
    norm = math.log(s / (2 * math.pi))
    y = data.counts.to(total.dtype)
    loglik = (torch.where(good, y, torch.zeros_like(y)) * (log_mass + norm)).sum()

    # each count descends the tree: b1 groups of b2 leaves of b3 components, by inverse CDF at every level
    row = data.count_row
    l1 = _draw_level(cdf1.index_select(0, row), generator)
    l2 = _draw_level(cdf2.reshape(-1, b2).index_select(0, row * b1 + l1), generator)
    img = data.image[row]
    leaf = (img * leaves + l1 * b2 + l2) * n_px
    inner = (gy_t.reshape(-1, b3).index_select(0, leaf + data.iy[row]) * hx_t.reshape(-1, b3).index_select(0, leaf + data.ix[row]))
    comp = ((l1 * b2 + l2) * b3 + _draw_level(inner.cumsum(-1), generator)).clamp_max_(k - 1)

    values = data.count_values.to(centres.dtype)
    if not bool(good.all()):
        values = values * good[row, None].to(values.dtype)
    acc = torch.zeros(p * k, 4, dtype=centres.dtype, device=centres.device).index_add_(0, img * k + comp, values)
    acc = acc.reshape(p, k, 4)
    n, sums, q = acc[..., 3], acc[..., :2].contiguous(), acc[..., 2]
    if not bool(good.all()):
        n, sums, q, loglik = _add_underflowed(data, ~good, centres, weights, s, norm, generator, n, sums, q, loglik)
    return ImageStats(n, sums, q, loglik.to(centres.dtype))


def _add_underflowed(data, bad, centres, weights, s, norm, generator, n, sums, q, loglik):
    """Pixels whose mixture mass underflows in the scaled factors: evaluated exactly in log space."""
    grid = centered_coords(data.box, centres.device, centres.dtype) * data.pixel_size
    log_w = torch.log(weights.clamp_min(1e-300))
    for i in data.image[bad].unique().tolist():
        sel = bad & (data.image == i)
        pts = torch.stack([grid[data.ix[sel]], grid[data.iy[sel]]], -1)
        logits = component_logits(pts, centres[i], log_w, s)
        lse = torch.logsumexp(logits, -1)
        z = sample_split(torch.exp(logits - lse[:, None]), data.counts[sel], generator)
        loglik = loglik + (data.counts[sel].to(lse.dtype) * (lse + norm)).sum()
        n[i] += z.sum(0)
        sums[i] += z.T @ pts
        q[i] += z.T @ (pts * pts).sum(-1)
    return n, sums, q, loglik
