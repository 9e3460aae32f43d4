"""The VAE-GAN's generators: a uniform camera, a conditional Fourier-space coordinate network (3-D model), a DCGAN
image generator (2-D model) and the noise generator.

3-D model (pi-GAN / SIREN style): F(k | z) at 3-D frequencies k (cycles/px, |k_i| <= 1/2) is a sine network whose
layers are FiLM-modulated by a mapping network of z; a particle's clean image is Re IFFT2(CTF · F(Rᵀ (kx, ky, 0) | z)),
a central slice of the same function that `FourierField.render` turns into a map. F is made Hermitian,
F(-k) = conj F(k), so images and maps are real, and it carries a learned radial envelope (the amplitude falls by
orders of magnitude from the centre to Nyquist, which a sine network's O(1) output cannot do by itself).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cryoscope.errors import InvalidValueError
from cryoscope.physics.fourier import centered_coords, freq_grid_2d, ifft2c, ifft3c


def gram_schmidt(v: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [n, 3, 3] from 6-D vectors [n, 6]: columns b1 = a1/|a1|, b2 = a2 ⊥ b1 normalised, b3 = b1 × b2
    (a proper rotation, det +1). For Gaussian vectors the rotations are uniform (Haar) on SO(3)."""
    if v.dim() != 2 or v.shape[1] != 6:
        raise InvalidValueError(f"Gram-Schmidt needs 6-D vectors [n, 6], got {tuple(v.shape)}")
    a1, a2 = v[:, :3], v[:, 3:]
    b1 = a1 / a1.norm(dim=1, keepdim=True)
    u2 = a2 - (b1 * a2).sum(1, keepdim=True) * b1
    b2 = u2 / u2.norm(dim=1, keepdim=True)
    return torch.stack([b1, b2, torch.linalg.cross(b1, b2)], dim=2)


