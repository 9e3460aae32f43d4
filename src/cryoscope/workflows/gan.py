"""Runs of the GAN engine on files: data statistics, the simulator, half-set training with checkpoints, outputs.

Output layout of a folder OUT: `half1/`, `half2/` (each: `checkpoint.pt`, `log.csv`, `map.mrc` or the latent maps),
then for CryoGAN `half_map1.mrc`, `half_map2.mrc` (half 2 aligned onto half 1: the two runs have independent
gauges), `map.mrc` (their average), and for Multi-CryoGAN `latent_000.mrc ...` (maps at latent quantiles);
`training.png`, `fsc.png`, `params.json`, `metrics.json`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from cryoscope.distributed import DistContext
from cryoscope.errors import InvalidValueError
from cryoscope.gan.data import RealImages, image_statistics
from cryoscope.gan.simulator import NoiseModel, ShiftModel, Simulator, draw_latents
from cryoscope.gan.train import GANSettings, GANTrainer
from cryoscope.gan.volume import ConformationGenerator, DensityMap
from cryoscope.io.checkpoint import CheckpointDir
from cryoscope.io.mrc import write_map
from cryoscope.io.runinfo import write_log_csv
from cryoscope.nn.loop import train_loop
from cryoscope.physics.ctf import compute_ctf
from cryoscope.physics.filters import soft_mask
from cryoscope.physics.forward import ImageFormation
from cryoscope.physics.noise import BackgroundPatches, masked_variance, particle_mask
from cryoscope.physics.poses import uniform_rotations
from cryoscope.representations.voxel import VoxelMap
from cryoscope.validation.align import apply_map_alignment, align_maps, fsc_after_alignment
from cryoscope.validation.fsc import resolution_at
from cryoscope.validation.metrics import cross_correlation

LOG_KEYS = ("wasserstein", "gradient_penalty", "noise_sigma")


@dataclass
class GANData:
    """The particles and what the simulator takes from them: normalising scale, noise std and signal variance (in
    normalised units), the CTF parameters (or None) and the pixel size (Å)."""

    stack: object
    n: int
    pixel_size: float
    box: int
    ctf: object
    scale: float
    noise_std: float
    signal_var: float
    source: str


def data_statistics(stack, n: int, pixel_size: float, ctf, radius: float, source: str, seed: int = 0, sample: int = 1000) -> GANData:
    """Normalise by the standard deviation of up to `sample` random images; noise std outside `radius` px."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:sample]
    images = torch.as_tensor(stack[idx.numpy()]).float()
    scale = 1 / max(float(images.std()), 1e-30)
    st = image_statistics(images * scale, radius)
    if not st["signal_var"] > 0:
        raise InvalidValueError("no signal above the background noise in the particle images", source)
    return GANData(stack, n, pixel_size, images.shape[-1], ctf, scale, st["noise_std"], st["signal_var"], source)


def initial_map(data: GANData, radius: float, seed: int = 0) -> tuple[torch.Tensor, float]:
    """A soft ball of radius N/4 times (1 + uniform noise in ±0.5) drawn from `seed`, so that half-sets start apart
    beyond the lowest frequencies, and the amplitude that gives its CTF-modulated projections the data's signal variance."""
    box = data.box
    g = torch.Generator().manual_seed(seed)
    blob = soft_mask(box, 0.25 * box, 0.15 * box, ndim=3) * (0.5 + torch.rand(box, box, box, generator=g))
    R = uniform_rotations(64, g)
    ctf = None if data.ctf is None else compute_ctf(data.ctf[torch.randint(data.n, (64,), generator=g)], box, data.pixel_size).float()
    proj = ImageFormation()(VoxelMap(blob, data.pixel_size), R, ctf=ctf)
    amp = math.sqrt(data.signal_var / float(masked_variance(proj, particle_mask(box, radius)).mean()))
    return blob, amp


