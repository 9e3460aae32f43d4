"""The main job on the bundled default structure: simulate, reconstruct, validate and report.

Adenylate kinase (open state, PDB 4AKE) is turned into a density map and particles are simulated
through the physics core. The likelihood engine then works without the true poses: ab-initio
(`abinitio/`), then gold-standard refinement from its map (`refine/`); the map is compared with the
truth after rigid alignment and the poses after gauge alignment. A reconstruction with the true poses
is the oracle. The results folder holds the maps, half-maps, STAR files, metrics.json, params.json,
PNG plots and report.html.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cryoscope.io.mrc import read_map
from cryoscope.io.pdb import default_structure_path, pdb_to_map
from cryoscope.io.runinfo import write_metrics_json, write_params_json
from cryoscope.io.star import read_star
from cryoscope.likelihood.data import ParticleSource
from cryoscope.likelihood.em import EMSettings
from cryoscope.report import plots
from cryoscope.report.html import ReportFigure, ReportSection, write_report
from cryoscope.simulation.config import SimulationConfig
from cryoscope.simulation.dataset import simulate
from cryoscope.validation.align import fsc_after_alignment
from cryoscope.validation.fsc import fsc
from cryoscope.physics.filters import lowpass
from cryoscope.workflows.likelihood import run_abinitio, run_em, write_abinitio_outputs, write_em_outputs
from cryoscope.workflows.reconstruct import (
    reconstruct_known_poses,
    write_reconstruction,
)


@dataclass
class DemoConfig:
    """The demo dataset: box (pixels), voxel size (Å) and the simulation (5,000 particles, SNR 0.1, shifts ±3 px)."""

    box: int = 64
    voxel_size: float = 1.5
    simulation: SimulationConfig = field(default_factory=lambda: SimulationConfig(n_particles=5000, snr=0.1, max_shift=3.0))
    abinitio_iterations: int = 60
    refine_iterations: int = 3


def _without_poses(meta, truth: torch.Tensor, config: DemoConfig, out: Path, device, progress: bool) -> dict:
    """Ab-initio then refinement on the simulated particles; metrics against the truth and figures."""
    px = float(meta.require_pixel_size()[0])
    particles = ParticleSource(meta, meta.images(), device)
    params = {"command": "demo", "stage": "abinitio", "seed": config.simulation.seed}
    ab = run_abinitio(particles, out / "abinitio", params, progress=progress, n_iter=config.abinitio_iterations,
                      batch_size=200, max_shift=config.simulation.max_shift, initial_cutoff=0.1, final_cutoff=0.3,
                      seed=config.simulation.seed)
    refs = truth[None]
    m_ab = write_abinitio_outputs(ab, meta, out / "abinitio", px, references=refs, true_rotations=meta.rotations)
    # global searches at 30° and 15° only: the 7.5° global grid (36,864 rotations) would double the demo's time
    settings = EMSettings(n_iter=config.refine_iterations, max_shift=config.simulation.max_shift, initial_cutoff=0.15,
                          global_min_step_deg=15.0)
    initial = lowpass(ab.maps[0], settings.initial_cutoff)
    params = {"command": "demo", "stage": "refine", "seed": config.simulation.seed}
    ref, _ = run_em(particles, initial, settings, out / "refine", params, config.simulation.seed, progress=progress)
    m_ref = write_em_outputs(ref, meta, out / "refine", px, references=refs, true_rotations=meta.rotations)
    aligned = fsc_after_alignment(ref.map.cpu(), truth)
    oracle = read_map(out / "map.mrc").data
    curves = {"refined vs truth": aligned.fsc, "refined half-maps": ref.fsc_half[0],
              "known poses (oracle) vs truth": fsc(oracle, truth)}
    keys = ("truth_fsc_0.5_cycles_per_pixel", "truth_fsc_0.5_A", "pose_error_median_deg")
    metrics = {f"abinitio_{k}": m_ab.get(f"map_{k}", m_ab.get(k)) for k in keys}
    metrics |= {f"refine_{k}": m_ref.get(f"map_{k}", m_ref.get(k)) for k in keys}
    return {
        "metrics": metrics,
        "fsc_plot": plots.plot_fsc(out / "fsc_without_poses.png", curves, truth.shape[-1], px),
        "projections": plots.plot_projections(out / "refined_projections.png", aligned.aligned, "Refined map (no true poses)"),
    }


def run_demo(out_dir: str | Path, config: DemoConfig, device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """Run the demo job into `out_dir`; returns its metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    write_params_json(out / "params.json", {"command": "demo", **asdict(config), "device": str(device)})

    truth = pdb_to_map(default_structure_path("open"), config.box, config.voxel_size)
    sim = config.simulation
    data = simulate([truth], sim, out / "particles", map_names=["truth"], device=device, progress=progress)
    t_sim = time.perf_counter() - t0

    meta = read_star(data.star)
    stack = meta.images()
    result = reconstruct_known_poses(meta, stack, seed=sim.seed, device=device, reference=truth.data, progress=progress)
    paths = write_reconstruction(result, out)
    t_rec = time.perf_counter() - t0 - t_sim

    blind = _without_poses(meta, truth.data, config, out, device, progress)
    t_blind = time.perf_counter() - t0 - t_sim - t_rec

    figures = {
        "fsc": paths["fsc_plot"],
        "angles": plots.plot_angular_distribution(out / "angular_distribution.png", meta.rotations),
        "map_slices": plots.plot_central_slices(out / "map_slices.png", result.final, "Reconstruction: central slices"),
        "map_projections": plots.plot_projections(out / "map_projections.png", result.final, "Reconstruction: projections"),
        "truth_projections": plots.plot_projections(out / "truth_projections.png", truth.data, "Truth: projections"),
        "montage": plots.plot_montage(out / "particles.png", stack[torch.arange(16).numpy()], 16, title="Simulated particles"),
    }
    metrics = {
        **result.metrics,
        "noise_std": data.noise_std,
        "snr": sim.snr,
        "simulate_seconds": t_sim,
        "reconstruct_seconds": t_rec,
        **blind["metrics"],
        "abinitio_refine_seconds": t_blind,
    }
    write_metrics_json(out / "metrics.json", metrics)
    sections = [
        ReportSection(
            "Dataset",
            f"{sim.n_particles} particles of adenylate kinase (PDB 4AKE), box {config.box}, {config.voxel_size} Å/pixel, "
            f"SNR {sim.snr}, defocus {sim.defocus_min / 1e4:g}–{sim.defocus_max / 1e4:g} µm, shifts up to ±{sim.max_shift:g} px.",
            figures=[ReportFigure(figures["montage"], "The first simulated particles."),
                     ReportFigure(figures["angles"], "Viewing directions (particles per steradian).")],
        ),
        ReportSection(
            "Reconstruction with known poses",
            "CTF-weighted direct Fourier inversion (least squares) of two random half-sets inside a soft spherical mask; "
            "the final map is the masked half-map average weighted by sqrt(2 FSC / (1 + FSC)).",
            metrics={k: v for k, v in metrics.items() if "fsc" in k},
            figures=[ReportFigure(figures["fsc"], "Half-map FSC and FSC of the final map against the truth."),
                     ReportFigure(figures["map_slices"], "Central slices of the final map."),
                     ReportFigure(figures["map_projections"], "Projections of the final map along z, y and x."),
                     ReportFigure(figures["truth_projections"], "Projections of the true map.")],
        ),
        ReportSection(
            "Without poses: ab-initio, then refinement",
            f"Stochastic-gradient ab-initio ({config.abinitio_iterations} minibatches of 200 particles, poses and shifts "
            "marginalised on a 30° HEALPix grid), then gold-standard expectation-maximisation refinement "
            f"({config.refine_iterations} iterations, global then local searches). Neither used the true poses: the map is "
            "compared with the truth after rigid alignment (rotation, shift, hand), the poses after gauge alignment.",
            metrics={k: v for k, v in blind["metrics"].items() if "truth" in k or "pose" in k},
            figures=[ReportFigure(blind["fsc_plot"], "FSC against the truth: ab-initio, refined, and the known-pose oracle."),
                     ReportFigure(blind["projections"], "Projections of the refined map (aligned onto the truth).")],
        ),
    ]
    write_report(out / "report.html", "cryoscope demo", sections, metrics)
    return metrics