def uniform_camera(n: int, generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """n uniform random rotations [n, 3, 3]: Gram-Schmidt of standard-normal 6-D vectors (drawn on the CPU)."""
    return gram_schmidt(torch.randn(n, 6, generator=generator, dtype=torch.float64)).to(device, dtype)


class FiLMSiren(nn.Module):
    """Sine layers sin(ω0 (γ(z) ⊙ (W x + b) + β(z))) with (γ, β) from a mapping network of z (pi-GAN)."""

    def __init__(self, in_features: int, latent_dim: int, hidden: int = 64, layers: int = 3, out_features: int = 2,
                 omega0: float = 30.0, mapping_hidden: int = 64):
        super().__init__()
        self.omega0, self.hidden, self.n_layers = omega0, hidden, layers
        self.linears = nn.ModuleList([nn.Linear(in_features if i == 0 else hidden, hidden) for i in range(layers)])
        self.mapping = nn.Sequential(nn.Linear(max(latent_dim, 1), mapping_hidden), nn.LeakyReLU(0.2),
                                     nn.Linear(mapping_hidden, mapping_hidden), nn.LeakyReLU(0.2),
                                     nn.Linear(mapping_hidden, 2 * hidden * layers))
        self.out = nn.Linear(hidden, out_features)
        with torch.no_grad():  # SIREN initialisation: first layer U(-1/in, 1/in), later ones U(-√(6/h)/ω0, √(6/h)/ω0)
            for i, lin in enumerate(self.linears):
                bound = 1 / in_features if i == 0 else math.sqrt(6 / hidden) / omega0
                lin.weight.uniform_(-bound, bound)
            self.out.weight.uniform_(-math.sqrt(6 / hidden) / omega0, math.sqrt(6 / hidden) / omega0)
            self.mapping[-1].weight.mul_(0.25)
            self.mapping[-1].bias.zero_()
            self.mapping[-1].bias.view(layers, 2, hidden)[:, 0] = 1.0  # γ starts at 1, β at 0

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x [b, m, in_features] at latents z [b, latent_dim] -> [b, m, out_features]."""
        film = self.mapping(z).view(z.shape[0], self.n_layers, 2, 1, self.hidden)
        h = x
        for i, lin in enumerate(self.linears):
            h = torch.sin(self.omega0 * (film[:, i, 0] * lin(h) + film[:, i, 1]))
        return self.out(h)


class FourierField(nn.Module):
    """F(k | z): a Hermitian 3-D Fourier transform (image units) at frequencies k [.., 3] in cycles/px, for a map box
    `box` px. `frequency_scale` maps |k| <= 1/2 onto the network's input range."""

    def __init__(self, box: int, latent_dim: int = 10, hidden: int = 64, layers: int = 3, omega0: float = 30.0,
                 frequency_scale: float = 2.0):
        super().__init__()
        self.box, self.latent_dim, self.frequency_scale = int(box), int(latent_dim), float(frequency_scale)
        self.net = FiLMSiren(3, latent_dim, hidden, layers, 2, omega0)
        n_shells = box // 2 + 2
        shells = torch.arange(n_shells, dtype=torch.float32)
        # envelope log-amplitude per Fourier shell, linearly interpolated; starts as a Gaussian fall-off
        self.log_envelope = nn.Parameter(math.log(box) - 0.5 * (shells / (0.15 * box)) ** 2)

    def envelope(self, k: torch.Tensor) -> torch.Tensor:
        """Amplitude envelope at frequencies k [..., 3] (cycles/px), interpolated between shells."""
        r = (k.norm(dim=-1) * self.box).clamp(max=self.log_envelope.numel() - 1.001)
        i = r.floor().long()
        w = r - i
        return torch.exp((1 - w) * self.log_envelope[i] + w * self.log_envelope[i + 1])

    def raw(self, k: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Complex network output [b, m] at frequencies k [b, m, 3] (cycles/px), before Hermitian symmetrisation."""
        out = self.net(k * self.frequency_scale, z)
        return torch.complex(out[..., 0], out[..., 1]) * self.envelope(k)

    def slices(self, rotations: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Central slices [b, N, N] (centred Fourier grid of the box) at rotations [b, 3, 3]: k = Rᵀ (kx, ky, 0), the
        convention of `physics.forward.ImageFormation`, so the image at R is the projection of `render(z)` at R."""
        n = self.box
        grid = freq_grid_2d(n, rotations.device, rotations.dtype).reshape(-1, 2) / n
        plane = torch.cat([grid, torch.zeros_like(grid[:, :1])], 1)
        k = torch.einsum("bji,mj->bmi", rotations, plane)
        return hermitian(self.raw(k, z).reshape(-1, n, n), 2)

    @torch.no_grad()
    def render(self, z: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """The map [N, N, N] ([z, y, x], image units per voxel; projections sum voxels) of one latent z [latent_dim]:
        IFFT3 of F on the grid (by the central-slice theorem its projections are the generated images)."""
        n = self.box
        c = centered_coords(n, z.device, torch.float32) / n
        kz, ky, kx = torch.meshgrid(c, c, c, indexing="ij")
        k = torch.stack([kx, ky, kz], -1).reshape(-1, 3)
        F = torch.cat([self.raw(part[None], z[None])[0] for part in k.split(chunk)])
        return ifft3c(hermitian(F.reshape(n, n, n), 3)).real


def hermitian(F: torch.Tensor, ndim: int) -> torch.Tensor:
    """½ (F(k) + conj F(-k)) on a centred grid (last `ndim` axes, even size N), with the unpaired k = -N/2 planes set to
    zero, so that the inverse transform is real."""
    dims = tuple(range(-ndim, 0))
    mirrored = torch.roll(torch.flip(F, dims), (1,) * ndim, dims)  # index i -> (N - i) mod N, i.e. k -> -k
    out = 0.5 * (F + mirrored.conj())
    for d in dims:
        out = out.index_fill(d, torch.tensor([0], device=F.device), 0)
    return out


class ImageGenerator2D(nn.Module):
    """DCGAN generator: z [b, latent_dim] -> clean images [b, N, N] (N a power of two >= 8), upsampling from 4 x 4."""

    def __init__(self, box: int, latent_dim: int = 10, base: int = 32):
        super().__init__()
        blocks = int(math.log2(box)) - 2
        if box < 8 or box & (box - 1):
            raise InvalidValueError(f"the 2-D generator needs a power-of-two box >= 8, got {box}")
        widths = [base * 2 ** min(blocks - 1 - i, 3) for i in range(blocks)]
        self.box, self.latent_dim = box, latent_dim
        self.stem = nn.Linear(latent_dim, widths[0] * 16)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:] + [widths[-1]]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1),
                       nn.BatchNorm2d(c_out), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Conv2d(widths[-1], 1, 3, padding=1))
        self.width0 = widths[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(z).view(-1, self.width0, 4, 4))[:, 0]


class NoiseGenerator(nn.Module):
    """A per-pixel noise standard deviation map σ(z_n) [b, N, N] (> 0) from a noise latent z_n [b, noise_dim]
    (DCGAN-style upsampling); `initial_sigma` sets the starting level (the data's background estimate)."""

    def __init__(self, box: int, noise_dim: int = 100, base: int = 16, initial_sigma: float = 1.0):
        super().__init__()
        if not initial_sigma > 0:
            raise InvalidValueError(f"the initial noise level must be positive, got {initial_sigma}")
        self.shape = ImageGenerator2D(box, noise_dim, base)
        with torch.no_grad():
            last = self.shape.body[-1]
            last.weight.mul_(0.01)
            last.bias.fill_(math.log(math.expm1(initial_sigma)))  # softplus^-1
        self.noise_dim = noise_dim

    def forward(self, z_noise: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.shape(z_noise))


def fourier_images(slices: torch.Tensor, ctf: torch.Tensor | None) -> torch.Tensor:
    """Real images [b, N, N] from centred Fourier slices [b, N, N] (times the CTF [b, N, N] when given)."""
    return ifft2c(slices if ctf is None else slices * ctf).real
