"""cryoscope's known-pose reconstruction on the same STAR + truth as aspire_oracle.py, the same FSC code.

Run with the project venv, by hand:
  .venv/bin/python benchmarks/ours_oracle.py particles.star truth.mrc [--solver direct|cg] [--out ours_oracle.json]

Times reading the STAR file plus `workflows.reconstruct.reconstruct_known_poses` (two random half-sets,
FSC-weighted average; the truth is used only for the FSC afterwards), then computes the FSC of the final
map against the truth with aspire_oracle.fsc_curve / crossing, so both tools are scored identically.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from aspire_oracle import crossing, fsc_curve  # noqa: E402


def run(star: Path, truth: Path, solver: str, threads: int) -> dict:
    import torch

    from cryoscope.io.mrc import read_map
    from cryoscope.io.star import read_star
    from cryoscope.workflows.reconstruct import reconstruct_known_poses

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    meta = read_star(star)
    result = reconstruct_known_poses(meta, meta.images(), solver=solver, progress=False)
    seconds = time.perf_counter() - t0
    vol = result.final.double().numpy()
    voxel = float(meta.require_pixel_size()[0])
    ref = read_map(truth, voxel_size=voxel).data.double().numpy()
    n = ref.shape[0]
    fsc = fsc_curve(vol, ref)
    return {
        "star": str(star),
        "truth": str(truth),
        "n_images": int(meta.n),
        "box": n,
        "pixel_size_A": voxel,
        "solver": solver,
        "seconds": round(seconds, 2),
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "fsc_0.5_cycles_per_pixel": round(crossing(fsc, n, 0.5), 4),
        "fsc_0.143_cycles_per_pixel": round(crossing(fsc, n, 0.143), 4),
        "real_space_corr": round(float(np.corrcoef(vol.ravel(), ref.ravel())[0, 1]), 4),
        "halfmap_fsc_0.143_cycles_per_pixel": result.metrics["halfmap_fsc_0.143_cycles_per_pixel"],
        "fsc": {f"{k / n:.4f}": round(float(v), 4) for k, v in enumerate(fsc)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("star", type=Path)
    parser.add_argument("truth", type=Path)
    parser.add_argument("--solver", default="direct", choices=["direct", "cg"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.star.resolve(), args.truth.resolve(), args.solver, args.threads)
    print(json.dumps({k: v for k, v in result.items() if k != "fsc"}, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
