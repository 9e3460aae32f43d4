"""The WGAN critic: Conv2d + max-pool blocks, then FC -> hidden -> 1 (the CryoGAN slides' table, scaled to the box)."""

from __future__ import annotations

import math

import torch
from torch import nn

from cryoscope.errors import InvalidValueError


def critic_channels(box: int, base: int = 96) -> list[int]:
    """Channels of the conv blocks for images of `box` pixels: each block halves the image down to 2 x 2 and doubles
    the channels (96, 192, 384, 768 for 32², the slides' table; one more block of 768 per doubling of the box)."""
    if box < 4 or box & (box - 1):
        raise InvalidValueError(f"the critic needs a power-of-two image box >= 4, got {box}")
    blocks = int(math.log2(box)) - 1
    return [base * 2 ** min(i, 3) for i in range(blocks)]


class Critic(nn.Module):
    """D(y): images [n, N, N] -> scores [n]. Leaky-ReLU activations and no normalisation layers (a gradient penalty
    acts on each image's own gradient, which batch statistics would couple). `base` scales all widths (96: the slides)."""

    def __init__(self, box: int, base: int = 96, hidden: int = 50):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in critic_channels(box, base):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.LeakyReLU(0.2), nn.MaxPool2d(2)]
            c_in = c
        self.box = box
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * 4, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.box, self.box):
            raise InvalidValueError(f"critic built for {self.box}² images, got {tuple(images.shape[-2:])}")
        return self.head(self.features(images[:, None]))[:, 0]
