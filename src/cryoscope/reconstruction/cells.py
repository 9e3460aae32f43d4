"""Streaming sums of the normal equations of trilinear Fourier insertion, one row per grid cell.

A slice sample at grid coordinate L + t (L: the lower corner of its trilinear cell, t in [0, 1)^3)
touches the 8 corners L + e with weights w_e(t) = prod over axes of (1 - t) or t. Inserting value y
with weight c (c = CTF²) adds y w_e to the numerator at L + e and c w_e w_e' to the normal operator
Interp* diag(c) Interp between L + e and L + e'. Per cell this is fully described by
- the 8 numerator terms sum y w_e (complex), and
- the 27 moments sum c q_a(t_z) q_b(t_y) q_d(t_x), q = ((1 - t)², t (1 - t), t²),
since w_e w_e' factors over axes into one of the three q. So every sample adds one contiguous row of
43 reals to one cell (a single row `index_add_`), instead of 8 + 36 scattered values to neighbouring
voxels: 3-5x faster on a CPU (benchmarks/RESULTS.md). `numerator` and `stencil` turn the rows into grids afterwards.

Memory: a real map has a Hermitian transform, so a sample at -k is the same equation as its conjugate
at +k; samples are folded to the upper half (z >= 0), and only cells that samples can reach are
stored (half a ball of radius cutoff * M + 2 voxels): 172 bytes per stored cell in float32, about
45 bytes per voxel of the full grid.
"""

from __future__ import annotations

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.projection import SliceLayout, grid_centre, slice_coordinates

# Couplings of the normal operator on the grid: offsets (dz, dy, dx) of the 14 stored neighbour pairs
# (0 and the 13 lexicographically positive offsets; the other 13 follow by symmetry).
STENCIL_OFFSETS = [(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dz, dy, dx) >= (0, 0, 0)]
_NUMERATOR = 16  # 8 complex corner terms, as reals
ROW = _NUMERATOR + 27
_CHUNK_SAMPLES = 1 << 16  # samples per insertion step: small reused buffers


def _moment_terms() -> list[list[tuple[int, int]]]:
    """For each stored offset d: the (corner e, moment channel) pairs whose cell moment adds to T_d at L + e.

    Per axis: d = 0 pairs corner 0 with itself (q0 = (1 - t)²) or corner 1 with itself (q2 = t²);
    d = +1 pairs corner 0 with 1 and d = -1 corner 1 with 0 (both q1 = t (1 - t))."""
    out = []
    for d in STENCIL_OFFSETS:
        options = [[(0, 0), (1, 2)] if a == 0 else [(0, 1)] if a == 1 else [(1, 1)] for a in d]
        terms = []
        for ez, qz in options[0]:
            for ey, qy in options[1]:
                for ex, qx in options[2]:
                    terms.append((4 * ez + 2 * ey + ex, 9 * qz + 3 * qy + qx))
        out.append(terms)
    return out


_TERMS = _moment_terms()


