"""Least-squares reconstruction by conjugate gradients on the normal equations.

Solves (P* C² P + λ I) v = P* C T_o^* F_y over real maps v, with P the Fourier-slice projector
(`cryoscope.physics.projection`), C the CTF, T_o the origin shift and F_y the centred image
transforms. The shift cancels in the normal operator (|phase| = 1), so each iteration is one
slice + one backprojection per batch. λ is a Tikhonov weight in the units of C² x N^3 (the data term
is summed over Fourier pixels).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from cryoscope.particles import ParticleBatch
from cryoscope.physics.projection import (
    backproject_fourier,
    fourier_volume,
    fourier_volume_adjoint,
    grid_size,
    slice_fourier_volume,
)

Batches = Sequence[ParticleBatch] | Callable[[], Iterable[ParticleBatch]]


def _iterate(batches: Batches) -> Iterable[ParticleBatch]:
    return batches() if callable(batches) else batches


def reconstruct_cg(
    batches: Batches,
    box: int,
    n_iter: int = 30,
    tikhonov: float = 0.0,
    oversample: float = 2.0,
    cutoff: float | None = 0.5,
    tol: float = 1e-6,
    x0: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Least-squares map [N, N, N] from particles with known poses.

    `batches`: a sequence of `ParticleBatch`, or a callable returning a fresh iterator (the data are
    streamed once per iteration). Stops after `n_iter` iterations or when the residual norm falls
    below `tol` x its initial value. `cutoff` in cycles/pixel.
    """
    size = grid_size(box, oversample)
    complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128

    def normal(v: torch.Tensor) -> torch.Tensor:
        fvol = fourier_volume(v, oversample)
        acc = torch.zeros(size, size, size, dtype=complex_dtype, device=device)
        for b in _iterate(batches):
            rot = b.rotations.to(device, dtype)
            F = slice_fourier_volume(fvol, rot, box, cutoff)
            if b.ctf is not None:
                F = F * b.ctf.to(device, dtype) ** 2
            acc += backproject_fourier(F, rot, size, cutoff)
        return fourier_volume_adjoint(acc, box) + tikhonov * v

    rhs_grid = torch.zeros(size, size, size, dtype=complex_dtype, device=device)
    for b in _iterate(batches):
        F = b.corrected_transforms(dtype).to(device, complex_dtype)
        rhs_grid += backproject_fourier(F, b.rotations.to(device, dtype), size, cutoff)
    rhs = fourier_volume_adjoint(rhs_grid, box)

    x = torch.zeros_like(rhs) if x0 is None else x0.to(rhs)
    r = rhs - normal(x) if x0 is not None else rhs.clone()
    p = r.clone()
    rr = (r * r).sum()
    stop = (tol**2) * rr
    for _ in range(n_iter):
        if rr <= stop or rr == 0:
            break
        Ap = normal(p)
        alpha = rr / (p * Ap).sum()
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = (r * r).sum()
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x
