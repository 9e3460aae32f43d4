"""cryoscope's projection / backprojection throughput, the same operations as peers_bench.py.

Run with the project venv, by hand, not in CI:
  .venv/bin/python benchmarks/ours_bench.py [--threads 2] [--boxes 64 128 256] [--out benchmarks/out/ours.json]
Then `python benchmarks/compare.py` writes the tables to benchmarks/out/compare.md, to copy into RESULTS.md.

Operations (random rotations, box N, the same smooth map as peers_bench.py, float32, CPU):
  project      physics.projection.project (pad x2, FFT of the map, trilinear slice, inverse FFT) per call.
  project_slice  the same with the padded map transform precomputed (fourier_volume once; per call
               slice_fourier_volume + ifft2c): the analogue of cryoDRGN's precomputed Hartley map.
  backproject  physics.projection.backproject (its exact adjoint).
  direct       reconstruction.direct.DirectReconstructor.add (CTF-weighted Fourier gridding of a batch,
               sums and weights, one half-set): the analogue of cryoDRGN backproject_voxel's loop.
  reconstruct  reconstruction.iterative.reconstruct_cg, `--maxiter` CG iterations on noiseless
               projections of the map (the analogue of ASPIRE's MeanEstimator).
  project_disc project with cutoff=0.5: only |k| <= Nyquist (the corners of the square are zero).
  project_kb4  project with kernel="kb4" (Kaiser-Bessel, width 4): the accurate mode, compared with ASPIRE.
Accuracy (after the timing, so peak RSS is the timed operation's): benchmarks/accuracy.py's analytic blob map;
projections: relative error against the exact line integrals (16 images); backproject: against the exact adjoint
(8 / 2 / 1 images); direct and reconstruct: relative error and FSC 0.5 of the map from the batch's exact projections.
Each measurement runs in its own subprocess (peak RSS per measurement); at least 3 timed calls after a warm-up,
images/s of the fastest and of the median call; same JSON schema as peers_bench.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

from common import random_rotations, smooth_map, time_calls

sys.path.insert(0, str(Path(__file__).parent))

BATCH = {
    "project": {64: 256, 128: 64, 256: 8},
    "project_disc": {64: 256, 128: 64, 256: 8},
    "project_slice": {64: 256, 128: 64, 256: 8},
    "project_kb4": {64: 256, 128: 64, 256: 8},
    "backproject": {64: 256, 128: 64, 256: 8},
    "direct": {64: 256, 128: 64, 256: 8},
    "reconstruct": {64: 100, 128: 50},
}


def _operation(op: str, box: int, batch: int, maxiter: int):
    import torch

    from cryoscope.particles import ParticleBatch
    from cryoscope.physics.fourier import ifft2c
    from cryoscope.physics.projection import (
        backproject,
        fourier_volume,
        project,
        slice_fourier_volume,
    )
    from cryoscope.reconstruction.direct import DirectReconstructor
    from cryoscope.reconstruction.iterative import reconstruct_cg

    vol = torch.from_numpy(smooth_map(box))
    rots = torch.from_numpy(random_rotations(batch))
    if op == "project":
        return lambda: project(vol, rots), "oversample 2, includes the map FFT"
    if op == "project_kb4":
        return lambda: project(vol, rots, kernel="kb4"), "oversample 2, Kaiser-Bessel width 4, includes the map FFT"
    if op == "project_disc":
        return lambda: project(vol, rots, cutoff=0.5), "oversample 2, includes the map FFT, |k| <= 0.5 (Nyquist disc)"
    if op == "project_slice":
        fvol = fourier_volume(vol, 2.0)
        return lambda: ifft2c(slice_fourier_volume(fvol, rots, box)).real, "oversample 2, map FFT precomputed"
    if op == "backproject":
        imgs = torch.randn(batch, box, box)
        return lambda: backproject(imgs, rots), "oversample 2, exact adjoint"
    if op == "direct":
        particles = ParticleBatch(torch.randn(batch, box, box), rots, torch.zeros(batch, 2), torch.ones(batch, box, box))
        rec = DirectReconstructor(box, n_halves=1)
        return lambda: rec.add(particles), "DirectReconstructor.add, CTF given, 1 half-set"
    if op == "reconstruct":
        particles = [ParticleBatch(project(vol, rots), rots)]
        return lambda: reconstruct_cg(particles, box, n_iter=maxiter, tol=0.0), f"reconstruct_cg n_iter={maxiter}"
    raise ValueError(op)


ACC_IMAGES = {64: 8, 128: 2, 256: 1}  # images for the (slow, numpy) analytic backprojection reference


def _accuracy(op: str, box: int, batch: int, maxiter: int) -> dict:
    """Error of the operation on benchmarks/accuracy.py's blob map against its analytic reference."""
    import accuracy as acc
    import torch

    from cryoscope.particles import ParticleBatch
    from cryoscope.physics.fourier import ifft2c
    from cryoscope.physics.projection import (
        backproject,
        fourier_volume,
        project,
        slice_fourier_volume,
    )
    from cryoscope.reconstruction.direct import DirectReconstructor
    from cryoscope.reconstruction.iterative import reconstruct_cg

    vol = torch.from_numpy(acc.blob_map(box)).float()
    rots = torch.from_numpy(random_rotations(batch, seed=1))
    R = rots.double().numpy()
    if op in ("project", "project_disc", "project_slice", "project_kb4"):
        m = min(batch, 16)
        if op == "project_slice":
            imgs = ifft2c(slice_fourier_volume(fourier_volume(vol, 2.0), rots[:m], box)).real
        else:
            imgs = project(vol, rots[:m], cutoff=0.5 if op == "project_disc" else None,
                           kernel="kb4" if op == "project_kb4" else "trilinear")
        return acc.best_convention(imgs.numpy(), R[:m], box)
    if op == "backproject":
        m = ACC_IMAGES[box]
        err, scale = acc.rel_error(backproject(torch.from_numpy(acc.projections(box, R[:m])).float(), rots[:m]).numpy(),
                                   acc.backprojection(box, R[:m]))
        return {"rel_error": err, "scale": scale, "convention": "A=R"}
    imgs = torch.from_numpy(acc.projections(box, R)).float()
    if op == "direct":
        rec = DirectReconstructor(box, n_halves=1)
        rec.add(ParticleBatch(imgs, rots, torch.zeros(batch, 2), torch.ones(batch, box, box)))
        out = rec.volume().numpy()
    else:
        out = reconstruct_cg([ParticleBatch(imgs, rots)], box, n_iter=maxiter, tol=0.0).numpy()
    err, scale = acc.rel_error(out, acc.blob_map(box))
    return {"rel_error": err, "scale": scale, "fsc_0.5": acc.fsc_05(out, acc.blob_map(box)), "convention": "A=R"}


