"""Issue 9 speed at the dissertation's size: 1060 coefficients (I, l <= 55, p <= 20), 4,800 images of 200², a
HEALPix order-4 quadrature (3.75°) of the asymmetric unit with 12° windows around the prior poses.

Times, on whatever runs this: the known-pose start, one E-step, one mean update and one evaluation of the V-step
objective (from per-orientation moments, on `--v-orientations` orientations, scaled to all of them: the moments of
all 4,896 orientations take 11 GB in float32). The dissertation: 1–2 days per reconstruction in Matlab.

Run: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/hetero_speed.py [--device cuda] [--n 4800]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cryoscope.hetero.gem import HeteroData, HeteroEstimator, known_pose_model
from cryoscope.hetero.likelihood import expected_log_likelihood
from cryoscope.hetero.operator import ProjectionOperator
from cryoscope.hetero.orientations import local_candidates, orientation_quadrature
from cryoscope.hetero.simulate import simulate_measurements
from cryoscope.representations.spherical_basis import SphericalBasis


def timed(label: str, fn, results: dict):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    results[label] = time.perf_counter() - t
    print(f"{label}: {results[label]:.1f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4800)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--v-orientations", type=int, default=256)
    ap.add_argument("--out", default="benchmarks/out/hetero/speed.json")
    args = ap.parse_args()
    dev, dtype = torch.device(args.device), torch.float32
    results: dict = {"device": str(dev), "threads": torch.get_num_threads(), "n_images": args.n}
    b = timed("basis_seconds", lambda: SphericalBasis(100.0, 55, 20, "I"), results)
    op = ProjectionOperator(b, 200, min(0.5, 1.25 * b.band_limit()), dtype, dev)
    grid = orientation_quadrature("I", 4, torch.float64)
    results.update(n_coefficients=b.size, n_measurements=op.n_measurements, n_orientations=int(grid.shape[0]))
    print(results, flush=True)
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(b.size, generator=g, dtype=torch.float64) / (1 + b.zeros / 5)
    var = 0.05 * mean.pow(2).mean() * torch.ones(1, b.size, dtype=torch.float64)
    clean, _, _ = simulate_measurements(op, mean[None], var * 0, 0.0, torch.zeros(64, dtype=torch.long), g, batch=16)
    noise = sum(float(y.double().pow(2).sum()) for y in clean) / (64 * op.n_measurements) / 0.5
    y, R, _ = timed("simulate_seconds", lambda: simulate_measurements(op, mean[None], var, noise, torch.zeros(args.n, dtype=torch.long), g, batch=16), results)
    data = HeteroData(y, torch.zeros(args.n, dtype=torch.long, device=dev))
    data.candidates = timed("candidates_seconds", lambda: local_candidates(R, grid, "I", 12.0).to(dev), results)
    results["candidates_per_image"] = float(data.candidates.sum(1).float().mean())
    est = HeteroEstimator(op, data, grid, chunk=16, prune=1e-3)
    model = timed("known_pose_start_seconds", lambda: known_pose_model(op, data, R.to(dev), batch=8), results)
    estep = timed("e_step_seconds", lambda: est.e_step(model), results)
    timed("mean_update_seconds", lambda: est.update_mean(model, estep, update_noise=True), results)
    model.variance = var.to(dev, dtype)
    estep = est.e_step(model)
    sub = torch.zeros_like(estep.weights)
    sub[:, :, : args.v_orientations] = estep.weights[:, :, : args.v_orientations]
    estep.weights = sub
    moments = timed("v_moments_subset_seconds", lambda: est._moments(model, estep), results)

    def evaluation():
        v = model.variance.clone().requires_grad_(True)
        q = sum(expected_log_likelihood(S, W, E, Rr, v[0, op.channels[c].columns].sqrt(), model.noise, P) for (_, c), (S, W, E, Rr, P) in moments.items())
        q.backward()

    timed("v_evaluation_subset_seconds", evaluation, results)
    used = sum(int(m[0].shape[0]) for (k, c), m in moments.items() if c == 0)
    results["v_subset_orientations"] = used
    results["v_evaluation_all_orientations_seconds_extrapolated"] = results["v_evaluation_subset_seconds"] * results["n_orientations"] / max(used, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(results, flush=True)


if __name__ == "__main__":
    main()
