"""Gamma, Dirichlet and chi-squared draws from an explicit `torch.Generator` (`torch.distributions` takes only the
global RNG).

Rates, not scales: Gamma(shape a, rate b) has mean a / b (the thesis's convention; numpy's gamma takes a scale).
"""

from __future__ import annotations

import torch


def standard_gamma(shape: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gamma(shape, rate 1) draws, elementwise (shape > 0), from the generator's stream (torch's native sampler:
    Marsaglia & Tsang with the a < 1 boost, one kernel on CPU or GPU)."""
    shape = shape if isinstance(shape, torch.Tensor) else torch.as_tensor(shape)
    return torch._standard_gamma(shape, generator=generator)


def gamma(shape: torch.Tensor | float, rate: torch.Tensor | float, generator: torch.Generator | None = None,
          dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Gamma(shape, rate) draws (mean shape / rate), broadcast over both, on the generator's device."""
    device = None if generator is None else generator.device
    shape, rate = torch.broadcast_tensors(torch.as_tensor(shape, dtype=dtype, device=device),
                                          torch.as_tensor(rate, dtype=dtype, device=device))
    return standard_gamma(shape.contiguous(), generator) / rate


def dirichlet(concentration: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dirichlet draws over the last axis of `concentration` (all > 0)."""
    g = standard_gamma(concentration.contiguous(), generator)
    return g / g.sum(-1, keepdim=True)


def chi2(dof: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Chi-squared draws with `dof` degrees of freedom (0 gives 0)."""
    dof = dof if isinstance(dof, torch.Tensor) else torch.as_tensor(dof)
    draw = 2 * standard_gamma(dof.clamp_min(1e-12) / 2, generator)
    return torch.where(dof > 0, draw, torch.zeros_like(draw))
