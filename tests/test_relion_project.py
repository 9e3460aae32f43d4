"""`cryoscope project` reproduces relion_project: against RELION 3.1.3's own output (tests/data/relion, made by
benchmarks/make_relion_refs.py) and against an independent analytic reference of its image model.

relion_project (RELION src/apps/project.cpp) computes F2D = slice of the map at Euler_rotation3DMatrix(rot, tilt, psi),
shifts it by (-rlnOriginXAngst, -rlnOriginYAngst) / angpix with shiftImageInFourierTransform (a translation by +s
multiplies by exp(-2 pi i k.s / N)), multiplies by the CTF and centres the result at N // 2. For a Gaussian-blob
map that image is known in closed form: each blob at c projects to a 2-D Gaussian at (A c)_xy - origin.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryoscope.cli.main import main
from cryoscope.io.mrc import read_map, write_map
from cryoscope.physics import gmm
from cryoscope.physics.ctf import CTFParams, compute_ctf
from cryoscope.physics.fourier import fft2c, ifft2c
from cryoscope.validation.fsc import frc

PIXEL = 2.0


def relion_euler_matrix(rot: float, tilt: float, psi: float) -> np.ndarray:
    """Element formulas of RELION's Euler_angles2matrix (euler.cpp), written out independently of cryoscope."""
    a, b, g = np.deg2rad([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array(
        [
            [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb],
        ]
    )


def blob_image(centres_xy: np.ndarray, amplitudes: np.ndarray, sigma: float, box: int) -> np.ndarray:
    """Sum of 2-D Gaussians (positions in Å about pixel N // 2), integrated mass per pixel."""
    x = (np.arange(box) - box // 2) * PIXEL
    img = np.zeros((box, box))
    for (cx, cy), a in zip(centres_xy, amplitudes):
        gx = np.exp(-((x - cx) ** 2) / (2 * sigma**2))
        gy = np.exp(-((x - cy) ** 2) / (2 * sigma**2))
        img += a * np.outer(gy, gx) / (2 * math.pi * sigma**2) * PIXEL**2
    return img


def _write_inputs(tmp_path, box: int, angles: np.ndarray, origins_A: np.ndarray, centres, amplitudes, sigma):
    vol = gmm.render_volume(torch.as_tensor(centres), torch.as_tensor(amplitudes), torch.full((len(amplitudes),), sigma, dtype=torch.float64), box, PIXEL)
    write_map(tmp_path / "map.mrc", vol.float(), PIXEL)
    with mrcfile.new(tmp_path / "particles.mrcs") as m:  # relion_project reads only the metadata
        m.set_data(np.zeros((len(angles), box, box), np.float32))
        m.voxel_size = PIXEL
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
    starfile.write({"optics": optics, "particles": particles}, tmp_path / "particles.star", overwrite=True)


@pytest.mark.parametrize("box", [48, 49])
@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("ctf", [False, True])
def test_project_matches_relion_image_model(tmp_path, box, shifted, ctf):
    rng = np.random.default_rng(box + 2 * shifted)
    centres = rng.uniform(-14, 14, size=(6, 3))  # a particle within ~0.3 of the box, as picked particles are
    amplitudes = rng.uniform(0.5, 1.5, size=6)
    sigma = 3.0  # Å, smooth enough that the pixelated map is band-limited
    angles = np.array([[0, 0, 0], [90, 0, 0], [0, 90, 0], [30, 60, -45], [-120, 135, 170], [75, 20, 100]], dtype=float)
    origins = rng.uniform(-5, 5, size=(len(angles), 2)) * PIXEL if shifted else np.zeros((len(angles), 2))
    _write_inputs(tmp_path, box, angles, origins, centres, amplitudes, sigma)
    args = ["project", str(tmp_path / "map.mrc"), "--star", str(tmp_path / "particles.star"), "-o", str(tmp_path / "proj.mrcs")]
    assert main(args + (["--ctf"] if ctf else [])) == 0
    ours = torch.from_numpy(mrcfile.read(tmp_path / "proj.mrcs").astype(np.float64))
    assert abs(read_map(tmp_path / "proj.mrcs").voxel_size - PIXEL) < 1e-4

    expected = []
    for (rot, tilt, psi), o in zip(angles, origins):
        A = relion_euler_matrix(rot, tilt, psi)
        expected.append(blob_image((centres @ A.T)[:, :2] - o, amplitudes, sigma, box))
    expected = torch.from_numpy(np.stack(expected))
    if ctf:
        params = CTFParams.create(15000.0, 14000.0, 30.0, 300.0, 2.7, 0.1, dtype=torch.float64)
        expected = ifft2c(fft2c(expected) * compute_ctf(params, box, PIXEL)).real

    rel = (ours - expected).norm(dim=(-1, -2)) / expected.norm(dim=(-1, -2))
    assert float(rel.max()) < 0.05, rel  # "a few percent"; trilinear + sinc² gridding as RELION
    curve = frc(ours, expected)
    near_nyquist = int(0.4 * box)
    assert float(curve[:, 1:near_nyquist].min()) > 0.99


RELION_REFS = Path(__file__).parent / "data" / "relion"


def _blob_map(box: int) -> torch.Tensor:
    p = json.loads((RELION_REFS / "blobs.json").read_text())
    c, a = torch.tensor(p["centres_A"], dtype=torch.float64), torch.tensor(p["amplitudes"], dtype=torch.float64)
    return gmm.render_volume(c, a, torch.full((len(a),), p["sigma_A"], dtype=torch.float64), box, p["pixel_A"]).float()


@pytest.mark.parametrize("box", [48, 49])
@pytest.mark.parametrize("ctf", [False, True])
def test_project_equals_relion_project_output(tmp_path, box, ctf):
    """Same map, same STAR file (6 centred + 6 shifted poses): our images equal relion_project's.

    Even box: equal to float32 rounding (measured 3e-5 of the maximum). Odd box: RELION 3.1.3 puts the image centre
    at N // 2 + 1 instead of the map's N // 2 (its own relion_reconstruct of those images does not give the map
    back: correlation 0.08), so its images equal ours moved by one pixel in x and y; we keep the map's centre.
    """
    write_map(tmp_path / "map.mrc", _blob_map(box), PIXEL)
    shutil.copy(RELION_REFS / f"particles_{box}.star", tmp_path / "particles.star")
    with mrcfile.new(tmp_path / "particles.mrcs") as m:
        m.set_data(np.zeros((12, box, box), np.float32))
    args = ["project", str(tmp_path / "map.mrc"), "--star", str(tmp_path / "particles.star"), "-o", str(tmp_path / "ours.mrcs")]
    assert main(args + (["--ctf"] if ctf else [])) == 0
    ours = torch.from_numpy(mrcfile.read(tmp_path / "ours.mrcs").astype(np.float64))
    relion = torch.from_numpy(mrcfile.read(RELION_REFS / f"relion_{box}_{'ctf' if ctf else 'noctf'}.mrcs").astype(np.float64))
    if box % 2:
        ours = torch.roll(ours, (1, 1), dims=(-2, -1))
    rel = (ours - relion).norm(dim=(-1, -2)) / relion.norm(dim=(-1, -2))
    assert float(rel.max()) < 1e-3, rel
    curve = frc(ours, relion)
    assert float(curve[:, 1 : int(0.45 * box)].min()) > 0.999
