"""Issue 5 speed bar: one Poisson Gibbs sweep at K = 500 for 25 images of 50² with 10⁴ counts each (thesis
Table 3.1: 73.9 ms in Cython on a laptop; bar: <= 10 ms on this machine). Times the phases of full sweeps
(assignments and depths; w, μ, s; rotations; shifts) from a mixture fitted to the 70S map (5 Å/px assumed,
downsampled to 50³), after one warm-up sweep.

Usage: python benchmarks/gmm_speed.py [--sweeps 5] [--threads 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from gmm_rotations import MAP

from cryoscope.bayes.fit_map import fit_map
from cryoscope.bayes.pipeline import data_prior
from cryoscope.bayes.projected import BinnedImages, Poses, draw_latents, draw_mixture, draw_rotations, draw_shifts
from cryoscope.geometry.sampling import random_rotations
from cryoscope.io.mrc import read_map
from cryoscope.physics.filters import fourier_resize
from cryoscope.physics.projection import project


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweeps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the mixture is fitted on the CPU, then moved)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "gmm" / "speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    m = read_map(MAP, voxel_size=5.0)
    vol = fourier_resize(m.data.double(), 50, ndim=3).clamp_min(0)
    px = 5.0 * m.data.shape[-1] / 50
    g = torch.Generator().manual_seed(0)
    state = fit_map(vol, px, 500, 300_000, 30, method="em", generator=g).state
    rot = random_rotations(25, g, dtype=torch.float64)
    dev = torch.device(args.device)
    data = BinnedImages.from_images(project(vol, rot).clamp_min(0).to(dev), px, 10_000)
    prior = data_prior(data)
    state = state.to(dev)
    if dev.type != "cpu":
        g = torch.Generator(device=dev).manual_seed(1)
    poses = Poses(rot.to(dev), torch.zeros(25, 2, dtype=torch.float64, device=dev))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    phases = {"assignments_and_depths": 0.0, "mixture": 0.0, "rotations": 0.0, "shifts": 0.0}
    totals = []
    for sweep in range(args.sweeps + 1):
        sync()
        t = [time.perf_counter()]
        stats = draw_latents(state, poses, data, g)
        sync()
        t.append(time.perf_counter())
        state = draw_mixture(state, stats, poses, prior, g)
        sync()
        t.append(time.perf_counter())
        poses.rotations = draw_rotations(state, stats, poses, g)
        sync()
        t.append(time.perf_counter())
        poses.shifts = draw_shifts(state, stats, poses, generator=g)
        sync()
        t.append(time.perf_counter())
        if sweep > 0:
            totals.append(t[-1] - t[0])
            for name, a, b in zip(phases, t, t[1:]):
                phases[name] += (b - a) / args.sweeps
    # this machine's speed drifts between and within runs: blocks of 10 sweeps give its fastest and typical state
    blocks = sorted(sum(totals[i:i + 10]) / len(totals[i:i + 10]) for i in range(0, len(totals), 10))
    out = {"components": 500, "images": 25, "box": 50, "counts_per_image": 10_000, "threads": args.threads, "device": args.device,
           "sigma_A": state.sigma, "ms_per_sweep": 1000 * sum(phases.values()),
           "ms_per_sweep_blocks_of_10": {"fastest": 1000 * blocks[0], "median": 1000 * blocks[len(blocks) // 2]},
           "ms_by_phase": {k: 1000 * v for k, v in phases.items()}}
    print(json.dumps(out, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
