"""The VAE-GAN: encoder, signal generator (3-D Fourier field or 2-D DCGAN), noise generator and critic, and the image
formation that turns latents into particle images:

    clean = Re IFFT2(CTF · F(Rᵀ (kx, ky, 0) | z))     (3-D model; R from the uniform camera)
    clean = Re IFFT2(CTF · FFT2(G(z)))                 (2-D model)
    image = clean + ε σ(z_n)                          (noise "gaussian": simulated data)
    image = clean + ε σ(z_n) √|clean|                 (noise "signal": signal-dependent, for real data)
    image = clean                                     (noise "none": the ablation)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cryoscope.errors import InvalidValueError
from cryoscope.physics.ctf import apply_ctf
from cryoscope.vaegan.generators import FourierField, ImageGenerator2D, NoiseGenerator, fourier_images, uniform_camera
from cryoscope.vaegan.networks import Critic, Encoder

NOISE_KINDS = ("gaussian", "signal", "none")


@dataclass
class VAEGANConfig:
    """Architecture. box: image size (px, power of two); model: '3d' (Fourier field, Gabor-invariant networks) or
    '2d' (DCGAN, polar-warp-invariant networks); invariant=False is the ablation without shift/rotation invariance;
    noise: see the module docstring; initial_sigma: the noise generator's starting σ (image units)."""

    box: int = 64
    model: str = "3d"
    latent_dim: int = 10
    noise_dim: int = 100
    invariant: bool = True
    noise: str = "gaussian"
    network_base: int = 32
    network_blocks: int = 3
    field_hidden: int = 64
    field_layers: int = 3
    initial_sigma: float = 1.0

    def validate(self) -> None:
        if self.model not in ("3d", "2d"):
            raise InvalidValueError(f"model must be 3d or 2d, got {self.model!r}")
        if self.noise not in NOISE_KINDS:
            raise InvalidValueError(f"noise must be one of {', '.join(NOISE_KINDS)}, got {self.noise!r}")
        if self.box < 8 or self.box & (self.box - 1):
            raise InvalidValueError(f"the VAE-GAN needs a power-of-two image box >= 8, got {self.box}")
        if self.latent_dim < 1 or self.noise_dim < 1:
            raise InvalidValueError("latent and noise dimensions must be >= 1")

    @property
    def rotation(self) -> str:
        return "gabor" if self.model == "3d" else "polar"


class VAEGAN(nn.Module):
    """The four networks. `generators` (signal + noise) is what the generator optimiser and the EMA cover."""

    def __init__(self, config: VAEGANConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        self.encoder = Encoder(c.latent_dim, c.network_base, c.network_blocks, c.invariant, c.rotation)
        self.critic = Critic(c.network_base, c.network_blocks, c.invariant, c.rotation)
        if c.model == "3d":
            self.signal = FourierField(c.box, c.latent_dim, c.field_hidden, c.field_layers)
        else:
            self.signal = ImageGenerator2D(c.box, c.latent_dim)
        self.noise = NoiseGenerator(c.box, c.noise_dim, initial_sigma=c.initial_sigma) if c.noise != "none" else None
        self.generators = nn.ModuleList([self.signal] + ([self.noise] if self.noise is not None else []))

    def clean(self, z: torch.Tensor, ctf: torch.Tensor | None, rotations: torch.Tensor | None = None) -> torch.Tensor:
        """Noise-free images [b, N, N] of latents z [b, d] under CTFs [b, N, N] (or none), at `rotations` [b, 3, 3]
        (3-D model; required there)."""
        if self.config.model == "3d":
            if rotations is None:
                raise InvalidValueError("the 3-D model needs rotations to form images")
            return fourier_images(self.signal.slices(rotations, z), ctf)
        images = self.signal(z)
        return images if ctf is None else apply_ctf(images, ctf)

    def add_noise(self, clean: torch.Tensor, z_noise: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        """clean + ε σ(z_noise) (× √|clean| for signal-dependent noise); unchanged without a noise generator."""
        if self.noise is None:
            return clean
        eps = torch.randn(clean.shape, generator=generator, dtype=clean.dtype).to(clean.device)
        sigma = self.noise(z_noise)
        if self.config.noise == "signal":
            sigma = sigma * clean.abs().clamp_min(1e-6).sqrt()
        return clean + eps * sigma

    def draw(self, n: int, generator: torch.Generator | None, device) -> dict[str, torch.Tensor]:
        """Prior draws for n images: signal latents z ~ N(0, 1), noise latents, camera rotations (3-D model)."""
        out = {"z": torch.randn(n, self.config.latent_dim, generator=generator).to(device),
               "z_noise": torch.randn(n, self.config.noise_dim, generator=generator).to(device)}
        if self.config.model == "3d":
            out["rotations"] = uniform_camera(n, generator, device)
        return out

    @torch.no_grad()
    def noise_sigma(self, n: int = 256, generator: torch.Generator | None = None) -> float:
        """The mean σ over pixels and `n` noise-latent draws (0 without a noise generator)."""
        if self.noise is None:
            return 0.0
        device = next(self.noise.parameters()).device
        z = torch.randn(n, self.config.noise_dim, generator=generator, device="cpu").to(device)
        return float(self.noise(z).mean())
