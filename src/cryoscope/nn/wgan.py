"""Wasserstein GAN losses with a gradient penalty (Gulrajani et al. 2017), for every adversarial engine.

    critic:    L_D = E D(fake) - E D(real) + λ E (||∇_x D(x̂)||_2 - 1)²,   x̂ = ε real + (1 - ε) fake, ε ~ U[0, 1]
    generator: L_G = -E D(fake)
"""

from __future__ import annotations

import torch
from torch import nn


def interpolates(real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x̂ [n, ...]: one uniform ε per image on the segment from fake to real."""
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), generator=generator, dtype=real.dtype).to(real.device)
    return eps * real + (1 - eps) * fake


def gradient_penalty(critic: nn.Module, points: torch.Tensor) -> torch.Tensor:
    """E (||∇_x D(x)||_2 - 1)² over the images `points` [n, ...] (differentiable in the critic's weights)."""
    x = points.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def critic_loss(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, gp_weight: float,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """L_D for a batch of real and (detached) fake images; also returns the Wasserstein estimate and the penalty."""
    d_real, d_fake = critic(real).mean(), critic(fake.detach()).mean()
    gp = gradient_penalty(critic, interpolates(real, fake.detach(), generator))
    loss = d_fake - d_real + gp_weight * gp
    return loss, {"wasserstein": float((d_real - d_fake).detach()), "gradient_penalty": float(gp.detach())}


def generator_loss(critic: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """L_G = -E D(fake)."""
    return -critic(fake).mean()