def build_simulator(data: GANData, radius: float, poses: str, shifts: str, max_shift: float, learn_noise: bool,
                    background: BackgroundPatches | None, symmetry: str | None, latent: str | None = None,
                    n_basis: int = 4, maps_per_batch: int = 8, seed: int = 0, positive: bool = True) -> Simulator:
    """The generator: a density map (latent None) or a conformation generator, with the noise and shift models."""
    blob, amp = initial_map(data, radius, seed)
    if latent is None:
        volume = DensityMap(blob * amp, amp, support_radius=radius, symmetry=symmetry, positive=positive)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            volume = ConformationGenerator(blob * amp, amp, n_basis=n_basis, support_radius=radius, symmetry=symmetry,
                                           positive=positive)
    noise = NoiseModel(data.noise_std, learn_noise, background, data.pixel_size)
    return Simulator(volume, data.pixel_size, data.ctf, noise, ShiftModel(shifts, max_shift), poses, latent, maps_per_batch)


def train_half(data: GANData, indices: torch.Tensor, simulator: Simulator, settings: GANSettings, out_dir: Path, params: dict,
               resume: bool, progress: bool, checkpoint_every: int, ctx: DistContext, label: str,
               time_limit: float | None = None) -> tuple[GANTrainer, bool]:
    """Train on particles `indices`, checkpointing every `checkpoint_every` iterations in `out_dir` (and at the end),
    for at most `time_limit` seconds; under torch.distributed every rank trains on its own minibatches and rank 0
    writes. Returns the trainer and whether the time limit stopped it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    real = RealImages(data.stack, indices, data.scale, ctx.device, data.source)
    trainer = GANTrainer(simulator.to(ctx.device), real, settings, ctx)
    ckpt = CheckpointDir(out_dir, params)
    if resume and ckpt.exists():
        trainer.load_state_dict(ckpt.load()[1])
    total = settings.iterations
    bar = tqdm(total=total, initial=trainer.iteration, desc=label, unit="it", disable=not (progress and ctx.is_main))

    def save() -> None:
        ckpt.save(trainer.iteration, trainer.state_dict())
        write_log_csv(out_dir / "log.csv", trainer.history)

    stopped = train_loop(trainer.step, lambda: trainer.iteration, total, save, checkpoint_every, bar,
                         lambda e: {"box": e["box"], "W": f"{e['wasserstein']:.3f}"}, time_limit, ctx)
    return trainer, stopped


def half_indices(n: int, halves: bool) -> list[torch.Tensor]:
    """Even and odd particles (gold standard), or all particles in one set."""
    return [torch.arange(0, n, 2), torch.arange(1, n, 2)] if halves else [torch.arange(n)]


def density_outputs(maps: list[torch.Tensor], out: Path, pixel_size: float, protect: tuple, reference: torch.Tensor | None) -> dict:
    """Half-maps (half 2 aligned onto half 1) and their average, the half-map FSC, and the FSC against a reference."""
    from cryoscope.report.plots import plot_fsc

    box = maps[0].shape[-1]
    metrics, curves = {}, {}
    if len(maps) == 2:
        a = fsc_after_alignment(maps[1], maps[0], pixel_size)
        h1, h2 = maps[0], a.aligned.float()
        write_map(out / "half_map1.mrc", h1, pixel_size, protect)
        write_map(out / "half_map2.mrc", h2, pixel_size, protect)
        final = (h1 + h2) / 2
        curves["half-maps (aligned)"] = a.fsc
        cyc = resolution_at(a.fsc, 0.143, box)[0]
        metrics |= {"halfmap_fsc_0.143_cycles_per_pixel": cyc, "halfmap_fsc_0.143_A": pixel_size / cyc if cyc > 0 else math.inf,
                    "halfmap_fsc_0.5_cycles_per_pixel": resolution_at(a.fsc, 0.5, box)[0]}
    else:
        final = maps[0]
    write_map(out / "map.mrc", final, pixel_size, protect)
    if reference is not None:
        t = fsc_after_alignment(final, reference, pixel_size)
        curves["map vs truth (aligned)"] = t.fsc
        for thr, res in (("0.5", t.resolution_05), ("0.143", t.resolution_0143)):
            metrics[f"truth_fsc_{thr}_cycles_per_pixel"], metrics[f"truth_fsc_{thr}_A"] = res[0], res[1]
        metrics["truth_cc"] = t.alignment.cc
    if curves:
        plot_fsc(out / "fsc.png", curves, box, pixel_size)
    return metrics


def latent_outputs(volume: ConformationGenerator, latent: str, out: Path, pixel_size: float, protect: tuple,
                   frames: torch.Tensor | None, n_maps: int = 10, n_samples: int = 400, seed: int = 0) -> dict:
    """Maps at latent quantiles (`latent_000.mrc`, ...) and, with the true frames [F, N, N, N], which frame each
    matches best (the frames aligned once onto the middle map) and the recovered distribution of conformations:
    the best-matching frame coordinate (0..1) of generated maps at latents drawn from the prior, compared with the
    true frame coordinates by the 1-D Wasserstein distance when the true latents are given in `frames`' order."""
    kind = latent.partition(":")[0]
    k = int(latent.partition(":")[2] or 2) if kind == "categorical" else None
    z = torch.linspace(0, 1, k if k else n_maps)
    with torch.no_grad():
        maps = volume(z).float()
    for i, m in enumerate(maps):
        write_map(out / f"latent_{i:03d}.mrc", m, pixel_size, protect)
    metrics: dict = {"latent_maps": len(maps)}
    if frames is None:
        return metrics
    al = align_maps(frames[len(frames) // 2], maps[len(maps) // 2])  # the frames into the generator's gauge, once
    frames = torch.stack([apply_map_alignment(f.double(), al).float() for f in frames])

    def best_frame(v: torch.Tensor) -> int:
        return int(torch.stack([cross_correlation(v, f) for f in frames]).argmax())

    match = [best_frame(v) for v in maps]
    steps = [b - a for a, b in zip(match, match[1:])]
    metrics["latent_best_frame"] = match  # monotone (either way: the latent's direction is a gauge) when recovered
    metrics["latent_order_monotone"] = match[0] != match[-1] and (all(d >= 0 for d in steps) or all(d <= 0 for d in steps))
    g = torch.Generator().manual_seed(seed)
    zs = draw_latents(latent, n_samples, g)
    coords = []
    with torch.no_grad():
        for chunk in zs.split(16):
            coords += [best_frame(v) / max(len(frames) - 1, 1) for v in volume(chunk).float()]
    metrics["recovered_frame_coordinates"] = coords
    return metrics


def wasserstein_1d(a: torch.Tensor, b: torch.Tensor, n: int = 1000) -> float:
    """W1 between two 1-D samples: the mean absolute difference of their quantile functions."""
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return float((torch.quantile(a.double(), q) - torch.quantile(b.double(), q)).abs().mean())


def write_training_plot(out: Path, trainers: list[GANTrainer]) -> None:
    from cryoscope.report.plots import plot_training

    history = trainers[0].history
    plot_training(out / "training.png", history, LOG_KEYS, "CryoGAN training (half 1)" if len(trainers) > 1 else "CryoGAN training")


def run_gan(params: dict, out: Path, stages: list[tuple[int, int]], resume: bool, progress: bool, device: str, started: float,
            time_limit: float | None = None) -> dict:
    """`cryoscope cryogan` / `multicryogan` with the CLI's `params`: train each half-set, write maps and metrics."""
    from cryoscope.distributed import finalize_distributed, init_distributed

    p, out, ctx = params, Path(out), init_distributed(device)
    try:
        return _run_gan(p, out, stages, resume, progress, ctx, started, time_limit)
    finally:
        finalize_distributed(ctx)


def _run_gan(p: dict, out: Path, stages: list[tuple[int, int]], resume: bool, progress: bool, ctx: DistContext, started: float,
             time_limit: float | None) -> dict:
    from cryoscope.physics.noise import load_background_patches
    from cryoscope.workflows.likelihood import finish_run, open_particles, read_references

    multi = p["command"] == "multicryogan"
    meta, particles = open_particles(p["star"], p["pixel_size"], p["ctf"])
    box, px = meta.require_box(), particles.pixel_size
    radius = p["particle_radius"] or 0.45 * box
    if p["noise"] not in ("learned", "fixed", "background"):
        raise InvalidValueError(f"--noise must be learned, fixed or background, got {p['noise']!r}")
    background = load_background_patches(p["background"]) if p["noise"] == "background" else None
    data = data_statistics(particles.stack, meta.n, px, particles.ctf, radius, str(p["star"]), p["seed"])
    settings = dict(stages=stages, batch_size=p["batch_size"], critic_steps=p["critic_steps"], gp_weight=p["gp_weight"],
                    critic_lr=p["critic_lr"], generator_lr=p["generator_lr"], critic_base=p["critic_base"], ema_decay=p["ema_decay"])
    protect = tuple(x for x in (p["star"], p.get("truth_star")) if x)
    trainers, stopped, sets = [], [], half_indices(meta.n, p["halves"])
    budget = None if time_limit is None else time_limit / len(sets)  # the same training time for each half-set
    for h, idx in enumerate(sets):
        sim = build_simulator(data, radius, p["poses"], p["shifts"], p["max_shift"], p["noise"] != "fixed", background,
                              p["symmetry"], p.get("latent") if multi else None, p.get("n_basis", 4), p.get("maps_per_batch", 8),
                              p["seed"] * 1000 + h, p["positivity"])
        gs = GANSettings(**settings, seed=p["seed"] * 1000 + h)
        label = f"half {h + 1}" if p["halves"] else "train"
        trainer, stop = train_half(data, idx, sim, gs, out / f"half{h + 1}", p, resume, progress, p["checkpoint_every"], ctx,
                                   label, budget)
        trainers.append(trainer)
        stopped.append(stop)
    if not ctx.is_main:
        return {}
    write_training_plot(out, trainers)
    metrics: dict = {"n_particles": meta.n, "box": box, "pixel_size_A": px, "iterations": trainers[0].iteration,
                     "iterations_per_set": [t.iteration for t in trainers], "stopped_by_time_limit": any(stopped), "time_limit_s": time_limit,
                     "noise_sigma": [t.history[-1]["noise_sigma"] for t in trainers],
                     "train_seconds": [sum(e["seconds"] for e in t.history) for t in trainers]}
    if not multi:
        maps = [t.averaged_volume()().detach().float().cpu() / data.scale for t in trainers]
        reference = read_references(p["reference"], 1, box, px)[0] if p["reference"] else None
        metrics |= density_outputs(maps, out, px, protect, reference)
    else:
        frames = read_references(p["reference"], len(p["reference"].split(",")), box, px) if p["reference"] else None
        vol = trainers[0].averaged_volume().cpu()
        m = latent_outputs(vol, p["latent"], out, px, protect, frames, seed=p["seed"])
        coords = torch.tensor(m.pop("recovered_frame_coordinates", []), dtype=torch.float64)
        metrics |= m
        if coords.numel() and p.get("truth_star"):
            metrics |= latent_distribution_metrics(coords, p["truth_star"], p["latent"], frames.shape[0])
    finish_run(out, p, metrics, started)
    return metrics


def latent_distribution_metrics(coords: torch.Tensor, truth_star, latent: str, n_frames: int) -> dict:
    """Recovered vs true distribution of conformations: W1 between the frame coordinates of generated maps and the
    true latents (continuous), or the fraction of generated maps nearest each state against the true fractions."""
    import starfile

    t = starfile.read(truth_star)
    t = t["particles"] if isinstance(t, dict) else t
    if latent.startswith("categorical"):
        true = torch.tensor(t["rlnClassNumber"].to_numpy().copy()) - 1
        states = (coords * (n_frames - 1)).round().long()
        return {"state_fractions_recovered": torch.bincount(states, minlength=n_frames).double().div(coords.numel()).tolist(),
                "state_fractions_true": torch.bincount(true, minlength=n_frames).double().div(true.numel()).tolist()}
    true = torch.tensor(t["cryoscopeLatent"].to_numpy().copy())
    return {"latent_wasserstein": wasserstein_1d(coords, true), "latent_recovered_quantiles": torch.quantile(
        coords, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)).tolist()}


__all__ = ["GANData", "run_gan", "build_simulator", "data_statistics", "density_outputs", "half_indices", "latent_outputs", "train_half",
           "wasserstein_1d", "write_training_plot"]
