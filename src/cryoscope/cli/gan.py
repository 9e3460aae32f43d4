"""`cryoscope cryogan` and `cryoscope multicryogan`: reconstruction by matching image distributions (WGAN-GP) with the
physics simulator as the generator; no pose or likelihood is ever computed."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import typer

from cryoscope.cli.params import run_params


def _stages(text: str) -> list[tuple[int, int]]:
    from cryoscope.errors import InvalidValueError

    try:
        return [(int(b), int(n)) for b, n in (item.split(":") for item in text.split(",") if item)]
    except ValueError:
        raise InvalidValueError(f"bad --stages {text!r}: give BOX:ITERATIONS pairs, e.g. 16:300,32:700") from None


def _command(kind: str):
    multi = kind == "multicryogan"

    def command(
        star: Path = typer.Argument(..., help="Particles STAR file with CTF parameters (poses, if any, are ignored)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        stages: str = typer.Option("16:300,32:700", help="Frequency marching: BOX:ITERATIONS pairs; images are Fourier-cropped to BOX px (powers of two, non-decreasing)."),
        batch_size: int = typer.Option(32, help="Real and simulated images per step."),
        critic_steps: int = typer.Option(5, help="Critic steps per generator step."),
        gp_weight: float = typer.Option(10.0, help="Gradient-penalty weight λ."),
        critic_lr: float = typer.Option(1e-4, help="Critic learning rate (Adam)."),
        generator_lr: float = typer.Option(1e-2, help="Map / generator learning rate (Adam, map in units of its initial amplitude)."),
        critic_base: int = typer.Option(96, help="Channels of the critic's first block (96 as in CryoGAN; doubles per block to 8x)."),
        ema_decay: float = typer.Option(0.99, help="Decay of the moving average of the generator that gives the output."),
        poses: str = typer.Option("uniform", help="Assumed pose distribution: uniform, cap:DEG, band:DEG, views:DEG, star:PATH."),
        shifts: str = typer.Option("none", help="Shift model: none, uniform (±max-shift) or gaussian (learned spread)."),
        max_shift: float = typer.Option(0.0, help="Shift range (uniform) or initial 2x spread (gaussian), pixels."),
        noise: str = typer.Option("learned", help="Noise: learned (white, learned σ), fixed (white, σ from the image background) or background (real patches, learned scale)."),
        background: list[Path] = typer.Option(None, help="Background patch MRC files (for --noise background)."),
        particle_radius: float = typer.Option(None, help="Particle radius, pixels: support of the map, and the noise estimate outside it (default 0.45 box)."),
        positivity: bool = typer.Option(True, help="Keep the map non-negative (turn off for maps with negative regions, e.g. sharpened or high-pass filtered ones)."),
        symmetry: str = typer.Option("C1", help="Point group imposed on the map(s): C1, Cn, Dn, T, O or I."),
        halves: bool = typer.Option(True, help="Gold standard: train on even and odd particles independently (half-maps, half-map FSC)."),
        latent: str = typer.Option("uniform", help="Latent prior: uniform (continuous motion on [0, 1]) or categorical:K (discrete states).", hidden=not multi),
        n_basis: int = typer.Option(4, help="Basis maps of the conformation generator.", hidden=not multi),
        maps_per_batch: int = typer.Option(8, help="Latent draws (generated maps) per minibatch.", hidden=not multi),
        reference: str = typer.Option(None, help="Ground-truth map (CryoGAN), or comma-separated frames along the motion / states (Multi-CryoGAN), for FSC and matching."),
        truth_star: Path = typer.Option(None, help="Ground-truth STAR file with cryoscopeLatent (Multi-CryoGAN): the latent distribution to compare with.", hidden=not multi),
        ctf: bool = typer.Option(True, help="Use the CTF (off, with a warning, when the STAR file has none)."),
        pixel_size: float = typer.Option(None, "--pixel-size", help="Pixel size, Å (when the STAR file has none)."),
        checkpoint_every: int = typer.Option(25, help="Checkpoint (and log) every this many generator iterations."),
        resume: bool = typer.Option(False, help="Continue from OUT/half*/checkpoint.pt (same options required)."),
        time_limit: float = typer.Option(None, help="Wall-clock limit on training, seconds, shared equally by the half-sets: training stops there, checkpoints and writes its outputs (continue with --resume)."),
        seed: int = typer.Option(0, help="Random seed."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        from cryoscope.workflows.gan import run_gan

        started = time.perf_counter()
        params = run_params(locals(), kind, ("started", "kind", "multi", "run_gan"))
        params["background"] = [str(p) for p in background or []]
        if not multi:
            for k in ("latent", "n_basis", "maps_per_batch", "truth_star"):
                params.pop(k)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            metrics = run_gan(params, out, _stages(stages), resume, progress, device, started, time_limit)
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        for key in ("halfmap_fsc_0.143_A", "truth_fsc_0.5_A", "latent_wasserstein"):
            if key in metrics:
                typer.echo(f"{key}: {metrics[key]:.3f}")
        typer.echo(f"wrote {out}/{'latent_*.mrc' if multi else 'map.mrc'}, metrics.json")

    command.__doc__ = (
        "Multi-CryoGAN: a generator G(z) of maps trained so that simulated images match the data; a distribution of conformations."
        if multi
        else "CryoGAN: a map trained so that its simulated images (random poses, the data's CTFs, noise) match the data (WGAN-GP)."
    )
    return command


def register(app: typer.Typer) -> None:
    app.command("cryogan")(_command("cryogan"))
    app.command("multicryogan")(_command("multicryogan"))
