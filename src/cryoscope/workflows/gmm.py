"""`cryoscope gmm` workflows: fit a pseudo-atomic Gaussian mixture to a map and write what a user needs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from cryoscope.bayes.fit_map import MapFit, fit_map, posterior_maps, render
from cryoscope.io.mrc import Map, write_map
from cryoscope.io.pdb import write_pseudoatoms
from cryoscope.io.runinfo import write_metrics_json, write_params_json
from cryoscope.physics.filters import gaussian_lowpass, lowpass


@dataclass
class FitMapSettings:
    """Options of `gmm fit-map` (see the command's help)."""

    components: int = 1000
    counts: int = 1_000_000
    steps: int = 300
    burn_in: int | None = None
    thin: int = 10
    method: str = "gibbs"
    compare_resolution: float = 25.0
    seed: int = 0


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalised cross-correlation <a, b> / (|a| |b|) about zero (thesis eq. 3.3)."""
    return float((a * b).sum() / (a.norm() * b.norm()))


def run_fit_map(m: Map, settings: FitMapSettings, progress: bool = True,
                device: torch.device | str = "cpu") -> tuple[MapFit, dict]:
    """Fit the mixture to the map's positive density on `device`; returns the fit (on the CPU) and its metrics."""
    g = torch.Generator(device=device).manual_seed(settings.seed)
    vol = m.data.double().to(device)
    bar = tqdm(total=settings.steps, desc="gmm fit-map", unit="step", disable=not progress)
    t0 = time.perf_counter()
    fit = fit_map(vol, m.voxel_size, settings.components, settings.counts, settings.steps, settings.burn_in,
                  settings.thin, settings.method, generator=g, callback=lambda step, lp: bar.update(1))
    bar.close()
    seconds = time.perf_counter() - t0
    box, mass = vol.shape[-1], float(vol.clamp_min(0).sum())
    model = posterior_maps(fit.samples, box, m.voxel_size, mass)[0] if fit.samples else render(fit.state, box, m.voxel_size, mass)
    positive = vol.clamp_min(0)
    res = settings.compare_resolution
    metrics = {
        "seconds": seconds,
        "sigma_A": fit.state.sigma,
        "log_posterior_final": fit.log_posterior[-1],
        "n_samples": len(fit.samples),
        "correlation_with_map": correlation(model, positive),
        f"correlation_with_map_molmap_{res:g}A": correlation(model, gaussian_lowpass(positive, res, m.voxel_size)),
        f"correlation_with_map_sharp_lowpass_{res:g}A": correlation(model, lowpass(positive, m.voxel_size / res)),
    }
    return MapFit(fit.state.to("cpu"), [s.to("cpu") for s in fit.samples], fit.log_posterior), metrics


def write_fit_map(out: Path, m: Map, fit: MapFit, settings: FitMapSettings, metrics: dict, source: Path,
                  device: str = "cpu") -> dict[str, Path]:
    """Pseudo-atoms (PDB, map file frame), posterior-mean map (or the EM map) and its SD map, params and metrics."""
    out.mkdir(parents=True, exist_ok=True)
    vol = m.data.double()
    box, mass = vol.shape[-1], float(vol.clamp_min(0).sum())
    paths = {"pdb": out / "pseudoatoms.pdb", "map": out / "map.mrc", "params": out / "params.json", "metrics": out / "metrics.json"}
    offset = torch.tensor(m.origin, dtype=torch.float64) + (box // 2) * m.voxel_size  # centre-relative -> file frame
    write_pseudoatoms(paths["pdb"], fit.state.means + offset, fit.state.weights, fit.state.sigma, protect=(source,))
    if fit.samples:
        mean, sd = posterior_maps(fit.samples, box, m.voxel_size, mass)
        paths["sd"] = out / "map_sd.mrc"
        write_map(paths["sd"], sd.float(), m.voxel_size, protect=(source,))
    else:
        mean = render(fit.state, box, m.voxel_size, mass)
    write_map(paths["map"], mean.float(), m.voxel_size, protect=(source,))
    write_params_json(paths["params"], {"command": "gmm fit-map", "map": str(source), "voxel_size": m.voxel_size,
                                        **settings.__dict__, "device": device})
    write_metrics_json(paths["metrics"], {**metrics, "log_posterior_trace": fit.log_posterior})
    return paths
