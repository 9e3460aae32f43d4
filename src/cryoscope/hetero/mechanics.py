"""Spring constants of an elastic network from the mean and covariance of a density's expansion coefficients
(thesis Sec. 4.4, 4.7.6): the model's moments (`moments_basis`) are matched to estimates (ĉ, V̂) by the cost of
Eq. 4.14, χ(k) = ‖ĉ − c_q‖² + γ ‖V̂ − V_q‖₂, or by the Kullback-Leibler divergence D(N(ĉ, V̂) ‖ N(c_q, V_q)) (Eq. 4.183).

The fit assumes the network geometry (equilibrium positions, masses, springs) and the blur q are known and that
(ĉ, V̂) describe the same density in the same basis frame; only the spring constants (kT/Å²) are free.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize, minimize_scalar

from cryoscope.errors import InvalidValueError
from cryoscope.hetero.moments_basis import Basis, coefficient_covariance, coefficient_mean
from cryoscope.representations.elastic_network import ElasticNetwork, hessian, positional_covariance

COSTS = ("moments", "kl")


@dataclass(frozen=True)
class MechanicalModel:
    """An elastic network seen through a basis: blur q (Å), scattering weights f [N] (default 1), temperature kT."""

    network: ElasticNetwork
    basis: Basis
    q: float
    kT: float = 1.0
    weights: torch.Tensor | None = None

    def moments(self, k: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean [n] and covariance [n, n] of the coefficients for spring constants `k` (one, or one per group)."""
        net = self.network
        f = torch.ones(net.n_masses, dtype=torch.float64, device=net.positions.device) if self.weights is None else self.weights
        cov = positional_covariance(hessian(net, k), self.kT)
        return (coefficient_mean(self.basis, net.positions, cov, f, self.q),
                coefficient_covariance(self.basis, net.positions, cov, f, self.q))


def moment_cost(mean_hat: torch.Tensor, cov_hat: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, gamma: float = 1.0) -> float:
    """χ = ‖ĉ − c‖₂² + γ ‖V̂ − V‖₂ (Eq. 4.14; matrix 2-norm: the largest singular value)."""
    return float(((mean_hat - mean) ** 2).sum() + gamma * torch.linalg.matrix_norm(cov_hat - cov, ord=2))


def kl_cost(mean_hat: torch.Tensor, cov_hat: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, ridge: float = 0.05) -> float:
    """D_KL(N(ĉ, V̂) ‖ N(c, V)) (Eq. 4.183). V̂ is replaced by its positive semi-definite part and ε I, with
    ε = ridge · λ_max(V̂), is added to both covariances: the divergence weighs each direction by the inverse of its
    variance, so directions where an estimate holds only noise would otherwise dominate (and bias k low); ε should
    be at least the noise level of V̂ (the spectral norm of its error)."""
    lam, vec = torch.linalg.eigh(0.5 * (cov_hat + cov_hat.T))
    lam = lam.clamp_min(0)
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    eps = ridge * float(lam.max())
    p = (vec * lam) @ vec.T + eps * eye
    lq = torch.linalg.cholesky(0.5 * (cov + cov.T) + eps * eye)
    d = (mean_hat - mean)[:, None]
    logdet = 2 * lq.diagonal().log().sum() - torch.log(lam + eps).sum()
    trace = torch.cholesky_solve(p, lq).diagonal().sum()
    maha = (d * torch.cholesky_solve(d, lq)).sum()
    return float(0.5 * (logdet + trace - p.shape[0] + maha))


@dataclass
class SpringFit:
    """Fitted spring constants (kT/Å²): the single-k fit, the per-group fit (None with one group), the cost at each,
    the cost curve of the single k over a log grid, and how many moment evaluations it took."""

    k_single: float
    cost_single: float
    k_groups: list[float] | None
    cost_groups: float | None
    curve_k: list[float] = field(default_factory=list)
    curve_cost: list[float] = field(default_factory=list)
    evaluations: int = 0

    @property
    def curve_minima(self) -> int:
        """Number of interior local minima of the cost curve (1 for a well-posed single-k fit)."""
        c = np.asarray(self.curve_cost)
        return int(((c[1:-1] < c[:-2]) & (c[1:-1] < c[2:])).sum()) + int(c[0] < c[1]) + int(c[-1] < c[-2])


def fit_spring_constants(model: MechanicalModel, mean_hat: torch.Tensor, cov_hat: torch.Tensor, cost: str = "moments",
                         gamma: float = 1.0, ridge: float = 0.05, bounds: tuple[float, float] = (1e-2, 1e3),
                         grid: int = 41, groups: bool = True, progress: Callable[[str], None] | None = None) -> SpringFit:
    """Fit k to (ĉ, V̂) given in the model's basis (real representation).

    One k: the cost on `grid` log-spaced values in `bounds`, then a bounded Brent search (scipy, in log k) between
    the neighbours of the grid's best value. Groups (when the network has more than one and `groups`): Nelder-Mead
    on log k (the thesis uses fminsearch) started from the single-k value for every group.
    """
    if cost not in COSTS:
        raise InvalidValueError(f"cost must be one of {', '.join(COSTS)}, got {cost!r}")
    n = model.basis.size
    if mean_hat.shape != (n,) or cov_hat.shape != (n, n):
        raise InvalidValueError(f"the basis has {n} coefficients; got mean {tuple(mean_hat.shape)} and covariance {tuple(cov_hat.shape)}")
    if not (0 < bounds[0] < bounds[1]):
        raise InvalidValueError(f"need 0 < k_min < k_max, got {bounds}")
    evaluations = 0

    def chi(k: np.ndarray | float) -> float:
        nonlocal evaluations
        evaluations += 1
        mean, cov = model.moments(torch.as_tensor(np.atleast_1d(k), dtype=torch.float64, device=mean_hat.device))
        return moment_cost(mean_hat, cov_hat, mean, cov, gamma) if cost == "moments" else kl_cost(mean_hat, cov_hat, mean, cov, ridge)

    logk = np.linspace(math.log(bounds[0]), math.log(bounds[1]), grid)
    curve = [chi(math.exp(v)) for v in logk]
    best = int(np.argmin(curve))
    lo, hi = logk[max(best - 1, 0)], logk[min(best + 1, grid - 1)]
    res = minimize_scalar(lambda v: chi(math.exp(v)), bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    k1, c1 = (math.exp(res.x), float(res.fun)) if res.fun <= curve[best] else (math.exp(logk[best]), curve[best])
    if progress:
        progress(f"single k = {k1:.5g} kT/Å² (cost {c1:.6g})")
    kg, cg = None, None
    if groups and model.network.n_groups > 1:
        start = np.full(model.network.n_groups, math.log(k1))
        scale = max(c1, 1e-300)
        res = minimize(lambda v: chi(np.exp(v)) / scale, start, method="Nelder-Mead",
                       options={"xatol": 1e-4, "fatol": 1e-10, "maxfev": 400 * model.network.n_groups,
                                "initial_simplex": np.vstack([start] + [start + 0.2 * np.eye(len(start))[i] for i in range(len(start))])})
        kg, cg = [float(v) for v in np.exp(res.x)], float(res.fun) * scale
        if progress:
            progress("groups k = " + ", ".join(f"{v:.5g}" for v in kg) + f" kT/Å² (cost {cg:.6g})")
    return SpringFit(k1, c1, kg, cg, [math.exp(v) for v in logk], curve, evaluations)
