"""ConceptGAN networks (dissertation §5.3.6, §5.8.2), sized to the box.

Generator (CycleGAN, Zhu et al. 2017): 7x7 conv, 2 stride-2 3x3 convs, 6 residual blocks, 2 stride-1/2 (transposed)
3x3 convs, 7x7 conv to one channel; normalisation and ReLU after every conv but the last, whose output is linear
(particle images are standardised, not bounded as tanh would need). Discriminator (DiscoGAN, Kim et al. 2017):
4x4 stride-2 convs with leaky ReLU (0.2) down to 4 x 4, then a 4x4 conv to one logit per image (5 convs for 64²).
Normalisation: "batch" (the dissertation's choice; batch statistics in training and generation alike, so an image's
transfer does not depend on statistics gathered from other inputs), "instance" (CycleGAN) or "none" (the critic of
WGAN-GP, whose gradient penalty acts on each image alone).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from cryoscope.conceptgan.domains import OBSERVED, TRANSFERS
from cryoscope.errors import InvalidValueError

Norm = Literal["batch", "instance", "none"]
N_RESIDUAL = 6


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise InvalidValueError(f"unknown normalisation {kind!r} (batch, instance or none)")


def _check_box(box: int, what: str, multiple: int) -> None:
    if box < 8 or box % multiple:
        raise InvalidValueError(f"the {what} needs a box >= 8 divisible by {multiple}, got {box}")


class ResidualBlock(nn.Module):
    """x + conv-norm-ReLU-conv-norm(x), 3x3 convs with reflection padding."""

    def __init__(self, channels: int, norm: Norm):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(norm, channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """A concept transfer: images [n, N, N] -> images [n, N, N] (N divisible by 4). `width`: channels of the first
    conv (CycleGAN: 64), doubled by each stride-2 conv."""

    def __init__(self, box: int, width: int = 32, norm: Norm = "batch"):
        super().__init__()
        _check_box(box, "generator", 4)
        w = width
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(1, w, 7), _norm(norm, w), nn.ReLU(True)]
        for c in (w, 2 * w):  # downsampling
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _norm(norm, 2 * c), nn.ReLU(True)]
        layers += [ResidualBlock(4 * w, norm) for _ in range(N_RESIDUAL)]
        for c in (4 * w, 2 * w):  # fractionally strided
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1), _norm(norm, c // 2),
                       nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, 1, 7)]
        self.net = nn.Sequential(*layers)
        self.box = box

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.box, self.box):
            raise InvalidValueError(f"generator built for {self.box}² images, got {tuple(images.shape[-2:])}")
        return self.net(images[:, None])[:, 0]


def discriminator_channels(box: int, width: int = 64) -> list[int]:
    """Channels of the stride-2 convs that bring a box of `box` (a power of two >= 8) down to 4 x 4: width, 2 width,
    4 width, 8 width, 8 width, ... (DiscoGAN at 64²: 64, 128, 256, 512)."""
    if box < 8 or box & (box - 1):
        raise InvalidValueError(f"the discriminator needs a power-of-two box >= 8, got {box}")
    return [width * 2 ** min(i, 3) for i in range(box.bit_length() - 3)]


class Discriminator(nn.Module):
    """D(image): images [n, N, N] -> logits [n] (the probability of being real is their sigmoid; a score for WGAN-GP).
    No normalisation after the first conv (DiscoGAN)."""

    def __init__(self, box: int, width: int = 64, norm: Norm = "batch"):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(discriminator_channels(box, width)):
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.Identity() if i == 0 else _norm(norm, c),
                       nn.LeakyReLU(0.2, True)]
            c_in = c
        layers.append(nn.Conv2d(c_in, 1, 4))  # 4 x 4 -> 1 x 1
        self.net = nn.Sequential(*layers)
        self.box = box

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.box, self.box):
            raise InvalidValueError(f"discriminator built for {self.box}² images, got {tuple(images.shape[-2:])}")
        return self.net(images[:, None]).flatten()


class ConceptGAN(nn.Module):
    """The transfers G1, F1 (concept X) and G2, F2 (concept Y), and the discriminators D00, D01, D10 of the observed
    sub-domains."""

    def __init__(self, box: int, width: int = 32, discriminator_width: int = 64, norm: Norm = "batch",
                 discriminator_norm: Norm = "batch"):
        super().__init__()
        self.generators = nn.ModuleDict({name: Generator(box, width, norm) for name in TRANSFERS})
        self.discriminators = nn.ModuleDict({d: Discriminator(box, discriminator_width, discriminator_norm) for d in OBSERVED})
        self.box = box
