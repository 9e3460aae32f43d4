"""Spring-constant fit of thesis ch. 4 (Fig. 4.4 and the two-group example) on an IgG-like synthetic network.

102 equal masses in three ellipsoids (two arms + a tail, a Y), 548 springs (the cutoff that gives that many),
q = 0.5, kT = 1, sine basis with 5 functions per axis (Nc = 125). V̂ = V_q(k_true) + symmetric i.i.d. Gaussian
noise with SNR = std(elements of V_q) / noise std. ĉ: exact (`--mean exact`, as the thesis) or with noise at the
same SNR on its elements (`--mean noisy`). Fixed seeds F..F+S-1 (`--first-seed`, `--seeds`); writes benchmarks/out/mechanics_fit.json.

    OMP_NUM_THREADS=1 python benchmarks/mechanics_fit.py --seeds 5 --snr 10 20
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from cryoscope.hetero.mechanics import MechanicalModel, fit_spring_constants
from cryoscope.hetero.moments_basis import SineBasis
from cryoscope.representations.elastic_network import ElasticNetwork, build_network

OUT = Path(__file__).parent / "out"


def _ellipsoid(gen: torch.Generator, count: int, centre: tuple, angle: float, existing: list, dmin: float) -> list:
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)
    axes = torch.tensor([1.5, 1.2, 3.0], dtype=torch.float64)
    pts: list = []
    while len(pts) < count:
        u = torch.rand(3, generator=gen, dtype=torch.float64) * 2 - 1
        if float((u**2).sum()) > 1:
            continue
        p = rot @ (u * axes) + torch.tensor(centre, dtype=torch.float64)
        if any(float((p - o).norm()) < dmin for o in existing + pts):
            continue
        pts.append(p)
    return pts


def igg_network(springs: int = 548, seed: int = 1) -> ElasticNetwork:
    """Y-shaped network: tail (label 1) along -z, two arms (label 0) at ±50°; random points at least 0.9 apart."""
    gen = torch.Generator().manual_seed(seed)
    pts: list = []
    tail = _ellipsoid(gen, 34, (0.0, 0.0, -3.0), 0.0, pts, 0.9)
    pts += tail
    pts += _ellipsoid(gen, 34, (-2.6, 0.0, 2.2), -math.radians(50), pts, 0.9)
    pts += _ellipsoid(gen, 34, (2.6, 0.0, 2.2), math.radians(50), pts, 0.9)
    x = torch.stack(pts)
    d = torch.cdist(x, x)
    iu = torch.triu_indices(len(x), len(x), 1)
    dd = d[iu[0], iu[1]].sort().values
    cutoff = float(0.5 * (dd[springs - 1] + dd[springs]))
    labels = torch.tensor([1] * 34 + [0] * 68)  # arms 0, tail 1: arm-tail springs join the arms group (smaller label)
    return build_network(x, cutoff, labels=labels)


def noisy(m: torch.Tensor, snr: float, gen: torch.Generator, symmetric: bool) -> torch.Tensor:
    sigma = float(m.std()) / snr
    e = torch.randn(m.shape, generator=gen, dtype=torch.float64) * sigma
    if symmetric:
        e = torch.triu(e) + torch.triu(e, 1).T
    return m + e


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--snr", type=float, nargs="+", default=[10.0, 20.0])
    ap.add_argument("--mean", choices=("exact", "noisy"), default="exact")
    ap.add_argument("--cost", choices=("moments", "kl"), default="moments")
    ap.add_argument("--groups", action="store_true", help="two-group truth (arms 150, tail 300) and fit")
    ap.add_argument("--grid", type=int, default=41)
    ap.add_argument("--out", default=str(OUT / "mechanics_fit.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    net = igg_network()
    lo, hi = net.positions.min(0).values, net.positions.max(0).values
    centre = tuple(float(v) for v in 0.5 * (lo + hi))
    basis = SineBasis(half_width=7.5, per_axis=5, centre=centre)
    model = MechanicalModel(net, basis, q=0.5)
    truth = torch.tensor([150.0, 300.0] if args.groups else [150.0], dtype=torch.float64)
    t0 = time.perf_counter()
    mean_q, cov_q = model.moments(truth)
    t_moments = time.perf_counter() - t0
    print(f"{net.n_masses} masses, {net.n_springs} springs, groups {net.n_groups}; moments in {t_moments:.2f} s; "
          f"std(V_q) {float(cov_q.std()):.3g}, ‖V_q‖₂ {float(torch.linalg.matrix_norm(cov_q, ord=2)):.3g}")
    rows = []
    for snr in args.snr:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            gen = torch.Generator().manual_seed(seed)
            cov_hat = noisy(cov_q, snr, gen, symmetric=True)
            mean_hat = noisy(mean_q, snr, gen, symmetric=False) if args.mean == "noisy" else mean_q
            t0 = time.perf_counter()
            fit = fit_spring_constants(model, mean_hat, cov_hat, cost=args.cost, bounds=(50.0, 600.0), grid=args.grid,
                                       groups=args.groups)
            row = {"snr": snr, "seed": seed, "k_single": fit.k_single, "k_groups": fit.k_groups,
                   "curve_minima": fit.curve_minima, "evaluations": fit.evaluations, "seconds": time.perf_counter() - t0,
                   "curve_k": fit.curve_k, "curve_cost": fit.curve_cost}
            rows.append(row)
            print(f"SNR {snr:g} seed {seed}: k̂ = {fit.k_single:.2f} ({100 * (fit.k_single / 150 - 1):+.2f} %), "
                  f"curve minima {fit.curve_minima}" + (f", groups {fit.k_groups[0]:.1f} / {fit.k_groups[1]:.1f}" if fit.k_groups else "")
                  + f" [{row['seconds']:.0f} s, {fit.evaluations} evaluations]")
    summary = {"masses": net.n_masses, "springs": net.n_springs, "basis": "sine 5x5x5", "half_width": 7.5, "q": 0.5,
               "truth": truth.tolist(), "mean": args.mean, "cost": args.cost, "moments_seconds": t_moments, "runs": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
