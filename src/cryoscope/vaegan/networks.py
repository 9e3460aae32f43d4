"""The VAE-GAN's encoder and critic: invariant feature extractors (`vaegan.layers`) with a dense head each."""

from __future__ import annotations

import torch
from torch import nn

from cryoscope.vaegan.layers import InvariantFeatures, Rotation


def feature_channels(base: int, blocks: int = 3) -> list[int]:
    """Widths of the conv blocks: base, 2 base, 4 base, ... (the thesis: 64² images down to 8 x 8 x 256)."""
    return [base * 2**i for i in range(blocks)]


class Encoder(nn.Module):
    """q(z | image): images [n, N, N] -> (mean [n, d], log-variance [n, d]) of a diagonal Gaussian."""

    def __init__(self, latent_dim: int = 10, base: int = 32, blocks: int = 3, invariant: bool = True, rotation: Rotation = "gabor"):
        super().__init__()
        self.features = InvariantFeatures(feature_channels(base, blocks), invariant, rotation)
        width = base * 2 ** (blocks - 1)
        self.head = nn.Sequential(nn.Linear(width, width), nn.LeakyReLU(0.2), nn.Linear(width, 2 * latent_dim))
        self.latent_dim = latent_dim

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, _ = self.features(images)
        mean, log_var = self.head(pooled).chunk(2, dim=1)
        return mean, log_var.clamp(-12.0, 6.0)


def reparameterise(mean: torch.Tensor, log_var: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = μ + σ ε, ε ~ N(0, 1) (drawn on the CPU generator)."""
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
    return mean + (0.5 * log_var).exp() * eps


def kl_divergence(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) || N(0, 1)) summed over latent dimensions, averaged over the batch (nats)."""
    return 0.5 * (mean**2 + log_var.exp() - 1 - log_var).sum(1).mean()


class Critic(nn.Module):
    """D(image) -> score [n]; `features` gives the map before global pooling, for the perceptual loss."""

    def __init__(self, base: int = 32, blocks: int = 3, invariant: bool = True, rotation: Rotation = "gabor"):
        super().__init__()
        self.extract = InvariantFeatures(feature_channels(base, blocks), invariant, rotation)
        self.head = nn.Linear(base * 2 ** (blocks - 1), 1)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(score [n], feature map [n, C, h, w])."""
        pooled, fmap = self.extract(images)
        return self.head(pooled)[:, 0], fmap

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)[0]
