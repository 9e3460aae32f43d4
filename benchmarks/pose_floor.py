"""How well can the data fix each particle's pose? Scores particles against the TRUE map on a fine local grid around
their true poses (the best a refinement could do with a perfect reference), and reports the median error of the
maximum-likelihood pose and the posterior angular spread. This is the evidence for issue 4's "if the data cannot
support 3°" clause: a refinement's pose error cannot beat this floor by much.

With OUT_STAR set (environment), the maximum-likelihood poses at the last cutoff are written there as a STAR file
(and the same particles with their true poses beside it, *_truth.star). The map reconstructed from them is NOT a
bound on what a refinement can reach: aligning noisy images to the true map pulls their noise towards it (model
bias), so it can score above the true-pose map (10,000 ribosome particles, SNR 0.05: 0.301 vs 0.288).

Noise spectrum: per-shell mean |Y - C S_true|² at the true poses. Usage (project venv):
[OUT_STAR=ml.star] [WINDOW_DEG=4 STEP_DEG=0.5 SHIFT_RANGE=1 SHIFT_STEP=0.25] python benchmarks/pose_floor.py PARTICLES.star TRUTH.mrc [N_PARTICLES] [CUTOFF ...]
"""

from __future__ import annotations

import json
import os
import sys

import torch

from cryoscope.geometry.rotations import geodesic_distance
from cryoscope.geometry.sampling import local_grid
from cryoscope.io.mrc import read_map
from cryoscope.io.star import write_star
from cryoscope.likelihood.noise import noise_spectrum, shell_power_sums
from cryoscope.likelihood.scoring import best_poses, score_poses, shift_grid
from cryoscope.physics.projection import fourier_volume, slice_fourier_volume
from cryoscope.physics.shift import translate
from cryoscope.workflows.likelihood import match_map, open_particles


def main(star: str, truth: str, n: int, cutoffs: list[float]) -> dict:
    meta, parts = open_particles(star)
    m = read_map(truth)
    box, px = meta.require_box(), parts.pixel_size
    fvol = fourier_volume(match_map(m.data.float(), m.voxel_size, box, px, truth), 2.0)
    idx = torch.arange(min(n, meta.n))
    R_true, t_true = meta.rotations[idx].float(), (meta.shifts_A[idx] / px).float()
    sums = counts = 0
    for b in idx.split(256):
        Y, C = parts.load(b)
        S = slice_fourier_volume(fvol, R_true[b], box)
        s, c = shell_power_sums(translate(Y, t_true[b]) - C * S)
        sums, counts = sums + s, counts + c
    sigma2 = noise_spectrum(sums, counts)
    half_width, step = float(os.environ.get("WINDOW_DEG", 4.0)), float(os.environ.get("STEP_DEG", 0.5))
    shift_range, shift_step = float(os.environ.get("SHIFT_RANGE", 1.0)), float(os.environ.get("SHIFT_STEP", 0.25))
    out = {"n_particles": int(idx.numel()),
           "grid": f"±{half_width}° at {step}° around the true rotation, ±{shift_range} px at {shift_step} px around the true origin"}
    for cutoff in cutoffs:
        err, spread, R_ml, t_ml = [], [], [], []
        offsets = shift_grid(shift_range, shift_step)
        for b in idx.split(32):
            Y, C = parts.load(b)
            R = local_grid(R_true[b].double(), half_width, step).float()
            t = t_true[b][:, None, :] + offsets
            ll = score_poses(fvol, Y, C, R, t, sigma2, cutoff)
            est = best_poses(ll, R, t)
            err.append(geodesic_distance(est.rotations.double(), R_true[b].double()))
            spread.append(est.angular_spread_deg)
            R_ml.append(est.rotations)
            t_ml.append(est.shifts)
        err, spread = torch.cat(err), torch.cat(spread)
        out[f"cutoff_{cutoff:g}"] = {"ml_pose_error_median_deg": float(err.median()), "posterior_spread_median_deg": float(spread.median())}
        print(cutoff, out[f"cutoff_{cutoff:g}"], flush=True)
    if os.environ.get("OUT_STAR"):
        ml = meta.subset(idx)
        ml = type(ml)(**{**vars(ml), "rotations": torch.cat(R_ml).double(), "euler": None, "shifts_A": torch.cat(t_ml).double() * px})
        write_star(os.environ["OUT_STAR"], ml)
        write_star(os.environ["OUT_STAR"].replace(".star", "_truth.star"), meta.subset(idx))  # the same particles, true poses
    return out


if __name__ == "__main__":
    a = sys.argv
    res = main(a[1], a[2], int(a[3]) if len(a) > 3 else 500, [float(x) for x in a[4:]] or [0.25, 0.5])
    print(json.dumps(res))
