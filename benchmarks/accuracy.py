"""Analytic references for the accuracy columns of peers_bench.py and ours_bench.py (numpy only, both venvs).

Accuracy map: 40 Gaussian blobs (sigma 1.5 px, so the sampled map is band-limited to ~1e-5 at Nyquist and
has content up to Nyquist) with centres inside radius 0.3 N. For RELION's convention
image(x, y) = ∫ V(A^T (x, y, z)) dz a blob at c projects to a 2-D Gaussian at (A c)_xy with amplitude
a sigma sqrt(2 pi): the exact projection. The exact adjoint of the ideal (DFT-model) projector,
F_img(k) = F_V(A^T k), is y -> y~((A r)_xy), the periodic (trigonometric) interpolant of the image at the
projected voxel position; for the analytic images y this is the 2-D Gaussians periodised over the box.
Errors are relative L2 after the best scalar fit (tools normalise differently); `scale` is that factor.
"""

from __future__ import annotations

import numpy as np

SIGMA = 1.5
N_BLOBS = 40


def blobs(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Blob centres [B, 3] (x, y, z) in pixels from the box centre and amplitudes [B]."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(N_BLOBS, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    centres = d * (0.3 * n * rng.uniform(0, 1, (N_BLOBS, 1)) ** (1 / 3))
    return centres, rng.uniform(0.5, 1.5, N_BLOBS)


def blob_map(n: int) -> np.ndarray:
    """The accuracy map sampled on the grid, [z, y, x] float64."""
    centres, amps = blobs(n)
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij", sparse=True)
    vol = np.zeros((n, n, n))
    for (cx, cy, cz), a in zip(centres, amps):
        vol += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * SIGMA**2))
    return vol


def projections(n: int, A: np.ndarray, swap_xz: bool = False) -> np.ndarray:
    """Exact projections [m, y, x] for RELION matrices A [m, 3, 3] (`swap_xz`: of the map read as [x, y, z])."""
    centres, amps = blobs(n)
    centres = centres[:, ::-1] if swap_xz else centres
    p = np.einsum("mij,bj->mbi", A, centres)[..., :2]  # [m, B, 2] (x, y)
    c = np.arange(n) - n // 2
    gx = np.exp(-((c[None, None, :] - p[..., 0:1]) ** 2) / (2 * SIGMA**2))  # [m, B, x]
    gy = np.exp(-((c[None, None, :] - p[..., 1:2]) ** 2) / (2 * SIGMA**2))  # [m, B, y]
    return np.einsum("b,mby,mbx->myx", amps * SIGMA * np.sqrt(2 * np.pi), gy, gx)


def backprojection(n: int, A: np.ndarray) -> np.ndarray:
    """Exact adjoint applied to `projections(n, A)`: sum_i y~_i((A_i r)_xy), [z, y, x]."""
    centres, amps = blobs(n)
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.stack([x, y, z], -1).reshape(-1, 3).astype(np.float64)
    out = np.zeros(r.shape[0])
    w = amps * SIGMA * np.sqrt(2 * np.pi)
    for Ai in A:
        q = r @ Ai[:2].T  # [V, 2] projected positions (x, y)
        q = (q + n // 2) % n - n // 2  # periodic image
        pc = centres @ Ai[:2].T  # [B, 2]
        for (px, py), wb in zip(pc, w):
            dx = (q[:, 0] - px + n / 2) % n - n / 2
            dy = (q[:, 1] - py + n / 2) % n - n / 2
            out += wb * np.exp(-(dx * dx + dy * dy) / (2 * SIGMA**2))
    return out.reshape(n, n, n)


def rel_error(test: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(relative L2 error after the best scalar fit, that scale factor)."""
    t, r = np.asarray(test, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    s = float(t @ r / (t @ t))
    return float(np.linalg.norm(s * t - r) / np.linalg.norm(r)), s


def best_convention(images: np.ndarray, rots: np.ndarray, n: int) -> dict:
    """Smallest error over references drawn with A = R or R^T, the map read as [z, y, x] or [x, y, z]
    and the image transposed or not (the tools' pose conventions differ; the error is what we measure)."""
    best = None
    for swap in (False, True):
        for name, A in (("A=R", rots), ("A=R^T", np.transpose(rots, (0, 2, 1)))):
            ref = projections(n, A.astype(np.float64), swap)
            for tname, img in (("", images), (", image^T", np.transpose(images, (0, 2, 1)))):
                err, s = rel_error(img, ref)
                if best is None or err < best["rel_error"]:
                    best = {"rel_error": err, "scale": s, "convention": name + tname + (", map [x,y,z]" if swap else "")}
    return best


def fsc_05(vol: np.ndarray, ref: np.ndarray) -> float:
    """First crossing of FSC 0.5 (cycles/pixel, shells round(|k|)); 0.5 if never."""
    n = ref.shape[0]
    fa, fb = (np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(v))) for v in (vol, ref))
    k = np.arange(n) - n // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    shell = np.rint(np.sqrt(kx**2 + ky**2 + kz**2)).astype(int).ravel()
    keep = shell <= n // 2
    shell, fa, fb = shell[keep], fa.ravel()[keep], fb.ravel()[keep]
    f = np.bincount(shell, (fa * fb.conj()).real) / np.sqrt(np.bincount(shell, abs(fa) ** 2) * np.bincount(shell, abs(fb) ** 2))
    below = np.nonzero(f[1:] < 0.5)[0]
    if below.size == 0:
        return 0.5
    i = below[0] + 1
    return float((i - 1 + (f[i - 1] - 0.5) / (f[i - 1] - f[i])) / n)
