"""Hamiltonian Monte Carlo and random-walk Metropolis-Hastings for C independent chains at once (thesis §5.2).

Chain c has position q_c (any shape [C, ...]) and energy U_c(q_c) = -log target. HMC draws momenta p ~ N(0, I),
runs L leapfrog steps of Hamilton's equations dq/dt = ∂H/∂p = p, dp/dt = -∂H/∂q = -∇U (the thesis's eq. 5.23
has the sign typo), and accepts with probability min(1, exp(H_0 - H_L)) per chain. Step sizes are per chain and,
while `adapt` is on, grow by 2 % after an acceptance and shrink by 2 % after a rejection (thesis §5.2.1); turn
adaptation off after burn-in so that the chain has a fixed kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

EnergyFn = Callable[[torch.Tensor], torch.Tensor]  # q [C, ...] -> U [C]
EnergyGradFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # q -> (U [C], ∇U [C, ...])


@dataclass
class StepSize:
    """Per-chain step sizes [C] and their multiplicative adaptation (factor 1.02 in the thesis)."""

    value: torch.Tensor
    adapt: bool = True
    factor: float = 1.02

    def update(self, accepted: torch.Tensor) -> None:
        if self.adapt:
            up = torch.full_like(self.value, self.factor)
            self.value = self.value * torch.where(accepted, up, 2 - up)


def energy_and_gradient(energy: EnergyFn, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U(q) [C] and ∇U [C, ...] by autograd (chains are independent, so the gradient of Σ_c U_c is per chain)."""
    with torch.enable_grad():
        x = q.detach().requires_grad_(True)
        u = energy(x)
        (grad,) = torch.autograd.grad(u.sum(), x)
    return u.detach(), grad


def _per_chain(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """[C] -> broadcastable against q [C, ...]."""
    return x.reshape((-1,) + (1,) * (q.dim() - 1))


def _accept(log_ratio: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(log_ratio.shape, generator=generator, dtype=log_ratio.dtype, device=log_ratio.device)
    return torch.isfinite(log_ratio) & (torch.log(u) < log_ratio)


def hmc_step(q: torch.Tensor, energy_grad: EnergyGradFn, step: StepSize, n_leapfrog: int = 10,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One HMC transition of every chain: (new positions [C, ...], accepted [C] bool); adapts `step`.
    `energy_grad` returns U and ∇U (e.g. `lambda q: energy_and_gradient(U, q)`)."""
    eps = _per_chain(step.value.to(q.dtype), q)
    u0, grad = energy_grad(q)
    p0 = torch.randn(q.shape, generator=generator, dtype=q.dtype, device=q.device)
    x, p = q, p0 - 0.5 * eps * grad
    for i in range(n_leapfrog):
        x = x + eps * p
        u1, grad = energy_grad(x)
        p = p - (eps if i < n_leapfrog - 1 else 0.5 * eps) * grad
    dims = tuple(range(1, q.dim()))
    h0 = u0 + 0.5 * (p0 * p0).sum(dims)
    h1 = u1 + 0.5 * (p * p).sum(dims)
    accepted = _accept(h0 - h1, generator)
    step.update(accepted)
    return torch.where(_per_chain(accepted, q), x, q), accepted


def metropolis_step(q: torch.Tensor, energy: EnergyFn, step: StepSize, generator: torch.Generator | None = None,
                    u0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One random-walk Metropolis-Hastings transition q' = q + N(0, step²) per chain (thesis eq. 5.37): (new
    positions, their energies [C], accepted [C]); `u0` saves re-evaluating U(q); adapts `step`."""
    u0 = energy(q) if u0 is None else u0
    proposal = q + _per_chain(step.value.to(q.dtype), q) * torch.randn(q.shape, generator=generator, dtype=q.dtype, device=q.device)
    u1 = energy(proposal)
    accepted = _accept(u0 - u1, generator)
    step.update(accepted)
    return torch.where(_per_chain(accepted, q), proposal, q), torch.where(accepted, u1, u0), accepted
