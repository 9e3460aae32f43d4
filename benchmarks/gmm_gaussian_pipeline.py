"""Issue 5 acceptance, Gaussian/HMC pipeline (thesis ch. 5): 25 projections of the 70S ribosome map (assumed
5 Å/px; its positive part, the density a mixture can represent, as for the Poisson pipeline) with white Gaussian
noise at SNR 10 (signal variance over noise variance over the whole 65² image, the thesis' definition), then
Fourier-cropped to 32² (initial stage) and 50² (refinement). Initial stage: K = 100, several restarts scored by
log-posterior. Refinement: K = 500, shifts on, from the best restart; posterior mean over the thinned samples.
Scores: rotations of every restart against the truth (after gauge and hand), FSC after alignment of the posterior
mean and of one sample against the truth low-passed to 25 Å (molmap-style), and times.

Usage: python benchmarks/gmm_gaussian_pipeline.py [--restarts 4] [--out benchmarks/out/gmm/gaussian_pipeline.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from gmm_rotations import MAP, restart_row, score_refinement

from cryoscope.bayes.gaussian_model import ImageSet
from cryoscope.bayes.gaussian_pipeline import initial_stage, refinement_stage
from cryoscope.geometry.sampling import random_rotations
from cryoscope.io.mrc import read_map, write_map
from cryoscope.physics.filters import fourier_resize
from cryoscope.physics.noise import add_white_noise
from cryoscope.physics.projection import project


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--restarts", type=int, default=4)
    ap.add_argument("--initial-components", type=int, default=100)
    ap.add_argument("--components", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--n-rotations", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--snr", type=float, default=10.0)
    ap.add_argument("--reference-resolution", type=float, default=25.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "gmm" / "gaussian_pipeline.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    m = read_map(MAP, voxel_size=5.0)
    density = m.data.double().clamp_min(0)
    box = density.shape[-1]
    truth_rot = random_rotations(25, torch.Generator().manual_seed(0), dtype=torch.float64)
    noisy, _ = add_white_noise(project(density, truth_rot), args.snr, radius=box, generator=torch.Generator().manual_seed(1))
    sizes = {"initial": 32, "refine": 50}
    px = {k: 5.0 * box / n for k, n in sizes.items()}
    data = {k: ImageSet(fourier_resize(noisy, n), px[k]) for k, n in sizes.items()}
    out: dict = {"pixel_size_A": px, "snr": args.snr, "restarts": []}
    best = None
    t_start = time.perf_counter()
    for seed in range(args.restarts):
        t0 = time.perf_counter()
        res = initial_stage(data["initial"], args.initial_components, rounds=args.rounds, n_rotations=args.n_rotations,
                            generator=torch.Generator().manual_seed(seed))
        row = restart_row(seed, time.perf_counter() - t0, res, truth_rot)
        out["restarts"].append(row)
        if best is None or res.final_log_posterior > best.final_log_posterior:
            best = res
    out["initial_seconds"] = time.perf_counter() - t_start
    t0 = time.perf_counter()
    ref = refinement_stage(data["refine"], args.components, best, steps=args.steps, burn_in=args.steps // 2, thin=10,
                           generator=torch.Generator().manual_seed(100),
                           callback=lambda s, *_: print("refine step", s, round(time.perf_counter() - t0), flush=True) if s % 50 == 0 else None)
    out["refine_seconds"] = time.perf_counter() - t0
    out["total_seconds"] = time.perf_counter() - t_start
    n, v = sizes["refine"], px["refine"]
    mixtures = [s.as_mixture(normalised=True) for s, _ in ref.samples]
    scores, mean_map = score_refinement(ref, mixtures, fourier_resize(density, n, ndim=3).clamp_min(0), truth_rot, v,
                                        args.reference_resolution)
    out.update(scores)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_map(args.out.with_suffix(".mrc"), mean_map.float(), v)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("initial_seconds", "refine_seconds", "refined_rotations", "sigma_A")}))


if __name__ == "__main__":
    main()
