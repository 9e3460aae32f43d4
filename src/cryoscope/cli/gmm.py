"""`cryoscope gmm`: Bayesian pseudo-atomic (Gaussian-mixture) models; `gmm fit-map` fits one to a 3-D map."""

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
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Fit K isotropic Gaussians (one shared width) to a map by Gibbs sampling or EM (thesis §2.3, §3.1)."""
        from cryoscope.io.mrc import read_map
        from cryoscope.workflows.gmm import FitMapSettings, run_fit_map, write_fit_map

        settings = FitMapSettings(components, counts, steps, burn_in, thin, method, compare_resolution, seed)
        m = read_map(map_path, voxel_size=voxel_size)
        fit, metrics = run_fit_map(m, settings, progress)
        paths = write_fit_map(out, m, fit, settings, metrics, map_path)
        typer.echo(f"wrote {paths['pdb']} and {paths['map']}: K={components}, σ = {metrics['sigma_A']:.2f} Å, "
                   f"correlation with the map {metrics['correlation_with_map']:.4f}, "
                   f"with it at {compare_resolution:g} Å (molmap) {metrics[f'correlation_with_map_molmap_{compare_resolution:g}A']:.4f}")
