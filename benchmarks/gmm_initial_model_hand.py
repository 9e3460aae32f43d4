"""`cryoscope gmm initial-model` from the command line on a second structure: 25 of the 100 noise-free projections
of cryoDRGN's "hand" test volume (64², nominal 1 Å/px in the headers; run as 4 Å/px so that the default priors,
made for σ about 10 Å, fit a 250 Å object). Scores each model's posterior-mean map against the volume's positive
part (FSC after alignment, rotation, shift and hand) and reports the times.

Usage: python benchmarks/gmm_initial_model_hand.py [--models poisson,gaussian] [--out benchmarks/out/gmm/hand]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


from cryoscope.io.mrc import ParticleStack, read_map, write_stack
from cryoscope.physics.filters import fourier_resize
from cryoscope.validation.align import fsc_after_alignment

HAND = Path(__file__).resolve().parents[2] / "shared" / "data" / "particles" / "hand"
PX = 4.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="poisson,gaussian")
    ap.add_argument("--images", type=int, default=25)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "gmm" / "hand")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stack = ParticleStack.open(HAND / "hand.mrcs", PX)
    averages = args.out / "averages.mrcs"
    write_stack(averages, stack[list(range(args.images))], PX)
    truth = read_map(HAND / "hand-vol.mrc", voxel_size=PX).data.double().clamp_min(0)
    cli = Path(sys.executable).with_name("cryoscope")
    results = {}
    for model in args.models.split(","):
        run = args.out / model
        t0 = time.perf_counter()
        subprocess.run([str(cli), "gmm", "initial-model", str(averages), "-o", str(run), "--model", model, "--no-progress"], check=True)
        seconds = time.perf_counter() - t0
        est = read_map(run / "map.mrc")
        ref = fourier_resize(truth, est.data.shape[-1], ndim=3).clamp_min(0)
        a = fsc_after_alignment(est.data.double(), ref, voxel_size=est.voxel_size)
        metrics = json.loads((run / "metrics.json").read_text())
        results[model] = {"seconds": seconds, "fsc_0.5_A": a.resolution_05, "fsc_0.143_A": a.resolution_0143, "cc": a.alignment.cc,
                          "hand_flipped": bool(a.alignment.flipped), "best_restart": metrics["best_restart"],
                          "restart_log_posteriors": [r["log_posterior"] for r in metrics["restarts"]], "sigma_A": metrics["sigma_A"],
                          "voxel_size_A": est.voxel_size}
        print(model, json.dumps(results[model]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
