"""Shared by ours_bench.py and peers_bench.py (they run in different venvs; numpy and scipy only)."""

from __future__ import annotations

import time

import numpy as np


def random_rotations(n: int, seed: int = 0) -> np.ndarray:
    """Uniform random rotation matrices [n, 3, 3] float32 (scipy), the same in both scripts."""
    from scipy.spatial.transform import Rotation

    return Rotation.random(n, random_state=seed).as_matrix().astype(np.float32)


def smooth_map(n: int) -> np.ndarray:
    """Sum of 8 Gaussian blobs, [z, y, x] float32: the benchmark map of both scripts."""
    rng = np.random.default_rng(0)
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij", sparse=True)
    vol = np.zeros((n, n, n), np.float32)
    for centre in rng.uniform(-n / 5, n / 5, (8, 3)):
        vol += np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) / (2 * (n / 16) ** 2))
    return vol


def time_calls(fn, seconds: float) -> list[float]:
    """One warm-up call, then repeat until `seconds` have passed (at least 3 calls); returns per-call seconds."""
    fn()
    times, t_end = [], time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times
