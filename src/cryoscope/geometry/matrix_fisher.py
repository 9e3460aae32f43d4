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
from cryoscope.fusion import fused
from cryoscope.geometry.rotations import quaternion_to_matrix

_MAX_ROUNDS = 50
_PROPOSALS = 8  # per row and round: at >= 50 % acceptance all rows of a small batch usually finish in one round
_DIM = 4  # quaternions live on S³ in R⁴


def _det3(m: torch.Tensor) -> torch.Tensor:
    """Determinants of [..., 3, 3] matrices (cofactor expansion: fusable, unlike an LU factorisation)."""
    return (m[..., 0, 0] * (m[..., 1, 1] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 1])
            - m[..., 0, 1] * (m[..., 1, 0] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 0])
            + m[..., 0, 2] * (m[..., 1, 0] * m[..., 2, 1] - m[..., 1, 1] * m[..., 2, 0]))


def _made_proper(U: torch.Tensor, d: torch.Tensor, Vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An SVD U diag(d) Vh made proper: the last columns of U and V flipped where their determinant is -1."""
    V = Vh.transpose(-1, -2)
    su, sv = torch.sign(_det3(U)), torch.sign(_det3(V))
    last = torch.ones_like(d)
    U = U * torch.stack([last[..., 0], last[..., 1], su], -1)[..., None, :]
    V = V * torch.stack([last[..., 0], last[..., 1], sv], -1)[..., None, :]
    return U, d * torch.stack([last[..., 0], last[..., 1], su * sv], -1), V


_proper = fused(_made_proper)


def proper_svd(F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """F [..., 3, 3] = U diag(d) Vᵀ with U, V in SO(3) and d_1 >= d_2 >= |d_3| (d_3 < 0 when det F < 0)."""
    return _proper(*torch.linalg.svd(F))


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


def _bingham_envelope(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The angular central Gaussian envelope of the Bingham density for lam [B, 4]: the diagonal of its precision
    [B, 4] and log sup f / g [B]."""
    b = _acg_parameter(lam)
    omega = 1 + 2 * lam / b[..., None]
    return omega, -(_DIM - b) / 2 + (_DIM / 2) * torch.log(_DIM / b)


def _bingham_round(y: torch.Tensor, u: torch.Tensor, lam: torch.Tensor, omega: torch.Tensor, log_m: torch.Tensor):
    """One round of proposals, from standard normals y [B, R, 4] and uniforms u [B, R]: per row the first accepted
    proposal [B, 4] and whether there was one [B]."""
    y = y / omega[:, None].sqrt()
    x = y / y.norm(dim=-1, keepdim=True)
    log_g = (_DIM / 2) * torch.log((omega[:, None] * x * x).sum(-1))  # -log envelope density, up to a constant
    log_ratio = -(lam[:, None] * x * x).sum(-1) + log_g - log_m[:, None]
    accept = torch.log(u) < log_ratio
    first = accept.to(torch.int8).argmax(-1)
    return torch.gather(x, 1, first[:, None, None].expand(-1, 1, _DIM))[:, 0], accept.any(-1)


def _proposals(rows: int, like: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One round's standard normals [rows, _PROPOSALS, 4] and uniforms [rows, _PROPOSALS]."""
    y = torch.randn(rows, _PROPOSALS, _DIM, generator=generator, dtype=like.dtype, device=like.device)
    return y, torch.rand(rows, _PROPOSALS, generator=generator, dtype=like.dtype, device=like.device)


def _start_bingham(lam: torch.Tensor, y: torch.Tensor, u: torch.Tensor):
    """The first round of proposals (`_bingham_round`) for lam [B, 4], then the envelope (`_bingham_envelope`)."""
    omega, log_m = _bingham_envelope(lam)
    return (*_bingham_round(y, u, lam, omega, log_m), omega, log_m)


_first_bingham_round = fused(_start_bingham)
_next_bingham_round = fused(_bingham_round)


def _finish_bingham(x: torch.Tensor, done: torch.Tensor, lam: torch.Tensor, omega: torch.Tensor, log_m: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
    """Rows of x [B, 4] not `done` after the first round, from further rounds."""
    for _ in range(_MAX_ROUNDS - 1):
        if bool(done.all()):
            return x
        nx, ok = _next_bingham_round(*_proposals(lam.shape[0], lam, generator), lam, omega, log_m)
        x = torch.where((ok & ~done)[:, None], nx, x)
        done = done | ok
    if bool(done.all()):
        return x
    raise InvalidValueError("matrix Fisher sampler: rejection sampling did not finish (non-finite parameter?)")


def sample_bingham(lam: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Unit vectors x [..., 4] with density ∝ exp(-Σ lam_i x_i²) on S³ (lam [..., 4] >= 0, min 0).

    Rejection from the envelope in rounds of _PROPOSALS proposals for every row (fixed shapes, so each round is one
    fused kernel); a row keeps the first proposal accepted, in round order, which is an exact draw."""
    shape = lam.shape
    lam = lam.reshape(-1, _DIM)
    x, done, omega, log_m = _first_bingham_round(lam, *_proposals(lam.shape[0], lam, generator))
    return _finish_bingham(x, done, lam, omega, log_m, generator).reshape(shape)


def _bingham_parameter(d: torch.Tensor) -> torch.Tensor:
    """lam [B, 4] of the Bingham density of the quaternion of Q for exp(tr(diag(d) Q)), d [B, 3] proper singular
    values: qᵀ B q with B = diag(d1+d2+d3, d1-d2-d3, -d1+d2-d3, -d1-d2+d3), less its largest entry (the first)."""
    d1, d2, d3 = d.unbind(-1)
    return torch.stack([torch.zeros_like(d1), 2 * (d2 + d3), 2 * (d1 + d3), 2 * (d1 + d2)], -1).clamp_min(0)


def _rotate(U: torch.Tensor, q: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """U Q(q) Vᵀ [B, 3, 3]."""
    Q = quaternion_to_matrix(q)
    return (U[:, :, :, None, None] * Q[:, None, :, :, None] * V.transpose(-1, -2)[:, None, None]).sum((2, 3))


@fused
def _first_matrix_fisher_round(U: torch.Tensor, d: torch.Tensor, Vh: torch.Tensor, y: torch.Tensor, u: torch.Tensor):
    """From an SVD of F [B, 3, 3] and one round of proposals: R = U Q(q) Vᵀ for each row's first accepted quaternion
    q, whether there was one, and what further rounds need (U, V proper, q, lam and the envelope)."""
    U, d, V = _made_proper(U, d, Vh)
    lam = _bingham_parameter(d)
    q, done, omega, log_m = _start_bingham(lam, y, u)
    return _rotate(U, q, V), done, U, V, q, lam, omega, log_m


_rotate_fused = fused(_rotate)


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
    y, u = _proposals(F.shape[0], F, generator)
    R, done, U, V, q, lam, omega, log_m = _first_matrix_fisher_round(*torch.linalg.svd(F), y, u)
    if not bool(done.all()):  # rare (acceptance >= ~50 % per proposal); accepted rows keep their q
        R = _rotate_fused(U, _finish_bingham(q, done, lam, omega, log_m, generator), V)
    return R.reshape(*batch, 3, 3)
