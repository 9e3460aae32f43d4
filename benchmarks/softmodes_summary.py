"""Markdown summary of benchmarks/softmodes_studies.sh: softest eigenvalues, log-20 norms, coverage, speed."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np


def blind_fraction(spec: str, n: int = 20000, seed: int = 0) -> float:
    """Fraction of directions on a Fourier shell that no central slice of the distribution passes within 1° of
    (the blind spots that no algorithm can fill), from 1024 sampled viewing directions."""
    import torch

    from cryoscope.physics.poses import rotations_from_spec, viewing_directions

    d = viewing_directions(rotations_from_spec(spec, 1024, torch.Generator().manual_seed(seed))).numpy()
    u = np.random.default_rng(seed).normal(size=(n, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return float((np.abs(u @ d.T).min(1) > math.sin(math.radians(1.0))).mean())


def main(out: Path) -> None:
    rows = []
    for m in sorted(out.glob("*/metrics.json")):
        name = m.parent.name
        if name == "adk_path":
            continue
        d = json.loads(m.read_text())
        if "modes" not in d:  # the morph's simulation, or the path
            continue
        p = json.loads((m.parent / "params.json").read_text())
        rows.append((name, p, d))
    print("| run | poses | defocus (Å) | softest λ (residual) | λ2 | λ7 | ‖ΔF‖/‖F‖ (log 20) | max \\|Δτ\\| (°) | blind spots | Lanczos its | HVP/s | s to modes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, p, d in rows:
        m1 = d["modes"][0]  # the softest scaled mode; null modes (no log-20 scaling) come first in the eigenvalues
        first = d.get("null_modes") or [m1]
        null = " null" if d.get("null_modes") else ""
        blind = blind_fraction(p["simulate"]) if p.get("simulate") else float("nan")
        print(f"| {name} | {p.get('simulate')} | {p.get('defocus')} | {d['eigenvalues'][0]:.4g}{null} ({first[0]['residual']:.2g}) | "
              f"{d['eigenvalues'][1]:.4g} | {d['eigenvalues'][-1]:.4g} | {m1['relative_norm_log20']:.3g} | {m1['max_alignment_deg']:.3g} | "
              f"{blind:.3f} | {d['lanczos_iterations']} | {d['hvp_per_second']:.3g} | {d['seconds_to_modes']:.0f} |")
    path = out / "adk_path" / "metrics.json"
    if path.exists():
        d = json.loads(path.read_text())
        print("\nStiffness R(s) along the adk open -> closed morph: " + ", ".join(f"{s:.1f}: {r:.4g}" for s, r in zip(d["s"], d["stiffness"])))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
