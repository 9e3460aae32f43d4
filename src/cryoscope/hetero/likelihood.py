"""The Gaussian likelihood of one channel at a batch of orientations, in the number of coefficients (Woodbury).

Per orientation θ_j and CTF group, with L = CTF · L(θ_j) [P, N], the image y ~ N(L c̄, L V L^T + λ² I). With a factor F
of V = F F^T (F = diag(sqrt v) for a diagonal V), M = λ² I + F^T S F and S = L^T L:
- log det(L V L^T + λ² I) = (P - N) log λ² + log det M (determinant lemma);
- r^T (L V L^T + λ² I)^{-1} r = (|r|² - |K^{-1} F^T L^T r|²) / λ², M = K K^T (Woodbury);
- with z = L^T y: |r|² = |y|² - 2 z·c̄ + c̄^T S c̄ and L^T r = z - S c̄,
so an image enters only through z [N] and |y|².
"""

from __future__ import annotations

import math

import torch


def gram(L: torch.Tensor) -> torch.Tensor:
    """S = L^T L [J, N, N] for L [J, P, N]."""
    return L.transpose(1, 2) @ L


def scale_gram(S: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """F^T S F for F = diag(factor) (factor [N]) or a matrix factor [N, N]."""
    if factor.dim() == 1:
        return factor[:, None] * S * factor[None, :]
    return factor.T @ S @ factor


def apply_factor_t(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """F^T x along the last axis."""
    return x * factor if factor.dim() == 1 else x @ factor


def apply_factor(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """F x along the last axis."""
    return x * factor if factor.dim() == 1 else x @ factor.T


class Woodbury:
    """Cholesky of M = λ² I + F^T S F for a batch S [J, N, N]; `factor` None means V = 0."""

    def __init__(self, S: torch.Tensor, factor: torch.Tensor | None, noise: torch.Tensor, n_measurements: int):
        self.factor, self.noise = factor, noise
        N = S.shape[-1]
        if factor is None:
            self.K = None
            self.logdet = n_measurements * torch.log(noise) * torch.ones(S.shape[0], dtype=S.dtype, device=S.device)
            return
        eye = torch.eye(N, dtype=S.dtype, device=S.device)
        self.K = torch.linalg.cholesky(noise * eye + scale_gram(S, factor))
        self.logdet = (n_measurements - N) * torch.log(noise) + 2 * torch.log(torch.diagonal(self.K, dim1=-2, dim2=-1)).sum(-1)

    def explained(self, e: torch.Tensor, j: int) -> torch.Tensor:
        """|K_j^{-1} F^T e|² [m] for e = L^T r [m, N] at orientation j of the batch (zero when V = 0)."""
        if self.K is None:
            return e.new_zeros(e.shape[:-1])
        return torch.linalg.solve_triangular(self.K[j], apply_factor_t(e, self.factor).T, upper=False).pow(2).sum(0)

    def smooth(self, x: torch.Tensor) -> torch.Tensor:
        """F M^{-1} F^T x for x [J, m, N] (zero when V = 0)."""
        if self.K is None:
            return torch.zeros_like(x)
        b = apply_factor_t(x, self.factor).transpose(1, 2)
        sol = torch.cholesky_solve(b, self.K).transpose(1, 2)
        return apply_factor(sol, self.factor)


def log_likelihood(z: torch.Tensor, yy: torch.Tensor, S: torch.Tensor, mean: torch.Tensor, wood: Woodbury, j: int, n_measurements: int) -> torch.Tensor:
    """log N(y; L c̄, L V L^T + λ² I) [m] of m images at orientation j of the batch: z = L^T y [m, N], |y|² [m],
    S = L^T L [N, N] of that orientation and the mean [N]."""
    Sc = S @ mean
    rr = yy - 2 * z @ mean + Sc @ mean
    quad = (rr - wood.explained(z - Sc, j)) / wood.noise
    return -0.5 * (n_measurements * math.log(2 * math.pi) + wood.logdet[j] + quad)


def mean_normal_equations(S: torch.Tensor, W: torch.Tensor, Z: torch.Tensor, wood: Woodbury) -> tuple[torch.Tensor, torch.Tensor]:
    """Contributions (A [N, N], h [N]) of a batch of orientations to the mean's normal equations A c̄ = h.

    A = Σ_j W_j (S_j - S_j F M_j^{-1} F^T S_j), h = Σ_j (Z_j - S_j F M_j^{-1} F^T Z_j), with W_j the summed posterior
    weights and Z_j = Σ_i w_ij z_ij (the common factor 1/λ² cancels).
    """
    A = torch.einsum("j,jab->ab", W, S - wood.smooth(S) @ S)  # smooth(S) = S F M^-1 F^T (S symmetric)
    h = (Z - (S @ wood.smooth(Z[:, None, :]).transpose(1, 2)).squeeze(-1)).sum(0)
    return A, h


def expected_log_likelihood(S: torch.Tensor, W: torch.Tensor, E: torch.Tensor, R: torch.Tensor, factor: torch.Tensor,
                            noise: torch.Tensor, n_measurements: int) -> torch.Tensor:
    """Σ_j Σ_i w_ij log p(y_i | θ_j) from per-orientation moments, differentiable in the factor and λ².

    S [J, N, N]; W_j = Σ_i w_ij; E_j = Σ_i w_ij e_ij e_ij^T with e = L^T (y - L c̄); R_j = Σ_i w_ij |y_i - L c̄|².
    The trace term tr(M_j^{-1} F^T E_j F) replaces Σ_i w_ij |K_j^{-1} F^T e_ij|², so no image is touched.
    """
    wood = Woodbury(S, factor, noise, n_measurements)
    FEF = scale_gram(E, factor)
    explained = torch.diagonal(torch.cholesky_solve(FEF, wood.K), dim1=-2, dim2=-1).sum(-1)
    return -0.5 * ((W * (n_measurements * math.log(2 * math.pi) + wood.logdet)).sum() + (R.sum() - explained.sum()) / noise)
