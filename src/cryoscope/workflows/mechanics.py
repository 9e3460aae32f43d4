"""Runs of the mechanical model on files: `cryoscope mechanics modes | fit`.

`modes` folder OUT: `eigenvalues.csv` (mode, ω², ω, rigid flag, collectivity), `modes.npz`, `mode_007.pdb`...
(multi-model trajectories), `params.json`, `metrics.json`.
`fit` folder OUT: `cost_curve.csv` and `.png` (cost against one spring constant), `params.json`, `metrics.json`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cryoscope.device import resolve_device
from cryoscope.errors import InvalidValueError
from cryoscope.hetero.mechanics import MechanicalModel, fit_spring_constants
from cryoscope.hetero.mechanics_io import read_moments, read_network, write_mode_trajectory
from cryoscope.io.atomic import atomic_path
from cryoscope.io.runinfo import write_log_csv
from cryoscope.report.plots import plot_series
from cryoscope.representations.elastic_network import RIGID_DIM, hessian, normal_modes, rigid_basis
from cryoscope.workflows.likelihood import finish_run


def run_modes(p: dict, out: Path, device: str) -> dict:
    """Normal modes of the anisotropic network (mass-weighted, T^-1/2 U T^-1/2) and trajectories of the softest ones."""
    started = time.perf_counter()
    if p["k"] <= 0 or p["kT"] <= 0 or p["n_modes"] < 1:
        raise InvalidValueError(f"need --k > 0, --kT > 0 and --n-modes >= 1, got {p['k']}, {p['kT']}, {p['n_modes']}")
    torch.manual_seed(p["seed"])
    net, nodes = read_network(Path(p["network"]), p["cutoff"], p["atoms"], p["masses"])
    dev = resolve_device(device)
    lam, disp = (t.cpu() for t in normal_modes(hessian(net.to(dev), p["k"]), net.masses.to(dev)))
    n_write = min(p["n_modes"], lam.numel() - RIGID_DIM)
    in_rigid = (rigid_basis(net.positions).T @ disp[:, :RIGID_DIM]).norm(dim=0)  # 1 when a mode lies in the rigid subspace
    per_mass = disp.reshape(net.n_masses, 3, -1).pow(2).sum(1)  # [N, 3N]
    collectivity = torch.exp(-(per_mass * per_mass.clamp_min(1e-300).log()).sum(0)) / net.n_masses  # Brüschweiler 1995
    out.mkdir(parents=True, exist_ok=True)
    write_log_csv(out / "eigenvalues.csv", [
        {"mode": i + 1, "eigenvalue": f"{float(lam[i]):.10g}", "omega": f"{math.sqrt(max(float(lam[i]), 0.0)):.8g}",
         "rigid": int(i < RIGID_DIM), "collectivity": f"{float(collectivity[i]):.6f}"} for i in range(lam.numel())])
    with atomic_path(out / "modes.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, eigenvalues=lam.numpy(), modes=disp.numpy(), positions=net.positions.numpy(), masses=net.masses.numpy())
    for i in range(RIGID_DIM, RIGID_DIM + n_write):
        write_mode_trajectory(out / f"mode_{i + 1:03d}.pdb", net, disp[:, i], p["rmsd"], p["frames"], nodes)
    rigid_max = float(lam[:RIGID_DIM].abs().max())
    metrics = {"masses": net.n_masses, "springs": net.n_springs, "rigid_eigenvalue_max_abs": rigid_max,
               "rigid_eigenvalue_relative": rigid_max / float(lam.abs().max()),
               "rigid_modes_in_rigid_subspace_min": float(in_rigid.min()),
               "eigenvalues_nonrigid": lam[RIGID_DIM:RIGID_DIM + n_write].tolist(),
               "collectivity_nonrigid": collectivity[RIGID_DIM:RIGID_DIM + n_write].tolist(),
               "trajectories": [f"mode_{i + 1:03d}.pdb" for i in range(RIGID_DIM, RIGID_DIM + n_write)], "device": dev.type}
    finish_run(out, p, metrics, started)
    return metrics


def run_fit(p: dict, out: Path, device: str, progress: Callable[[str], None] | None = None) -> dict:
    """Spring constants (one k, then one per group) fitted to a coefficient mean and covariance."""
    started = time.perf_counter()
    if p["q"] <= 0 or p["kT"] <= 0 or p["grid"] < 3 or p["groups"] not in ("none", "chain", "labels") or p["weights"] not in ("unit", "masses"):
        raise InvalidValueError(f"need --q > 0, --kT > 0, --grid >= 3, --groups none|chain|labels, --weights unit|masses; "
                                f"got {p['q']}, {p['kT']}, {p['grid']}, {p['groups']!r}, {p['weights']!r}")
    torch.manual_seed(p["seed"])
    mean_hat, cov_hat, basis = read_moments(Path(p["moments"]))
    net, _ = read_network(Path(p["network"]), p["cutoff"], p["atoms"], p["masses"], p["groups"])
    dev = resolve_device(device)
    net = net.to(dev)
    model = MechanicalModel(net, basis, p["q"], p["kT"], net.masses if p["weights"] == "masses" else None)
    fit = fit_spring_constants(model, mean_hat.to(dev), cov_hat.to(dev), p["cost"], p["gamma"], p["ridge"], (p["k_min"], p["k_max"]),
                               p["grid"], groups=p["groups"] != "none", progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    write_log_csv(out / "cost_curve.csv", [{"k": f"{a:.8g}", "cost": f"{b:.10g}"} for a, b in zip(fit.curve_k, fit.curve_cost)])
    plot_series(out / "cost_curve.png", fit.curve_k, {"cost": fit.curve_cost}, "spring constant k (kT/Å²)",
                "χ(k), Eq. 4.14" if p["cost"] == "moments" else "KL divergence, Eq. 4.183", "Cost against one spring constant",
                log_x=True, mark_x=(fit.k_single, f"k̂ = {fit.k_single:.4g}"))
    metrics = {"k_single": fit.k_single, "cost_single": fit.cost_single, "k_groups": fit.k_groups, "cost_groups": fit.cost_groups,
               "springs_per_group": net.groups.bincount().tolist(), "cost_curve_minima": fit.curve_minima,
               "evaluations": fit.evaluations, "basis": type(basis).__name__, "coefficients": basis.size, "masses": net.n_masses,
               "springs": net.n_springs, "device": dev.type}
    finish_run(out, p, metrics, started)
    return metrics
