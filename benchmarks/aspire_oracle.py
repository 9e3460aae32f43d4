"""ASPIRE oracle: least-squares mean volume from a RELION STAR + MRCS dataset with the true poses and CTF.

Run with the peer venv (benchmarks/setup_peers.sh):
  .peers/bin/python benchmarks/aspire_oracle.py particles.star truth.mrc [--n 2000] [--out oracle.json]
  .peers/bin/python benchmarks/aspire_oracle.py --selftest     # tiny synthetic dataset, then the oracle on it

The STAR file is RELION 3.1 (optics block with rlnImagePixelSize, rlnVoltage, rlnSphericalAberration,
rlnAmplitudeContrast; particles with rlnImageName index@stack, rlnAngleRot/Tilt/Psi, rlnOriginXAngst/YAngst,
rlnDefocusU/V/Angle). ASPIRE's RelionSource reads poses, shifts and CTF itself; ASPIRE ignores rlnPhaseShift.
Reports the FSC against the truth map (shells round(|k|), cycles/pixel), its 0.5 and 0.143 crossings,
and the wall time of the estimate. The map array order is [z, y, x] (mrcfile order) for both.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np


def fsc_curve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """FSC between two cubic maps over shells round(|k|) = 0 .. N//2 (cycles per box)."""
    n = a.shape[0]
    fa = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(a)))
    fb = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(b)))
    k = np.arange(n) - n // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    shell = np.rint(np.sqrt(kx**2 + ky**2 + kz**2)).astype(int).ravel()
    keep = shell <= n // 2
    shell = shell[keep]
    fa, fb = fa.ravel()[keep], fb.ravel()[keep]
    num = np.bincount(shell, (fa * fb.conj()).real)
    den = np.sqrt(np.bincount(shell, np.abs(fa) ** 2) * np.bincount(shell, np.abs(fb) ** 2))
    return num / np.maximum(den, 1e-30)


def crossing(fsc: np.ndarray, n: int, threshold: float) -> float:
    """First crossing of `threshold` in cycles/pixel (linear interpolation); 0.5 if never crossed."""
    below = np.nonzero(fsc[1:] < threshold)[0]
    if below.size == 0:
        return 0.5
    i = below[0] + 1
    t = (fsc[i - 1] - threshold) / (fsc[i - 1] - fsc[i])
    return float((i - 1 + t) / n)


def run_oracle(star: Path, truth: Path, n_images: int | None, maxiter: int, pixel_size: float | None) -> dict:
    """ASPIRE MeanEstimator with the STAR file's poses and CTF; FSC against `truth`."""
    from aspire.reconstruction import MeanEstimator
    from aspire.source import RelionSource

    t0 = time.perf_counter()
    src = RelionSource(str(star), pixel_size=pixel_size, max_rows=n_images, dtype=np.float64)
    estimator = MeanEstimator(src, maxiter=maxiter, checkpoint_iterations=None)
    vol = estimator.estimate().asnumpy()[0]
    seconds = time.perf_counter() - t0
    with mrcfile.open(truth, permissive=True) as f:
        ref = np.asarray(f.data, dtype=np.float64)
    if ref.shape != vol.shape:
        raise SystemExit(f"{truth}: truth map shape {ref.shape} differs from the images' box {vol.shape}")
    n = ref.shape[0]
    # ASPIRE's CTF is -Q at k = 0 (cryoDRGN's sign), RELION's +Q: on RELION-convention data (ours) ASPIRE's
    # mean volume comes out with inverted contrast. Score it with the sign that matches the truth, and say so.
    inverted = float(np.vdot(vol, ref)) < 0
    if inverted:
        vol = -vol
    fsc = fsc_curve(vol, ref)
    return {
        "star": str(star),
        "truth": str(truth),
        "n_images": int(src.n),
        "box": n,
        "pixel_size_A": float(src.pixel_size),
        "maxiter": maxiter,
        "contrast_inverted": inverted,
        "seconds": round(seconds, 2),
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "fsc_0.5_cycles_per_pixel": round(crossing(fsc, n, 0.5), 4),
        "fsc_0.143_cycles_per_pixel": round(crossing(fsc, n, 0.143), 4),
        "real_space_corr": round(float(np.corrcoef(vol.ravel(), ref.ravel())[0, 1]), 4),
        "fsc": {f"{k / n:.4f}": round(float(v), 4) for k, v in enumerate(fsc)},
    }


def _relion_matrix(eul_deg: np.ndarray) -> np.ndarray:
    """RELION Euler (rot, tilt, psi) in degrees, [n, 3] -> A = Rz(psi) Ry(tilt) Rz(rot), [n, 3, 3]."""
    a, b, g = np.deg2rad(eul_deg).T
    ca, cb, cg, sa, sb, sg = np.cos(a), np.cos(b), np.cos(g), np.sin(a), np.sin(b), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.stack(
        [
            np.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
            np.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
            np.stack([sc, ss, cb], -1),
        ],
        -2,
    )


