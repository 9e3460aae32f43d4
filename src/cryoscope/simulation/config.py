"""Parameters of a simulated dataset (units: Å, kV, mm, degrees, pixels where stated)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SimulationConfig:
    """Everything that defines a simulated dataset besides the structures.

    snr: signal variance / noise variance inside the particle mask (a ratio, or dB with `snr_db`).
    noise: 'white', 'coloured' (from `noise_spectrum`, a 1-D power spectrum per shell) or
    'background' (real micrograph patches from `background`, scaled to the same SNR).
    defocus_min/max: range (Å) of the mean defocus, drawn uniformly; astigmatism: |dfU - dfV| in Å.
    max_shift: origins drawn uniformly in [-max_shift, max_shift] pixels (x and y).
    poses: 'uniform', 'cap:DEG', 'band:DEG', 'views:DEG' (concentrated around the 6 axis views) or
    'star:PATH' (resample the angles of a STAR file).
    fractions: mixing fractions of discrete states (default equal).
    latent: distribution of the trajectory coordinate in [0, 1]: 'uniform', 'beta:A,B' or 'normal:MU,SIGMA' (clipped).
    mask_radius: radius (pixels) of the particle mask that defines SNR; default from the maps (99 % of the mass).
    """

    n_particles: int = 5000
    snr: float = 0.1
    snr_db: bool = False
    noise: str = "white"
    noise_spectrum: list[float] | None = None
    background: list[str] = field(default_factory=list)
    ctf: bool = True
    defocus_min: float = 10000.0
    defocus_max: float = 30000.0
    astigmatism: float = 0.0
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    bfactor: float = 0.0
    max_shift: float = 0.0
    poses: str = "uniform"
    fractions: list[float] | None = None
    latent: str = "uniform"
    mask_radius: float | None = None
    batch_size: int = 256
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)