def measure(op: str, box: int, threads: int, seconds: float, maxiter: int, accuracy: bool = True,
            accuracy_batch: int | None = None) -> dict:
    """One measurement in this process (called in a subprocess by `main`)."""
    import torch

    torch.set_num_threads(threads)
    batch = BATCH[op][box]
    fn, note = _operation(op, box, batch, maxiter)
    with torch.no_grad():
        times = time_calls(fn, seconds)
        rss = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        del fn  # frees the timed operation's state (at 256 the direct rows alone are 6 GB) before the accuracy step
        accuracy = _accuracy(op, box, accuracy_batch or batch, maxiter) if accuracy else None
    return {
        "tool": "cryoscope",
        "op": op,
        "box": box,
        "batch": batch,
        "accuracy_batch": accuracy_batch or batch,
        "calls": len(times),
        "seconds": round(sum(times), 3),
        "images_per_s": round(batch / min(times), 2),
        "images_per_s_median": round(batch / sorted(times)[len(times) // 2], 2),
        "peak_rss_MB": rss,
        "note": note,
        "accuracy": accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--boxes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed duration per measurement")
    parser.add_argument("--maxiter", type=int, default=10, help="CG iterations for reconstruct")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "ours.json")
    parser.add_argument("--accuracy-batch", type=int, help="with --one: images for the accuracy step (default: the timed batch)")
    parser.add_argument("--timing-only", action="store_true", help="with --one: skip the accuracy step (repeat timings)")
    parser.add_argument("--one", nargs=2, metavar=("OP", "BOX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        op, box = args.one
        print(json.dumps(measure(op, int(box), args.threads, args.seconds, args.maxiter, not args.timing_only, args.accuracy_batch)))
        return
    import torch

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    results = []
    for op in BATCH:
        for box in args.boxes:
            if box not in BATCH[op]:
                continue
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one", op, str(box), "--threads", str(args.threads),
                   "--seconds", str(args.seconds), "--maxiter", str(args.maxiter)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                lines = proc.stderr.strip().splitlines()
                reason = lines[-1] if lines else f"exit status {proc.returncode} (killed, e.g. out of memory)"
                row = {"tool": "cryoscope", "op": op, "box": box, "error": reason}
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            results.append(row)
    info = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
            "python": platform.python_version(), "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": info, "results": results}, indent=1))


if __name__ == "__main__":
    main()
