"""`cryoscope abinitio`: maps from particles without poses, by stochastic gradient descent (cryoSPARC-style)."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("abinitio")
    def abinitio_cmd(
        star: Path = typer.Argument(..., help="Particles STAR file, or cryoSPARC .cs (poses, if any, are ignored)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        classes: int = typer.Option(1, "--classes", "-K", help="Number of maps (classes) built at once."),
        iterations: int = typer.Option(200, help="Minibatch iterations."),
        batch_size: int = typer.Option(200, help="Particles per minibatch."),
        healpix_order: int = typer.Option(1, help="Angular grid: HEALPix order (step 60 / 2**order degrees), turned at random each iteration."),
        max_shift: float = typer.Option(3.0, help="Shift search range, pixels (±)."),
        shift_step: float = typer.Option(1.0, help="Shift grid step, pixels."),
        initial_resolution: float = typer.Option(None, help="First scoring resolution, Å (default: 10 pixels, 0.1 cycles/pixel)."),
        final_resolution: float = typer.Option(None, help="Last scoring resolution, Å (default: 0.3 cycles/pixel)."),
        mask_diameter: float = typer.Option(None, help="Soft spherical mask diameter, Å (default 0.85 of the box)."),
        learning_rate: float = typer.Option(0.4, help="Fraction of the preconditioned (Newton) step per iteration."),
        reference: Path = typer.Option(None, help="Ground-truth map(s) (comma-separated, one per class) to report FSC after alignment."),
        truth_star: Path = typer.Option(None, help="STAR file with true poses (same particle order): reports the pose error."),
        ctf: bool = typer.Option(True, help="Use the CTF (off, with a warning, when the STAR file has none)."),
        pixel_size: float = typer.Option(None, "--pixel-size", help="Pixel size, Å (when the STAR file has none)."),
        resume: bool = typer.Option(False, help="Continue from OUT/checkpoint.pt (same options required)."),
        seed: int = typer.Option(0, help="Random seed (initial maps, minibatches, grid turns)."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Ab-initio reconstruction of one or more maps: SGD with poses marginalised on a coarse grid and frequency marching."""
        from cryoscope.device import resolve_device
        from cryoscope.io.star import read_star
        from cryoscope.workflows.likelihood import finish_run, open_particles, read_references, run_abinitio, write_abinitio_outputs

        started = time.perf_counter()
        params = {"command": "abinitio", "star": str(star), "classes": classes, "iterations": iterations, "batch_size": batch_size,
                  "healpix_order": healpix_order, "max_shift": max_shift, "shift_step": shift_step,
                  "initial_resolution": initial_resolution, "final_resolution": final_resolution, "mask_diameter": mask_diameter,
                  "learning_rate": learning_rate, "ctf": ctf, "pixel_size": pixel_size, "seed": seed}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            meta, particles = open_particles(star, pixel_size, ctf, resolve_device(device))
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        px, box = particles.pixel_size, meta.require_box()
        options = dict(
            n_classes=classes, n_iter=iterations, batch_size=batch_size, healpix_order=healpix_order, max_shift=max_shift,
            shift_step=shift_step, initial_cutoff=0.1 if initial_resolution is None else min(0.5, px / initial_resolution),
            final_cutoff=0.3 if final_resolution is None else min(0.5, px / final_resolution),
            mask_radius=None if mask_diameter is None else mask_diameter / (2 * px), learning_rate=learning_rate, seed=seed,
        )
        result = run_abinitio(particles, out, params, resume, progress, **options)
        refs = read_references(str(reference), classes, box, px) if reference is not None else None
        true_R = read_star(truth_star).rotations if truth_star is not None else None
        protect = tuple(p for p in (star, reference, truth_star) if p is not None)
        metrics = write_abinitio_outputs(result, meta, out, px, protect, refs, true_R)
        finish_run(out, params, metrics, started)
        for k in result.empty_classes:
            typer.echo(f"warning: class {k + 1} collapsed to zero particles", err=True)
        if "pose_error_median_deg" in metrics:
            typer.echo(f"median pose error vs truth: {metrics['pose_error_median_deg']:.2f}°")
        typer.echo(f"wrote {out}/{'map.mrc' if classes == 1 else 'class001.mrc ...'} and particles.star")
