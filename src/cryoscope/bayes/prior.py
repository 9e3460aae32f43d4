"""Prior of an isotropic Gaussian mixture (thesis eqs. 2.21-2.25): means, shared precision, weights.

Lengths in Å, so the precision s = 1 / σ² is in Å⁻². Defaults follow thesis §3.1.5: r from a single
isotropic Gaussian fitted to the data, a = 10 and b = 1000 Å² (mean component size 10 Å), α0 = 10.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryoscope.errors import InvalidValueError


@dataclass(frozen=True)
class MixturePrior:
    """μ_k ~ N(0, 1 / (r s)) ("scaled", eq. 2.22) or N(0, 1 / r) ("fixed", eq. 2.25); s ~ Gamma(a, rate b);
    w ~ Dirichlet(α0). r in Å⁻² for "fixed" and dimensionless for "scaled"."""

    r: float
    a: float = 10.0
    b: float = 1000.0
    alpha0: float = 10.0
    mean_prior: str = "scaled"

    def __post_init__(self) -> None:
        if self.mean_prior not in ("scaled", "fixed"):
            raise InvalidValueError(f"mean prior must be 'scaled' or 'fixed', got {self.mean_prior!r}")
        if not (self.r > 0 and self.a > 0 and self.b > 0 and self.alpha0 > 0):
            raise InvalidValueError(f"prior hyperparameters must be positive, got r={self.r}, a={self.a}, b={self.b}, α0={self.alpha0}")

    @staticmethod
    def from_data(points: torch.Tensor, counts: torch.Tensor, **kwargs) -> MixturePrior:
        """The default prior for binned data: r = precision of one isotropic Gaussian fitted to it about the origin,
        turned into the ratio r / s of the scaled prior with s = a / b (the prior mean precision)."""
        w = counts.double().reshape(-1)
        d = points.shape[-1]
        spread = (w[:, None] * points.double() ** 2).sum() / (w.sum() * d)  # Å², per axis
        prior = MixturePrior(1.0, **kwargs)
        r_fixed = 1.0 / float(spread)
        r = r_fixed if prior.mean_prior == "fixed" else r_fixed * prior.b / prior.a
        return MixturePrior(r, **kwargs)
