"""`cryoscope conceptgan train` and `cryoscope conceptgan generate`: two binary concepts of particle images (e.g.
conformational state and defocus) learnt as composable transfers from three observed sub-domains, and the unseen
fourth synthesised by composing them."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import typer

from cryoscope.cli.params import run_params


def register(app: typer.Typer) -> None:
    conceptgan = typer.Typer(help="ConceptGAN: learn two binary concepts from three sub-domains and synthesise the fourth.",
                             no_args_is_help=True)
    app.add_typer(conceptgan, name="conceptgan")

    @conceptgan.command("train")
    def train_cmd(
        d00: Path = typer.Option(..., "--d00", help="Images of Σ00 (X = 0, Y = 0): .mrcs stack or STAR file."),
        d01: Path = typer.Option(..., "--d01", help="Images of Σ01 (X = 0, Y = 1): .mrcs stack or STAR file."),
        d10: Path = typer.Option(..., "--d10", help="Images of Σ10 (X = 1, Y = 0): .mrcs stack or STAR file."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        box: int = typer.Option(64, help="Images are Fourier-resized to BOX px (a power of two >= 8; dissertation: 64)."),
        pixel_size: float = typer.Option(None, "--pixel-size", help="Pixel size of the inputs, Å (when the files have none)."),
        width: int = typer.Option(32, help="Channels of the generators' first conv (CycleGAN: 64), doubled by each stride-2 conv."),
        discriminator_width: int = typer.Option(64, help="Channels of the discriminators' first conv (DiscoGAN: 64)."),
        norm: str = typer.Option("batch", help="Normalisation layers: batch (dissertation) or instance (CycleGAN)."),
        iterations: int = typer.Option(20_000, help="Training iterations (the learning rate decays linearly over the second half)."),
        batch_size: int = typer.Option(16, help="Images per observed sub-domain per iteration."),
        lr: float = typer.Option(2e-4, help="Adam learning rate (dissertation: 2e-4)."),
        beta1: float = typer.Option(0.5, help="Adam β1."),
        objective: str = typer.Option("gan", help="Adversarial objective: gan (eq. 5.1) or wgan-gp (the Wasserstein alternative, §5.8.2)."),
        gp_weight: float = typer.Option(10.0, help="Gradient-penalty weight (wgan-gp)."),
        cycle_weight: float = typer.Option(10.0, help="λ: weight of L_CYC = L_CYC2 + L_CYC4."),
        comm_weight: float = typer.Option(10.0, help="μ: weight of L_COMM."),
        identity_weight: float = typer.Option(10.0, help="Weight of the identity loss."),
        adversarial: bool = typer.Option(True, help="Adversarial terms (5.12)."),
        distance3: bool = typer.Option(False, help="Distance-3 adversarial terms (§5.8.2: for imbalanced concepts)."),
        cyc2: bool = typer.Option(True, help="Distance-2 cycle consistency (L_CYC2)."),
        cyc4: bool = typer.Option(True, help="Distance-4 cycle consistency (L_CYC4, 5.16)."),
        comm: bool = typer.Option(True, help="Commutativity (L_COMM, 5.21)."),
        identity: bool = typer.Option(True, help="Identity loss."),
        montage_images: int = typer.Option(6, help="Real images per sub-domain in the report's montages."),
        checkpoint_every: int = typer.Option(500, help="Checkpoint (and log) every this many iterations."),
        resume: bool = typer.Option(False, help="Continue from OUT/checkpoint.pt (same options required)."),
        time_limit: float = typer.Option(None, help="Wall-clock limit on training, seconds: training stops there, checkpoints and writes its outputs (continue with --resume)."),
        seed: int = typer.Option(0, help="Random seed."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Train the transfers G1/F1 (concept X) and G2/F2 (concept Y) on Σ00, Σ01 and Σ10."""
        params = run_params(locals(), "conceptgan train")
        started = time.perf_counter()
        from cryoscope.workflows.conceptgan import run_train
        from cryoscope.workflows.likelihood import finish_run

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            metrics = run_train(params, out, resume, progress, device, time_limit)
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        finish_run(out, params, metrics, started)
        typer.echo(f"{metrics['iterations']} iterations, {metrics['seconds_per_iteration']:.3f} s each; "
                   f"final loss {metrics['final_loss']:.3f}; wrote {out}/checkpoint.pt, report.html")

    @conceptgan.command("generate")
    def generate_cmd(
        train_dir: Path = typer.Argument(..., help="Folder of a `cryoscope conceptgan train` run."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        source: str = typer.Option("00", help="Sub-domain of the input images: 00, 01, 10 (or 11 with --input)."),
        target: str = typer.Option("11", help="Sub-domain to carry them to."),
        input_: Path = typer.Option(None, "--input", help="Images to carry (.mrcs or STAR; default: the training stack of --source)."),
        pixel_size: float = typer.Option(None, "--pixel-size", help="Pixel size of --input, Å (when the file has none)."),
        order: str = typer.Option("both", help="When both concepts change: both (alternate), x-first (G2∘G1 for 00 -> 11) or y-first (G1∘G2)."),
        n: int = typer.Option(None, "-n", help="Images to generate: a random subset of the input (default: all)."),
        batch_size: int = typer.Option(64, help="Images per batch (batch normalisation takes each batch's statistics)."),
        seed: int = typer.Option(0, help="Random seed (the subset with -n)."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
    ) -> None:
        """Synthesise images of --target from images of --source by composing the learnt transfers; write .mrcs + STAR."""
        params = run_params(locals(), "conceptgan generate")
        params["input"] = params.pop("input_")
        started = time.perf_counter()
        from cryoscope.workflows.conceptgan import run_generate
        from cryoscope.workflows.likelihood import finish_run

        metrics = run_generate(params, out, device)
        finish_run(out, params, metrics, started)
        typer.echo(f"{metrics['n_generated']} images Σ{source} -> Σ{target} by {', '.join(metrics['routes'])}; "
                   f"wrote {out}/generated.mrcs, generated.star")
