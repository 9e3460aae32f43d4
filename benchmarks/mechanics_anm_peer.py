"""Our anisotropic network modes against ProDy's ANM on adenylate kinase (Cα of the bundled 4AKE model).

Run with the peers venv (ProDy lives only there: `.peers/bin/pip install prody`):

    .peers/bin/python benchmarks/mechanics_anm_peer.py

The script first runs our CLI in the main venv (`.venv/bin/cryoscope mechanics modes ... --cutoff 15 --k 1
--masses unit`, writing benchmarks/out/mechanics_anm_ours/modes.npz), then ProDy's ANM (cutoff 15 Å, gamma 1)
on the same Cα atoms, and compares the lowest non-rigid modes: eigenvalue ratios (ours / ProDy), the overlap
|u_i · v_i|, the cumulative overlap sqrt(Σ_j (u_i · v_j)²) of each of our modes with ProDy's first n modes, and
the RMSIP of the two n-mode subspaces, and the largest difference between the two Hessians (ours rebuilt from
all its unit-mass modes). Writes benchmarks/out/mechanics_anm_peer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import prody

ROOT = Path(__file__).resolve().parents[1]
PDB = ROOT / "src" / "cryoscope" / "data" / "adk_open.pdb"
OUT = ROOT / "benchmarks" / "out"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", type=int, default=10, help="non-rigid modes compared")
    ap.add_argument("--cutoff", type=float, default=15.0)
    args = ap.parse_args()
    ours_dir = OUT / "mechanics_anm_ours"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([str(ROOT / ".venv" / "bin" / "cryoscope"), "mechanics", "modes", str(PDB), "-o", str(ours_dir),
                    "--cutoff", str(args.cutoff), "--k", "1", "--masses", "unit", "--n-modes", str(args.modes)], check=True, env=env)
    ours = np.load(ours_dir / "modes.npz")
    prody.confProDy(verbosity="none")
    ca = prody.parsePDB(str(PDB)).select("name CA")
    coords = ca.getCoords()
    assert coords.shape == ours["positions"].shape and np.allclose(coords, ours["positions"], atol=1e-3), "different Cα sets"
    anm = prody.ANM("adk")
    anm.buildHessian(coords, cutoff=args.cutoff, gamma=1.0)
    anm.calcModes(n_modes=args.modes, zeros=False)
    theirs_val, theirs_vec = anm.getEigvals(), anm.getEigvecs()  # [n], [3N, n], rigid modes excluded
    ours_val, ours_vec = ours["eigenvalues"][6:6 + args.modes], ours["modes"][:, 6:6 + args.modes]
    ours_vec = ours_vec / np.linalg.norm(ours_vec, axis=0)
    overlap = ours_vec.T @ theirs_vec  # [ours, theirs]
    cumulative = np.sqrt((overlap**2).sum(1))
    rmsip = float(np.sqrt((overlap**2).sum() / args.modes))
    full = ours["modes"] / np.linalg.norm(ours["modes"], axis=0)  # unit masses: orthonormal eigenvectors of our Hessian
    hessian_diff = float(np.abs((full * ours["eigenvalues"]) @ full.T - anm.getHessian()).max())
    rows = []
    for i in range(args.modes):
        rows.append({"mode": i + 7, "ours": float(ours_val[i]), "prody": float(theirs_val[i]), "ratio": float(ours_val[i] / theirs_val[i]),
                     "overlap": float(abs(overlap[i, i])), "cumulative_overlap": float(cumulative[i])})
        print(f"mode {i + 7:2d}: λ ours {ours_val[i]:.6g}  ProDy {theirs_val[i]:.6g}  ratio {ours_val[i] / theirs_val[i]:.9f}  "
              f"|overlap| {abs(overlap[i, i]):.6f}  cumulative {cumulative[i]:.6f}")
    print(f"RMSIP of the {args.modes}-mode subspaces: {rmsip:.6f}; max |H_ours - H_ProDy| {hessian_diff:.3g} "
          f"(max |H| {np.abs(anm.getHessian()).max():.3g}); {coords.shape[0]} Cα, ProDy {prody.__version__}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "mechanics_anm_peer.json").write_text(json.dumps({"pdb": str(PDB), "n_ca": int(coords.shape[0]), "cutoff": args.cutoff,
                                                            "gamma": 1.0, "prody": prody.__version__, "modes": rows, "rmsip": rmsip,
                                                            "hessian_max_abs_diff": hessian_diff}, indent=1))


if __name__ == "__main__":
    main()
