"""Real particle images for the critic: random minibatches of a stack subset, in normalised units."""

from __future__ import annotations

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.noise import masked_variance, particle_mask


class RealImages:
    """Images of particles `indices` of `stack` (indexable by numpy index arrays -> [m, N, N]), multiplied by `scale`
    (the simulator works in the same units); `source` names the file in errors."""

    def __init__(self, stack, indices: torch.Tensor, scale: float = 1.0, device: torch.device | str = "cpu", source: str = "stack"):
        if indices.numel() == 0:
            raise InvalidValueError("no particles to train on", source)
        self.stack, self.indices, self.scale = stack, indices.cpu(), float(scale)
        self.device, self.source = torch.device(device), source

    @property
    def n(self) -> int:
        return self.indices.numel()

    def load(self, positions: torch.Tensor) -> torch.Tensor:
        """Images [m, N, N] of the subset's particles at `positions` (float32, normalised; the stack refuses NaN/Inf)."""
        images = torch.as_tensor(self.stack[self.indices[positions.cpu()].numpy()])
        return images.to(self.device, torch.float32) * self.scale

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images drawn uniformly with replacement."""
        return self.load(torch.randint(self.n, (n,), generator=generator))


def image_statistics(images: torch.Tensor, radius: float) -> dict[str, float]:
    """From a sample of images [n, N, N]: overall standard deviation, the noise standard deviation outside a particle
    mask of `radius` pixels, and the signal variance inside it (masked variance minus the noise variance, >= 0)."""
    box = images.shape[-1]
    mask = particle_mask(box, radius, 2.0, images.device, images.dtype)
    outside = mask < 1e-6
    if int(outside.sum()) < 16:
        raise InvalidValueError(f"a particle radius of {radius} px leaves no background in {box}² images to estimate the noise")
    background = images[:, outside]
    noise_var = float(((background - background.mean(1, keepdim=True)) ** 2).mean())
    total = float(masked_variance(images, mask).mean())
    return {"std": float(images.std()), "noise_std": noise_var**0.5, "signal_var": max(total - noise_var, 0.0)}