class CellSums:
    """Per-cell sums of `n_grids` independent reconstructions (e.g. half-sets) on a bordered grid [size]^3.

    `rows` [n_grids * n_cells, 43] is the whole state: sums of several processes or runs simply add.
    """

    def __init__(self, box: int, size: int, cutoff: float, n_grids: int, device: torch.device, dtype: torch.dtype):
        self.box, self.size, self.n_grids = box, size, n_grids
        c = grid_centre(size)
        r = cutoff * (size - 3) + 2.0  # samples reach cutoff * M; floor and clamping add < sqrt(3)
        z = torch.arange(c, size - 1, device=device)
        yx = torch.arange(0, size - 1, device=device)
        zz, yy, xx = torch.meshgrid(z, yx, yx, indexing="ij")
        keep = ((zz - c) ** 2 + (yy - c) ** 2 + (xx - c) ** 2) <= r * r
        self.cells = ((zz * size + yy) * size + xx)[keep]  # flat full-grid index of each stored cell
        self.lookup = torch.full(((size - c) * size * size,), -1, dtype=torch.long, device=device)
        self.lookup[self.cells - c * size * size] = torch.arange(self.cells.numel(), device=device)
        self.rows = torch.zeros(n_grids * self.cells.numel(), ROW, dtype=dtype, device=device)

    def add(
        self,
        values: torch.Tensor,
        weights: torch.Tensor,
        rotations: torch.Tensor,
        layout: SliceLayout,
        grid_index: torch.Tensor | None = None,
    ) -> None:
        """Insert half-slice `values` [n, P] (complex) with `weights` [n, P] (real, e.g. folded CTF²) at
        `rotations` [n, 3, 3]; `grid_index` [n] chooses the grid of each particle (all to grid 0 when None)."""
        size, c = self.size, grid_centre(self.size)
        n_cells = self.cells.numel()
        dtype = self.rows.dtype
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        step = max(1, _CHUNK_SAMPLES // max(1, layout.freqs.shape[0]))
        buf = torch.empty(step * layout.freqs.shape[0], ROW, dtype=dtype, device=self.rows.device)
        for start in range(0, rotations.shape[0], step):
            part = slice(start, min(rotations.shape[0], start + step))
            coords = slice_coordinates(rotations[part].to(dtype), layout.freqs, size, layout.box).reshape(3, -1)
            m = coords.shape[1]
            below = coords[2] < c  # fold -k onto +k: the same equation with the conjugate value
            coords = torch.where(below, 2 * c - coords, coords).clamp_(0, size - 2)
            y = values[part].reshape(-1).to(cdtype)
            y = torch.where(below, y.conj(), y)
            base = coords.floor()
            t = coords - base
            b = base.long()
            row = self.lookup[((b[2] - c) * size + b[1]) * size + b[0]]
            if bool((row < 0).any()):
                raise InvalidValueError(f"slice samples beyond the cutoff of this {self.box}-pixel reconstruction")
            if grid_index is not None:
                row += grid_index[part, None].long().expand(-1, layout.freqs.shape[0]).reshape(-1) * n_cells
            s = 1 - t
            out = buf[:m].T  # [ROW, m] view: written channel by channel, scattered row by row
            # numerator rows 0-15: y w_e (re, im) for corners e = 4 ez + 2 ey + ex; channel-major, contiguous in samples
            wyz = (torch.stack([s[2], t[2]])[:, None] * torch.stack([s[1], t[1]])[None]).reshape(4, 1, m)
            corner = (wyz * torch.stack([s[0], t[0]])[None]).reshape(8, 1, m)
            torch.mul(corner, torch.view_as_real(y).T[None], out=out[:_NUMERATOR].view(8, 2, m))
            # moments rows 16-42: weight q_a(t_z) q_b(t_y) q_d(t_x), q = ((1 - t)², t (1 - t), t²)
            q = torch.stack([s * s, s * t, t * t])  # [3 (q), 3 (axis), m]
            qyz = (q[:, 2][:, None] * q[:, 1][None]).reshape(9, 1, m)
            torch.mul(qyz, q[:, 0][None], out=out[_NUMERATOR:].view(9, 3, m))
            out[_NUMERATOR:].mul_(weights[part].reshape(1, -1).to(dtype))
            self.rows.index_add_(0, row, buf[:m])

    def _grid_rows(self, grid: int | None) -> torch.Tensor:
        rows = self.rows.view(self.n_grids, -1, ROW)
        return (rows.sum(0) if grid is None else rows[grid]).T

    def numerator(self, grid: int | None = None) -> torch.Tensor:
        """Bordered numerator grid [S, S, S] (complex) of one grid (None: all summed): sum of y w_e at each corner."""
        rows = self._grid_rows(grid)
        s = self.size
        cdtype = torch.complex128 if rows.dtype == torch.float64 else torch.complex64
        out = torch.zeros(s**3, dtype=cdtype, device=rows.device)
        for e in range(8):
            out.index_add_(0, self.cells + _corner_offset(e, s), torch.complex(rows[2 * e], rows[2 * e + 1]))
        return out.view(s, s, s)

    @property
    def slab_start(self) -> int:
        """First z index of `stencil`'s slab: one zero layer below the folded half (z >= centre)."""
        return grid_centre(self.size) - 1

    def stencil(self, grid: int | None = None) -> torch.Tensor:
        """The 14 coupling grids of Interp* diag(weights) Interp (see `apply_normal_stencil`),
        T_d[g] = sum over samples of weight * w_g * w_{g+d}, on the slab z >= `slab_start` that holds them
        all: [14, S - slab_start, S, S]."""
        rows = self._grid_rows(grid)
        s, z0 = self.size, self.slab_start
        out = torch.zeros(len(STENCIL_OFFSETS), (s - z0) * s * s, dtype=rows.dtype, device=rows.device)
        cells = self.cells - z0 * s * s
        for j, terms in enumerate(_TERMS):
            for e, channel in terms:
                out[j].index_add_(0, cells + _corner_offset(e, s), rows[_NUMERATOR + channel])
        return out.view(len(STENCIL_OFFSETS), s - z0, s, s)


def _corner_offset(e: int, size: int) -> int:
    """Flat offset of corner e = 4 ez + 2 ey + ex from the lower corner of its cell."""
    return ((e >> 2) * size + ((e >> 1) & 1)) * size + (e & 1)


def _shifted(shape: torch.Size, d: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """Inner region of a grid of `shape` (outer layer excluded) moved by offset d."""
    return tuple(slice(1 + o, n - 1 + o) for n, o in zip(shape, d))


def apply_normal_stencil(stencil: torch.Tensor, grid: torch.Tensor, extra_diagonal: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the symmetric 27-point grid operator given by `CellSums.stencil`.

    stencil [14, Z, Y, X] real, grid [Z, Y, X] complex (zero on the outer layer) -> [Z, Y, X] complex,
    exact on the inner voxels, zero on the outer layer. `extra_diagonal` [Z, Y, X] is added to the
    coupling of each voxel with itself (e.g. a Wiener term).
    """
    g = torch.view_as_real(grid)
    out = torch.zeros_like(g)
    inner = _shifted(grid.shape, (0, 0, 0))
    diag = stencil[0] if extra_diagonal is None else stencil[0] + extra_diagonal
    acc = out[inner]
    acc.copy_(diag[inner][..., None] * g[inner])
    for j, d in enumerate(STENCIL_OFFSETS[1:], 1):
        fwd, bwd = _shifted(grid.shape, d), _shifted(grid.shape, tuple(-o for o in d))
        acc.addcmul_(stencil[j][inner][..., None], g[fwd])
        acc.addcmul_(stencil[j][bwd][..., None], g[bwd])
    return torch.view_as_complex(out)


def stencil_row_sums(stencil: torch.Tensor) -> torch.Tensor:
    """Row sums [Z, Y, X] of the stencil operator: the trilinear-spread weight of every voxel (outer layer 0)."""
    out = torch.zeros_like(stencil[0])
    inner = _shifted(out.shape, (0, 0, 0))
    out[inner] = stencil[0][inner]
    for j, d in enumerate(STENCIL_OFFSETS[1:], 1):
        out[inner] += stencil[j][inner] + stencil[j][_shifted(out.shape, tuple(-o for o in d))]
    return out


__all__ = ["ROW", "STENCIL_OFFSETS", "CellSums", "apply_normal_stencil", "stencil_row_sums"]
