"""Particle images for the likelihood engine: streamed image transforms and CTFs of particle subsets."""

from __future__ import annotations

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.io.metadata import ParticleMetadata
from cryoscope.likelihood.noise import noise_spectrum, shell_power_sums
from cryoscope.particles import ctf_params
from cryoscope.physics.ctf import compute_ctf
from cryoscope.physics.fourier import fft2c


class ParticleSource:
    """Streams centred image transforms [m, N, N] and CTFs [m, N, N] (or None) of particle subsets.

    meta: particle metadata (one pixel size for all); stack: indexable by numpy index arrays -> images
    [m, N, N] (e.g. `io.mrc.ParticleStack`); use_ctf: False, or metadata without CTF, gives CTF None.
    """

    def __init__(self, meta: ParticleMetadata, stack, device: torch.device | str = "cpu", use_ctf: bool = True):
        if len(stack) != meta.n:
            raise InvalidValueError(f"{meta.n} particles in the metadata but {len(stack)} images", meta.source)
        px = meta.require_pixel_size()
        if not bool(torch.allclose(px, px[0].expand_as(px))):
            raise InvalidValueError("the likelihood engine needs one pixel size for all particles", meta.source)
        self.meta, self.stack, self.device = meta, stack, torch.device(device)
        self.pixel_size = float(px[0])
        self.ctf = ctf_params(meta) if use_ctf and meta.has_ctf else None

    @property
    def n(self) -> int:
        return self.meta.n

    def load(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image transforms (`fft2c`) and CTFs of particles `idx` [m]; NaN/Inf images are an error."""
        images = torch.as_tensor(self.stack[idx.cpu().numpy()], dtype=torch.float32, device=self.device)
        if not bool(torch.isfinite(images).all()):
            raise InvalidValueError("particle images contain NaN or Inf", self.meta.source)
        box = images.shape[-1]
        ctf = None if self.ctf is None else compute_ctf(self.ctf[idx.cpu()].to(self.device), box, self.pixel_size)
        return fft2c(images), ctf

    def power_spectrum(self, indices: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-shell sums of |Y|^2 and pixel counts over particles `indices` (to accumulate across shards)."""
        sums = counts = None
        for b in indices.split(batch_size):
            Y, _ = self.load(b)
            s, c = shell_power_sums(Y)
            sums, counts = (s, c) if sums is None else (sums + s, counts + c)
        return sums, counts


def image_power_spectrum(particles: ParticleSource, batch_size: int = 256) -> torch.Tensor:
    """Mean |Y|^2 per shell over all particles: the initial noise spectrum (an upper bound, close at low SNR)."""
    return noise_spectrum(*particles.power_spectrum(torch.arange(particles.n, device="cpu"), batch_size))


__all__ = ["ParticleSource", "image_power_spectrum"]
