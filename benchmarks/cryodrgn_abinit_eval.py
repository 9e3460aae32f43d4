"""Score a `cryodrgn abinit --zdim 0` run against the simulation truth, as cryoscope's CLI scores its own runs.

Reads OUTDIR/reconstruct.E.mrc and OUTDIR/pose.E.pkl (E: the last epoch written), the truth map and the truth STAR
file; prints and writes OUTDIR/cryoscope_eval.json: FSC 0.5 / 0.143 against the truth after rigid alignment
(rotation, shift, hand; the map and its negative are both tried, since cryoDRGN inverts the data sign by default)
and the median pose error after gauge alignment. Run in the project venv (cryoscope's restricted unpickler reads the pkl).
Usage: python benchmarks/cryodrgn_abinit_eval.py OUTDIR TRUTH.mrc TRUTH.star [PIXEL_A]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch

from cryoscope.geometry.alignment import align_poses
from cryoscope.io.cryodrgn import load_pkl
from cryoscope.io.mrc import read_map
from cryoscope.io.star import read_star
from cryoscope.validation.align import fsc_after_alignment


def main(outdir: Path, truth_map: Path, truth_star: Path, pixel: float) -> dict:
    epochs = sorted(int(re.findall(r"\d+", p.name)[0]) for p in outdir.glob("reconstruct.*.mrc"))
    e = epochs[-1]
    vol = read_map(outdir / f"reconstruct.{e}.mrc").data.float()
    ref = read_map(truth_map).data.float()
    if vol.shape != ref.shape:  # cryoDRGN writes D + 1 = even box + 1? crop to the truth's box
        vol = vol[tuple(slice(0, n) for n in ref.shape)]
    best = max((fsc_after_alignment(s * vol, ref, pixel) for s in (1.0, -1.0)), key=lambda a: float(a.fsc.mean()))
    poses = load_pkl(outdir / f"pose.{e}.pkl")
    R = torch.as_tensor(poses[0] if isinstance(poses, tuple) else poses).double()
    _, flip, err = align_poses(R, read_star(truth_star).rotations.double()[: R.shape[0]])  # --ind N keeps the first N
    out = {"epoch": e, "truth_fsc_0.5_cycles_per_pixel": best.resolution_05[0], "truth_fsc_0.143_cycles_per_pixel": best.resolution_0143[0],
           "pose_error_median_deg": float(err.median()), "pose_gauge_flip": bool(flip)}
    (outdir / "cryoscope_eval.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    a = sys.argv
    main(Path(a[1]), Path(a[2]), Path(a[3]), float(a[4]) if len(a) > 4 else 3.0)
