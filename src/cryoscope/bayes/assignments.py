"""Component assignments of binned data and their sufficient statistics (thesis eqs. 2.55-2.58, C.27).

Counts y_j sit at grid points v_j. Component k claims a count at v_j with probability
r_jk ∝ w_k N(v_j | c_k, 1/s). Gibbs draws the integer split z_j ~ Multinomial(y_j, r_j·); EM uses the
expected split y_j r_jk. Later steps need only, per component: N_k = Σ_j z_jk, S_k = Σ_j z_jk v_j and
Q_k = Σ_j z_jk |v_j|².
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_CHUNK_ENTRIES = 1 << 22  # rows x components per block (bounds the transient [rows, K] arrays)


@dataclass
class AssignmentStats:
    """Per-component sums N [K], S [K, d], Q [K] and the log-likelihood Σ_j y_j log Σ_k w_k N(v_j | c_k, 1/s)."""

    n: torch.Tensor
    s: torch.Tensor
    q: torch.Tensor
    log_likelihood: torch.Tensor


def component_logits(points: torch.Tensor, centres: torch.Tensor, log_weights: torch.Tensor, precision) -> torch.Tensor:
    """log w_k - s |v_j - c_k|² / 2 for points [M, d], centres [K, d] -> [M, K] (the Gaussian's constant left out)."""
    d2 = (points * points).sum(-1, keepdim=True) - 2 * points @ centres.T + (centres * centres).sum(-1)
    return log_weights - 0.5 * precision * d2.clamp_min(0)


def sample_split(probs: torch.Tensor, counts: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z_j ~ Multinomial(counts_j, probs_j) for rows probs [M, K] (rows sum to 1), counts [M] int -> [M, K] (float).

    Every count is placed by inverse-CDF search in its row (one batched search, rows padded to the largest count)."""
    z = torch.zeros_like(probs)
    max_count = int(counts.max()) if counts.numel() else 0
    if max_count == 0:
        return z
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], max_count, generator=generator, dtype=probs.dtype, device=probs.device) * cdf[:, -1:]
    component = torch.searchsorted(cdf, u).clamp_max_(probs.shape[1] - 1)
    used = torch.arange(max_count, device=probs.device) < counts[:, None]
    rows = torch.arange(probs.shape[0], device=probs.device)[:, None].expand_as(component)
    z.index_put_((rows[used], component[used]), torch.ones((), dtype=z.dtype, device=z.device), accumulate=True)
    return z


def assignment_stats(
    points: torch.Tensor,
    counts: torch.Tensor,
    centres: torch.Tensor,
    weights: torch.Tensor,
    precision,
    generator: torch.Generator | None = None,
    soft: bool = False,
) -> AssignmentStats:
    """Sufficient statistics of the assignments of counts [M] at points [M, d] to components (centres [K, d],
    weights [K], shared precision s in Å⁻²): drawn (Gibbs) or expected (`soft`, EM). Rows with zero counts are
    skipped by the caller's choice of `points` (they contribute nothing)."""
    k, d = centres.shape
    log_w = torch.log(weights.clamp_min(1e-300))
    norm = 0.5 * d * math.log(float(precision) / (2 * math.pi))
    n = torch.zeros(k, dtype=centres.dtype, device=centres.device)
    s = torch.zeros(k, d, dtype=centres.dtype, device=centres.device)
    q = torch.zeros_like(n)
    loglik = torch.zeros((), dtype=centres.dtype, device=centres.device)
    step = max(1, _CHUNK_ENTRIES // k)
    for i in range(0, points.shape[0], step):
        v, y = points[i : i + step], counts[i : i + step]
        logits = component_logits(v, centres, log_w, precision)
        lse = torch.logsumexp(logits, -1)
        loglik = loglik + (y.to(lse.dtype) * (lse + norm)).sum()
        probs = torch.exp(logits - lse[:, None])
        z = y.to(probs.dtype)[:, None] * probs if soft else sample_split(probs, y, generator)
        n += z.sum(0)
        s += z.T @ v
        q += z.T @ (v * v).sum(-1)
    return AssignmentStats(n, s, q, loglik)
