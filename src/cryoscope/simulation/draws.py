"""Per-particle random draws for a simulated dataset: poses, shifts, CTF, classes and latents."""

from __future__ import annotations

import math

import numpy as np
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics import poses
from cryoscope.simulation.config import SimulationConfig


def _spec(text: str) -> tuple[str, str]:
    kind, _, arg = text.partition(":")
    return kind.strip().lower(), arg.strip()


def draw_rotations(config: SimulationConfig, g: torch.Generator) -> torch.Tensor:
    """Rotations [n, 3, 3] (float64) from the pose distribution named by `config.poses`."""
    return poses.rotations_from_spec(config.poses, config.n_particles, g, torch.float64)


def draw_latents(config: SimulationConfig, g: torch.Generator) -> torch.Tensor:
    """Trajectory coordinates [n] in [0, 1] (0 = first model, 1 = second)."""
    n = config.n_particles
    kind, arg = _spec(config.latent)
    try:
        if kind == "uniform":
            return torch.rand(n, generator=g, dtype=torch.float64)
        if kind == "beta":
            a, b = (float(v) for v in arg.split(","))
            rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=g)))
            return torch.from_numpy(rng.beta(a, b, n))
        if kind == "normal":
            mu, sigma = (float(v) for v in arg.split(","))
            return (mu + sigma * torch.randn(n, generator=g, dtype=torch.float64)).clamp(0, 1)
    except ValueError:
        raise InvalidValueError(f"bad latent distribution {config.latent!r}") from None
    raise InvalidValueError(f"unknown latent distribution {config.latent!r} (uniform, beta:A,B, normal:MU,SIGMA)")


def draw_classes(config: SimulationConfig, n_states: int, g: torch.Generator) -> torch.Tensor:
    """Class index [n] (0-based) with the configured mixing fractions."""
    frac = torch.tensor(config.fractions if config.fractions else [1.0] * n_states, dtype=torch.float64)
    if frac.numel() != n_states or bool((frac < 0).any()) or not float(frac.sum()) > 0:
        raise InvalidValueError(f"need {n_states} non-negative mixing fractions, got {config.fractions}")
    return torch.multinomial(frac / frac.sum(), config.n_particles, replacement=True, generator=g)


def draw_ctf(config: SimulationConfig, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-particle CTF columns: defocus_u/v (Å), defocus_angle (°), voltage, cs, amplitude_contrast, bfactor."""
    n = config.n_particles
    if not 0 < config.defocus_min <= config.defocus_max:
        raise InvalidValueError(f"defocus range must satisfy 0 < min <= max (Å), got {config.defocus_min}..{config.defocus_max}")
    mean = config.defocus_min + (config.defocus_max - config.defocus_min) * torch.rand(n, generator=g, dtype=torch.float64)
    half = config.astigmatism / 2
    full = lambda v: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731
    return dict(
        defocus_u=mean + half,
        defocus_v=mean - half,
        defocus_angle=360 * torch.rand(n, generator=g, dtype=torch.float64) - 180,
        voltage=full(config.voltage),
        cs=full(config.cs),
        amplitude_contrast=full(config.amplitude_contrast),
        phase_shift=full(0.0),
        bfactor=full(config.bfactor),
        scale=full(1.0),
    )


def draw_origins(config: SimulationConfig, g: torch.Generator) -> torch.Tensor:
    """RELION origins [n, 2] (x, y) in pixels, uniform in [-max_shift, max_shift]."""
    if config.max_shift < 0 or not math.isfinite(config.max_shift):
        raise InvalidValueError(f"max shift must be >= 0 pixels, got {config.max_shift}")
    return (2 * torch.rand(config.n_particles, 2, generator=g, dtype=torch.float64) - 1) * config.max_shift
