"""`cryoscope postprocess HALF1 HALF2 --mask MASK -o OUT`: mask-corrected FSC, B-factor and sharpened map (RELION's
PostProcess)."""

from __future__ import annotations

import time
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("postprocess")
    def postprocess_command(
        half1: Path = typer.Argument(..., help="Half-map 1 (MRC), unfiltered (e.g. half_map1_unfil.mrc from refine)"),
        half2: Path = typer.Argument(..., help="Half-map 2 (MRC) of the same box and voxel size"),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)"),
        mask: Path = typer.Option(None, "--mask", help="Soft solvent mask (MRC, values in [0, 1]); default: a soft sphere of 0.9 of the box"),
        bfactor: float = typer.Option(None, "--bfactor", help="B-factor to apply (Å², negative sharpens; RELION's --adhoc_bfac); default: minus the Guinier fit"),
        fit_from: float = typer.Option(10.0, "--fit-from", help="Lowest resolution of the Guinier fit (Å); it runs to the FSC 0.143 resolution"),
        randomize_at: float = typer.Option(0.8, "--randomize-at", help="Phases are randomised beyond the shell where the unmasked FSC falls below this"),
        voxel_size: float = typer.Option(None, "--voxel-size", help="Voxel size (Å), overrides the headers"),
        seed: int = typer.Option(0, "--seed", help="Random seed of the phase randomisation"),
    ) -> None:
        """Masked FSC of two half-maps corrected by phase randomisation, the Guinier B-factor, and the sharpened,
        FSC-weighted map (postprocess.mrc, postprocess_masked.mrc), fsc.png, params.json and metrics.json."""
        import torch

        from cryoscope.cli.fsc import read_map_pair, read_mask, resolution_lines
        from cryoscope.io.mrc import write_map
        from cryoscope.io.runinfo import write_metrics_json, write_params_json
        from cryoscope.physics.filters import soft_mask
        from cryoscope.report.plots import plot_fsc
        from cryoscope.validation.fsc import shell_frequencies
        from cryoscope.validation.postprocess import postprocess

        started = time.perf_counter()
        m1, m2 = read_map_pair(half1, half2, voxel_size)
        vs, box = m1.voxel_size, m1.data.shape[-1]
        if mask is None:
            weights = soft_mask(box, 0.45 * box, edge_width=0.05 * box, ndim=3)
            typer.echo("no --mask: a soft sphere of 0.9 of the box (a solvent mask around the molecule gives a truer FSC)")
        else:
            weights = read_mask(mask, m1.data.shape, vs)
        result = postprocess(m1.data, m2.data, weights, vs, bfactor, fit_from, randomize_at, torch.Generator().manual_seed(seed))
        out.mkdir(parents=True, exist_ok=True)
        protect = tuple(p for p in (half1, half2, mask) if p is not None)
        write_map(out / "postprocess.mrc", result.sharpened.float(), vs, protect)
        write_map(out / "postprocess_masked.mrc", (result.sharpened * weights.to(result.sharpened)).float(), vs, protect)
        curves = {"unmasked": result.fsc_unmasked, "masked": result.fsc_masked, "phase-randomised, masked": result.fsc_randomized,
                  "corrected": result.fsc_corrected}
        plot_fsc(out / "fsc.png", curves, box, vs, title="Mask-corrected FSC")
        lines, metrics = resolution_lines(result.fsc_corrected, box, vs)
        write_params_json(out / "params.json", {"command": "postprocess", "half1": str(half1), "half2": str(half2),
                                                "mask": None if mask is None else str(mask), "bfactor": bfactor, "fit_from": fit_from,
                                                "randomize_at": randomize_at, "voxel_size": vs, "seed": seed})
        write_metrics_json(out / "metrics.json", {
            **metrics, "bfactor_fitted": result.bfactor_fitted, "bfactor_applied": result.bfactor_applied,
            "randomize_shell": result.randomize_shell, "voxel_size": vs, "box": box, "seconds": time.perf_counter() - started,
            "frequency_cycles_per_pixel": shell_frequencies(box), "fsc_unmasked": result.fsc_unmasked, "fsc_masked": result.fsc_masked,
            "fsc_randomized": result.fsc_randomized, "fsc_corrected": result.fsc_corrected,
        })
        for line in lines:
            typer.echo(f"corrected {line}")
        res_a = vs / result.resolution_0143 if result.resolution_0143 > 0 else float("inf")
        fitted = (f"no fit (fewer than 3 shells between --fit-from {fit_from:g} Å and {res_a:.2f} Å)" if result.bfactor_fitted is None
                  else f"fitted {result.bfactor_fitted:.1f} Å²")
        typer.echo(f"B-factor: {fitted}, applied {result.bfactor_applied:.1f} Å²")
        typer.echo(f"wrote {out / 'postprocess.mrc'}, {out / 'postprocess_masked.mrc'}, {out / 'fsc.png'}")
