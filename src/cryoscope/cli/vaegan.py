"""`cryoscope vaegan train` and `cryoscope vaegan analyze`: pose-free clustering of uncurated particles with an
invariant VAE-GAN, UMAP and HDBSCAN."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from cryoscope.cli.params import run_params


def register(app: typer.Typer) -> None:
    vaegan = typer.Typer(help="VAE-GAN embedding and density-based clustering of particles (no poses, no class count).",
                         no_args_is_help=True)
    app.add_typer(vaegan, name="vaegan")

    @vaegan.command("train")
    def train_cmd(
        star: Path = typer.Argument(..., help="Particles STAR file with CTF parameters (poses, if any, are ignored)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        model: str = typer.Option("3d", help="3d: Fourier coordinate network + uniform camera (maps per latent); 2d: DCGAN images."),
        box: int = typer.Option(64, help="Images are downsampled to BOX px (power of two)."),
        resample: str = typer.Option("fourier", help="Downsampling: fourier (crop) or lanczos (Lanczos-5, anti-aliased)."),
        normalisation: str = typer.Option("standard", help="standard (per image: background mean 0, std 1) or contrast (thesis eq. 49: background 0, mean particle contrast 1; needs images with mean contrast, e.g. phase-flipped)."),
        particle_radius: float = typer.Option(None, help="Particle radius in input pixels, for the normalisation mask (default 0.4 box)."),
        invariant: bool = typer.Option(True, help="Shift/rotation-invariant encoder and critic (--no-invariant: the ablation)."),
        noise: str = typer.Option("gaussian", help="Noise generator: gaussian (simulated data), signal (signal-dependent, real data) or none (ablation)."),
        latent_dim: int = typer.Option(10, help="Latent dimension."),
        noise_dim: int = typer.Option(100, help="Noise-latent dimension."),
        network_base: int = typer.Option(32, help="Channels of the encoder's and critic's first block (doubling per block)."),
        network_blocks: int = typer.Option(3, help="Downsampling blocks of the encoder and critic."),
        field_hidden: int = typer.Option(64, help="Width of the 3-D model's sine network."),
        field_layers: int = typer.Option(3, help="Sine layers of the 3-D model."),
        steps: int = typer.Option(250_000, help="Training steps (thesis: 250,000)."),
        batch_size: int = typer.Option(16, help="Images per step."),
        lr: float = typer.Option(1e-5, help="Adam learning rate of all three optimisers."),
        lr_decay: float = typer.Option(0.96, help="Learning-rate factor every --decay-every steps."),
        decay_every: int = typer.Option(10_000, help="Steps between learning-rate decays."),
        ema_decay: float = typer.Option(0.96, help="Moving average of the generators."),
        gp_weight: float = typer.Option(10.0, help="Gradient-penalty weight."),
        diversity_weight: float = typer.Option(0.02, help="Mode-seeking diversity weight."),
        perceptual_weight: float = typer.Option(0.2, help="Weight of the perceptual loss in the generator loss."),
        kl_weight: float = typer.Option(1.0, help="Weight of the KL term in the encoder loss."),
        ctf: bool = typer.Option(True, help="Use the CTF (off, with a warning, when the STAR file has none)."),
        pixel_size: float = typer.Option(None, "--pixel-size", help="Pixel size, Å (when the STAR file has none)."),
        checkpoint_every: int = typer.Option(500, help="Checkpoint (and log) every this many steps."),
        resume: bool = typer.Option(False, help="Continue from OUT/checkpoint.pt (same options required)."),
        time_limit: float = typer.Option(None, help="Wall-clock limit on training, seconds: training stops there, checkpoints and writes its outputs (continue with --resume)."),
        seed: int = typer.Option(0, help="Random seed."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Train the VAE-GAN (encoder, generators, critic) on particle images."""
        params = run_params(locals(), "vaegan train")
        started = time.perf_counter()
        from cryoscope.workflows.likelihood import finish_run
        from cryoscope.workflows.vaegan import run_train

        metrics = run_train(params, out, resume, progress, device, time_limit)
        if metrics:
            finish_run(out, params, metrics, started)
            typer.echo(f"{metrics['images_per_second']:.1f} images/s; noise sigma {metrics['noise_sigma']:.3f}; wrote {out}/checkpoint.pt")

    @vaegan.command("analyze")
    def analyze_cmd(
        train_dir: Path = typer.Argument(..., help="Folder of a finished `cryoscope vaegan train` run."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        n_neighbors: int = typer.Option(30, help="UMAP neighbours."),
        min_dist: float = typer.Option(0.0, help="UMAP minimum distance."),
        min_samples: int = typer.Option(10, help="HDBSCAN min_samples."),
        min_cluster_size: int = typer.Option(None, help="HDBSCAN minimum cluster size (default: 3 % of the particles, as 900 of 30,000)."),
        n_traversal: int = typer.Option(4, help="Maps along each cluster's first principal component (5th-95th percentile)."),
        n_representatives: int = typer.Option(16, help="2-D representatives per cluster (K-means centres on the embedding)."),
        truth_star: Path = typer.Option(None, help="STAR file with the true rlnClassNumber per particle (NMI, ARI)."),
        reference: str = typer.Option(None, help="Comma-separated truth maps: each cluster map's FSC, traversal matching."),
        noise_sigma_truth: float = typer.Option(None, help="True noise standard deviation in the input images' units."),
        seed: int = typer.Option(0, help="Random seed (UMAP, K-means)."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Encode every particle, cluster (UMAP + HDBSCAN), and write per-cluster maps, representatives and STAR subsets."""
        params = run_params(locals(), "vaegan analyze")
        started = time.perf_counter()
        from cryoscope.workflows.likelihood import finish_run
        from cryoscope.workflows.vaegan import run_analyze

        metrics = run_analyze(params, out, progress, device)
        finish_run(out, params, metrics, started)
        summary = {k: metrics[k] for k in ("n_clusters", "nmi", "ari", "noise_fraction") if k in metrics}
        typer.echo(f"{summary}; wrote {out}/clusters.star, report.html")
