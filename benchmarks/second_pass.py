"""Continue a finished `cryoscope refine` run from an earlier iteration index with its FINAL state (references, poses,
noise spectrum): e.g. from iteration 2, a fresh global search at 7.5° with the refined references, then local searches
(issue 4 evidence: do the particles a refinement got wrong come back with a better map?). Same default search settings
as `cryoscope refine`; outputs and metrics.json as `refine` writes them. Usage (project venv):
python benchmarks/second_pass.py REFINE_DIR PARTICLES.star TRUTH.mrc OUT_DIR [FROM_ITERATION=2] [N_ITER=7]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from cryoscope.io.mrc import read_map
from cryoscope.likelihood.em import EMSettings, expectation_maximization, from_state_dict
from cryoscope.workflows.likelihood import match_map, open_particles, write_em_outputs


def main(refine_dir: str, star: str, truth: str, out: str, start: int, n_iter: int) -> dict:
    ck = torch.load(Path(refine_dir) / "checkpoint.pt", weights_only=True)
    state = from_state_dict(ck["state"]["state"])
    state = dataclasses.replace(state, iterations_done=start, history=state.history[:start])
    p = ck["params"]
    meta, parts = open_particles(star)
    settings = EMSettings(n_iter=n_iter, healpix_order=p["healpix_order"], global_min_step_deg=p.get("global_min_step", 7.5),
                          max_shift=p["max_shift"], shift_step=p["shift_step"], batch_size=p["batch_size"], max_poses=p["max_poses"],
                          initial_cutoff=min(0.5, parts.pixel_size / p["initial_lowpass"]))
    t0 = time.perf_counter()
    result = expectation_maximization(parts, state.maps, settings, seed=p["seed"], state=state,
                                      on_iteration=lambda r: print("iteration", r.iterations_done, "resolution", r.resolution, flush=True))
    m = read_map(truth)
    ref = match_map(m.data.float(), m.voxel_size, meta.require_box(), parts.pixel_size, truth)[None]
    Path(out).mkdir(parents=True, exist_ok=True)
    metrics = write_em_outputs(result, meta, out, parts.pixel_size, references=ref, true_rotations=meta.rotations)
    metrics["seconds"] = time.perf_counter() - t0
    (Path(out) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return {k: v for k, v in metrics.items() if k != "history"}


if __name__ == "__main__":
    a = sys.argv
    print(json.dumps(main(a[1], a[2], a[3], a[4], int(a[5]) if len(a) > 5 else 2, int(a[6]) if len(a) > 6 else 7)))
