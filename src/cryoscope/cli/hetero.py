"""`cryoscope hetero`: ML mean and covariance of the density in a symmetry-adapted spherical basis (run), synthetic
particles from such a model (simulate), and what two estimates say (analyze)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

RADIUS = typer.Option(None, help="Particle radius, Å (default 0.45 × box).")
L_MAX = typer.Option(20, "--l-max", help="Largest harmonic degree l.")
P_MAX = typer.Option(10, "--p-max", help="Radial functions per (l, n).")
RESOLUTION = typer.Option(None, help="Band limit, Å: keep radial functions j_l(z r/R) with z <= 2π R / resolution.")
SYMMETRY = typer.Option("C1", help="Point group (RELION axes): Cn, Dn, T, O, I.")
SEED = typer.Option(0, help="Random seed.")


def register(app: typer.Typer) -> None:
    hetero = typer.Typer(help="Heterogeneity as statistics: ML mean and covariance of a spherical-basis density.", no_args_is_help=True)

    @hetero.command("run")
    def run(
        particles: Path = typer.Argument(..., help="Aligned particles (STAR with poses from a homogeneous reconstruction)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        radius: float = RADIUS,
        l_max: int = L_MAX,
        p_max: int = P_MAX,
        resolution: float = RESOLUTION,
        symmetry: str = SYMMETRY,
        classes: int = typer.Option(1, help="Classes of the Gaussian mixture."),
        grid_order: int = typer.Option(3, help="HEALPix order of the orientation quadrature (step 60°/2^order) over the asymmetric unit."),
        local_deg: float = typer.Option(0.0, help="Restrict each image to orientations within this many degrees of its prior pose (0: all)."),
        prune: float = typer.Option(1e-3, help="Drop posterior weights below this fraction of each image's peak."),
        no_variance: bool = typer.Option(False, help="Estimate the means and noise only (V = 0)."),
        full_covariance: bool = typer.Option(False, help="Full covariance V (N_c² numbers; memory ∝ orientations × N_c²) instead of diagonal."),
        tol: float = typer.Option(1e-3, help="Relative change of the means at which they count as converged."),
        max_mean_iterations: int = typer.Option(20, help="Mean iterations per round."),
        max_rounds: int = typer.Option(10, help="Rounds of (means to convergence, then V)."),
        variance_iterations: int = typer.Option(50, help="L-BFGS-B iterations per V step."),
        ctf: bool = typer.Option(True, help="Use the particles' CTF."),
        ctf_groups: int = typer.Option(8, help="Defocus groups sharing one CTF (quantiles of the mean defocus)."),
        pixel_size: float = typer.Option(None, help="Pixel size, Å (when the STAR file has none)."),
        chunk: int = typer.Option(32, help="Orientations per batch (memory)."),
        dtype: str = typer.Option("float64", help="float64 or float32."),
        resume: bool = typer.Option(False, help="Continue from OUT/checkpoint.pt."),
        seed: int = SEED,
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        progress: bool = typer.Option(True, help="Show progress bars."),
    ) -> None:
        """Generalised EM from V = 0 at the particles' poses: means, covariances (diagonal or full), noise, class weights."""
        p = {k: v for k, v in locals().items() if k not in ("out", "resume", "progress", "device")}
        p["particles"] = str(particles)
        from cryoscope.device import resolve_device
        from cryoscope.workflows.hetero import run_hetero

        started = time.perf_counter()
        m = run_hetero(p, out, resume, progress, resolve_device(device), started)
        typer.echo(f"{out}: {m['n_coefficients']} coefficients, λ² = {m['noise_variance']:.4g}, class weights {[round(w, 3) for w in m['class_weights']]}")

    @hetero.command("simulate")
    def simulate(
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        n: int = typer.Option(1000, help="Particles."),
        box: int = typer.Option(64, help="Box, pixels."),
        pixel_size: float = typer.Option(1.0, help="Pixel size, Å."),
        radius: float = RADIUS,
        l_max: int = L_MAX,
        p_max: int = P_MAX,
        resolution: float = RESOLUTION,
        symmetry: str = SYMMETRY,
        map: Path = typer.Option(None, help="Mean from this map (MRC, box × box × box); default random coefficients."),
        snr: float = typer.Option(1.0, help="Signal (of the mean, before any CTF) to noise power inside the band."),
        defocus: str = typer.Option(None, help="MIN:MAX, Å: a CTF per particle (300 kV, Cs 2.7 mm, 10 % amplitude contrast), defocus uniform in the range."),
        variance: float = typer.Option(0.0, help="Diagonal V as a fraction of the mean's power per coefficient."),
        class_weights: str = typer.Option("1", help="Class weights, comma separated (classes differ by --class-separation)."),
        class_separation: float = typer.Option(0.5, help="Distance between class means relative to the mean's norm."),
        seed: int = SEED,
    ) -> None:
        """Particles drawn from the model: c_i ~ N(c̄_k, V), uniform poses, white noise; writes the truth as truth.pt."""
        p = {k: v for k, v in locals().items() if k not in ("out", "class_weights")}
        from cryoscope.errors import InvalidValueError
        from cryoscope.workflows.hetero import run_simulate

        try:
            weights = [float(w) for w in class_weights.split(",")]
        except ValueError:
            raise InvalidValueError(f"--class-weights must be numbers separated by commas, got {class_weights!r}") from None
        try:
            bounds = tuple(float(x) for x in defocus.split(":")) if defocus else None
        except ValueError:
            raise InvalidValueError(f"--defocus must be MIN:MAX in Å, got {defocus!r}") from None
        p.update(map=str(map) if map else None, class_weights=[w / sum(weights) for w in weights], defocus=bounds)
        m = run_simulate(p, out, "cpu", time.perf_counter())
        typer.echo(f"{out}: {m['n_particles']} particles, {m['n_coefficients']} coefficients, λ² = {m['noise_variance']:.4g}")

    @hetero.command("analyze")
    def analyze(
        model: Path = typer.Argument(..., help="hetero_model.pt of a run."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        other: Path = typer.Option(None, help="A second hetero_model.pt (same basis): FSC, energy, gain-matched SD, fractional difference."),
        class_index: int = typer.Option(1, "--class", help="Class to analyse (1-based)."),
        flip_hand: bool = typer.Option(False, help="Use the other hand (odd-l coefficients change sign)."),
        region: str = typer.Option(None, help="R1:R2, Å: radial range for gain matching and the fractional difference (default R/2:R)."),
        pdb: Path = typer.Option(None, help="Write this model with each atom's standard deviation as its B-factor."),
        export_moments: str = typer.Option(None, help="sine:K or box:M: write moments.npz (ĉ, V̂ in that basis of the mechanical model) for `cryoscope mechanics fit`."),
        half_width: float = typer.Option(None, help="Half-width of the mechanical model's cube, Å (default: the particle radius)."),
        seed: int = SEED,
    ) -> None:
        """Coefficient-space FSC and energy, radial standard deviations, gain matching, per-atom SD."""
        from cryoscope.errors import InvalidValueError
        from cryoscope.workflows.hetero import run_analyze

        try:
            bounds = tuple(float(x) for x in region.split(":")) if region else None
        except ValueError:
            raise InvalidValueError(f"--region must be R1:R2 in Å, got {region!r}") from None
        p = {"model": str(model), "other": str(other) if other else None, "class_index": class_index, "flip_hand": flip_hand,
             "region": bounds, "pdb": str(pdb) if pdb else None, "export_moments": export_moments, "half_width": half_width, "seed": seed}
        m = run_analyze(p, out, time.perf_counter())
        typer.echo(f"{out}: " + (f"gain {m['gain']:.4g}, min FSC in band {m['fsc_min_in_band']:.3f}" if "gain" in m else "radial SD written"))

    app.add_typer(hetero, name="hetero")
