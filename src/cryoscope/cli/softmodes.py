"""`cryoscope softmodes`: softest modes of the Hessian of the log-likelihood of a map given its particles (or images
simulated from it), and the map regions and image alignments they show to be unreliable."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import typer

from cryoscope.cli.params import run_params


TWO_PI_K = typer.Option(32.0, "--two-pi-k", help="Resolution 2πK in the paper's units (radians per half box); k_max = 2πK/π cycles per box.")
SHELLS = typer.Option(0, help="Radial Gauss–Legendre shells (0: ceil(2.4 k_max)).")
DEGREE = typer.Option(0, help="Largest spherical-harmonic degree L (0: ceil(2πK)); each shell uses min(L, ceil(2π k r) + 2).")
RADIUS = typer.Option(0.5, help="Object radius r in box units, which ties each shell's degree to its frequency.")
N_PSI = typer.Option(0, help="Angles per image ring (0: 2L + 2).")
PIXEL_SIZE = typer.Option(None, "--pixel-size", help="Pixel size, Å (when the files have none).")
CHUNK = typer.Option(32, help="Images per chunk of the Hessian-vector product (memory).")
DTYPE = typer.Option("float32", help="float32 or float64.")
DEVICE = typer.Option("auto", help="auto, cpu or cuda.")
PROGRESS = typer.Option(True, help="Show progress bars.")


def softmodes(
    map_path: Path = typer.Argument(..., metavar="MAP", help="Map (MRC) whose reliability is analysed."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
    particles: Path = typer.Option(None, help="Aligned particles (STAR with poses, CTF, origins) that the map was made from."),
    simulate: str = typer.Option(None, help="Instead of particles, noiseless images of the map with poses: uniform, cap:DEG, band:DEG, polar:σ, equator:σ, views:DEG or star:FILE."),
    n_images: int = typer.Option(1024, help="Simulated images (with --simulate)."),
    defocus: str = typer.Option("none", help="Simulated defocus: none (no CTF) or MIN:MAX Å (uniform; with --simulate)."),
    snr: float = typer.Option(0.1, help="Signal-to-noise power ratio inside the band that sets the temperature σ̂² of simulated data."),
    two_pi_k: float = TWO_PI_K,
    shells: int = SHELLS,
    degree: int = DEGREE,
    radius: float = RADIUS,
    n_psi: int = N_PSI,
    noise: str = typer.Option("low-temperature", help="low-temperature (σ̂² known or estimated), marginal (dof' Σ log ℓ) or affine (log ℓ ≈ aℓ + b)."),
    temperature: float = typer.Option(None, help="σ̂², noise power per Fourier pixel (default: from the residuals, or from --snr when simulating)."),
    offset: bool = typer.Option(False, help="Marginalise a constant real-space offset per image (ℓ#)."),
    ctf: bool = typer.Option(True, help="Use the particles' CTF."),
    pixel_size: float = PIXEL_SIZE,
    polish: int = typer.Option(8, help="Newton iterations that bring each pose to the likelihood's optimum (the implicit-alignment assumption)."),
    refine_map: int = typer.Option(0, help="Rounds of least-squares map + pose polishing before the analysis (a stationary point for noisy data)."),
    n_modes: int = typer.Option(7, help="Softest modes to find."),
    method: str = typer.Option("lanczos", help="lanczos (full re-orthogonalisation) or eigsh (ARPACK)."),
    max_iter: int = typer.Option(300, help="Largest number of Lanczos iterations (Hessian-vector products)."),
    tol: float = typer.Option(1e-6, help="Residual ‖Hv − θv‖, relative to the largest Ritz value, at which each of the softest Ritz pairs counts as converged."),
    check_eigsh: bool = typer.Option(False, help="Also solve with eigsh and report the largest relative difference."),
    logdet: bool = typer.Option(False, help="Estimate log det of the effective Hessian by stochastic Lanczos quadrature."),
    maps_for: int = typer.Option(2, help="Modes for which |ΔF| and F ± ΔF maps are written."),
    fragile: int = typer.Option(20, help="Number of most fragile images listed in metrics.json."),
    chunk: int = CHUNK,
    dtype: str = DTYPE,
    resume: bool = typer.Option(False, help="Reuse OUT/stationary.pt (the polished poses and map) from an earlier run with the same options."),
    seed: int = typer.Option(0, help="Random seed (simulated poses and defoci, Lanczos start vector)."),
    device: str = DEVICE,
    progress: bool = PROGRESS,
) -> None:
    """Softest modes of the Hessian of the log-likelihood (Lanczos), scaled to a log-likelihood ratio of log 20."""
    from cryoscope.errors import InvalidValueError
    from cryoscope.workflows.softmodes import run_softmodes

    started = time.perf_counter()
    if dtype not in ("float32", "float64") or method not in ("lanczos", "eigsh"):
        raise InvalidValueError(f"--dtype must be float32 or float64 and --method lanczos or eigsh, got {dtype!r}, {method!r}")
    params = run_params(locals(), "softmodes", ("started", "run_softmodes", "InvalidValueError"))
    params = {"command": "softmodes", "map": params.pop("map_path"), **params}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = run_softmodes(params, out, resume, progress, device, started)
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    if not metrics:  # not the main process of a distributed run
        return
    for row in metrics["modes"]:
        typer.echo(f"mode {row['mode']}: eigenvalue {row['eigenvalue']:.5g}, ‖ΔF‖/‖F‖ at log 20 {row['relative_norm_log20']:.4g}, "
                   f"max |Δτ| {row['max_alignment_deg']:.3g}°")
    typer.echo(f"{metrics['hvp_per_second']:.3g} Hessian-vector products/s; wrote {out}/report.html, metrics.json")


def softmodes_path(
    maps: list[Path] = typer.Argument(..., help="Maps along the path, in order (s uniform on [0, 1]), e.g. morph frames."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
    simulate: str = typer.Option("uniform", help="Poses of the noiseless images of each frame: uniform, cap:DEG, band:DEG, polar:σ, equator:σ, views:DEG or star:FILE."),
    n_images: int = typer.Option(1024, help="Images per frame."),
    two_pi_k: float = TWO_PI_K,
    shells: int = SHELLS,
    degree: int = DEGREE,
    radius: float = RADIUS,
    n_psi: int = N_PSI,
    temperature: float = typer.Option(1.0, help="σ̂² (1: the σ̂²-scaled likelihood of Eq. 78)."),
    pixel_size: float = PIXEL_SIZE,
    chunk: int = CHUNK,
    dtype: str = DTYPE,
    seed: int = typer.Option(0, help="Random seed (poses)."),
    device: str = DEVICE,
    progress: bool = PROGRESS,
) -> None:
    """Stiffness R(s) = ∂F† H(s) ∂F along a path of maps (alignments implicit): where free energies along it are ill-conditioned."""
    from cryoscope.workflows.softmodes import run_path

    started = time.perf_counter()
    params = {"command": "softmodes-path", **{k: ([str(m) for m in v] if k == "maps" else v) for k, v in locals().items()
                                              if k not in ("started", "run_path", "out", "progress", "device")}}
    metrics = run_path(params, out, progress, device, started)
    typer.echo(f"R(s) smallest at s = {metrics['argmin_s']:.3g}, largest at s = {metrics['argmax_s']:.3g}; wrote {out}/path_stiffness.csv")


def register(app: typer.Typer) -> None:
    app.command("softmodes")(softmodes)
    app.command("softmodes-path")(softmodes_path)
