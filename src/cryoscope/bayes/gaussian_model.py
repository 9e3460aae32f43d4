"""The Gaussian-noise model of thesis chapter 5 and appendix D, with the CTF added to the forward model.

Image i is y_i = λ CTF_i ⊛ ỹ_i + noise, noise ~ N(0, 1/β) per pixel, with the unnormalised mixture projection
(eqs. 5.2, D.5-D.8)

    ỹ_ij = Σ_k exp(-s |x_ij - ((R_i μ_k)_xy + t_i)|² / 2),

means μ_k (Å), one precision s (Å⁻²), one scale λ, rotations R_i (RELION's A) and in-plane shifts t_i (Å).
Priors: μ_k ~ N(0, 1/r); β ~ Gamma(a_β, rate b_β); flat for s > 0, λ and t (eqs. 5.5-5.10). Energies use the
corrected eqs. 5.16-5.17 (issue 5): -log p(D | θ) = -(PN/2) log β + β/2 Σ (y - ŷ)², and the β prior adds
-(a_β - 1) log β + b_β β.

The CTF (thesis §5.4 proposes it) multiplies the centred transform of ỹ on a grid padded `pad` times, so that
its point-spread function does not wrap around; the centre N × N is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryoscope.bayes.mixture import MixtureState
from cryoscope.errors import InvalidValueError
from cryoscope.physics import gmm
from cryoscope.physics.ctf import CTFParams, apply_ctf, compute_ctf
from cryoscope.physics.fourier import centered_coords


@dataclass(frozen=True)
class GaussianPrior:
    """r: precision of the mean prior (Å⁻²); (a_β, b_β): Gamma prior (shape, rate) of the noise precision."""

    r: float
    a_beta: float = 1.0
    b_beta: float = 0.0

    def __post_init__(self) -> None:
        if not (self.r > 0 and self.a_beta > 0 and self.b_beta >= 0):
            raise InvalidValueError(f"need r > 0, a_β > 0 and b_β >= 0, got {self.r}, {self.a_beta}, {self.b_beta}")

    @staticmethod
    def from_images(images: torch.Tensor, pixel_size: float, **kwargs) -> GaussianPrior:
        """r = 1 / (per-axis spread, Å², of the images' positive density about the box centre)."""
        n = images.shape[-1]
        x = centered_coords(n, images.device, torch.float64) * pixel_size
        w = images.double().clamp_min(0).sum(0)
        r2 = x[None, :] ** 2 + x[:, None] ** 2
        spread = float((w * r2).sum() / (2 * w.sum()))
        return GaussianPrior(1.0 / spread, **kwargs)


@dataclass
class GaussianState:
    """means [K, 3] (Å), precision s (Å⁻²), scale λ and noise precision β (0-d tensors). With a point `group`
    [G, 3, 3] (`geometry.symmetry`) the means are the asymmetric unit and the density has all G K copies G_g μ_k."""

    means: torch.Tensor
    precision: torch.Tensor
    scale: torch.Tensor
    noise_precision: torch.Tensor
    group: torch.Tensor | None = None

    @property
    def sigma(self) -> float:
        return float(self.precision.rsqrt())

    def copies(self, means: torch.Tensor | None = None) -> torch.Tensor:
        """All component centres [G K, 3] (copy-major) of `means` (default: the state's); differentiable."""
        mu = self.means if means is None else means
        return mu if self.group is None else torch.einsum("gij,kj->gki", self.group.to(mu.dtype), mu).reshape(-1, 3)

    def clone(self) -> GaussianState:
        return GaussianState(self.means.clone(), self.precision.clone(), self.scale.clone(), self.noise_precision.clone(), self.group)

    def as_mixture(self, normalised: bool = False) -> MixtureState:
        """The density (all copies) as a `MixtureState` whose weights are the components' masses λ (2π/s)^(3/2)
        (for rendering), or with `normalised` equal weights summing to 1 (the shape only)."""
        means = self.copies()
        k = means.shape[0]
        mass = torch.full((k,), 1 / k, dtype=means.dtype, device=means.device) if normalised else (self.scale * (2 * math.pi / self.precision) ** 1.5).expand(k).clone()
        return MixtureState(means, self.precision, mass)


@dataclass
class ImageSet:
    """Images [P, N, N] (any sign) on a grid of `pixel_size` Å, and optionally their CTFs [P, M, M] on the centred
    Fourier grid of the padded box M = pad N."""

    images: torch.Tensor
    pixel_size: float
    ctf: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dim() != 3 or self.images.shape[1] != self.images.shape[2]:
            raise InvalidValueError(f"images must be [P, N, N], got {tuple(self.images.shape)}")
        if not bool(torch.isfinite(self.images).all()):
            raise InvalidValueError("images contain NaN/Inf")
        if self.ctf is not None and (self.ctf.dim() != 3 or self.ctf.shape[0] != self.images.shape[0]
                                     or self.ctf.shape[1] < self.box):
            raise InvalidValueError(f"CTFs must be [P, M, M] with M >= N = {self.box}, got {tuple(self.ctf.shape)}")

    @staticmethod
    def with_ctf(images: torch.Tensor, pixel_size: float, ctf: CTFParams, pad: int = 2) -> ImageSet:
        """Images with their CTFs evaluated on a box padded `pad` times."""
        m = pad * images.shape[-1]
        return ImageSet(images, pixel_size, compute_ctf(ctf.to(images.device, images.dtype), m, pixel_size))

    @property
    def n_images(self) -> int:
        return self.images.shape[0]

    @property
    def box(self) -> int:
        return self.images.shape[-1]

    @property
    def n_pixels(self) -> int:
        return self.images.shape[0] * self.box**2


def unit_images(means: torch.Tensor, precision, rotations: torch.Tensor, shifts: torch.Tensor, data: ImageSet,
                ctf: torch.Tensor | None = None) -> torch.Tensor:
    """ỹ [n, N, N] for rotations [n, 3, 3] and shifts [n, 2] (Å), with `ctf` [n, M, M] applied if given
    (default: the data's CTFs, which needs n = P). Differentiable in every argument.

    The exact mixture projection of `physics.gmm` with masses 2πσ²/h² (h = pixel size), so that each component
    peaks at 1 (eq. 5.2)."""
    ctf = data.ctf if ctf is None else ctf
    n = data.box
    m = n if ctf is None else ctf.shape[-1]
    var = 1 / torch.as_tensor(precision, dtype=means.dtype, device=means.device)
    k = means.shape[0]
    y = gmm.project(means, (2 * math.pi * var / data.pixel_size**2).expand(k), var.sqrt().expand(k), rotations, m,
                    data.pixel_size, shifts)
    if ctf is None:
        return y
    a = m // 2 - n // 2
    return apply_ctf(y, ctf)[:, a : a + n, a : a + n]


def scale_conditional(y: torch.Tensor, unit: torch.Tensor, noise_precision) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean Σ y ỹ / Σ ỹ² and precision β Σ ỹ² of the Gaussian p(λ | rest) (eqs. 5.39-5.40, D.42-D.43)."""
    yy = (y * unit).sum()
    uu = (unit * unit).sum()
    return yy / uu, noise_precision * uu


def precision_energy(y: torch.Tensor, unit: torch.Tensor, noise_precision) -> torch.Tensor:
    """Ẽ(s) = -log p(s | rest) with λ integrated out, up to a constant (eqs. 5.36, D.39), given ỹ(s)."""
    uu = (unit * unit).sum()
    yu = (y * unit).sum()
    return 0.5 * torch.log(0.5 * noise_precision * uu) - 0.5 * noise_precision * (yu * yu / uu - (y * y).sum())


def noise_precision_shape_rate(residual_ss: torch.Tensor, n_pixels: int, prior: GaussianPrior):
    """Gamma(shape, rate) of p(β | rest): (PN/2 + a_β, Σ (y - ŷ)²/2 + b_β) (eqs. 5.46-5.48 corrected)."""
    return 0.5 * n_pixels + prior.a_beta, 0.5 * residual_ss + prior.b_beta


def log_posterior(state: GaussianState, residual_ss: torch.Tensor, n_pixels: int, prior: GaussianPrior) -> torch.Tensor:
    """-E(θ) (eqs. 5.14-5.17 corrected), up to a constant; residual_ss = Σ (y - λ ỹ)²."""
    beta = state.noise_precision
    log_lik = 0.5 * n_pixels * torch.log(beta) - 0.5 * beta * residual_ss
    log_prior = -0.5 * prior.r * (state.means**2).sum() + (prior.a_beta - 1) * torch.log(beta) - prior.b_beta * beta
    return log_lik + log_prior
