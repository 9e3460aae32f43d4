"""Synthetic data from the model itself: c_i ~ N(c̄_k, V_k), y_i = L(θ_i) c_i + w_i, for tests and benchmarks."""

from __future__ import annotations

import torch

from cryoscope.geometry.sampling import random_rotations
from cryoscope.hetero.operator import ProjectionOperator
from cryoscope.physics.fourier import ifft2c
from cryoscope.physics.projection import expand_half_slices, slice_layout


def draw_coefficients(mean: torch.Tensor, variance: torch.Tensor, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """c_i = c̄_{k_i} + F_{k_i} ε_i [n, N_c] for class labels [n]; variances [K, N_c] (diagonal, F = sqrt v) or
    [K, N_c, N_c] (full, F = U Λ^1/2 from its eigendecomposition, so singular V are fine)."""
    eps = torch.randn(classes.shape[0], mean.shape[1], generator=generator, dtype=mean.dtype, device=generator.device)
    eps = eps.to(mean.device)
    if variance.dim() == 2:
        return mean[classes] + variance[classes].clamp_min(0).sqrt() * eps
    lam, U = torch.linalg.eigh(variance)
    F = U * lam.clamp_min(0).sqrt()[:, None, :]
    return mean[classes] + torch.einsum("iab,ib->ia", F[classes], eps)


def simulate_measurements(
    op: ProjectionOperator,
    mean: torch.Tensor,
    variance: torch.Tensor,
    noise: float,
    classes: torch.Tensor,
    generator: torch.Generator,
    rotations: torch.Tensor | None = None,
    ctf: torch.Tensor | None = None,
    batch: int = 256,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
    """Per-channel measurements of n particles (classes [n]), their rotations [n, 3, 3] and coefficients [n, N_c].

    Rotations are uniform on SO(3) unless given; ctf [n, P] on the half-plane pixels or None; white noise of
    variance `noise` per measurement (the pixel variance, see `hetero.operator`).
    """
    n = classes.shape[0]
    if rotations is None:
        rotations = random_rotations(n, generator=generator, dtype=op.dtype)
    coeffs = draw_coefficients(mean.to(op.dtype), variance.to(op.dtype), classes, generator)
    parts: list[list[torch.Tensor]] = [[] for _ in op.channels]
    for s in range(0, n, batch):
        sl = slice(s, min(n, s + batch))
        clean = op.images(coeffs[sl], rotations[sl], None if ctf is None else ctf[sl])
        for c, y in enumerate(clean):
            w = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=generator.device) * noise**0.5
            parts[c].append(y + w.to(y.device))
    return tuple(torch.cat(p) for p in parts), rotations, coeffs


def measurements_to_images(op: ProjectionOperator, y: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Real band-limited images [n, N, N] whose `op.measurements` are y (inverse of the measurement map)."""
    even, odd = torch.split(y[0], [op.parity[0].pixels.numel(), op.parity[1].pixels.numel()], 1) if op.joint else y
    n, P = even.shape[0], op.freqs.shape[0]
    re = even / (2**0.5)
    re[:, op.zero] = even[:, op.zero]
    im = torch.zeros(n, P, dtype=even.dtype, device=even.device)
    im[:, op.parity[1].pixels] = odd / (2**0.5)
    half = torch.complex(re, im) * op.box
    layout = slice_layout(op.box, op.k_max, half.device)
    return ifft2c(expand_half_slices(half, layout)).real
