"""Generalised EM for the ML mean, covariance and noise of a spherical-basis density (dissertation §2.6.2–2.6.3).

Orientations (a quadrature of the asymmetric unit, uniform prior) and classes are the nuisance variables. Each
iteration: an E-step (posterior weights over class × orientation with log-sum-exp, pruned below `prune` × the
image's peak), then the closed-form mean (and, while V = 0, the closed-form noise), or L-BFGS-B on log V and log λ²
with the weights fixed. Schedule (§2.6.3): iterate the mean to convergence from V = 0, then update V from where it
was, and stop when the mean has converged twice in succession. Every step can only increase the likelihood
(exactly so without pruning), which `history` records.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize

from cryoscope.errors import InvalidValueError
from cryoscope.hetero.likelihood import Woodbury, expected_log_likelihood, gram, log_likelihood, mean_normal_equations
from cryoscope.hetero.operator import ProjectionOperator


@dataclass
class HeteroModel:
    """K classes: means [K, N_c], covariances [K, N_c] (diagonal) or [K, N_c, N_c] (full, with a joint-channel
    operator), noise variance λ² (pixel units²) and class weights [K]."""

    mean: torch.Tensor
    variance: torch.Tensor
    noise: torch.Tensor
    weights: torch.Tensor

    @property
    def n_classes(self) -> int:
        return int(self.mean.shape[0])

    def state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "variance": self.variance, "noise": self.noise, "weights": self.weights}


@dataclass
class HeteroData:
    """Per-channel measurements y [n, P_ch] and |y|² [n], CTF group per image [n] with the groups' CTFs [G, P] on the
    half-plane pixels (None: no CTF), and optionally which quadrature orientations each image may take [n, T]."""

    y: tuple[torch.Tensor, ...]
    group: torch.Tensor
    ctf: torch.Tensor | None = None
    candidates: torch.Tensor | None = None
    yy: tuple[torch.Tensor, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.yy = tuple(y.pow(2).sum(-1) for y in self.y)
        for y in self.y:
            if not bool(torch.isfinite(y).all()):
                raise InvalidValueError("particle images contain NaN or Inf")

    @property
    def n(self) -> int:
        return int(self.y[0].shape[0])


@dataclass
class EStep:
    """Posterior weights [K, n, T] (pruned, each image's sum 1) and the marginal log-likelihood Σ_i log p(y_i)."""

    weights: torch.Tensor
    log_likelihood: float
    per_image: torch.Tensor


class HeteroEstimator:
    """Runs the E- and M-steps for a `ProjectionOperator`, data and an orientation quadrature [T, 3, 3]."""

    def __init__(
        self,
        operator: ProjectionOperator,
        data: HeteroData,
        rotations: torch.Tensor,
        chunk: int = 32,
        prune: float = 1e-3,
        progress: Callable[[str, int, int], None] | None = None,
    ):
        self.op, self.data, self.chunk, self.prune = operator, data, int(chunk), float(prune)
        self.rotations = rotations.to(dtype=operator.dtype, device=operator.device)
        self.progress = progress
        self.P_total = operator.n_measurements

    # ----------------------------------------------------------------------------------------------- shared loop
    def _blocks(self, active: torch.Tensor | None, label: str):
        """Yield (orientation slice, per-channel (S [J, N, N], P), pairs) over orientation chunks and CTF groups, with
        pairs a list of (j, images [m], per-channel z = L_j^T y [m, N]) for the images that may take orientation j.

        active [n, T] bool: which images each orientation is evaluated for (all when None)."""
        T = self.rotations.shape[0]
        n_chunks = (T + self.chunk - 1) // self.chunk
        everyone = torch.ones(self.data.n, dtype=torch.bool, device=self.op.device)
        for ci, start in enumerate(range(0, T, self.chunk)):
            sl = slice(start, min(T, start + self.chunk))
            if self.progress is not None:
                self.progress(label, ci, n_chunks)
            mask = everyone[:, None].expand(-1, sl.stop - sl.start) if active is None else active[:, sl]
            if not bool(mask.any()):
                continue
            Ls = self.op.matrices(self.rotations[sl])
            for g in torch.unique(self.data.group[mask.any(1)]).tolist():
                in_group = mask & (self.data.group == g)[:, None]
                Lgs = [L if self.data.ctf is None else L * self.data.ctf[g, ch.pixels][None, :, None].to(L) for ch, L in zip(self.op.channels, Ls)]
                grams = [(gram(Lg), int(ch.pixels.numel())) for ch, Lg in zip(self.op.channels, Lgs)]
                pairs = []
                for j in range(sl.stop - sl.start):
                    images = torch.nonzero(in_group[:, j]).squeeze(1)
                    if images.numel():
                        pairs.append((j, images, [y[images] @ Lg[j] for y, Lg in zip(self.data.y, Lgs)]))
                yield sl, grams, pairs

    def _factors(self, variance: torch.Tensor, k: int) -> list[torch.Tensor | None]:
        """Per channel F with V = F F^T: sqrt(v) (diagonal) or the Cholesky factor (full V, joint channel)."""
        if not bool((variance[k] != 0).any()):
            return [None for _ in self.op.channels]
        if variance.dim() == 3:
            return [_cholesky(variance[k][ch.columns][:, ch.columns]) for ch in self.op.channels]
        return [variance[k, ch.columns].clamp_min(0).sqrt() for ch in self.op.channels]

    def _woodburys(self, grams, variance: torch.Tensor, noise: torch.Tensor, k: int) -> list[Woodbury]:
        return [Woodbury(S, F, noise, P) for (S, P), F in zip(grams, self._factors(variance, k))]

    # ----------------------------------------------------------------------------------------------- E-step
    @torch.no_grad()
    def e_step(self, model: HeteroModel) -> EStep:
        K, n, T = model.n_classes, self.data.n, self.rotations.shape[0]
        logp = torch.full((K, n, T), -math.inf, dtype=self.op.dtype, device=self.op.device)
        for sl, grams, pairs in self._blocks(self.data.candidates, "E-step"):
            for k in range(K):
                woods = self._woodburys(grams, model.variance, model.noise, k)
                means = self.op.split(model.mean[k])
                for j, images, zs in pairs:
                    logp[k, images, sl.start + j] = sum(
                        log_likelihood(z, self.data.yy[c][images], grams[c][0][j], means[c], woods[c], j, grams[c][1]) for c, z in enumerate(zs))
        logp += torch.log(model.weights.to(logp))[:, None, None] - math.log(T)
        per_image = torch.logsumexp(logp.permute(1, 0, 2).reshape(n, -1), dim=1)
        w = torch.exp(logp - per_image[None, :, None])
        if self.prune > 0:
            peak = w.permute(1, 0, 2).reshape(n, -1).max(1).values
            w = torch.where(w >= self.prune * peak[None, :, None], w, torch.zeros_like(w))
            w = w / w.sum((0, 2))[None, :, None]
        return EStep(w, float(per_image.sum()), per_image)

    def _weighted_sums(self, estep: EStep, k: int, sl: slice, pairs, n_orientations: int):
        """Per orientation of the chunk: W_j = Σ_i w_ij [J] and per channel Z_j = Σ_i w_ij z_ij [J, N]."""
        W = torch.zeros(n_orientations, dtype=self.op.dtype, device=self.op.device)
        Z = [torch.zeros(n_orientations, ch.columns.numel(), dtype=self.op.dtype, device=self.op.device) for ch in self.op.channels]
        for j, images, zs in pairs:
            w = estep.weights[k, images, sl.start + j]
            W[j] += w.sum()
            for c, z in enumerate(zs):
                Z[c][j] += w @ z
        return W, Z

    # ----------------------------------------------------------------------------------------------- M-steps
    @torch.no_grad()
    def update_mean(self, model: HeteroModel, estep: EStep, update_noise: bool) -> float:
        """Closed-form means (and class weights; and λ² when V = 0); returns the relative change of the means."""
        K, N = model.n_classes, self.op.basis.size
        A = [[torch.zeros(ch.columns.numel(), ch.columns.numel(), dtype=self.op.dtype, device=self.op.device) for ch in self.op.channels] for _ in range(K)]
        h = [[torch.zeros(ch.columns.numel(), dtype=self.op.dtype, device=self.op.device) for ch in self.op.channels] for _ in range(K)]
        for sl, grams, pairs in self._blocks((estep.weights > 0).any(0), "mean"):
            for k in range(K):
                W, Z = self._weighted_sums(estep, k, sl, pairs, sl.stop - sl.start)
                if not bool((W > 0).any()):
                    continue
                for c, wood in enumerate(self._woodburys(grams, model.variance, model.noise, k)):
                    dA, dh = mean_normal_equations(grams[c][0], W, Z[c], wood)
                    A[k][c] += dA
                    h[k][c] += dh
        new = torch.zeros(K, N, dtype=self.op.dtype, device=self.op.device)
        explained = 0.0
        for k in range(K):
            for c, ch in enumerate(self.op.channels):
                sol = _solve_normal_equations(A[k][c], h[k][c])
                new[k, ch.columns] = sol
                explained += float(h[k][c] @ sol)
        change = float((new - model.mean).norm() / model.mean.norm().clamp_min(1e-300))
        model.mean = new
        model.weights = estep.weights.sum((1, 2)) / self.data.n
        if update_noise:
            yy = sum(float(v.sum()) for v in self.data.yy)
            model.noise = torch.tensor(max(yy - explained, 1e-300) / (self.data.n * self.P_total), dtype=self.op.dtype, device=self.op.device)
        return change

    @torch.no_grad()
    def _moments(self, model: HeteroModel, estep: EStep) -> dict[tuple[int, int], tuple]:
        """Per (class, channel): S, W, E, R (see `expected_log_likelihood`) over the orientations with weight."""
        acc: dict[tuple[int, int], list] = {}
        for sl, grams, pairs in self._blocks((estep.weights > 0).any(0), "moments"):
            J = sl.stop - sl.start
            for k in range(model.n_classes):
                W, _ = self._weighted_sums(estep, k, sl, pairs, J)
                keep = W > 0
                if not bool(keep.any()):
                    continue
                for c, ((S, P), c_bar) in enumerate(zip(grams, self.op.split(model.mean[k]))):
                    E = torch.zeros_like(S)
                    R = torch.zeros(J, dtype=S.dtype, device=S.device)
                    Sc = S @ c_bar
                    for j, images, zs in pairs:
                        w = estep.weights[k, images, sl.start + j]
                        e = zs[c] - Sc[j]
                        E[j] += e.T @ (w[:, None] * e)
                        R[j] += w @ (self.data.yy[c][images] - 2 * zs[c] @ c_bar + Sc[j] @ c_bar)
                    acc.setdefault((k, c), []).append((S[keep], W[keep], E[keep], R[keep], P))
        return {key: tuple(torch.cat([p[i] for p in parts]) for i in range(4)) + (parts[0][4],) for key, parts in acc.items()}

    def update_variance(self, model: HeteroModel, estep: EStep, max_iterations: int = 30) -> dict:
        """L-BFGS-B on the covariances of all classes and log λ² with the weights fixed; keeps the old values unless
        Q improves. Diagonal V: log v. Full V (joint channel): V = F F^T, F lower triangular with a log diagonal."""
        K = model.n_classes
        scale = float(model.mean.pow(2).mean().clamp_min(1e-300))
        floor, ceiling = 1e-10 * scale, 10 * scale
        param = _FullCovariance(self.op, model.variance, scale) if model.variance.dim() == 3 else _DiagonalCovariance(self.op, model.variance, scale)
        log_noise = math.log(float(model.noise))
        x0 = np.concatenate([param.x0, [log_noise]])
        bounds = param.bounds(floor, ceiling) + [(log_noise - 9.2, log_noise + 9.2)]
        moments = self._moments(model, estep)
        calls = {"n": 0}

        def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
            calls["n"] += 1
            theta = torch.tensor(x, dtype=self.op.dtype, device=self.op.device, requires_grad=True)
            factors, noise = param.factors(theta[:-1]), torch.exp(theta[-1])
            q = sum(expected_log_likelihood(S, W, E, R, factors[k][c], noise, P) for (k, c), (S, W, E, R, P) in moments.items())
            (-q / self.data.n).backward()
            return -float(q.detach()) / self.data.n, theta.grad.cpu().numpy()

        f0, _ = objective(x0)
        res = minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": max_iterations, "ftol": 1e-13, "gtol": 1e-9})
        improved = bool(res.fun < f0)
        if improved:
            model.variance = param.variance(torch.tensor(res.x[:-1], dtype=self.op.dtype, device=self.op.device))
            model.noise = torch.tensor(math.exp(res.x[-1]), dtype=self.op.dtype, device=self.op.device)
        return {"q_before": -f0, "q_after": -float(res.fun), "evaluations": calls["n"], "improved": improved, "message": str(res.message)}

    # ----------------------------------------------------------------------------------------------- schedule
    def run(
        self,
        model: HeteroModel,
        estimate_variance: bool = True,
        tol: float = 1e-3,
        max_mean_iterations: int = 20,
        max_rounds: int = 10,
        variance_iterations: int = 30,
        on_iteration: Callable[[dict], None] | None = None,
    ) -> tuple[HeteroModel, list[dict]]:
        """The GEM schedule from the model given (V = 0 to start); returns the model and one record per step."""
        history: list[dict] = []
        quick = 0
        for rnd in range(max_rounds):
            for it in range(max_mean_iterations):
                started = time.perf_counter()
                estep = self.e_step(model)
                no_variance = not bool((model.variance != 0).any())
                change = self.update_mean(model, estep, update_noise=no_variance)
                record = {"round": rnd, "step": "mean", "iteration": it, "log_likelihood": estep.log_likelihood, "mean_change": change,
                          "noise": float(model.noise), "class_weights": model.weights.tolist(), "seconds": time.perf_counter() - started}
                history.append(record)
                if on_iteration is not None:
                    on_iteration(record)
                if change < tol:
                    break
            quick = quick + 1 if it == 0 else 0
            if quick >= 2 or not estimate_variance or rnd == max_rounds - 1:
                break
            started = time.perf_counter()
            estep = self.e_step(model)
            info = self.update_variance(model, estep, variance_iterations)
            record = {"round": rnd, "step": "variance", "log_likelihood": estep.log_likelihood, "noise": float(model.noise), **info,
                      "seconds": time.perf_counter() - started}
            history.append(record)
            if on_iteration is not None:
                on_iteration(record)
        final = self.e_step(model)
        history.append({"round": len(history), "step": "final", "log_likelihood": final.log_likelihood, "noise": float(model.noise)})
        return model, history


def _solve_normal_equations(A: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """A c = h with a 1e-10 relative ridge, for coefficients the data barely constrain."""
    ridge = 1e-10 * A.diagonal().mean().clamp_min(1e-300) * torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    return torch.linalg.solve(A + ridge, h)


def _cholesky(V: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(V.shape[-1], dtype=V.dtype, device=V.device)
    return torch.linalg.cholesky(V + 1e-12 * V.diagonal().abs().mean().clamp_min(1e-300) * eye)


class _DiagonalCovariance:
    """log v of every class and coefficient; from V = 0, v starts at a tenth of the mean's power (on the log scale
    the gradient vanishes as v -> 0, so a tiny start stalls)."""

    def __init__(self, op: ProjectionOperator, variance: torch.Tensor, scale: float):
        self.op, self.shape = op, variance.shape
        v0 = torch.where(variance > 1e-10 * scale, variance, torch.full_like(variance, 0.1 * scale)).clamp(1e-10 * scale, 10 * scale)
        self.x0 = torch.log(v0).reshape(-1).cpu().numpy()

    def bounds(self, floor: float, ceiling: float) -> list:
        return [(math.log(floor), math.log(ceiling))] * len(self.x0)

    def variance(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.exp(theta).reshape(self.shape)

    def factors(self, theta: torch.Tensor) -> list[list[torch.Tensor]]:
        v = self.variance(theta)
        return [[v[k, ch.columns].sqrt() for ch in self.op.channels] for k in range(self.shape[0])]


class _FullCovariance:
    """V_k = F_k F_k^T in the joint channel's column order, F_k lower triangular with a log diagonal."""

    def __init__(self, op: ProjectionOperator, variance: torch.Tensor, scale: float):
        self.op, self.K, self.N = op, variance.shape[0], variance.shape[-1]
        self.columns = op.channels[0].columns
        self.tril = torch.tril_indices(self.N, self.N, device=variance.device)
        self.on_diagonal = self.tril[0] == self.tril[1]
        x = []
        for k in range(self.K):
            Vk = variance[k][self.columns][:, self.columns]
            F = _cholesky(Vk) if bool((Vk != 0).any()) else math.sqrt(0.1 * scale) * torch.eye(self.N, dtype=variance.dtype, device=variance.device)
            vals = F[self.tril[0], self.tril[1]].clone()
            vals[self.on_diagonal] = torch.log(vals[self.on_diagonal].clamp_min(1e-300))
            x.append(vals)
        self.x0 = torch.cat(x).cpu().numpy()

    def bounds(self, floor: float, ceiling: float) -> list:
        one = [(0.5 * math.log(floor), 0.5 * math.log(ceiling)) if d else (None, None) for d in self.on_diagonal.tolist()]
        return one * self.K

    def _lower(self, theta: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for vals in theta.reshape(self.K, -1):
            vals = torch.where(self.on_diagonal, torch.exp(vals), vals)
            F = vals.new_zeros(self.N, self.N)
            out.append(F.index_put((self.tril[0], self.tril[1]), vals))
        return out

    def variance(self, theta: torch.Tensor) -> torch.Tensor:
        V = theta.new_zeros(self.K, self.N, self.N)
        for k, F in enumerate(self._lower(theta)):
            V[k][self.columns[:, None], self.columns[None, :]] = F @ F.T
        return V

    def factors(self, theta: torch.Tensor) -> list[list[torch.Tensor]]:
        return [[F] for F in self._lower(theta)]


@torch.no_grad()
def known_pose_model(op: ProjectionOperator, data: HeteroData, rotations: torch.Tensor, n_classes: int = 1,
                     batch: int = 64, generator: torch.Generator | None = None, full_covariance: bool = False) -> HeteroModel:
    """The homogeneous start (V = 0): least-squares mean and noise from each image's given rotation [n, 3, 3].

    `full_covariance` starts a full V (the operator must be `joint`). With several classes every class starts from that mean plus a small random perturbation (1 % of its norm,
    drawn from `generator`) so that the E-step can break the symmetry between them.
    """
    A = [torch.zeros(ch.columns.numel(), ch.columns.numel(), dtype=op.dtype, device=op.device) for ch in op.channels]
    h = [torch.zeros(ch.columns.numel(), dtype=op.dtype, device=op.device) for ch in op.channels]
    for s in range(0, data.n, batch):
        sl = slice(s, min(data.n, s + batch))
        for c, (ch, L) in enumerate(zip(op.channels, op.matrices(rotations[sl]))):
            if data.ctf is not None:
                L = L * data.ctf[data.group[sl]][:, ch.pixels, None].to(L)
            A[c] += torch.einsum("jpa,jpb->ab", L, L)
            h[c] += torch.einsum("jpa,jp->a", L, data.y[c][sl])
    mean = torch.zeros(op.basis.size, dtype=op.dtype, device=op.device)
    explained = 0.0
    for c, ch in enumerate(op.channels):
        mean[ch.columns] = _solve_normal_equations(A[c], h[c])
        explained += float(h[c] @ mean[ch.columns])
    noise = max(sum(float(v.sum()) for v in data.yy) - explained, 1e-300) / (data.n * op.n_measurements)
    means = mean.expand(n_classes, -1).clone()
    if n_classes > 1:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        jitter = torch.randn(n_classes, mean.shape[0], generator=g, dtype=mean.dtype, device=g.device).to(mean.device)
        means += 0.01 * float(mean.norm()) * jitter / jitter.norm(dim=1, keepdim=True)
    variance = means.new_zeros((n_classes, means.shape[1], means.shape[1]) if full_covariance else means.shape)
    return HeteroModel(means, variance, torch.tensor(noise, dtype=op.dtype, device=op.device),
                       torch.full((n_classes,), 1.0 / n_classes, dtype=op.dtype, device=op.device))
