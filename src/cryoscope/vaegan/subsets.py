"""Cluster membership as RELION STAR files (read by RELION and cryoSPARC): all particles, and one subset per cluster.

rlnClassNumber is the cluster number + 1 (RELION classes start at 1). HDBSCAN noise particles are left out
of the per-cluster subsets and carry class n_clusters + 1 in the all-particles file, so RELION's
"select by class" can keep or drop them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.io.metadata import ParticleMetadata
from cryoscope.io.star import write_star
from cryoscope.vaegan.cluster import NOISE

ALL_PARTICLES = "clusters.star"


def cluster_file(cluster: int) -> str:
    """File name of a cluster's subset (cluster numbered from 0; the name, like rlnClassNumber, from 1)."""
    return f"cluster_{cluster + 1:03d}.star"


def class_numbers(labels: np.ndarray) -> np.ndarray:
    """rlnClassNumber [n] for cluster labels [n] (0.. contiguous, -1 = noise): label + 1, noise n_clusters + 1."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    n_clusters = int(labels.max()) + 1 if labels.size else 0
    if labels.size and labels.min() < NOISE:
        raise InvalidValueError(f"cluster labels must be >= {NOISE} (noise), got {int(labels.min())}")
    present = np.unique(labels[labels != NOISE])
    if present.size != n_clusters:
        raise InvalidValueError(f"cluster labels must be 0..{n_clusters - 1} with none empty, got {present.tolist()}")
    return np.where(labels == NOISE, n_clusters + 1, labels + 1)


def write_cluster_subsets(
    out_dir: str | Path, meta: ParticleMetadata, labels: np.ndarray, star_format: str = "relion31",
    protect: Sequence[str | Path] = (),
) -> dict[str, Path]:
    """Write `clusters.star` (every particle of `meta`, rlnClassNumber from `class_numbers(labels)`) and
    `cluster_NNN.star` per cluster (its particles only) into `out_dir`, each atomically.

    `meta` needs image names and a pixel size (any class numbers in it are replaced); `protect` lists input
    files never to overwrite. Returns {"all": path, "cluster_001": path, ...}. Subset files of an earlier run
    with more clusters are not removed.
    """
    out_dir = Path(out_dir)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    classes = class_numbers(labels)
    if classes.size != meta.n:
        raise InvalidValueError(f"{classes.size} cluster labels for {meta.n} particles", meta.source)
    table = replace(meta, class_number=torch.from_numpy(classes))
    written = {"all": out_dir / ALL_PARTICLES}
    write_star(written["all"], table, version=star_format, protect=protect)  # fails first, before any subset
    for c in range(int(labels.max(initial=NOISE)) + 1):
        path = out_dir / cluster_file(c)
        write_star(path, table.subset(torch.from_numpy(np.flatnonzero(classes == c + 1))), version=star_format,
                   protect=protect)
        written[path.stem] = path
    return written
