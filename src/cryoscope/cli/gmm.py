"""`cryoscope gmm`: Bayesian pseudo-atomic (Gaussian-mixture) models; `gmm fit-map` fits one to a 3-D map,
`gmm initial-model` infers one from class averages with unknown rotations."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    gmm = typer.Typer(help="Bayesian pseudo-atomic (Gaussian-mixture) models.", no_args_is_help=True)
    app.add_typer(gmm, name="gmm")

    @gmm.command("fit-map")
    def fit_map_cmd(
        map_path: Path = typer.Argument(..., metavar="MAP", help="3-D map (MRC); negative density counts as empty."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        components: int = typer.Option(1000, "-K", "--components", help="Number of pseudo-atoms K."),
        counts: int = typer.Option(1_000_000, help="Counts the map is binned into (thesis N0); >= 1 per occupied voxel."),
        steps: int = typer.Option(300, help="Gibbs sweeps (or EM iterations)."),
        burn_in: int = typer.Option(None, help="Sweeps discarded before averaging (default: half)."),
        thin: int = typer.Option(10, help="Keep every n-th sweep after the burn-in."),
        method: str = typer.Option("gibbs", help="gibbs (posterior mean and SD maps) or em (MAP estimate)."),
        voxel_size: float = typer.Option(None, "--voxel-size", help="Voxel size, Å (overrides the header)."),
        compare_resolution: float = typer.Option(25.0, help="Also report the correlation with the map low-passed to this resolution, Å."),
        seed: int = typer.Option(0, help="Random seed."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Fit K isotropic Gaussians (one shared width) to a map by Gibbs sampling or EM (thesis §2.3, §3.1)."""
        from cryoscope.device import resolve_device
        from cryoscope.io.mrc import read_map
        from cryoscope.workflows.gmm import FitMapSettings, run_fit_map, write_fit_map

        settings = FitMapSettings(components, counts, steps, burn_in, thin, method, compare_resolution, seed)
        m = read_map(map_path, voxel_size=voxel_size)
        dev = resolve_device(device)
        fit, metrics = run_fit_map(m, settings, progress, dev)
        paths = write_fit_map(out, m, fit, settings, metrics, map_path, dev.type)
        typer.echo(f"wrote {paths['pdb']} and {paths['map']}: K={components}, σ = {metrics['sigma_A']:.2f} Å, "
                   f"correlation with the map {metrics['correlation_with_map']:.4f}, "
                   f"with it at {compare_resolution:g} Å (molmap) {metrics[f'correlation_with_map_molmap_{compare_resolution:g}A']:.4f}")

    @gmm.command("initial-model")
    def initial_model_cmd(
        images: Path = typer.Argument(..., metavar="IMAGES", help="Class averages (MRC stack), centred; for the Poisson model non-negative (negative pixels count as empty)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        model: str = typer.Option("poisson", help="poisson (Gibbs on binned images, thesis ch. 2-3) or gaussian (HMC, Gaussian noise, ch. 5)."),
        restarts: int = typer.Option(4, help="Initial-stage runs; the one with the highest log-posterior is refined."),
        initial_components: int = typer.Option(100, help="Pseudo-atoms K in the initial stage."),
        components: int = typer.Option(None, help="Pseudo-atoms K in the refinement (default 1000 Poisson, 500 Gaussian)."),
        initial_box: int = typer.Option(None, help="Box the images are Fourier-cropped to for the initial stage, px (default 32, at most the input's)."),
        box: int = typer.Option(None, help="Box for the refinement and the output map, px (default 64 Poisson, 50 Gaussian; at most the input's)."),
        initial_counts: int = typer.Option(1000, help="Counts per image in the initial stage (Poisson)."),
        counts: int = typer.Option(10_000, help="Counts per image in the refinement (Poisson)."),
        rounds: int = typer.Option(10, help="Initial-stage rounds (mixture sweeps, a global rotation step, local rotation sweeps)."),
        n_rotations: int = typer.Option(2000, help="Uniform rotations scored by each global rotation step."),
        steps: int = typer.Option(300, help="Refinement sweeps."),
        burn_in: int = typer.Option(None, help="Refinement sweeps before samples are kept (default: half)."),
        thin: int = typer.Option(10, help="Keep every n-th sweep after the burn-in."),
        checkpoint_every: int = typer.Option(25, help="Refinement sweeps between checkpoints (every restart is checkpointed)."),
        symmetry: str = typer.Option("C1", "--sym", help="Point group (RELION names: C1, Cn, Dn, T, O, I); K counts the asymmetric unit."),
        pixel_size: float = typer.Option(None, "--pixel-size", help="Pixel size, Å (overrides the header)."),
        resume: bool = typer.Option(False, help="Continue from OUT/checkpoint.pt (same options required)."),
        seed: int = typer.Option(0, help="Random seed."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Initial model from class averages: restarts of the initial stage ranked by log-posterior, then a refinement
        with shifts; writes the posterior-mean map, its SD map, the other hand, pseudo-atoms and the images' poses."""
        import time
        import warnings

        import torch

        from cryoscope.device import resolve_device
        from cryoscope.io.mrc import ParticleStack
        from cryoscope.workflows.gmm_initial_model import InitialModelSettings, run_initial_model, write_initial_model

        started = time.perf_counter()
        stack = ParticleStack.open(images, pixel_size)
        data = torch.as_tensor(stack[list(range(len(stack)))]).double()
        settings = InitialModelSettings(model, restarts, initial_components, components, initial_box, box, initial_counts, counts,
                                        rounds, n_rotations, steps, burn_in, thin, seed, checkpoint_every, symmetry).resolved(stack.box)
        if settings.model == "poisson" and bool((empty := data.clamp_min(0).flatten(1).sum(1) <= 0).any()):
            from cryoscope.errors import InvalidValueError

            raise InvalidValueError(f"image {int(empty.nonzero()[0, 0]) + 1} has no positive density for the Poisson model to bin", images)
        dev = resolve_device(device)
        params = {"command": "gmm initial-model", "images": str(images), "pixel_size": stack.pixel_size, **settings.__dict__,
                  "device": dev.type}  # random streams differ between devices: a resume must use the same kind
        out.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ref, metrics = run_initial_model(data, stack.pixel_size, settings, out, params, resume, progress, dev)
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        metrics["seconds_this_run"] = time.perf_counter() - started
        paths = write_initial_model(out, ref, images, data, stack.pixel_size, metrics, params, settings.group)
        best = metrics["restarts"][metrics["best_restart"]]
        typer.echo(f"wrote {paths['map']}, {paths['star']} and {paths['pdb']}: best restart {metrics['best_restart'] + 1} "
                   f"(log-posterior {best['log_posterior']:.1f}), σ = {metrics['sigma_A']:.2f} Å; the hand is not fixed by "
                   f"projections (other hand: {paths['map_other_hand'].name})")

    @gmm.command("class-averages")
    def class_averages_cmd(
        star: Path = typer.Argument(..., help="Particles STAR file with rlnClassNumber, rlnAnglePsi, origins and CTF (e.g. from 2-D classification); images normalised to unit noise SD."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created): averages.mrcs, params.json, metrics.json."),
        defocus_groups: int = typer.Option(7, help="Equal-width defocus intervals; each gives one frame per class."),
        regulariser: float = typer.Option(10.0, help="Weight α of the gradient prior (thesis: 10), in units of one particle's noise precision."),
        mask_diameter: float = typer.Option(None, help="Support: the average is 0 outside this diameter, Å (needed for centring)."),
        centre: bool = typer.Option(True, help="Centre each average's positive mass at the box centre (needs --mask-diameter)."),
        pixel_size: float = typer.Option(None, "--pixel-size", help="Pixel size, Å (when the STAR file has none)."),
    ) -> None:
        """Non-negative, centred, CTF-free class averages (thesis §4.1): aligned particles averaged per class and defocus
        group, then multi-frame MAP deconvolution (L-BFGS-B, positivity, gradient prior). Input for `gmm initial-model`."""
        import time

        from cryoscope.bayes.class_averages import class_averages_from_particles
        from cryoscope.errors import MissingDataError
        from cryoscope.io.mrc import write_stack
        from cryoscope.io.runinfo import write_metrics_json, write_params_json
        from cryoscope.io.star import read_star
        from cryoscope.particles import ctf_params

        started = time.perf_counter()
        meta = read_star(star, pixel_size=pixel_size)
        if meta.class_number is None or meta.euler is None or not meta.has_ctf:
            raise MissingDataError("class averages need rlnClassNumber, rlnAnglePsi and the CTF columns", star)
        px = float(meta.require_pixel_size()[0])
        if centre and mask_diameter is None:
            typer.echo("warning: no --mask-diameter: the averages are not centred", err=True)
        shifts = meta.shifts_A if meta.shifts_A is not None else meta.euler.new_zeros(meta.n, 2)
        ids, averages = class_averages_from_particles(
            meta.images(), meta.euler[:, 2], shifts / px, meta.class_number, ctf_params(meta), px, defocus_groups, regulariser,
            None if mask_diameter is None else mask_diameter / (2 * px), centre and mask_diameter is not None)
        out.mkdir(parents=True, exist_ok=True)
        write_stack(out / "averages.mrcs", averages.float(), px, protect=(star,))
        params = {"command": "gmm class-averages", "star": str(star), "defocus_groups": defocus_groups, "regulariser": regulariser,
                  "mask_diameter": mask_diameter, "centre": centre, "pixel_size": px}
        write_params_json(out / "params.json", params)
        counts = {int(k): int((meta.class_number == k).sum()) for k in ids}
        write_metrics_json(out / "metrics.json", {"classes": [int(k) for k in ids], "particles_per_class": counts,
                                                  "seconds": time.perf_counter() - started})
        typer.echo(f"wrote {out / 'averages.mrcs'}: {len(ids)} classes (in class-number order {', '.join(str(int(k)) for k in ids)})")
