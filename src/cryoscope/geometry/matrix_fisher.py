"""Exact draws from the matrix Fisher distribution on SO(3), p(R) ∝ exp(tr(Fᵀ R)).

This is the conditional of a rotation in the Gibbs sampler of a Gaussian mixture (thesis eq. 2.92,
F = A_i). Habeck (2009) samples it with Gibbs steps over Euler angles; here each draw is exact and
independent, which that chain only reaches in the limit:
- the proper SVD F = U diag(d) Vᵀ (U, V rotations, d_3 may be negative) reduces it to
  exp(tr(diag(d) Q)) with R = U Q Vᵀ;
- with Q the rotation of a unit quaternion q = (w, x, y, z), tr(diag(d) Q) = qᵀ B q with B diagonal,
  so q follows a Bingham distribution on S³ (Lee 2017, arXiv:1710.03746);
- q is drawn by rejection from an angular central Gaussian envelope (Kent, Ganeiber & Mardia 2018,
  arXiv:1310.8110), whose acceptance rate stays above ~50 % at every concentration.
"""

from __future__ import annotations

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.rotations import quaternion_to_matrix

_MAX_ROUNDS = 50
_PROPOSALS = 8  # per row and round: at >= 50 % acceptance all rows of a small batch usually finish in one round
_DIM = 4  # quaternions live on S³ in R⁴


def proper_svd(F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """F [..., 3, 3] = U diag(d) Vᵀ with U, V in SO(3) and d_1 >= d_2 >= |d_3| (d_3 < 0 when det F < 0)."""
    U, d, Vh = torch.linalg.svd(F)
    V = Vh.transpose(-1, -2)
    su, sv = torch.sign(torch.det(U)), torch.sign(torch.det(V))
    last = torch.ones_like(d)
    U = U * torch.stack([last[..., 0], last[..., 1], su], -1)[..., None, :]
    V = V * torch.stack([last[..., 0], last[..., 1], sv], -1)[..., None, :]
    return U, d * torch.stack([last[..., 0], last[..., 1], su * sv], -1), V


def chordal_mean(rotations: torch.Tensor) -> torch.Tensor:
    """Rotation nearest (Frobenius) to the mean of rotations [S, ..., 3, 3] over the first axis: the proper polar
    factor U Vᵀ of the mean (also the mode of the matrix Fisher distribution with that parameter)."""
    u, _, v = proper_svd(rotations.mean(0))
    return u @ v.transpose(-1, -2)


def _acg_parameter(lam: torch.Tensor) -> torch.Tensor:
    """b in (1, 4] with sum_i 1 / (b + 2 lam_i) = 1 (lam [..., 4] >= 0, one of them 0), by Newton's method from
    b = 1: the sum is convex and decreasing in b and exceeds 1 at b = 1, so the iterates rise monotonically to the
    root, quadratically once near it. (Any b > 0 gives a valid envelope; this one maximises the acceptance rate.)"""
    b = torch.ones(lam.shape[:-1], dtype=lam.dtype, device=lam.device)
    for _ in range(12):
        r = 1 / (b[..., None] + 2 * lam)
        b = b + ((r.sum(-1) - 1) / (r * r).sum(-1))
    return b.clamp(1.0, float(_DIM))


def sample_bingham(lam: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Unit vectors x [..., 4] with density ∝ exp(-Σ lam_i x_i²) on S³ (lam [..., 4] >= 0, min 0)."""
    shape = lam.shape
    b = _acg_parameter(lam)
    omega = 1 + 2 * lam / b[..., None]  # diagonal of the envelope's precision
    log_m = -(_DIM - b) / 2 + (_DIM / 2) * torch.log(_DIM / b)  # log sup f / g
    lam, omega, log_m = lam.reshape(-1, _DIM), omega.reshape(-1, _DIM), log_m.reshape(-1)
    out = torch.empty_like(lam)
    todo = torch.arange(lam.shape[0], device=lam.device)
    for _ in range(_MAX_ROUNDS):
        if todo.numel() == 0:
            return out.reshape(shape)
        # _PROPOSALS proposals per row and round; a row keeps its first accepted one (sequential rejection, batched)
        y = torch.randn(todo.numel(), _PROPOSALS, _DIM, generator=generator, dtype=lam.dtype, device=lam.device)
        y = y / omega[todo, None].sqrt()
        x = y / y.norm(dim=-1, keepdim=True)
        lam_t, omega_t = lam[todo, None], omega[todo, None]
        log_ratio = -(lam_t * x * x).sum(-1) + (_DIM / 2) * torch.log((omega_t * x * x).sum(-1)) - log_m[todo, None]
        u = torch.rand(todo.numel(), _PROPOSALS, generator=generator, dtype=lam.dtype, device=lam.device)
        accept = torch.log(u) < log_ratio
        done = accept.any(-1)
        first = accept.to(torch.int8).argmax(-1)
        out[todo[done]] = x[done, first[done]]
        todo = todo[~done]
    raise InvalidValueError("matrix Fisher sampler: rejection sampling did not finish (non-finite parameter?)")


def sample_matrix_fisher(F: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotations R [..., 3, 3] with density ∝ exp(tr(Fᵀ R)) w.r.t. the Haar measure, for F [..., 3, 3].

    F = 0 gives uniform rotations; large singular values concentrate R at the polar factor of F.
    """
    if F.shape[-2:] != (3, 3):
        raise InvalidValueError(f"matrix Fisher parameter must be [..., 3, 3], got {tuple(F.shape)}")
    if not bool(torch.isfinite(F).all()):
        raise InvalidValueError("matrix Fisher parameter contains NaN/Inf")
    batch = F.shape[:-2]
    F = F.reshape(-1, 3, 3)
    U, d, V = proper_svd(F)
    d1, d2, d3 = d.unbind(-1)
    # qᵀ B q with B = diag(d1+d2+d3, d1-d2-d3, -d1+d2-d3, -d1-d2+d3); subtract its largest entry (the first)
    lam = torch.stack([torch.zeros_like(d1), 2 * (d2 + d3), 2 * (d1 + d3), 2 * (d1 + d2)], -1).clamp_min(0)
    Q = quaternion_to_matrix(sample_bingham(lam, generator))
    return (U @ Q @ V.transpose(-1, -2)).reshape(*batch, 3, 3)
