"""Gamma, Dirichlet and chi-squared draws from an explicit `torch.Generator` (torch's own take only the global RNG).

Rates, not scales: Gamma(shape a, rate b) has mean a / b (the thesis's convention; numpy's gamma takes a scale).
"""

from __future__ import annotations

import torch

_PROPOSALS = 4  # per element and round (acceptance >= 95 %: nearly every element finishes in the first round)


def standard_gamma(shape: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gamma(shape, rate 1) draws, elementwise (shape > 0), by Marsaglia & Tsang (2000) with the a < 1 boost."""
    shape = shape if isinstance(shape, torch.Tensor) else torch.as_tensor(shape)
    small = shape < 1
    a = torch.where(small, shape + 1, shape)
    d = a - 1 / 3
    c = 1 / torch.sqrt(9 * d)
    out = torch.empty_like(a)
    todo = torch.arange(a.numel(), device=a.device)
    d_flat, c_flat, out_flat = d.reshape(-1), c.reshape(-1), out.view(-1)
    while todo.numel():
        # _PROPOSALS proposals per element and round; each keeps its first accepted one (sequential rejection, batched)
        x = torch.randn(todo.numel(), _PROPOSALS, generator=generator, dtype=a.dtype, device=a.device)
        v = (1 + c_flat[todo, None] * x) ** 3
        u = torch.rand(todo.numel(), _PROPOSALS, generator=generator, dtype=a.dtype, device=a.device)
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d_flat[todo, None] * (1 - v + torch.log(v.clamp_min(1e-300))))
        done = ok.any(-1)
        first = ok.to(torch.int8).argmax(-1)
        out_flat[todo[done]] = (d_flat[todo] * v[torch.arange(todo.numel(), device=a.device), first])[done]
        todo = todo[~done]
    if bool(small.any()):
        u = torch.rand(shape.shape, generator=generator, dtype=a.dtype, device=a.device)
        out = torch.where(small, out * u ** (1 / shape), out)
    return out


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
