"""`cryoscope simulate`: a synthetic particle dataset with ground truth."""

from __future__ import annotations

from pathlib import Path

import typer

from cryoscope.errors import InvalidValueError


def _floats(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise InvalidValueError(f"expected comma-separated numbers, got {text!r}") from None


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate_cmd(
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        map_: list[Path] = typer.Option([], "--map", help="MRC map of a state (repeat for discrete states)."),
        pdb: list[Path] = typer.Option([], "--pdb", help="Atomic model of a state (repeat for discrete states)."),
        trajectory: list[Path] = typer.Option([], "--trajectory", help="Two models with matching atoms (give twice): continuous motion."),
        n_frames: int = typer.Option(21, help="Frames along the trajectory; images blend the two nearest frames."),
        fractions: str = typer.Option(None, help="Mixing fractions of the discrete states, e.g. 0.5,0.5."),
        latent: str = typer.Option("uniform", help="Trajectory coordinate distribution: uniform, beta:A,B, normal:MU,SIGMA."),
        box: int = typer.Option(None, help="Box size in pixels (default: the first map's)."),
        voxel_size: float = typer.Option(None, help="Pixel size of the simulated images, Å (default: the first map's)."),
        map_voxel_size: float = typer.Option(None, help="Voxel size (Å) for input maps whose header has none."),
        resolution: float = typer.Option(None, help="Blur atomic models to this resolution (Å)."),
        n_particles: int = typer.Option(5000, "-n", "--n-particles", help="Number of particles."),
        snr: float = typer.Option(0.1, help="Signal variance / noise variance inside the particle mask."),
        snr_db: bool = typer.Option(False, help="Read --snr in decibels."),
        noise: str = typer.Option("white", help="white, coloured or background."),
        noise_spectrum: Path = typer.Option(None, help="Text file: noise power per Fourier shell (for coloured noise)."),
        background: list[Path] = typer.Option([], help="Background patch MRC files (for background noise)."),
        ctf: bool = typer.Option(True, help="Apply a CTF."),
        defocus_min: float = typer.Option(10000.0, help="Smallest mean defocus, Å."),
        defocus_max: float = typer.Option(30000.0, help="Largest mean defocus, Å."),
        astigmatism: float = typer.Option(0.0, help="|defocus U - defocus V|, Å."),
        voltage: float = typer.Option(300.0, help="Acceleration voltage, kV."),
        cs: float = typer.Option(2.7, help="Spherical aberration, mm."),
        amplitude_contrast: float = typer.Option(0.1, help="Amplitude contrast (fraction)."),
        bfactor: float = typer.Option(0.0, help="CTF B-factor envelope, Å²."),
        max_shift: float = typer.Option(0.0, help="Origins uniform in ±max-shift pixels."),
        poses: str = typer.Option("uniform", help="uniform, cap:DEG, band:DEG, views:DEG or star:PATH."),
        mask_radius: float = typer.Option(None, help="Particle-mask radius (pixels) that defines SNR."),
        batch_size: int = typer.Option(256, help="Images per batch."),
        seed: int = typer.Option(0, help="Random seed."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Simulate particles from maps, atomic models or a two-model trajectory; write stack, STAR and ground truth."""
        from cryoscope.device import resolve_device
        from cryoscope.simulation import states
        from cryoscope.simulation.config import SimulationConfig
        from cryoscope.simulation.dataset import simulate

        sources = sum(bool(x) for x in (map_, pdb, trajectory))
        if sources != 1:
            raise InvalidValueError("give exactly one kind of input: --map, --pdb or --trajectory")
        if trajectory:
            if len(trajectory) != 2:
                raise InvalidValueError("--trajectory takes two models (give the option twice)")
            maps = states.trajectory_frames(trajectory[0], trajectory[1], n_frames, box, voxel_size, resolution)
            names = ["truth_first", *[f"truth_frame{i:03d}" for i in range(1, n_frames - 1)], "truth_last"]
        elif pdb:
            maps = states.model_states(pdb, box, voxel_size, resolution)
            names = [f"truth_{i + 1}" for i in range(len(maps))]
        else:
            maps = states.map_states(map_, box, voxel_size, map_voxel_size)
            names = [f"truth_{i + 1}" for i in range(len(maps))]
        spectrum = None
        if noise_spectrum is not None:
            spectrum = _floats(noise_spectrum.read_text())
        config = SimulationConfig(
            n_particles=n_particles, snr=snr, snr_db=snr_db, noise=noise, noise_spectrum=spectrum,
            background=[str(p) for p in background], ctf=ctf, defocus_min=defocus_min, defocus_max=defocus_max,
            astigmatism=astigmatism, voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast, bfactor=bfactor,
            max_shift=max_shift, poses=poses, fractions=_floats(fractions), latent=latent, mask_radius=mask_radius,
            batch_size=batch_size, seed=seed,
        )
        result = simulate(maps, config, out, trajectory=bool(trajectory), map_names=names, device=resolve_device(device),
                          progress=progress)
        typer.echo(
            f"wrote {n_particles} particles to {result.stack} and {result.star}; "
            f"noise std {result.noise_std:.4g}, mask radius {result.mask_radius:.1f} px"
        )
