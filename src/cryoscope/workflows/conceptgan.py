"""Runs of the ConceptGAN engine on files.

`cryoscope conceptgan train` folder OUT: `checkpoint.pt` (networks, optimisers, random state, log, normalisation;
`--resume` continues from it, `generate` reads it), `log.csv`, `losses.png`, `transfers_*.png`, `report.html`,
`params.json`, `metrics.json`.
`cryoscope conceptgan generate` folder OUT: `generated.mrcs` + `generated.star` (input units and pixel size),
`generated.png`, `report.html`, `params.json`, `metrics.json`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path as FilePath

import numpy as np
import torch
from tqdm import tqdm

from cryoscope.conceptgan.data import Normalisation, read_domains, read_images, resize
from cryoscope.conceptgan.domains import OBSERVED, Path, apply_path, check_domain, notation
from cryoscope.conceptgan.generate import synthesise, write_generated
from cryoscope.conceptgan.losses import LossConfig, PathImages
from cryoscope.conceptgan.networks import ConceptGAN
from cryoscope.conceptgan.train import ConceptGANSettings, ConceptGANTrainer
from cryoscope.device import resolve_device
from cryoscope.errors import InvalidValueError, MissingDataError
from cryoscope.io.checkpoint import CheckpointDir
from cryoscope.io.runinfo import write_log_csv, write_params_json
from cryoscope.nn.loop import train_loop
from cryoscope.report.html import ReportFigure, ReportSection, write_report
from cryoscope.report.plots import plot_montage, plot_training

LOSS_KEYS = ("adversarial", "distance3", "cyc2", "cyc4", "comm", "identity", "cycle_weight", "comm_weight",
             "identity_weight", "objective", "gp_weight")
MONTAGES: tuple[tuple[str, str, tuple[Path, ...]], ...] = (
    ("00_clockwise", "00", ((), ("G1",), ("G1", "G2"), ("G1", "G2", "F1"), ("G1", "G2", "F1", "F2"))),
    ("00_counterclockwise", "00", ((), ("G2",), ("G2", "G1"), ("G2", "G1", "F2"), ("G2", "G1", "F2", "F1"))),
    ("00_commutative", "00", ((), ("G1",), ("G2",), ("G1", "G2"), ("G2", "G1"))),
    ("01", "01", ((), ("F2",), ("G1",), ("F2", "G1"), ("G1", "F2"), ("G1", "F1"))),
    ("10", "10", ((), ("F1",), ("G2",), ("F1", "G2"), ("G2", "F1"), ("G2", "F2"))),
)
"""(name, source, columns): the panels of Fig. 5.3 (I: clockwise cycle, II: counter-clockwise, III: commutativity) and
each transfer and composition from Σ01 and Σ10."""


def build_model(p: dict) -> ConceptGAN:
    """The networks of a run's parameters (initialised from its seed)."""
    torch.manual_seed(p["seed"])
    return ConceptGAN(p["box"], p["width"], p["discriminator_width"], p["norm"],
                      "none" if p["objective"] == "wgan-gp" else p["norm"])


def _evenly(images: torch.Tensor, k: int) -> torch.Tensor:
    return images[np.linspace(0, len(images) - 1, min(k, len(images))).astype(np.int64)]


