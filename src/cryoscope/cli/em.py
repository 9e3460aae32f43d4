"""`cryoscope refine` and `cryoscope classify`: expectation-maximisation over poses (and classes) from a starting map."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import typer


def _command(kind: str):
    def command(
        star: Path = typer.Argument(..., help="Particles STAR file, or cryoSPARC .cs (poses, if any, are not used unless --local)."),
        initial: str = typer.Option(..., "--initial", "-i", help="Starting map, or one per class comma-separated (e.g. from abinitio -K); resampled to the particles' pixel size."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        classes: int = typer.Option(1 if kind == "refine" else 2, "--classes", "-K", help="Number of classes.", hidden=kind == "refine"),
        iterations: int = typer.Option(6 if kind == "refine" else 8, help="EM iterations."),
        healpix_order: int = typer.Option(1, help="Global angular grid: HEALPix order (step 60 / 2**order degrees)."),
        global_min_step: float = typer.Option(7.5, help="Iterations whose angular step is at least this (degrees) search globally, one HEALPix order finer each; then local searches."),
        max_shift: float = typer.Option(3.0, help="Shift search range, pixels (±)."),
        shift_step: float = typer.Option(1.0, help="Shift grid step of the global search, pixels."),
        initial_lowpass: float = typer.Option(30.0, help="Low-pass of the starting map and first scoring cutoff, Å."),
        resolution_limit: float = typer.Option(None, help="Never score beyond this resolution, Å (maps are then reconstructed to Nyquist)."),
        local: bool = typer.Option(False, help="Start from the STAR file's poses with local searches (no global search); the first local step is 60 / 2**(healpix_order + 1) degrees (e.g. --healpix-order 4: 1.875°)."),
        sigma_ang: float = typer.Option(0.0, help="With --local: standard deviation (degrees, per axis) of the STAR file's angular errors; the first local search then reaches 3 of them in steps of one (RELION's --sigma_ang; 0: 2 steps of the --healpix-order grid)."),
        steps_per_sigma: float = typer.Option(1.0, help="Local grids: angular and shift steps per posterior standard deviation of the previous iteration (finer grids cost about its cube in rotations and its square in shifts)."),
        symmetry: str = typer.Option("C1", help="Point group: C1, Cn, Dn, T, O or I (RELION axes)."),
        mask_diameter: float = typer.Option(None, help="Soft spherical mask diameter, Å (default 0.9 of the box)."),
        reference: Path = typer.Option(None, help="Ground-truth map(s) (comma-separated, one per class) to report FSC after alignment (also after every iteration: truth_history in metrics.json)."),
        truth_star: Path = typer.Option(None, help="STAR file with true poses (same particle order): reports the pose error."),
        ctf: bool = typer.Option(True, help="Use the CTF (off, with a warning, when the STAR file has none)."),
        pixel_size: float = typer.Option(None, "--pixel-size", help="Pixel size, Å (when the STAR file has none)."),
        max_poses: int = typer.Option(32, help="Most poses per particle kept for the M-step in global searches (largest posteriors); local searches keep 99.9 % of the posterior mass."),
        batch_size: int = typer.Option(128, help="Images per batch."),
        resume: bool = typer.Option(False, help="Continue from OUT/checkpoint.pt (same options required)."),
        seed: int = typer.Option(0, help="Random seed (half-sets unless the STAR file has its own in rlnRandomSubset, class initialisation)."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        from cryoscope.distributed import init_distributed
        import torch

        from cryoscope.errors import InvalidValueError, MissingDataError
        from cryoscope.io.mrc import read_map
        from cryoscope.io.star import read_star
        from cryoscope.likelihood.em import EMSettings
        from cryoscope.physics.filters import lowpass
        from cryoscope.reconstruction.halfmaps import half_sets
        from cryoscope.workflows.likelihood import (
            finish_run,
            match_map,
            open_particles,
            read_references,
            reference_record,
            run_em,
            write_em_outputs,
        )

        started = time.perf_counter()
        params = {"command": kind, "star": str(star), "initial": str(initial), "classes": classes, "iterations": iterations,
                  "healpix_order": healpix_order, "global_min_step": global_min_step, "max_shift": max_shift, "shift_step": shift_step,
                  "initial_lowpass": initial_lowpass, "resolution_limit": resolution_limit, "local": local, "sigma_ang": sigma_ang, "steps_per_sigma": steps_per_sigma, "symmetry": symmetry, "mask_diameter": mask_diameter,
                  "ctf": ctf, "pixel_size": pixel_size, "max_poses": max_poses, "batch_size": batch_size, "seed": seed}
        ctx = init_distributed(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            meta, particles = open_particles(star, pixel_size, ctf, ctx.device)
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        px, box = particles.pixel_size, meta.require_box()
        paths = [p for p in str(initial).split(",") if p]
        if len(paths) not in (1, classes):
            raise InvalidValueError(f"{len(paths)} starting maps for {classes} classes (give one, or one per class)", str(initial))
        vol = torch.stack([match_map(m.data.float(), m.voxel_size, box, px, p) for p, m in ((p, read_map(p)) for p in paths)])
        cutoff = min(0.5, px / initial_lowpass)
        settings = EMSettings(
            n_iter=iterations, healpix_order=healpix_order, global_min_step_deg=global_min_step, max_shift=max_shift, shift_step=shift_step, initial_cutoff=cutoff,
            batch_size=batch_size, max_poses=max_poses, symmetry=symmetry, steps_per_sigma=steps_per_sigma, prior_sigma_deg=sigma_ang, max_cutoff=0.5 if resolution_limit is None else min(0.5, px / resolution_limit), mask_radius=None if mask_diameter is None else mask_diameter / (2 * px),
        )
        maps = lowpass(vol, cutoff).expand(classes, -1, -1, -1).clone()  # one map: classes start by random subsets
        prior_R = prior_t = None
        if sigma_ang and not local:
            raise InvalidValueError("--sigma-ang sizes the local search around the STAR file's poses: it needs --local")
        if local:
            if not meta.has_poses:
                raise MissingDataError("no poses to start --local from", str(star))
            prior_R = meta.rotations.float()
            prior_t = (meta.shifts_A / px).float() if meta.shifts_A is not None else meta.rotations.new_zeros(meta.n, 2).float()
        refs = read_references(str(reference), classes, box, px) if reference is not None else None
        true_R = read_star(truth_star).rotations if truth_star is not None else None
        track = None if refs is None and true_R is None else (lambda st: reference_record(st, refs, true_R, px, symmetry))
        half, from_file = half_sets(meta.n, seed, meta.random_subset)
        params["half_sets"] = "rlnRandomSubset" if from_file else "random"
        if from_file and ctx.is_main:
            typer.echo(f"gold-standard half-sets from {star}: {int((half == 0).sum())} / {int((half == 1).sum())} particles")
        result, tracked = run_em(particles, maps, settings, out, params, seed, resume, ctx, prior_R, prior_t, progress, track, half)
        if not ctx.is_main:
            return
        protect = tuple(p for p in (star, *paths, reference, truth_star) if p is not None)
        metrics = write_em_outputs(result, meta, out, px, protect, refs, true_R, symmetry, tracked)
        finish_run(out, params, metrics, started)
        for k, r in enumerate(result.resolution):
            frac = float(result.class_fractions[k])
            typer.echo(f"class {k + 1}: {frac:.1%} of particles, half-map FSC 0.143 at {px / r if r > 0 else float('inf'):.2f} Å")
        for k in metrics["empty_classes"]:
            typer.echo(f"warning: class {k + 1} collapsed to zero particles", err=True)
        if "pose_error_median_deg" in metrics:
            typer.echo(f"median pose error vs truth: {metrics['pose_error_median_deg']:.2f}°")
        typer.echo(f"wrote {out}/particles.star and maps")

    command.__doc__ = (
        "Gold-standard refinement: EM with marginalisation over poses and shifts, adaptive local grids, FSC-driven resolution."
        if kind == "refine"
        else "3-D classification: EM over class, pose and shift; class fractions and per-particle class posteriors."
    )
    return command


def register(app: typer.Typer) -> None:
    app.command("refine")(_command("refine"))
    app.command("classify")(_command("classify"))
