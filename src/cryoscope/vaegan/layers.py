"""Shift- and rotation-invariant CNN pieces for the VAE-GAN encoder and critic.

Shift invariance: stride-1 convolutions with circular padding commute with circular shifts, adaptive polyphase
sampling (APS, Chaman & Dokmanic 2021) downsamples without breaking that, and global average pooling removes what is
left, so conv + APS + pooling is exactly invariant to integer circular shifts of the image.
Rotation invariance: a polar warp about the centre pixel turns rotations into circular shifts along the angle axis
(2-D model; the warp gives up shift invariance, so images must be centred), or trainable Gabor filters pooled over
orientations make every spatial filter commute with 90° rotations (3-D model). The ablation (`invariant=False`) uses
zero padding, max pooling, no polar warp and plain convolutions instead of the Gabor filters.

Pixel convention: images [..., H, W] indexed (y, x), centre pixel (H // 2, W // 2). No batch normalisation anywhere:
a gradient penalty needs each image's output to depend on that image alone.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cryoscope.errors import InvalidValueError

Rotation = Literal["none", "polar", "gabor"]


def unit_directions(n: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos θ_k, sin θ_k) [n] for θ_k = 2πk / n. When n % 4 == 0 the four quadrants are built from the first by exact
    quarter turns, so that θ_{k + n/4} is exactly θ_k rotated by 90° (bit-exact 90° symmetry of grids built on them)."""
    quarter = n // 4 if n % 4 == 0 else n
    theta = 2 * math.pi * torch.arange(quarter, dtype=dtype, device=device) / n
    cos, sin = theta.cos(), theta.sin()
    if quarter == n:
        return cos, sin
    return torch.cat([cos, -sin, -cos, sin]), torch.cat([sin, cos, -sin, -cos])


def aps_downsample(x: torch.Tensor) -> torch.Tensor:
    """Adaptive polyphase sampling: x [n, c, H, W] (H, W even) -> [n, c, H/2, W/2], per sample the polyphase component
    x[..., i::2, j::2] of largest l2 norm over (c, H, W); ties go to the first in (0,0), (0,1), (1,0), (1,1) order."""
    if x.dim() != 4 or x.shape[-2] % 2 or x.shape[-1] % 2:
        raise InvalidValueError(f"polyphase sampling needs [n, c, H, W] with even H and W, got {tuple(x.shape)}")
    phases = torch.stack([x[..., i::2, j::2] for i in (0, 1) for j in (0, 1)], dim=1)
    best = phases.flatten(2).norm(dim=2).argmax(dim=1)
    return phases[torch.arange(x.shape[0], device=x.device), best]


