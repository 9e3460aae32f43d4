"""Runs of the VAE-GAN engine on files.

`cryoscope vaegan train` folder OUT: `images_<box>.npy` (+ .json; the float16 cache), `checkpoint.pt`, `log.csv`,
`training.png`, `params.json`, `metrics.json`.
`cryoscope vaegan analyze` folder OUT: `latents.npy` (encoder means), `clusters.star` + `cluster_NNN.star` (RELION
subsets), per cluster `cluster_NNN.mrc` (3-D model: the map at the cluster's mean latent) and
`cluster_NNN_traversal_K.mrc` (PCA traversal), `embedding*.png`, `representatives_NNN.png`, `report.html`,
`params.json`, `metrics.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cryoscope.distributed import DistContext, barrier
from cryoscope.errors import InvalidValueError, MissingDataError
from cryoscope.io.atomic import atomic_path
from cryoscope.io.checkpoint import CheckpointDir
from cryoscope.io.runinfo import write_log_csv, write_params_json
from cryoscope.nn.loop import train_loop
from cryoscope.physics.ctf import compute_ctf
from cryoscope.physics.filters import frequency_magnitude
from cryoscope.vaegan.model import VAEGAN, VAEGANConfig
from cryoscope.vaegan.preprocess import ImageCache, build_cache
from cryoscope.vaegan.train import TrainingImages, VAEGANSettings, VAEGANTrainer

LOG_KEYS = ("wasserstein", "perceptual", "kl", "diversity", "noise_sigma")
CONFIG_KEYS = ("box", "model", "latent_dim", "noise_dim", "invariant", "noise", "network_base", "network_blocks",
               "field_hidden", "field_layers")


def open_cache(p: dict, out: Path, ctx: DistContext, progress: bool):
    """(metadata, particle source, image cache, pixel size of the cached images in Å): rank 0 builds the cache."""
    from cryoscope.workflows.likelihood import open_particles

    meta, particles = open_particles(p["star"], p["pixel_size"], p["ctf"])
    n_box = meta.require_box()
    if p["box"] > n_box:
        raise InvalidValueError(f"--box {p['box']} is larger than the particles' {n_box} px", p["star"])
    radius = p["particle_radius"] or 0.4 * n_box
    path = out / f"images_{p['box']}.npy"
    if ctx.is_main:
        build_cache(particles.stack, np.arange(meta.n), path, p["box"], radius, p["normalisation"], p["resample"],
                    progress=progress)
    barrier(ctx)
    return meta, particles, ImageCache(path), particles.pixel_size * n_box / p["box"]


def _ctf_function(particles, box: int, pixel_size: float):
    if particles.ctf is None:
        return None
    return lambda positions: compute_ctf(particles.ctf[positions], box, pixel_size).float()


def _sample(images, n: int) -> torch.Tensor:
    """Up to n evenly spaced images of an indexable stack or cache, float32 [m, N, N]."""
    positions = np.linspace(0, len(images) - 1, min(n, len(images))).astype(np.int64)
    return torch.as_tensor(images[positions], device="cpu").float()


def _background(images: torch.Tensor, radius_px: float) -> torch.Tensor:
    """The pixels [m, k] of images [m, N, N] outside a disc of `radius_px` about the centre (index N // 2)."""
    return images[:, frequency_magnitude(images.shape[-1], device=images.device) > radius_px]


def background_sigma(cache: ImageCache, radius_px: float, n: int = 1000) -> float:
    """Standard deviation outside a centred disc of `radius_px` (cached pixels) over up to n evenly spaced images."""
    return float(_background(_sample(cache, n), radius_px).std())


def input_units(stack, p: dict, cache: ImageCache, n: int = 1000) -> float:
    """Input-image units of white noise per cached unit: the normalisation divisor (the contrast scale, or for
    "standard" the mean background standard deviation of up to n evenly spaced input images) over the downsampling's
    gain on white noise (measured: box/N for Fourier cropping)."""
    from cryoscope.vaegan.preprocess import downsample

    images = _sample(stack, n)
    box_in = images.shape[-1]
    noise = torch.randn(64, box_in, box_in, generator=torch.Generator().manual_seed(0), device="cpu")
    gain = float(downsample(noise, cache.box, p["resample"]).std())
    if p["normalisation"] == "contrast":
        return cache.scale / gain
    return float(_background(images, p["particle_radius"] or 0.4 * box_in).std(dim=1).mean()) / gain


def run_train(p: dict, out: Path, resume: bool, progress: bool, device: str, time_limit: float | None = None) -> dict:
    """`cryoscope vaegan train`: cache the images, then train; checkpoints every `checkpoint_every` steps."""
    from cryoscope.distributed import finalize_distributed, init_distributed

    ctx = init_distributed(device)
    try:
        return _run_train(p, Path(out), resume, progress, ctx, time_limit)
    finally:
        finalize_distributed(ctx)


def _run_train(p: dict, out: Path, resume: bool, progress: bool, ctx: DistContext, time_limit: float | None) -> dict:
    from cryoscope.report.plots import plot_training

    out.mkdir(parents=True, exist_ok=True)
    meta, particles, cache, px = open_cache(p, out, ctx, progress)
    radius = (p["particle_radius"] or 0.4 * meta.require_box()) * p["box"] / meta.require_box()
    sigma0 = background_sigma(cache, radius)
    config = VAEGANConfig(**{k: p[k] for k in CONFIG_KEYS}, initial_sigma=sigma0)
    torch.manual_seed(p["seed"])  # network initialisation, the same on every rank
    model = VAEGAN(config)
    settings = VAEGANSettings(steps=p["steps"], batch_size=p["batch_size"], lr=p["lr"], lr_decay=p["lr_decay"],
                              decay_every=p["decay_every"], ema_decay=p["ema_decay"], gp_weight=p["gp_weight"],
                              diversity_weight=p["diversity_weight"], perceptual_weight=p["perceptual_weight"],
                              kl_weight=p["kl_weight"], seed=p["seed"])
    data = TrainingImages(cache, _ctf_function(particles, p["box"], px), ctx.device)
    trainer = VAEGANTrainer(model, data, settings, ctx)
    ckpt = CheckpointDir(out, p)
    if resume and ckpt.exists():
        trainer.load_state_dict(ckpt.load()[1])  # refuses other run parameters
    if ctx.is_main:  # written before training, so that the checkpoint of a run still going can be analysed
        write_params_json(out / "params.json", p)
    bar = tqdm(total=settings.steps, initial=trainer.step_count, desc="vaegan", unit="step",
               disable=not (progress and ctx.is_main))

    def save() -> None:
        ckpt.save(trainer.step_count, trainer.state_dict())
        write_log_csv(out / "log.csv", trainer.history)

    stopped = train_loop(trainer.step, lambda: trainer.step_count, settings.steps, save, p["checkpoint_every"], bar,
                         lambda e: {"W": f"{e['wasserstein']:.3f}", "sigma": f"{e['noise_sigma']:.3f}"}, time_limit, ctx)
    if not ctx.is_main:
        return {}
    plot_training(out / "training.png", trainer.history, LOG_KEYS, "VAE-GAN training")
    seconds = sum(e["seconds"] for e in trainer.history)
    last = trainer.history[-max(1, len(trainer.history) // 20):]
    metrics = {"n_particles": meta.n, "box": p["box"], "pixel_size_A": px, "steps": trainer.step_count,
               "stopped_by_time_limit": stopped, "time_limit_s": time_limit,
               "initial_noise_sigma": sigma0, "noise_sigma": trainer.averaged_model().noise_sigma(),
               "normalisation_scale": cache.scale, "train_seconds": seconds,
               "images_per_second": trainer.step_count * settings.batch_size * ctx.world_size / max(seconds, 1e-9),
               **{f"final_{k}": float(np.mean([e[k] for e in last])) for k in LOG_KEYS}}
    return metrics


def load_trained(train_dir: Path, device: torch.device | str = "cpu") -> tuple[VAEGAN, dict]:
    """The trained model (generators as their moving average) and the training run's params."""
    params_path = train_dir / "params.json"
    if not params_path.is_file():
        raise MissingDataError("no params.json: not a `cryoscope vaegan train` folder", train_dir)
    p = json.loads(params_path.read_text())
    ckpt = CheckpointDir(train_dir, p)
    if not ckpt.exists():
        raise MissingDataError("no checkpoint.pt in the training folder", train_dir)
    _, state = ckpt.load()
    model = VAEGAN(VAEGANConfig(**{k: p[k] for k in CONFIG_KEYS}))
    model.load_state_dict(state["model"])
    model.generators.load_state_dict(state["ema"])
    return model.to(device).eval(), p


@torch.no_grad()
def encode(model: VAEGAN, cache: ImageCache, batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """Encoder means [n, latent_dim] of every cached image."""
    device = next(model.encoder.parameters()).device
    out = []
    for lo in tqdm(range(0, len(cache), batch_size), desc="encode", unit="batch", disable=not progress):
        out.append(model.encoder(cache[np.arange(lo, min(len(cache), lo + batch_size))].to(device))[0].cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def decode_images(model: VAEGAN, latents: np.ndarray) -> torch.Tensor:
    """Clean images [k, N, N] of latents (no CTF; the 3-D model seen along z, the identity rotation)."""
    device = next(model.signal.parameters()).device
    z = torch.as_tensor(latents, dtype=torch.float32, device=device)
    rotations = torch.eye(3, device=device).expand(z.shape[0], 3, 3) if model.config.model == "3d" else None
    return model.clean(z, None, rotations).cpu()


def run_analyze(p: dict, out: Path, progress: bool, device: str) -> dict:
    """`cryoscope vaegan analyze`: embed, cluster, per-cluster maps and representatives, subsets, report."""
    from cryoscope.device import resolve_device
    from cryoscope.vaegan.cluster import analyse_latents, clustering_scores
    from cryoscope.vaegan.subsets import write_cluster_subsets

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    model, tp = load_trained(Path(p["train_dir"]), dev)
    ctx = DistContext(rank=0, world_size=1, device=dev)  # one process
    meta, particles, cache, px = open_cache(tp, Path(p["train_dir"]), ctx, progress)
    latents = encode(model, cache, progress=progress)
    with atomic_path(out / "latents.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, latents)
    analysis = analyse_latents(latents, p["seed"], p["n_neighbors"], p["min_dist"], p["min_samples"], p["min_cluster_size"],
                               p["n_traversal"], p["n_representatives"])
    protect = tuple(x for x in (tp["star"], p.get("truth_star")) if x)
    write_cluster_subsets(out, meta, analysis.labels, protect=protect)
    metrics: dict = {"n_particles": meta.n, "n_clusters": analysis.n_clusters, "cluster_sizes": analysis.sizes.tolist(),
                     "noise_fraction": analysis.noise_fraction, "min_cluster_size": analysis.min_cluster_size,
                     "noise_sigma": model.noise_sigma(), "normalisation_scale": cache.scale,
                     "traversal_explained_variance": [t.explained_variance for t in analysis.traversals]}
    truth = _truth_classes(p.get("truth_star"), meta.n)
    if truth is not None:
        metrics |= clustering_scores(analysis.labels, truth)
    maps = _cluster_maps(model, analysis, latents, out, px, protect) if model.config.model == "3d" else {}
    if p.get("reference") and maps:
        metrics |= _map_scores(maps, p["reference"], px, model.config.box)
    if p.get("noise_sigma_truth"):
        est = metrics["noise_sigma"] * input_units(particles.stack, tp, cache)  # back to the input images' units
        metrics |= {"noise_sigma_input_units": est, "noise_sigma_truth": p["noise_sigma_truth"],
                    "noise_sigma_relative_error": est / p["noise_sigma_truth"] - 1}
    _analysis_report(out, model, analysis, latents, truth, maps, metrics)
    return metrics


def _truth_classes(truth_star: str | None, n: int) -> np.ndarray | None:
    if not truth_star:
        return None
    from cryoscope.io.star import read_star

    truth = read_star(truth_star)
    if truth.class_number is None or truth.n != n:
        raise InvalidValueError(f"needs rlnClassNumber for all {n} particles", truth_star)
    return truth.class_number.numpy()


def _cluster_maps(model: VAEGAN, analysis, latents: np.ndarray, out: Path, px: float, protect: tuple) -> dict:
    """Per cluster: the map at its mean latent and its PCA-traversal maps, written as MRC; returns {name: map}."""
    from cryoscope.io.mrc import write_map

    maps = {}
    device = next(model.signal.parameters()).device
    for c, trav in enumerate(analysis.traversals):
        mean = latents[analysis.labels == c].mean(0)
        name = f"cluster_{c + 1:03d}"
        maps[name] = model.signal.render(torch.as_tensor(mean, dtype=torch.float32, device=device)).cpu()
        write_map(out / f"{name}.mrc", maps[name], px, protect=protect)
        for j, z in enumerate(trav.latents):
            vol = model.signal.render(torch.as_tensor(z, dtype=torch.float32, device=device)).cpu()
            maps[f"{name}_traversal_{j + 1}"] = vol
            write_map(out / f"{name}_traversal_{j + 1}.mrc", vol, px, protect=protect)
    return maps


def _map_scores(maps: dict, reference: str, px: float, box: int) -> dict:
    """Each cluster map's best-matching truth map (by FSC 0.5 after rigid alignment, hand included) and that FSC;
    its traversal maps, moved by the same alignment, are matched to the truth maps by correlation (a motion is
    recovered when the matches run in monotone order)."""
    from cryoscope.validation.align import apply_map_alignment, fsc_after_alignment
    from cryoscope.validation.metrics import cross_correlation
    from cryoscope.workflows.likelihood import read_references

    truths = read_references(reference, len(reference.split(",")), box, px)
    out: dict = {}
    for name, vol in maps.items():
        if "traversal" in name:
            continue
        fits = [fsc_after_alignment(vol, t) for t in truths]
        best = int(np.argmax([f.resolution_05[0] for f in fits]))
        out[f"{name}_truth_index"] = best + 1
        out[f"{name}_truth_fsc_0.5_cycles_per_pixel"] = float(fits[best].resolution_05[0])
        out[f"{name}_truth_fsc_0.143_cycles_per_pixel"] = float(fits[best].resolution_0143[0])
        trav = sorted(k for k in maps if k.startswith(name + "_traversal"))
        aligned = [apply_map_alignment(maps[k], fits[best].alignment) for k in trav]
        out[f"{name}_traversal_best_truth"] = [int(cross_correlation(a.expand_as(truths), truths).argmax()) + 1 for a in aligned]
    return out


def _analysis_report(out: Path, model: VAEGAN, analysis, latents: np.ndarray, truth: np.ndarray | None, maps: dict,
                     metrics: dict) -> None:
    from cryoscope.report.html import ReportFigure, ReportSection, write_report
    from cryoscope.report.plots import plot_central_slices, plot_embedding, plot_montage

    figures = [ReportFigure(plot_embedding(out / "embedding.png", analysis.embedding, analysis.labels, "UMAP, by cluster"),
                            "Encoder means, UMAP to 2-D, HDBSCAN clusters (grey: noise)")]
    if truth is not None:
        figures.append(ReportFigure(plot_embedding(out / "embedding_truth.png", analysis.embedding, truth, "UMAP, by true class"),
                                    "The same embedding coloured by the true class"))
    for c, idx in enumerate(analysis.representatives):
        images = decode_images(model, latents[idx])
        figures.append(ReportFigure(plot_montage(out / f"representatives_{c + 1:03d}.png", images, len(idx),
                                                 title=f"cluster {c + 1}: decoded at K-means centres"), f"Cluster {c + 1}"))
        if f"cluster_{c + 1:03d}" in maps:
            vol = maps[f"cluster_{c + 1:03d}"]
            figures.append(ReportFigure(plot_central_slices(out / f"cluster_{c + 1:03d}_slices.png", vol,
                                                            f"cluster {c + 1} map"), f"Cluster {c + 1}: central slices"))
    write_report(out / "report.html", "VAE-GAN clustering", [ReportSection("Clusters", figures=figures)], metrics)


__all__ = ["decode_images", "encode", "load_trained", "run_analyze", "run_train"]