def _ctf(n: int, apix: float, dfu: float, dfv: float, dfang: float, kv: float, cs: float, w: float) -> np.ndarray:
    """CTF on the centred [ky, kx] grid (cryoDRGN's / RELION's formula, -w at k = 0), defocus in Å."""
    k = (np.arange(n) - n // 2) / (n * apix)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    s2 = kx**2 + ky**2
    lam = 12.2639 / np.sqrt(kv * 1e3 + 0.97845e-6 * (kv * 1e3) ** 2)
    df = 0.5 * (dfu + dfv + (dfu - dfv) * np.cos(2 * (np.arctan2(ky, kx) - np.deg2rad(dfang))))
    gamma = 2 * np.pi * (-0.5 * df * lam * s2 + 0.25 * cs * 1e7 * lam**3 * s2**2)
    return np.sqrt(1 - w**2) * np.sin(gamma) - w * np.cos(gamma)


def make_synthetic(folder: Path, n_images: int = 400, box: int = 32, apix: float = 2.0, seed: int = 0) -> tuple[Path, Path]:
    """Tiny RELION 3.1 dataset: Gaussian-blob phantom, uniform poses, origins up to 3 px, CTF, mild noise.

    Images follow RELION's model: F_img(k) = CTF(k) exp(+2 pi i k.o / N) F_V(A^T (kx, ky, 0)),
    i.e. T_{-o} P_A V with the origin o in pixels (rlnOriginXAngst = o_x * apix).
    """
    import pandas as pd
    import starfile
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(seed)
    c = np.arange(box) - box // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.zeros((box,) * 3)
    for centre, sigma, amp in zip(rng.uniform(-7, 7, (12, 3)), rng.uniform(1.5, 3.0, 12), rng.uniform(0.5, 1.5, 12)):
        vol += amp * np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) / (2 * sigma**2))
    eul = np.column_stack([
        rng.uniform(-180, 180, n_images), np.rad2deg(np.arccos(rng.uniform(-1, 1, n_images))), rng.uniform(-180, 180, n_images)
    ])
    A = _relion_matrix(eul)
    origin = rng.uniform(-3, 3, (n_images, 2))
    dfu = rng.uniform(8000, 20000, n_images)
    dfv = dfu - rng.uniform(0, 1000, n_images)
    dfang = rng.uniform(0, 180, n_images)
    r = np.stack([x, y, z], -1).reshape(-1, 3)
    kx = np.broadcast_to(c[None, :], (box, box))
    ky = np.broadcast_to(c[:, None], (box, box))
    stack = np.empty((n_images, box, box), np.float32)
    for i in range(n_images):
        p = r @ A[i]  # rows (A^T r)^T
        img = map_coordinates(vol, np.stack([p[:, 2], p[:, 1], p[:, 0]]) + box // 2, order=1).reshape((box,) * 3).sum(0)
        f = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img)))
        f *= np.exp(2j * np.pi * (kx * origin[i, 0] + ky * origin[i, 1]) / box)
        f *= _ctf(box, apix, dfu[i], dfv[i], dfang[i], 300.0, 2.7, 0.1)
        stack[i] = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(f))).real
    stack += rng.normal(0, 0.05 * stack.std(), stack.shape).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(folder / "particles.mrcs", overwrite=True) as f:
        f.set_data(stack)
        f.voxel_size = apix
    with mrcfile.new(folder / "truth.mrc", overwrite=True) as f:
        f.set_data(vol.astype(np.float32))
        f.voxel_size = apix
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnImagePixelSize": [apix],
        "rlnImageSize": [box], "rlnImageDimensionality": [2], "rlnVoltage": [300.0],
        "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
    })
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n_images)],
        "rlnAngleRot": eul[:, 0], "rlnAngleTilt": eul[:, 1], "rlnAnglePsi": eul[:, 2],
        "rlnOriginXAngst": origin[:, 0] * apix, "rlnOriginYAngst": origin[:, 1] * apix,
        "rlnDefocusU": dfu, "rlnDefocusV": dfv, "rlnDefocusAngle": dfang, "rlnPhaseShift": 0.0,
        "rlnOpticsGroup": 1,
    })
    star = folder / "particles.star"
    starfile.write({"optics": optics, "particles": particles}, star, overwrite=True)
    return star, folder / "truth.mrc"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("star", nargs="?", type=Path, help="RELION 3.1 particles STAR file")
    parser.add_argument("truth", nargs="?", type=Path, help="ground-truth map (MRC, same box as the images)")
    parser.add_argument("--n", type=int, default=None, help="use only the first N particles")
    parser.add_argument("--maxiter", type=int, default=50, help="conjugate-gradient iterations (ASPIRE default 50)")
    parser.add_argument("--pixel-size", type=float, default=None, help="Å/pixel if the STAR file has none")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    parser.add_argument("--selftest", action="store_true", help="make a tiny synthetic dataset and run on it")
    args = parser.parse_args()
    logging.getLogger("aspire").setLevel(logging.WARNING)
    if args.selftest:
        args.star, args.truth = make_synthetic(Path(tempfile.mkdtemp(prefix="aspire_oracle_")))
    elif args.star is None or args.truth is None:
        parser.error("give STAR and TRUTH, or --selftest")
    args.star, args.truth = args.star.resolve(), args.truth.resolve()
    out = None if args.out is None else args.out.resolve()
    os.chdir(tempfile.mkdtemp(prefix="aspire_oracle_run_"))  # ASPIRE writes logs/ and CG checkpoints into the cwd
    result = run_oracle(args.star, args.truth, args.n, args.maxiter, args.pixel_size)
    summary = {k: v for k, v in result.items() if k != "fsc"}
    print(json.dumps(summary, indent=1))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