class APSDownsample(nn.Module):
    """`aps_downsample` as a layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return aps_downsample(x)


class PolarWarp(nn.Module):
    """Images [n, H, W] or [n, 1, H, W] -> [n, 1, n_radii, n_angles], bilinear samples at (y, x) = centre + r_j (sin θ_k,
    cos θ_k) about the centre pixel (H // 2, W // 2), θ_k = 2πk / n_angles, r_j = (j + 0.5) radius / n_radii (pixels).
    Defaults from the image: n_radii = H // 2, n_angles = H, radius = min(H, W) // 2 - 1 (pixels).
    Rotating the image by 90° (torch.rot90, then a roll by +1 along y, i.e. (dy, dx) -> (-dx, dy) about the centre)
    rolls the output by -n_angles / 4 along the angle axis when n_angles % 4 == 0."""

    def __init__(self, n_radii: int | None = None, n_angles: int | None = None, radius: float | None = None):
        super().__init__()
        self.n_radii, self.n_angles, self.radius = n_radii, n_angles, radius

    def grid(self, height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Sampling grid [n_radii, n_angles, 2] in grid_sample's normalised (x, y) with align_corners=True."""
        n_radii, n_angles = self.n_radii or height // 2, self.n_angles or height
        radius = min(height, width) // 2 - 1 if self.radius is None else self.radius
        if not radius > 0 or n_radii < 1 or n_angles < 1:
            raise InvalidValueError(f"polar grid needs a positive radius and sizes, got radius {radius} px and "
                                    f"{n_radii} x {n_angles} samples for {height} x {width} images")
        cos, sin = unit_directions(n_angles, dtype, device)
        r = (torch.arange(n_radii, dtype=dtype, device=device)[:, None] + 0.5) * (radius / n_radii)
        y, x = height // 2 + r * sin, width // 2 + r * cos
        return torch.stack([2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1], dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 4 and images.shape[1] == 1:
            images = images[:, 0]
        if images.dim() != 3:
            raise InvalidValueError(f"polar warp needs images [n, H, W] or [n, 1, H, W], got {tuple(images.shape)}")
        grid = self.grid(*images.shape[-2:], images.dtype, images.device)
        return F.grid_sample(images[:, None], grid.expand(images.shape[0], *grid.shape), mode="bilinear",
                             padding_mode="zeros", align_corners=True)


class GaborBank(nn.Module):
    """Trainable Gabor filters applied depthwise with circular padding: [n, in_channels, H, W] -> [n, n_filters, H, W].
    Filter f (wavelength λ, envelope width σ in pixels, aspect γ, phase ψ) reads input channel f // (n_filters /
    in_channels) at orientations θ_k = 2πk / n_orientations and keeps the largest response over k:
        g_θ(x, y) = exp(-(x'² + γ² y'²) / 2σ²) cos(2π x' / λ + ψ),   x' = x cos θ + y sin θ,   y' = -x sin θ + y cos θ
    on an odd kernel_size grid centred at kernel_size // 2. With n_orientations % 4 == 0 a 90° rotation permutes the
    orientations, so the layer commutes with 90° rotations of the (periodic) image about any pixel."""

    def __init__(self, in_channels: int, n_filters: int, n_orientations: int = 8, kernel_size: int = 5):
        super().__init__()
        if n_filters % in_channels:
            raise InvalidValueError(f"Gabor filters ({n_filters}) must be a multiple of the channels ({in_channels})")
        if kernel_size % 2 == 0 or n_orientations < 1:
            raise InvalidValueError(f"Gabor bank needs an odd kernel size and >= 1 orientation, "
                                    f"got {kernel_size} and {n_orientations}")
        self.in_channels, self.n_filters = in_channels, n_filters
        self.n_orientations, self.kernel_size = n_orientations, kernel_size
        wavelength = 2 + (kernel_size - 2) * torch.rand(n_filters)
        self.log_wavelength = nn.Parameter(wavelength.log())
        self.log_sigma = nn.Parameter((0.56 * wavelength).log())
        self.log_aspect = nn.Parameter(torch.full((n_filters,), math.log(0.5)))
        self.phase = nn.Parameter(2 * math.pi * torch.rand(n_filters))

    def kernels(self) -> torch.Tensor:
        """Filters [n_filters * n_orientations, 1, k, k] (filter-major), rows y and columns x in pixels from the centre."""
        dtype, device = self.phase.dtype, self.phase.device
        cos, sin = unit_directions(self.n_orientations, dtype, device)
        offsets = torch.arange(self.kernel_size, dtype=dtype, device=device) - self.kernel_size // 2
        y, x = offsets[:, None], offsets[None, :]
        along = x * cos[:, None, None] + y * sin[:, None, None]  # [O, k, k]
        across = y * cos[:, None, None] - x * sin[:, None, None]
        wavelength, sigma, aspect, phase = (p.view(-1, 1, 1, 1) for p in (
            self.log_wavelength.exp(), self.log_sigma.exp(), self.log_aspect.exp(), self.phase))
        envelope = torch.exp(-(along**2 + (aspect * across) ** 2) / (2 * sigma**2))
        carrier = torch.cos(2 * math.pi * along / wavelength + phase)
        return (envelope * carrier).reshape(-1, 1, self.kernel_size, self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InvalidValueError(f"Gabor bank expects [n, {self.in_channels}, H, W], got {tuple(x.shape)}")
        pad = self.kernel_size // 2
        responses = F.conv2d(F.pad(x, (pad,) * 4, mode="circular"), self.kernels(), groups=self.in_channels)
        return responses.unflatten(1, (self.n_filters, self.n_orientations)).amax(dim=2)


def _spatial_conv(c_in: int, c_out: int, invariant: bool, rotation: Rotation,
                  n_orientations: int, gabor_size: int) -> nn.Module:
    """One block's stride-1 convolution: 3x3 (circular or zero padding), or for rotation='gabor' a depthwise Gabor bank
    (c_out rounded up to a multiple of c_in filters) then a 1x1 channel mix; the ablation's Gabor is a plain conv."""
    if rotation != "gabor":
        return nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="circular" if invariant else "zeros")
    if not invariant:
        return nn.Conv2d(c_in, c_out, gabor_size, padding=gabor_size // 2)
    n_filters = c_in * -(-c_out // c_in)
    return nn.Sequential(GaborBank(c_in, n_filters, n_orientations, gabor_size), nn.Conv2d(n_filters, c_out, 1))


class InvariantFeatures(nn.Module):
    """DCGAN-style feature extractor: images [n, H, W] (H = W a power of two) -> (pooled [n, C], feature map
    [n, C, h, w]), C = channels[-1], h = H / 2^blocks (w likewise; the polar warp makes the map H/2 x H first).
    Each block: stride-1 conv, LeakyReLU(0.2), downsample by 2 (APS if invariant, else max pooling); pooled is the
    global average of the map (the map itself is what a perceptual loss compares). No batch normalisation (a gradient
    penalty needs per-image independence).
    invariant=True: circular padding and APS (exactly invariant to circular shifts); rotation='polar' warps the image
    first (invariant to 90° rotations about the centre pixel, no longer to shifts); rotation='gabor' makes the first
    conv a Gabor bank pooled over orientations + 1x1 conv, as the thesis does (its responses rotate with the image; the
    later learned 3x3 convs make the whole network only approximately rotation-invariant, and stay shift-invariant;
    a Gabor bank in every block would be exact for 90° but is 12x slower). invariant=False (the ablation): zero
    padding, max pooling, no polar warp, a plain gabor_size conv in place of the Gabor bank."""

    def __init__(self, channels: list[int], invariant: bool = True, rotation: Rotation = "none",
                 n_orientations: int = 8, gabor_size: int = 5):
        super().__init__()
        if rotation not in ("none", "polar", "gabor"):
            raise InvalidValueError(f"rotation must be none, polar or gabor, got {rotation!r}")
        if not channels:
            raise InvalidValueError("the feature extractor needs at least one block of channels")
        self.invariant, self.rotation = invariant, rotation
        self.warp = PolarWarp() if invariant and rotation == "polar" else None
        layers: list[nn.Module] = []
        for c_in, c_out in zip([1, *channels[:-1]], channels):
            first_rotation = rotation if c_in == 1 else "none"  # the thesis: Gabor filters in the first layer only
            layers += [_spatial_conv(c_in, c_out, invariant, first_rotation, n_orientations, gabor_size), nn.LeakyReLU(0.2),
                       APSDownsample() if invariant else nn.MaxPool2d(2)]
        self.blocks = nn.Sequential(*layers)
        self.n_blocks = len(channels)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = images.shape[-1]
        if images.dim() != 3 or images.shape[-2] != size or size < 2 or size & (size - 1):
            raise InvalidValueError(f"features need square power-of-two images [n, H, H], got {tuple(images.shape)}")
        smallest = size // 2 if self.warp is not None else size
        if smallest < 2**self.n_blocks:
            raise InvalidValueError(f"{size}² images are too small for {self.n_blocks} downsampling blocks")
        x = self.warp(images) if self.warp is not None else images[:, None]
        features = self.blocks(x)
        return features.mean(dim=(-2, -1)), features
