"""Projection / backprojection throughput of the peers (ASPIRE, cryoDRGN) on CPU threads.

Run with the peer venv (benchmarks/setup_peers.sh), by hand, not in CI:
  .peers/bin/python benchmarks/peers_bench.py [--threads 2] [--boxes 64 128 256] [--out benchmarks/out/peers.json]

Each measurement runs in its own subprocess, so peak RSS (ru_maxrss) belongs to that measurement alone.
A measurement repeats one batched call for about `--seconds` (after one warm-up call, at least 3 calls)
and reports images/s of the fastest call (robust to other load on a shared machine) and of the median call.
Operations (each on random poses, box N, a smooth random map):
  project      ASPIRE: Volume.project (NUFFT slice + inverse FFT).
               cryoDRGN: its explicit-volume Fourier-slice projector as used in its code
               (Lattice coords @ rot, models_ai.VolumeExplicit grid_sample on the Hartley map), then iht2.
  backproject  ASPIRE: Image.backproject (adjoint of project).
               cryoDRGN: backproject_voxel's core loop (ht2 of the images, Lattice coords @ rot, add_slice).
  reconstruct  ASPIRE: MeanEstimator (least squares, CG) on a small noiseless Simulation, `--maxiter` iterations.
Output JSON schema (shared with ours_bench.py): {"machine": {...}, "results": [{"tool", "op", "box",
"batch", "calls", "seconds", "images_per_s" (fastest call), "images_per_s_median", "peak_rss_MB", "note"}]}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from common import random_rotations, smooth_map, time_calls

sys.path.insert(0, str(Path(__file__).parent))

BATCH = {"project": {64: 256, 128: 64, 256: 8}, "backproject": {64: 256, 128: 64, 256: 8}, "reconstruct": {64: 100, 128: 50}}


def _aspire(op: str, box: int, batch: int, maxiter: int):
    import numpy as np
    from aspire.image import Image
    from aspire.utils import Rotation
    from aspire.volume import Volume

    vol = Volume(smooth_map(box))
    rots = Rotation(random_rotations(batch))
    if op == "project":
        return lambda: vol.project(rots), ""
    if op == "backproject":
        imgs = Image(np.random.default_rng(0).standard_normal((batch, box, box)).astype(np.float32))
        return lambda: imgs.backproject(rots.matrices), ""
    if op == "reconstruct":
        from aspire.reconstruction import MeanEstimator
        from aspire.source import Simulation

        sim = Simulation(L=box, n=batch, vols=vol, offsets=0, amplitudes=1, dtype=np.float32, seed=0)
        sim = sim.cache()

        def run():
            MeanEstimator(sim, maxiter=maxiter, checkpoint_iterations=None).estimate()

        return run, f"MeanEstimator maxiter={maxiter}, includes kernel build"
    raise ValueError(op)


def _cryodrgn(op: str, box: int, batch: int, maxiter: int):
    import torch
    from cryodrgn import fft
    from cryodrgn.commands.backproject_voxel import add_slice
    from cryodrgn.lattice import Lattice
    from cryodrgn.models_ai import VolumeExplicit

    D = box + 1
    lattice = Lattice(D, extent=D // 2)
    rots = torch.from_numpy(random_rotations(batch))
    if op == "project":
        model = VolumeExplicit(D, "hartley", D // 2)
        with torch.no_grad():
            vol_ht = fft.htn_center(torch.from_numpy(smooth_map(box)))
            sym = torch.zeros((D, D, D))
            sym[:-1, :-1, :-1] = vol_ht
            model.volume.copy_(sym / 1e2)

        @torch.no_grad()
        def run():
            coords = lattice.coords @ rots  # [B, D*D, 3]
            slices = model(coords, None).view(batch, D, D)[:, :-1, :-1]
            return fft.iht2_center(slices)

        return run, "models_ai.VolumeExplicit (repeats the map per image)"
    if op == "backproject":
        imgs = torch.randn(batch, box, box)
        mask = lattice.get_circular_mask(D // 2)

        @torch.no_grad()
        def run():
            vol = torch.zeros((D, D, D))
            counts = torch.zeros((D, D, D))
            ff = fft.symmetrize_ht(fft.ht2_center(imgs)).view(batch, -1)[:, mask]
            ff_coord = lattice.coords[mask] @ rots
            add_slice(vol, counts, ff_coord, ff, D, torch.ones_like(ff))
            return vol

        return run, "backproject_voxel core loop, full map only"
    raise ValueError(op)


ACC_IMAGES = {64: 8, 128: 2, 256: 1}  # images for the (slow, numpy) analytic backprojection reference


def _best_volume(out_fn, box: int, R, ref_fn):
    """Smallest error over A = R / R^T (images drawn with A, the tool given R), images and volume transposed or not.

    out_fn(A, transpose_images) runs the tool on acc.projections(box, A); ref_fn(A) is the matching reference.
    """
    import accuracy as acc
    import numpy as np

    best = None
    for name, rots in (("A=R", R), ("A=R^T", np.transpose(R, (0, 2, 1)))):
        ref = ref_fn(rots)
        for timg in (False, True):
            vol = out_fn(rots, timg)
            for tvol in (False, True):
                err, scale = acc.rel_error(vol.transpose(2, 1, 0) if tvol else vol, ref)
                if best is None or err < best["rel_error"]:
                    best = {"rel_error": err, "scale": scale, "vol": vol.transpose(2, 1, 0) if tvol else vol,
                            "convention": name + (", image^T" if timg else "") + (", map [x,y,z]" if tvol else "")}
    return best


def _accuracy(tool: str, op: str, box: int, batch: int, maxiter: int) -> dict:
    """Error of the operation on benchmarks/accuracy.py's blob map against its analytic reference."""
    import accuracy as acc
    import numpy as np
    import torch

    R = random_rotations(batch, seed=1).astype(np.float64)
    vol64 = acc.blob_map(box)
    if tool == "aspire":
        from aspire.image import Image
        from aspire.utils import Rotation
        from aspire.volume import Volume

        if op == "project":
            m = min(batch, 16)
            return acc.best_convention(Volume(vol64.astype(np.float32)).project(Rotation(R[:m].astype(np.float32))).asnumpy(), R[:m], box)
        if op == "backproject":
            m = ACC_IMAGES[box]

            def out(A, timg):
                y = acc.projections(box, A[:m])
                y = np.transpose(y, (0, 2, 1)) if timg else y
                return Image(y.astype(np.float32)).backproject(R[:m].astype(np.float32)).asnumpy()[0]

            best = _best_volume(out, box, R, lambda A: acc.backprojection(box, A[:m]))
            best.pop("vol")
            return best
        from aspire.reconstruction import MeanEstimator
        from aspire.source import Simulation

        sim = Simulation(L=box, n=batch, vols=Volume(vol64.astype(np.float32)), offsets=0, amplitudes=1,
                         dtype=np.float32, seed=0).cache()
        out = MeanEstimator(sim, maxiter=maxiter, checkpoint_iterations=None).estimate().asnumpy()[0]
        err, scale = acc.rel_error(out, vol64)
        return {"rel_error": err, "scale": scale, "fsc_0.5": acc.fsc_05(out, vol64),
                "convention": "ASPIRE Simulation images (its NUFFT projector)"}
    from cryodrgn import fft
    from cryodrgn.commands.backproject_voxel import add_slice, regularize_volume
    from cryodrgn.lattice import Lattice
    from cryodrgn.models_ai import VolumeExplicit

    D = box + 1
    lattice = Lattice(D, extent=D // 2)
    if op == "project":
        m = min(batch, 16)
        model = VolumeExplicit(D, "hartley", D // 2)
        with torch.no_grad():
            sym = torch.zeros((D, D, D))
            sym[:-1, :-1, :-1] = fft.htn_center(torch.from_numpy(vol64).float())
            model.volume.copy_(sym / 1e2)
            coords = lattice.coords @ torch.from_numpy(R[:m]).float()
            imgs = fft.iht2_center(model(coords, None).view(m, D, D)[:, :-1, :-1])
        return acc.best_convention(imgs.numpy(), R[:m], box)
    mask = lattice.get_circular_mask(D // 2)

    def out(A, timg):
        y = acc.projections(box, A)
        y = np.transpose(y, (0, 2, 1)) if timg else y
        vol, counts = torch.zeros((D, D, D)), torch.zeros((D, D, D))
        ff = fft.symmetrize_ht(fft.ht2_center(torch.from_numpy(y).float())).view(batch, -1)[:, mask]
        add_slice(vol, counts, lattice.coords[mask] @ torch.from_numpy(R).float(), ff, D, torch.ones_like(ff))
        counts[counts == 0] = 1
        return regularize_volume(vol, counts, 1.0).numpy()

    best = _best_volume(out, box, R, lambda A: vol64)
    best["fsc_0.5"] = acc.fsc_05(best.pop("vol"), vol64)
    best["convention"] += "; map from vol / counts (reg-weight 1), as backproject_voxel"
    return best


def measure(tool: str, op: str, box: int, threads: int, seconds: float, maxiter: int, accuracy: bool = True,
            accuracy_batch: int | None = None) -> dict:
    """One measurement in this process (called in a subprocess by `main`)."""
    import torch

    torch.set_num_threads(threads)
    batch = BATCH[op][box]
    fn, note = (_aspire if tool == "aspire" else _cryodrgn)(op, box, batch, maxiter)
    times = time_calls(fn, seconds)
    rss = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    with torch.no_grad():
        accuracy = _accuracy(tool, op, box, accuracy_batch or batch, maxiter) if accuracy else None
    return {
        "tool": tool,
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


def machine(threads: int) -> dict:
    import torch

    versions = {"torch": torch.__version__}
    for name in ("aspire", "cryodrgn"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return {"cpu": platform.processor() or platform.machine(), "threads": threads, "python": platform.python_version(), **versions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--boxes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed duration per measurement")
    parser.add_argument("--maxiter", type=int, default=10, help="CG iterations for ASPIRE's MeanEstimator")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "peers.json")
    parser.add_argument("--accuracy-batch", type=int, help="with --one: images for the accuracy step (default: the timed batch)")
    parser.add_argument("--timing-only", action="store_true", help="with --one: skip the accuracy step (repeat timings)")
    parser.add_argument("--one", nargs=3, metavar=("TOOL", "OP", "BOX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        tool, op, box = args.one
        os.chdir(tempfile.mkdtemp(prefix="peers_bench_"))  # ASPIRE writes logs/ and checkpoints into the cwd
        print(json.dumps(measure(tool, op, int(box), args.threads, args.seconds, args.maxiter, not args.timing_only, args.accuracy_batch)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "OPENBLAS_NUM_THREADS": str(args.threads), "NUMBA_NUM_THREADS": str(args.threads)}
    results = []
    jobs = [(t, op, b) for op in ("project", "backproject", "reconstruct") for t in ("aspire", "cryodrgn") for b in args.boxes
            if b in BATCH[op] and not (t == "cryodrgn" and op == "reconstruct")]
    for tool, op, box in jobs:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", tool, op, str(box), "--threads", str(args.threads),
               "--seconds", str(args.seconds), "--maxiter", str(args.maxiter)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            row = {"tool": tool, "op": op, "box": box, "error": proc.stderr.strip().splitlines()[-1]}
        else:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        results.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(args.threads), "results": results}, indent=1))


if __name__ == "__main__":
    main()
