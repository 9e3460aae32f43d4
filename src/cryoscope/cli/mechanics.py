"""`cryoscope mechanics`: the elastic-network (mechanical) model of thesis ch. 4; `mechanics modes` writes normal
modes as playable trajectories, `mechanics fit` fits spring constants to a coefficient mean and covariance."""

from __future__ import annotations

from pathlib import Path

import typer

CUTOFF = typer.Option(15.0, help="Springs join masses closer than this, Å.")
ATOMS = typer.Option("ca", help="Network nodes from a structure: ca (Cα) or all (every atom, e.g. pseudo-atoms).")
MASSES = typer.Option("unit", help="Masses from a structure: unit, residue (Cα only, Da) or occupancy (pseudo-atom weights).")
KT = typer.Option(1.0, "--kT", help="kT: spring constants are in kT/Å² (1: k in units of kT/Å²).")
SEED = typer.Option(0, help="Random seed (recorded; the computations are deterministic).")
DEVICE = typer.Option("auto", help="auto, cpu or cuda.")


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
        from cryoscope.workflows.mechanics import run_modes

        params = {"command": "mechanics modes", "network": str(network), "cutoff": cutoff, "k": k, "atoms": atoms, "masses": masses,
                  "n_modes": n_modes, "frames": frames, "rmsd": rmsd, "kT": kT, "seed": seed}
        m = run_modes(params, out, device)
        n_write = len(m["trajectories"])
        typer.echo(f"{m['masses']} masses, {m['springs']} springs; rigid eigenvalues ≤ {m['rigid_eigenvalue_max_abs']:.2g}, "
                   f"modes 7-{6 + n_write}: " + ", ".join(f"{v:.4g}" for v in m["eigenvalues_nonrigid"][:5])
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
        from cryoscope.workflows.mechanics import run_fit

        params = {"command": "mechanics fit", "moments": str(moments), "network": str(network), "q": q, "cutoff": cutoff, "atoms": atoms,
                  "masses": masses, "groups": groups, "weights": weights, "cost": cost, "gamma": gamma, "ridge": ridge,
                  "k_min": k_min, "k_max": k_max, "grid": grid, "kT": kT, "seed": seed}
        m = run_fit(params, out, device, progress=lambda text: typer.echo(text, err=True))
        groups_text = "" if m["k_groups"] is None else "; per group " + ", ".join(f"{v:.4g}" for v in m["k_groups"])
        typer.echo(f"k̂ = {m['k_single']:.4g} kT/Å²{groups_text}; cost curve has {m['cost_curve_minima']} minimum(s); wrote {out}/metrics.json")
