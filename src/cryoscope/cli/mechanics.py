"""`cryoscope mechanics`: the elastic-network (mechanical) model of thesis ch. 4; `mechanics modes` writes normal
modes as playable trajectories, `mechanics fit` fits spring constants to a coefficient mean and covariance."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import typer

CUTOFF = typer.Option(15.0, help="Springs join masses closer than this, Å.")
ATOMS = typer.Option("ca", help="Network nodes from a structure: ca (Cα) or all (every atom, e.g. pseudo-atoms).")
MASSES = typer.Option("unit", help="Masses from a structure: unit, residue (Cα only, Da) or occupancy (pseudo-atom weights).")
KT = typer.Option(1.0, "--kT", help="kT: spring constants are in kT/Å² (1: k in units of kT/Å²).")
SEED = typer.Option(0, help="Random seed (recorded; the computations are deterministic).")
DEVICE = typer.Option("auto", help="auto, cpu or cuda.")


def _plot_curve(path: Path, ks: list[float], costs: list[float], k_fit: float, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cryoscope.io.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(ks, costs, "o-", ms=3)
    ax.axvline(k_fit, color="C3", ls="--", label=f"k̂ = {k_fit:.4g}")
    ax.set_xscale("log")
    ax.set_xlabel("spring constant k (kT/Å²)")
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)


def register(app: typer.Typer) -> None:
    mech = typer.Typer(help="Elastic-network (mechanical) models: normal modes and spring constants from a mean and covariance.",
                       no_args_is_help=True)
    app.add_typer(mech, name="mechanics")

    @mech.command("modes")
    def modes_cmd(
        network: Path = typer.Argument(..., metavar="NETWORK", help="PDB/mmCIF model, or .npz with positions [N,3] Å (masses, labels, springs optional)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        cutoff: float = CUTOFF,
        k: float = typer.Option(1.0, "--k", help="Spring constant, kT/Å² (γ of the ANM)."),
        atoms: str = ATOMS,
        masses: str = MASSES,
        n_modes: int = typer.Option(10, help="Non-rigid modes written as trajectories (modes 7, 8, ...)."),
        frames: int = typer.Option(20, help="Frames per trajectory (one cycle)."),
        rmsd: float = typer.Option(2.0, help="Largest RMSD of a frame from the equilibrium, Å."),
        kT: float = KT,
        seed: int = SEED,
        device: str = DEVICE,
    ) -> None:
        """Normal modes of the anisotropic network (mass-weighted, T^-1/2 U T^-1/2): eigenvalues.csv, modes.npz and
        mode_007.pdb... multi-model trajectories (ChimeraX: open mode_007.pdb coordsets true; coordset #1 loop 10)."""
        import numpy as np
        import torch

        from cryoscope.device import resolve_device
        from cryoscope.errors import InvalidValueError
        from cryoscope.hetero.mechanics_io import read_network, write_mode_trajectory
        from cryoscope.io.atomic import atomic_path
        from cryoscope.io.runinfo import write_metrics_json, write_params_json
        from cryoscope.representations.elastic_network import RIGID_DIM, hessian, normal_modes, rigid_basis

        started = time.perf_counter()
        if k <= 0 or kT <= 0 or n_modes < 1:
            raise InvalidValueError(f"need --k > 0, --kT > 0 and --n-modes >= 1, got {k}, {kT}, {n_modes}")
        params = {"command": "mechanics modes", "network": str(network), "cutoff": cutoff, "k": k, "atoms": atoms, "masses": masses,
                  "n_modes": n_modes, "frames": frames, "rmsd": rmsd, "kT": kT, "seed": seed}
        torch.manual_seed(seed)
        net, nodes = read_network(network, cutoff, atoms, masses)
        dev = resolve_device(device)
        u = hessian(net.to(dev), k)
        lam, disp = (t.cpu() for t in normal_modes(u, net.masses.to(dev)))
        n_write = min(n_modes, lam.numel() - RIGID_DIM)
        rigid = rigid_basis(net.positions)
        in_rigid = (rigid.T @ disp[:, :RIGID_DIM]).norm(dim=0)  # 1 when a mode lies in the rigid subspace
        per_mass = disp.reshape(net.n_masses, 3, -1).pow(2).sum(1)  # [N, 3N]
        collectivity = torch.exp(-(per_mass * per_mass.clamp_min(1e-300).log()).sum(0)) / net.n_masses  # Brüschweiler 1995
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "eigenvalues.csv") as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["mode", "eigenvalue", "omega", "rigid", "collectivity"])
            for i in range(lam.numel()):
                w.writerow([i + 1, f"{float(lam[i]):.10g}", f"{math.sqrt(max(float(lam[i]), 0.0)):.8g}", int(i < RIGID_DIM),
                            f"{float(collectivity[i]):.6f}"])
        with atomic_path(out / "modes.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, eigenvalues=lam.numpy(), modes=disp.numpy(), positions=net.positions.numpy(), masses=net.masses.numpy())
        for i in range(RIGID_DIM, RIGID_DIM + n_write):
            write_mode_trajectory(out / f"mode_{i + 1:03d}.pdb", net, disp[:, i], rmsd, frames, nodes)
        scale = float(lam.abs().max())
        metrics = {"masses": net.n_masses, "springs": net.n_springs, "rigid_eigenvalue_max_abs": float(lam[:RIGID_DIM].abs().max()),
                   "rigid_eigenvalue_relative": float(lam[:RIGID_DIM].abs().max()) / scale,
                   "rigid_modes_in_rigid_subspace_min": float(in_rigid.min()),
                   "eigenvalues_nonrigid": lam[RIGID_DIM:RIGID_DIM + n_write].tolist(),
                   "collectivity_nonrigid": collectivity[RIGID_DIM:RIGID_DIM + n_write].tolist(),
                   "trajectories": [f"mode_{i + 1:03d}.pdb" for i in range(RIGID_DIM, RIGID_DIM + n_write)],
                   "device": dev.type, "seconds": time.perf_counter() - started}
        write_params_json(out / "params.json", params)
        write_metrics_json(out / "metrics.json", metrics)
        typer.echo(f"{net.n_masses} masses, {net.n_springs} springs; rigid eigenvalues ≤ {metrics['rigid_eigenvalue_max_abs']:.2g}, "
                   f"modes 7-{RIGID_DIM + n_write}: " + ", ".join(f"{v:.4g}" for v in metrics["eigenvalues_nonrigid"][:5])
                   + f"...; wrote {out}/eigenvalues.csv and {n_write} trajectories")

    @mech.command("fit")
    def fit_cmd(
        moments: Path = typer.Argument(..., metavar="MOMENTS", help=".npz: mean [n], cov [n,n] in the real representation, and the basis "
                                       "spec (basis sine|box, half_width Å, centre, per_axis or indices/max_index)."),
        network: Path = typer.Option(..., "--network", help="PDB/mmCIF or .npz network in the basis' frame (Å)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (created)."),
        q: float = typer.Option(..., "--q", help="Standard deviation of the Gaussian at each mass, Å."),
        cutoff: float = CUTOFF,
        atoms: str = ATOMS,
        masses: str = MASSES,
        groups: str = typer.Option("none", help="Spring groups: none (one k), chain (structure chains) or labels (.npz labels)."),
        weights: str = typer.Option("unit", help="Scattering weight of each mass: unit or masses."),
        cost: str = typer.Option("moments", help="moments (Eq. 4.14) or kl (Eq. 4.183)."),
        gamma: float = typer.Option(1.0, help="γ of Eq. 4.14 (weight of the covariance term)."),
        ridge: float = typer.Option(0.05, help="KL only: ε I added to both covariances, ε = ridge · λ_max(V̂); at least V̂'s noise level."),
        k_min: float = typer.Option(1e-2, help="Smallest k searched, kT/Å²."),
        k_max: float = typer.Option(1e3, help="Largest k searched, kT/Å²."),
        grid: int = typer.Option(41, help="Log-spaced k values of the cost curve (the single-k search starts at its minimum)."),
        kT: float = KT,
        seed: int = SEED,
        device: str = DEVICE,
    ) -> None:
        """Fit spring constants (one k, then one per group) to a coefficient mean and covariance; writes cost_curve.csv/.png,
        params.json and metrics.json."""
        import torch

        from cryoscope.device import resolve_device
        from cryoscope.errors import InvalidValueError
        from cryoscope.hetero.mechanics import MechanicalModel, fit_spring_constants
        from cryoscope.hetero.mechanics_io import read_moments, read_network
        from cryoscope.io.atomic import atomic_path
        from cryoscope.io.runinfo import write_metrics_json, write_params_json

        started = time.perf_counter()
        if q <= 0 or kT <= 0 or grid < 3 or groups not in ("none", "chain", "labels") or weights not in ("unit", "masses"):
            raise InvalidValueError(f"need --q > 0, --kT > 0, --grid >= 3, --groups none|chain|labels, --weights unit|masses; "
                                    f"got {q}, {kT}, {grid}, {groups!r}, {weights!r}")
        params = {"command": "mechanics fit", "moments": str(moments), "network": str(network), "q": q, "cutoff": cutoff, "atoms": atoms,
                  "masses": masses, "groups": groups, "weights": weights, "cost": cost, "gamma": gamma, "ridge": ridge,
                  "k_min": k_min, "k_max": k_max, "grid": grid, "kT": kT, "seed": seed}
        torch.manual_seed(seed)
        mean_hat, cov_hat, basis = read_moments(moments)
        net, _ = read_network(network, cutoff, atoms, masses, groups)
        dev = resolve_device(device)
        net = net.to(dev)
        model = MechanicalModel(net, basis, q, kT, net.masses if weights == "masses" else None)
        fit = fit_spring_constants(model, mean_hat.to(dev), cov_hat.to(dev), cost, gamma, ridge, (k_min, k_max), grid,
                                   groups=groups != "none", progress=lambda s: typer.echo(s, err=True))
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "cost_curve.csv") as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["k", "cost"])
            w.writerows([f"{a:.8g}", f"{b:.10g}"] for a, b in zip(fit.curve_k, fit.curve_cost))
        _plot_curve(out / "cost_curve.png", fit.curve_k, fit.curve_cost, fit.k_single,
                    "χ(k), Eq. 4.14" if cost == "moments" else "KL divergence, Eq. 4.183")
        metrics = {"k_single": fit.k_single, "cost_single": fit.cost_single, "k_groups": fit.k_groups, "cost_groups": fit.cost_groups,
                   "springs_per_group": net.groups.bincount().tolist(), "cost_curve_minima": fit.curve_minima,
                   "evaluations": fit.evaluations, "basis": type(basis).__name__, "coefficients": basis.size, "masses": net.n_masses,
                   "springs": net.n_springs, "device": dev.type, "seconds": time.perf_counter() - started}
        write_params_json(out / "params.json", params)
        write_metrics_json(out / "metrics.json", metrics)
        groups_text = "" if fit.k_groups is None else "; per group " + ", ".join(f"{v:.4g}" for v in fit.k_groups)
        typer.echo(f"k̂ = {fit.k_single:.4g} kT/Å²{groups_text}; cost curve has {fit.curve_minima} minimum(s); wrote {out}/metrics.json")
