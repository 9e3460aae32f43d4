"""Evidence for how cryoDRGN's pose convention maps onto RELION's (run with the peer venv).

Usage: .peers/bin/python benchmarks/cryodrgn_convention.py DATA_DIR [WORKDIR]
DATA_DIR holds hand.mrcs, hand_rot.pkl, hand_full.mrc (cryoDRGN's backprojection of hand.mrcs),
toy_projections.mrcs, toy_rot_trans.pkl and toymodel_small_nocenter.mrc (optional).

Experiments, printed as correlations:
1. Real-space reprojections of hand_full.mrc with image(x, y) = sum_z V(A^T (x, y, z)) for
   A in {R, R^T} (R from hand_rot.pkl) against hand.mrcs: which matrix cryoDRGN means.
2. cryoDRGN's `utils.R_from_relion(rot, tilt, psi)` against RELION's Euler matrix A.
3. Round trip through `cryodrgn backproject_voxel`: project hand_full.mrc in the RELION
   convention (A from random Euler angles, origin o in pixels, model = T_{-o} P_A V), write a
   cryoDRGN pose pickle (rot = A, trans = o / D), backproject with cryoDRGN, and correlate
   the result with the phantom (also with the sign of trans flipped, and with rot = A^T).
4. toy_projections.mrcs against projections of toymodel_small_nocenter.mrc with A = R,
   unshifted and shifted by -+ trans * D: are the pickled translations applied in the images?
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import mrcfile
import numpy as np
from cryodrgn import utils as cd_utils
from scipy.ndimage import map_coordinates
from scipy.ndimage import shift as nd_shift


def relion_matrix(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION's Euler_angles2matrix (degrees): A = Rz(psi) Ry(tilt) Rz(rot)."""
    a, b, g = np.deg2rad([rot, tilt, psi])
    ca, cb, cg, sa, sb, sg = np.cos(a), np.cos(b), np.cos(g), np.sin(a), np.sin(b), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array(
        [
            [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb],
        ]
    )


def project(vol: np.ndarray, A: np.ndarray) -> np.ndarray:
    """image[iy, ix] = sum_z V(A^T (x, y, z)); vol is [z, y, x], centre N // 2, linear interpolation."""
    n = vol.shape[0]
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.stack([x, y, z], -1).reshape(-1, 3)  # (x, y, z)
    p = r @ A  # rows are (A^T r)^T
    idx = np.stack([p[:, 2], p[:, 1], p[:, 0]]) + n // 2
    return map_coordinates(vol, idx, order=1, mode="constant").reshape(n, n, n).sum(0)


def read_permissive(path: Path) -> np.ndarray:
    """Read an MRC whose header lacks the MAP id (cryoDRGN's toy files)."""
    with mrcfile.open(path, permissive=True) as f:
        return np.asarray(f.data, dtype=np.float64)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def main(data: Path, work: Path) -> None:
    vol = mrcfile.read(data / "hand_full.mrc").astype(np.float64)
    imgs = mrcfile.read(data / "hand.mrcs").astype(np.float64)
    R = pickle.load(open(data / "hand_rot.pkl", "rb")).astype(np.float64)
    n = vol.shape[0]

    print("1. hand.mrcs vs reprojection of hand_full.mrc with A = R and A = R^T (mean corr, 10 images)")
    for name, f in (("A = R", lambda m: m), ("A = R^T", lambda m: m.T)):
        c = np.mean([corr(project(vol, f(R[i])), imgs[i]) for i in range(10)])
        print(f"   {name:8s} {c:.4f}")

    print("2. cryodrgn.utils.R_from_relion vs RELION A (max |difference|, 50 random angles)")
    rng = np.random.default_rng(0)
    eul = np.column_stack([rng.uniform(-180, 180, 50), rng.uniform(0, 180, 50), rng.uniform(-180, 180, 50)])
    Rc = cd_utils.R_from_relion(eul)
    As = np.stack([relion_matrix(*e) for e in eul])
    print(f"   |R_from_relion - A|   = {np.abs(Rc - As).max():.2e}")
    print(f"   |R_from_relion - A^T| = {np.abs(Rc - As.transpose(0, 2, 1)).max():.2e}")

    print("3. backproject_voxel round trip from RELION-convention projections (corr with the phantom)")
    m = 300
    eul = np.column_stack([rng.uniform(-180, 180, m), np.rad2deg(np.arccos(rng.uniform(-1, 1, m))), rng.uniform(-180, 180, m)])
    As = np.stack([relion_matrix(*e) for e in eul]).astype(np.float32)
    origin = rng.uniform(-4, 4, (m, 2))  # (x, y) pixels, RELION rlnOriginX/Y / pixel size
    # model image = T_{-o} P_A V: the particle centre sits at -o from the box centre
    stack = np.stack([nd_shift(project(vol, As[i]), (-origin[i, 1], -origin[i, 0]), order=3) for i in range(m)])
    work.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(work / "relion_conv.mrcs", overwrite=True) as f:
        f.set_data(stack.astype(np.float32))
    cases = {
        "rot=A,   trans=+o/D": (As, origin / n),
        "rot=A,   trans=-o/D": (As, -origin / n),
        "rot=A^T, trans=+o/D": (As.transpose(0, 2, 1).copy(), origin / n),
    }
    for name, pose in cases.items():
        pkl = work / "pose.pkl"
        pickle.dump(pose, open(pkl, "wb"))
        out = work / "bp"
        subprocess.run(
            [str(Path(sys.executable).parent / "cryodrgn"), "backproject_voxel", str(work / "relion_conv.mrcs"), "--poses", str(pkl),
             "-o", str(out), "--uninvert-data", "--no-half-maps"],
            check=True, capture_output=True,
        )
        rec = mrcfile.read(out / "backproject.mrc").astype(np.float64)
        print(f"   {name}  corr = {corr(rec, vol):.4f}")

    toy_model = data / "toymodel_small_nocenter.mrc"
    if toy_model.exists():
        print("4. toy_projections.mrcs vs projections of the toy model with A = R (mean corr, 20 images)")
        tvol = read_permissive(toy_model)
        timgs = read_permissive(data / "toy_projections.mrcs")
        tR, tt = pickle.load(open(data / "toy_rot_trans.pkl", "rb"))
        tt = tt * tvol.shape[0]
        for name, sign in (("no shift", 0), ("shift -trans", -1), ("shift +trans", 1)):
            c = np.mean([corr(nd_shift(project(tvol, tR[i].astype(np.float64)), sign * tt[i, ::-1], order=3), timgs[i])
                         for i in range(20)])
            print(f"   {name:13s} {c:.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp()))
