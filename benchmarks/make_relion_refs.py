"""Make the relion_project reference images of tests/test_relion_project.py (run by hand; needs RELION on PATH).

Debian's `relion` package (3.1.3, `apt-get install relion`) provides relion_project. For boxes 48 and 49 this writes
tests/data/relion/: blobs.json (the Gaussian-blob map's parameters, rendered again by the test), particles_N.star
(12 poses: 6 centred, 6 with origin shifts; astigmatic CTF) and relion_N_{noctf,ctf}.mrcs, the output of
`relion_project --i map.mrc --ang particles_N.star --o relion_N_X [--ctf]`.
Usage: python benchmarks/make_relion_refs.py [OUT]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile
import torch

from cryoscope.io.mrc import write_map
from cryoscope.physics import gmm

PIXEL, SIGMA = 2.0, 3.0
ANGLES = [[0, 0, 0], [90, 0, 0], [0, 90, 0], [30, 60, -45], [-120, 135, 170], [75, 20, 100]]


def blob_map(blobs: dict, box: int) -> torch.Tensor:
    """The reference map [N, N, N] (float32) from blobs.json's parameters."""
    c = torch.tensor(blobs["centres_A"], dtype=torch.float64)
    a = torch.tensor(blobs["amplitudes"], dtype=torch.float64)
    return gmm.render_volume(c, a, torch.full((len(a),), blobs["sigma_A"], dtype=torch.float64), box, blobs["pixel_A"]).float()


def particles_table(box: int, origins_A: np.ndarray) -> dict:
    angles = np.array(ANGLES * 2, dtype=float)
    n = len(angles)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnImagePixelSize": [PIXEL],
                           "rlnImageSize": [box], "rlnImageDimensionality": [2], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n)],
        "rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1], "rlnAnglePsi": angles[:, 2],
        "rlnOriginXAngst": origins_A[:, 0], "rlnOriginYAngst": origins_A[:, 1],
        "rlnDefocusU": np.full(n, 15000.0), "rlnDefocusV": np.full(n, 14000.0), "rlnDefocusAngle": np.full(n, 30.0),
        "rlnOpticsGroup": np.ones(n, dtype=int),
    })
    return {"optics": optics, "particles": particles}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(48)
    blobs = {"centres_A": rng.uniform(-14, 14, size=(6, 3)).tolist(), "amplitudes": rng.uniform(0.5, 1.5, size=6).tolist(),
             "sigma_A": SIGMA, "pixel_A": PIXEL,
             "relion": subprocess.run(["relion_project", "--version"], capture_output=True, text=True).stdout.split("\n")[0]}
    (out / "blobs.json").write_text(json.dumps(blobs, indent=1))
    for box in (48, 49):
        origins = np.concatenate([np.zeros((6, 2)), rng.uniform(-5, 5, size=(6, 2)) * PIXEL])
        starfile.write(particles_table(box, origins), out / f"particles_{box}.star", overwrite=True)
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            write_map(t / "map.mrc", blob_map(blobs, box), PIXEL)
            shutil.copy(out / f"particles_{box}.star", t / "particles.star")
            for name, extra in (("noctf", []), ("ctf", ["--ctf"])):
                subprocess.run(["relion_project", "--i", "map.mrc", "--ang", "particles.star", "--o", f"relion_{name}", *extra],
                               cwd=t, check=True, capture_output=True)
                data = mrcfile.read(t / f"relion_{name}.mrcs").astype(np.float32)
                with mrcfile.new(out / f"relion_{box}_{name}.mrcs", overwrite=True) as m:
                    m.set_data(data)
                    m.voxel_size = PIXEL
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "tests/data/relion")
