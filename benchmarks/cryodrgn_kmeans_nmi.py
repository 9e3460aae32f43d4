"""NMI/ARI of k-means (k clusters) on a cryoDRGN run's latents against the true classes (the issue-7 peer baseline).

Reads the latest `z.N.pkl` (or `z.pkl`) of a `cryodrgn train_vae` folder with cryoscope's restricted unpickler.
Usage: python benchmarks/cryodrgn_kmeans_nmi.py VAE_DIR GROUND_TRUTH.star K
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans

from cryoscope.io.cryodrgn import load_pkl
from cryoscope.io.star import read_star
from cryoscope.validation.metrics import adjusted_rand_index, normalized_mutual_info


def latest_latents(vae_dir: Path) -> tuple[Path, np.ndarray]:
    files = sorted(vae_dir.glob("z.*.pkl"), key=lambda p: int(re.findall(r"z\.(\d+)\.pkl", p.name)[0]))
    path = files[-1] if files else vae_dir / "z.pkl"
    return path, np.asarray(load_pkl(path))


def main(vae_dir: str, truth_star: str, k: int) -> None:
    path, z = latest_latents(Path(vae_dir))
    truth = read_star(truth_star).class_number.numpy()
    labels = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(z)
    print(f"{path.name}: k-means k={k} on {z.shape} latents: NMI {normalized_mutual_info(labels, truth):.4f}, "
          f"ARI {adjusted_rand_index(labels, truth):.4f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
