"""The CryoGAN generator: the shared forward model with random poses, the dataset's own CTFs, shifts and noise.

    y = T_s(CTF · P_R V) + n,    R ~ the assumed pose distribution, CTF of a random particle of the dataset,
                                 s ~ the shift model, n ~ the noise model.

Images are in the data's normalised units (`gan.data.RealImages`). Draws use a CPU generator (the same stream on any
device) and move to the simulator's device. Everything but the draws is differentiable,
so the critic's gradient reaches the map (or the conformation generator), the noise level and the shift spread.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cryoscope.errors import InvalidValueError
from cryoscope.physics.ctf import CTFParams, compute_ctf
from cryoscope.physics.forward import ImageFormation
from cryoscope.physics.noise import BackgroundPatches, noise_std_for_snr, particle_mask, resample_background
from cryoscope.physics.poses import rotations_from_spec
from cryoscope.representations.voxel import VoxelMap


class ShiftModel(nn.Module):
    """In-plane shifts [n, 2] (pixels): 'none', 'uniform' (in ±max_shift, fixed) or 'gaussian' (isotropic, with a
    learned spread that starts at max_shift / 2; reparameterised, so the critic's gradient reaches it)."""

    def __init__(self, kind: str = "none", max_shift: float = 0.0):
        super().__init__()
        if kind not in ("none", "uniform", "gaussian"):
            raise InvalidValueError(f"shift model must be none, uniform or gaussian, got {kind!r}")
        if kind != "none" and not max_shift > 0:
            raise InvalidValueError(f"{kind} shifts need a positive max_shift (pixels), got {max_shift}")
        self.kind, self.max_shift = kind, float(max_shift)
        self.log_spread = nn.Parameter(torch.tensor(math.log(max(max_shift, 1e-3) / 2)), requires_grad=kind == "gaussian")

    def forward(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        if self.kind == "none":
            return None
        device = self.log_spread.device
        if self.kind == "uniform":
            return (2 * torch.rand(n, 2, generator=generator).to(device) - 1) * self.max_shift
        return torch.randn(n, 2, generator=generator).to(device) * self.log_spread.exp()


class NoiseModel(nn.Module):
    """Additive noise of standard deviation sigma (learned when `learn`): white Gaussian, or real micrograph background
    crops (zero mean, unit variance each) at the images' pixel size, as CryoGAN does for EMPIAR-10061."""

    def __init__(self, sigma: float, learn: bool = True, background: BackgroundPatches | None = None, pixel_size: float | None = None):
        super().__init__()
        if not sigma > 0:
            raise InvalidValueError(f"noise standard deviation must be positive, got {sigma}")
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)), requires_grad=learn)
        if background is not None and pixel_size is None:
            raise InvalidValueError("background noise needs the images' pixel size")
        self.background = None if background is None else resample_background(background, pixel_size)

    @property
    def sigma(self) -> torch.Tensor:
        return self.log_sigma.exp()

    def forward(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, box = clean.shape[0], clean.shape[-1]
        if self.background is None:
            noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype).to(clean.device)
        else:
            noise = self.background.sample(n, box, self.background.pixel_size, generator, clean.dtype, clean.device)
        return clean + self.sigma * noise


def draw_latents(spec: str, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Latent values [n]: 'uniform' on [0, 1] (a continuous motion) or 'categorical:K' (K discrete states, the values
    0, 1/(K-1), ..., 1 with equal probability)."""
    kind, _, arg = spec.partition(":")
    if kind == "uniform":
        return torch.rand(n, generator=generator).to(device)
    if kind == "categorical":
        k = int(arg or 2)
        if k < 2:
            raise InvalidValueError(f"a categorical latent needs K >= 2 states, got {k}")
        return (torch.randint(k, (n,), generator=generator).float() / (k - 1)).to(device)
    raise InvalidValueError(f"unknown latent prior {spec!r} (uniform or categorical:K)")


class Simulator(nn.Module):
    """The generator of CryoGAN (`volume` a `gan.volume.DensityMap`) or Multi-CryoGAN (`volume` a
    `gan.volume.ConformationGenerator`, with `latent` its prior and `maps_per_batch` latent draws per batch).

    voxel_size: Å; ctf: the dataset's CTF parameters (each image takes those of a random particle), or None;
    poses: an assumed pose distribution (`physics.poses.rotations_from_spec`).
    """

    def __init__(self, volume: nn.Module, voxel_size: float, ctf: CTFParams | None, noise: NoiseModel,
                 shifts: ShiftModel | None = None, poses: str = "uniform", latent: str | None = None, maps_per_batch: int = 8):
        super().__init__()
        self.volume, self.noise = volume, noise
        self.shifts = shifts if shifts is not None else ShiftModel()
        self.voxel_size, self.ctf, self.poses = float(voxel_size), ctf, poses
        self.latent, self.maps_per_batch = latent, maps_per_batch
        self.forward_model = ImageFormation()

    @property
    def device(self) -> torch.device:
        return self.noise.log_sigma.device

    def clean(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Noise-free images [n, N, N] and their draws (rotations, shifts, CTF particle indices, latents)."""
        device = self.device
        R = rotations_from_spec(self.poses, n, generator, torch.float32).to(device)
        shifts = self.shifts(n, generator)
        draws: dict[str, torch.Tensor] = {"rotations": R}
        if shifts is not None:
            draws["shifts"] = shifts.detach()
        ctf = None
        box = self.volume.support.shape[-1]
        if self.ctf is not None:
            idx = torch.randint(len(self.ctf), (n,), generator=generator)
            ctf = compute_ctf(self.ctf[idx].to(device), box, self.voxel_size).float()
            draws["ctf_index"] = idx
        if self.latent is None:
            rep = VoxelMap(self.volume(), self.voxel_size)
            return self.forward_model(rep, R, origins_px=shifts, ctf=ctf), draws
        m = min(self.maps_per_batch, n)
        z = draw_latents(self.latent, m, generator, device)
        maps = self.volume(z)
        which = torch.arange(n, device=device) % m
        parts, order = [], []
        for j in range(m):
            sel = torch.nonzero(which == j)[:, 0]
            rep = VoxelMap(maps[j], self.voxel_size)
            parts.append(self.forward_model(rep, R[sel], origins_px=None if shifts is None else shifts[sel],
                                            ctf=None if ctf is None else ctf[sel]))
            order.append(sel)
        images = torch.cat(parts)[torch.argsort(torch.cat(order))]
        draws["latent"] = z[which]
        return images, draws

    @torch.no_grad()
    def set_snr(self, snr: float, radius: float, n: int = 256, db: bool = False, generator: torch.Generator | None = None) -> float:
        """Set the noise level so that the images have `snr` (as `cryoscope simulate` defines it: the masked signal
        variance over the noise variance, in a particle mask of `radius` px) for the current map; returns sigma."""
        clean, _ = self.clean(n, generator)
        sigma = float(noise_std_for_snr(clean, snr, particle_mask(clean.shape[-1], radius, device=clean.device), db))
        self.noise.log_sigma.fill_(math.log(sigma))
        return sigma

    def forward(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Simulated particle images [n, N, N]."""
        clean, _ = self.clean(n, generator)
        return self.noise(clean, generator)
