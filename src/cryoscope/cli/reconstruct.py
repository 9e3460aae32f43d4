"""`cryoscope reconstruct`: known-pose reconstruction with gold-standard half-maps."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("reconstruct")
    def reconstruct_cmd(
        star: Path = typer.Argument(..., help="Particles STAR file, or cryoSPARC .cs, with poses (and CTF)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        solver: str = typer.Option("direct", help="direct (CTF-weighted direct Fourier inversion) or cg (iterative least squares)."),
        mask_diameter: float = typer.Option(None, help="Soft spherical mask on the half-maps and map, Å (default 0.9 of the box; 0: none)."),
        ctf: bool = typer.Option(True, help="Correct for the CTF (off automatically when the STAR file has none)."),
        pixel_size: float = typer.Option(None, "--pixel-size", help="Pixel size, Å (when the STAR file has none)."),
        reference: Path = typer.Option(None, help="Ground-truth map in the same frame: adds FSC against it."),
        cg_iterations: int = typer.Option(20, help="Iterations of the cg solver."),
        batch_size: int = typer.Option(256, help="Images per batch."),
        seed: int = typer.Option(0, help="Random seed of the half-set split."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Reconstruct two random half-sets, report the FSC and write the FSC-weighted map."""
        from cryoscope.device import resolve_device
        from cryoscope.errors import InvalidValueError
        from cryoscope.io.mrc import read_map
        from cryoscope.io.runinfo import write_metrics_json, write_params_json
        from cryoscope.io.convert import read_metadata
        from cryoscope.workflows.reconstruct import (
            reconstruct_known_poses,
            write_reconstruction,
        )

        meta = read_metadata(star, pixel_size=pixel_size)
        if pixel_size is not None:
            meta = meta.with_overrides(pixel_size=pixel_size)
        use_ctf = ctf
        if ctf and not meta.has_ctf:
            typer.echo(f"warning: {star}: no CTF columns; reconstructing without CTF correction", err=True)
            use_ctf = False
        stack = meta.images()
        px = float(meta.require_pixel_size()[0])
        if mask_diameter is not None and mask_diameter < 0:
            raise InvalidValueError(f"--mask-diameter must be >= 0 Å, got {mask_diameter}")
        ref = read_map(reference, voxel_size=px).data if reference else None
        result = reconstruct_known_poses(
            meta, stack, seed=seed, solver=solver, use_ctf=use_ctf, batch_size=batch_size,
            device=resolve_device(device), reference=ref, cg_iterations=cg_iterations, progress=progress,
            mask_radius=None if mask_diameter is None else mask_diameter / (2 * px),
        )
        protect = (star,) + ((reference,) if reference else ())
        paths = write_reconstruction(result, out, protect)
        write_params_json(out / "params.json", {"command": "reconstruct", "star": str(star), "solver": solver, "mask_diameter": mask_diameter, "ctf": use_ctf,
                                                "pixel_size": pixel_size, "reference": str(reference) if reference else None,
                                                "batch_size": batch_size, "seed": seed, "device": device})
        write_metrics_json(out / "metrics.json", result.metrics)
        m = result.metrics
        typer.echo(f"wrote {paths['map']} (half-maps beside it)")
        typer.echo(f"half-map FSC 0.143: {m['halfmap_fsc_0.143_A']:.2f} Å ({m['halfmap_fsc_0.143_cycles_per_pixel']:.3f} cycles/pixel)")
        if "truth_fsc_0.5_A" in m:
            typer.echo(f"FSC vs reference 0.5: {m['truth_fsc_0.5_A']:.2f} Å ({m['truth_fsc_0.5_cycles_per_pixel']:.3f} cycles/pixel)")
