"""Issue 9 acceptance on synthetic data from the model: homogeneous recovery, variance discrimination, two classes.

Each dataset: icosahedral particle, radius 20 px in a 48 px box, basis band 0.3 cycles/px (all l, n, p with
z_{l,p} <= 2π·0.3·20), uniform poses, white noise at in-band SNR 0.5 (mean-signal power / noise power). The GEM
starts from the true poses (the homogeneous reconstruction's role) with V = 0, integrates over a HEALPix order-4
quadrature (3.75°) of the asymmetric unit restricted to 12° around each prior pose, prunes weights below 1e-3 of
the peak, and estimates means, diagonal V and λ².

Run: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/hetero_acceptance.py [--n 2000] [--out benchmarks/out/hetero]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from cryoscope.hetero.analysis import radial_sd, shell_correlation
from cryoscope.hetero.gem import HeteroData, HeteroEstimator, known_pose_model
from cryoscope.hetero.operator import ProjectionOperator
from cryoscope.hetero.orientations import local_candidates, orientation_quadrature
from cryoscope.hetero.simulate import simulate_measurements
from cryoscope.representations.spherical_basis import SphericalBasis

F64 = torch.float64


def setup(seed: int = 0):
    b = SphericalBasis(20.0, 60, 30, "I", k_max=0.3)
    op = ProjectionOperator(b, 48, min(0.5, 1.25 * b.band_limit()))
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(b.size, generator=g, dtype=F64) / (1 + b.zeros / 5)
    return b, op, mean


def dataset(op, means, variance, snr, weights, n, seed):
    g = torch.Generator().manual_seed(seed)
    classes = torch.multinomial(torch.tensor(weights, dtype=F64), n, replacement=True, generator=g)
    clean, _, _ = simulate_measurements(op, means, torch.zeros_like(variance), 0.0, classes[:256], torch.Generator().manual_seed(seed + 1))
    noise = sum(float(y.pow(2).sum()) for y in clean) / (256 * op.n_measurements) / snr
    y, R, _ = simulate_measurements(op, means, variance, noise, classes, g)
    return y, R, classes, noise


def estimate(op, y, R, classes_k, grid, args, seed, mean_iterations=None):
    data = HeteroData(y, torch.zeros(R.shape[0], dtype=torch.long))
    data.candidates = local_candidates(R, grid, "I", args.local_deg)
    est = HeteroEstimator(op, data, grid, chunk=64, prune=1e-3)
    model = known_pose_model(op, data, R, classes_k, generator=torch.Generator().manual_seed(seed))
    t = time.perf_counter()
    model, history = est.run(model, True, 1e-3, mean_iterations or args.mean_iterations, args.rounds, 50,
                             on_iteration=lambda h: print("   ", {k: (round(v, 5) if isinstance(v, float) else v) for k, v in h.items() if k != "message"}, flush=True))
    return model, history, time.perf_counter() - t, float(data.candidates.sum(1).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--snr", type=float, default=0.5)
    ap.add_argument("--local-deg", type=float, default=12.0)
    ap.add_argument("--mean-iterations", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--class-mean-iterations", type=int, default=40, help="the V = 0 phase must finish separating the classes")
    ap.add_argument("--only", default="homogeneous,variance,classes")
    ap.add_argument("--out", default="benchmarks/out/hetero")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    b, op, mean = setup()
    grid = orientation_quadrature("I", 4)
    k = torch.linspace(0.005, b.band_limit(), 60, dtype=F64)
    r = torch.linspace(0, b.radius, 81, dtype=F64)
    results: dict = {"n_coefficients": b.size, "n_measurements": op.n_measurements, "n_orientations": int(grid.shape[0]), "n_images": args.n,
                     "snr": args.snr, "band_cycles_per_px": b.band_limit(), "l_max_used": int(b.l.max())}
    print(results, flush=True)
    todo = args.only.split(",")
    power = float(mean.pow(2).mean())
    if "homogeneous" in todo:
        y, R, _, noise = dataset(op, mean[None], torch.zeros(1, b.size, dtype=F64), args.snr, [1.0], args.n, 10)
        model, hist, secs, cand = estimate(op, y, R, 1, grid, args, 0)
        fsc, _, _ = shell_correlation(b, model.mean[0], mean, k)
        results["homogeneous"] = {"fsc_min": float(fsc.min()), "fsc": fsc.tolist(), "noise_ratio": float(model.noise) / noise,
                                  "variance_over_mean_power": float(model.variance.mean()) / power, "seconds": secs,
                                  "gem_steps": len(hist), "candidates_per_image": cand}
        print("homogeneous", {k_: v for k_, v in results["homogeneous"].items() if k_ != "fsc"}, flush=True)
        (out / "acceptance_homogeneous.json").write_text(json.dumps(results, indent=1))
    if "variance" in todo:
        v = 0.05 * power * torch.ones(1, b.size, dtype=F64)
        runs = {}
        for name, factor, seed in (("A", 1.0, 20), ("B", 4.0, 30)):
            y, R, _, noise = dataset(op, mean[None], factor * v, args.snr, [1.0], args.n, seed)
            model, hist, secs, _ = estimate(op, y, R, 1, grid, args, seed)
            runs[name] = (model, noise, secs)
        fsc_ab, _, _ = shell_correlation(b, runs["A"][0].mean[0], runs["B"][0].mean[0], k)
        fsc_a, _, _ = shell_correlation(b, runs["A"][0].mean[0], mean, k)
        sA, sB = radial_sd(b, runs["A"][0].variance[0], r), radial_sd(b, runs["B"][0].variance[0], r)
        true_s = radial_sd(b, v[0], r)
        where = true_s >= 0.2 * true_s.max()
        ratio = sB[where] / sA[where]
        results["variance"] = {"fsc_A_vs_B_min": float(fsc_ab.min()), "fsc_A_vs_truth_min": float(fsc_a.min()),
                               "sd_ratio_min": float(ratio.min()), "sd_ratio_max": float(ratio.max()), "sd_ratio_mean": float(ratio.mean()),
                               "radii_px": r[where].tolist(), "sd_ratio": ratio.tolist(),
                               "variance_A_over_truth": float(runs["A"][0].variance.sum() / v.sum()),
                               "variance_B_over_truth": float(runs["B"][0].variance.sum() / (4 * v.sum())),
                               "noise_ratio_A": float(runs["A"][0].noise) / runs["A"][1], "noise_ratio_B": float(runs["B"][0].noise) / runs["B"][1],
                               "seconds": runs["A"][2] + runs["B"][2]}
        print("variance", {k_: v_ for k_, v_ in results["variance"].items() if k_ not in ("radii_px", "sd_ratio")}, flush=True)
        (out / "acceptance_variance.json").write_text(json.dumps(results, indent=1))
    if "classes" in todo:
        g = torch.Generator().manual_seed(40)
        d = torch.randn(b.size, generator=g, dtype=F64) / (1 + b.zeros / 5)
        second = mean + 0.5 * mean.norm() * d / d.norm()
        means = torch.stack([mean, second])
        v = 0.02 * power * torch.ones(2, b.size, dtype=F64)
        y, R, classes, noise = dataset(op, means, v, args.snr, [0.3, 0.7], args.n, 50)
        model, hist, secs, _ = estimate(op, y, R, 2, grid, args, 5, args.class_mean_iterations)
        fsc = torch.stack([torch.stack([shell_correlation(b, model.mean[i], means[j], k)[0].mean() for j in range(2)]) for i in range(2)])
        match = [int(fsc[i].argmax()) for i in range(2)]
        truth = torch.bincount(classes, minlength=2).double() / args.n
        est_w = [float(model.weights[i]) for i in range(2)]
        results["classes"] = {"true_weights": [0.3, 0.7], "sample_weights": truth.tolist(), "estimated_weights": est_w,
                              "matched_truth_class": match, "mean_fsc_matrix": fsc.tolist(),
                              "weight_error": max(abs(est_w[i] - [0.3, 0.7][match[i]]) for i in range(2)) if match[0] != match[1] else None,
                              "noise_ratio": float(model.noise) / noise, "seconds": secs}
        print("classes", results["classes"], flush=True)
        (out / "acceptance_classes.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}), flush=True)


if __name__ == "__main__":
    main()