def run_train(p: dict, out: FilePath, resume: bool, progress: bool, device: str, time_limit: float | None = None) -> dict:
    """`cryoscope conceptgan train`: read the three observed sub-domains, train with checkpoints, report."""
    out = FilePath(out)
    dev = resolve_device(device)
    raw, px = read_domains({d: p[f"d{d}"] for d in OBSERVED}, p["box"], p["pixel_size"])
    norm = Normalisation.fit(list(raw.values()))
    images = {d: norm.apply(x) for d, x in raw.items()}
    settings = ConceptGANSettings(iterations=p["iterations"], batch_size=p["batch_size"], lr=p["lr"], beta1=p["beta1"],
                                  seed=p["seed"])
    trainer = ConceptGANTrainer(build_model(p), images, settings, LossConfig(**{k: p[k] for k in LOSS_KEYS}), dev)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = CheckpointDir(out, p)
    if resume and ckpt.exists():
        trainer.load_state_dict(ckpt.load()[1]["trainer"])  # refuses other run parameters
    elif resume:
        warnings.warn(f"{ckpt.path}: no checkpoint to resume from; starting from the beginning", stacklevel=2)
    write_params_json(out / "params.json", p)  # before training, so that a run still going can already generate
    bar = tqdm(total=settings.iterations, initial=trainer.step_count, desc="conceptgan", unit="it", disable=not progress)

    def save() -> None:
        ckpt.save(trainer.step_count, {"trainer": trainer.state_dict(), "normalisation": asdict(norm), "pixel_size": px})
        write_log_csv(out / "log.csv", trainer.history)

    stopped = train_loop(trainer.step, lambda: trainer.step_count, settings.iterations, save, p["checkpoint_every"], bar,
                         lambda e: {"loss": f"{e['loss']:.3f}"}, time_limit)
    history = trainer.history
    last = history[-max(1, len(history) // 20):]
    keys = [k for k in history[0] if k not in ("iteration", "lr", "seconds")]
    metrics = {**{f"n_{d}": len(x) for d, x in images.items()}, "box": p["box"], "pixel_size_A": px,
               "iterations": trainer.step_count, "stopped_by_time_limit": stopped, "time_limit_s": time_limit,
               "normalisation_offset": norm.offset, "normalisation_scale": norm.scale,
               "seconds_per_iteration": float(np.median([e["seconds"] for e in history])),
               **{f"final_{k}": float(np.mean([e[k] for e in last])) for k in keys}}
    _train_report(out, trainer, images, keys, metrics, p["montage_images"])
    return metrics


@torch.no_grad()
def _train_report(out: FilePath, trainer: ConceptGANTrainer, images: dict[str, torch.Tensor], keys: list[str],
                  metrics: dict, k: int) -> None:

    losses = [ReportFigure(plot_training(out / "losses.png", trainer.history, tuple(keys), "ConceptGAN losses"),
                           "Per iteration: L (5.5), its groups of terms before weighting, and each discriminator's loss")]
    model = trainer.model.eval()
    real = {d: _evenly(x, k).to(trainer.device) for d, x in images.items()}
    cached = PathImages(model.generators, real)
    figures = []
    for name, source, columns in MONTAGES:
        panels = torch.stack([cached(source, c) for c in columns], 1)  # [k, columns, N, N]
        heads = ", ".join(f"{notation(c)}(σ{source}) ∈ Σ{apply_path(source, c)}" if c else f"σ{source}" for c in columns)
        png = plot_montage(out / f"transfers_{name}.png", panels.flatten(0, 1).cpu(), panels.shape[0] * len(columns),
                           ncols=len(columns), title=f"from Σ{source}")
        figures.append(ReportFigure(png, f"Columns: {heads}"))
    write_report(out / "report.html", "ConceptGAN training", [
        ReportSection("Losses", figures=losses),
        ReportSection("Transfers", "One row per real image (evenly spaced through each sub-domain's stack); Σ11 has no "
                      "training data.", figures=figures)], metrics)


def load_trained(train_dir: FilePath, device: torch.device | str = "cpu") -> tuple[ConceptGAN, dict, Normalisation, float]:
    """(model, training params, normalisation, pixel size Å) of a `cryoscope conceptgan train` folder."""
    params_path = train_dir / "params.json"
    if not params_path.is_file():
        raise MissingDataError("no params.json: not a `cryoscope conceptgan train` folder", train_dir)
    p = json.loads(params_path.read_text())
    ckpt = CheckpointDir(train_dir, p)
    if not ckpt.exists():
        raise MissingDataError("no checkpoint.pt in the training folder", train_dir)
    _, state = ckpt.load()
    model = build_model(p)
    model.load_state_dict(state["trainer"]["model"])
    return model.to(device).eval(), p, Normalisation(**state["normalisation"]), float(state["pixel_size"])


def run_generate(p: dict, out: FilePath, device: str) -> dict:
    """`cryoscope conceptgan generate`: carry images of `source` to `target`; stack, STAR, montage, report."""

    out = FilePath(out)
    dev = resolve_device(device)
    model, tp, norm, px_train = load_trained(FilePath(p["train_dir"]), dev)
    source, target = check_domain(p["source"]), check_domain(p["target"])
    if source == target:
        raise InvalidValueError(f"--source and --target are both {source}: nothing to generate")
    path = p["input"] or tp.get(f"d{source}")
    if not path:
        raise MissingDataError(f"Σ{source} had no training stack: give --input")
    raw, px = resize(*read_images(path, p["pixel_size"]), tp["box"])
    if abs(px - px_train) > 0.01 * px_train:
        raise InvalidValueError(f"pixel size {px:g} Å at {tp['box']} px differs from the training's {px_train:g} Å", path)
    n = p["n"] or len(raw)
    if not 1 <= n <= len(raw):
        raise InvalidValueError(f"-n {n}: the input has {len(raw)} images", path)
    chosen = np.sort(torch.randperm(len(raw), generator=torch.Generator().manual_seed(p["seed"]))[:n].numpy())
    generated, paths, which = synthesise(model.generators, norm.apply(raw[chosen]).to(dev), source, target, p["order"],
                                         p["batch_size"])
    generated = norm.invert(generated.cpu())
    out.mkdir(parents=True, exist_ok=True)
    columns = {"cryoscopeSourceImage": chosen + 1, "cryoscopeRoute": which + 1,
               "cryoscopeConceptX": np.full(n, int(target[0])), "cryoscopeConceptY": np.full(n, int(target[1]))}
    write_generated(out, generated, px, columns, protect=(path,))
    k = min(8, n)
    pairs = torch.stack([raw[chosen[:k]], generated[:k]], 1).flatten(0, 1)
    montage = plot_montage(out / "generated.png", pairs, 2 * k, ncols=4, title=f"Σ{source} -> Σ{target}")
    metrics = {"n_generated": n, "source": source, "target": target, "input": str(path), "pixel_size_A": px,
               "routes": [notation(r) for r in paths], "route_counts": np.bincount(which, minlength=len(paths)).tolist(),
               "generated_mean": float(generated.mean()), "generated_std": float(generated.std()),
               "input_mean": float(raw[chosen].mean()), "input_std": float(raw[chosen].std())}
    write_report(out / "report.html", "ConceptGAN generation", [ReportSection(
        "Generated images", f"Routes: {', '.join(metrics['routes'])} (cryoscopeRoute in the STAR file).",
        figures=[ReportFigure(montage, f"Pairs: input σ{source}, then its image in Σ{target}")])], metrics)
    return metrics
