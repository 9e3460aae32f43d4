"""Clustering of VAE-GAN latent means: UMAP to 2-D, HDBSCAN, and per-cluster PCA traversals and representatives.

Every particle is encoded to its latent mean [d]; the latents are embedded in 2-D by UMAP (min_dist 0,
30 neighbours) and clustered there by HDBSCAN (noise = -1). For each cluster, a 1-component PCA of its
latents gives points from the 5th to the 95th percentile along the main axis (decoded to maps), and
K-means on its 2-D embedding gives representative particles (nearest to each centre; decoded to images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import HDBSCAN, KMeans

from cryoscope.errors import InvalidValueError
from cryoscope.validation.metrics import adjusted_rand_index, normalized_mutual_info

NOISE = -1
REFERENCE_CLUSTER_SIZE = (900, 30_000)  # thesis: ~900 particles give an 8 Å ab-initio map, for 30,000 particles
MIN_CLUSTER_SIZE_FLOOR = 10
MIN_UMAP_POINTS = 4  # UMAP's spectral initialisation needs more points than n_components + 1


@dataclass
class Traversal:
    """Points along a cluster's first principal axis.

    latents [n_points, d] (inverse PCA of `scores`), scores [n_points] (coordinates along `component`,
    evenly spaced between two percentiles), component [d] (unit vector; its largest-|loading| entry is
    positive), mean [d], explained_variance (fraction of the cluster's latent variance on `component`).
    """

    latents: np.ndarray
    scores: np.ndarray
    component: np.ndarray
    mean: np.ndarray
    explained_variance: float


@dataclass
class ClusterAnalysis:
    """Result of `analyse_latents`; clusters are numbered 0.. by decreasing size.

    embedding [n, 2] (UMAP), labels [n] (cluster, -1 = noise), sizes [n_clusters], traversals (one per
    cluster), representatives (per cluster, global particle indices [k'] nearest to its K-means centres),
    min_cluster_size (the HDBSCAN value used).
    """

    embedding: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    traversals: list[Traversal]
    representatives: list[np.ndarray]
    min_cluster_size: int

    @property
    def n_clusters(self) -> int:
        return int(self.sizes.size)

    @property
    def noise_fraction(self) -> float:
        return float(np.mean(self.labels == NOISE))


def _points(x: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or (dim is not None and x.shape[1] != dim):
        want = f"[n, {dim}]" if dim is not None else "[n, d]"
        raise InvalidValueError(f"{name}: expected a non-empty array {want}, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InvalidValueError(f"{name}: contains NaN/Inf")
    return x


def embed_umap(latents: np.ndarray, n_neighbors: int = 30, min_dist: float = 0.0, seed: int = 0) -> np.ndarray:
    """2-D UMAP embedding [n, 2] (float64) of latents [n, d]; reproducible for a given `seed` (single-threaded).

    With n <= n_neighbors points, n_neighbors is lowered to n - 1.
    """
    x = _points(latents, "embed_umap")
    if x.shape[0] < MIN_UMAP_POINTS:
        raise InvalidValueError(f"embed_umap: needs at least {MIN_UMAP_POINTS} particles, got {x.shape[0]}")
    if n_neighbors < 2:
        raise InvalidValueError(f"embed_umap: n_neighbors must be at least 2, got {n_neighbors}")
    import umap  # slow to import (numba)

    reducer = umap.UMAP(
        n_components=2, n_neighbors=min(n_neighbors, x.shape[0] - 1), min_dist=min_dist, random_state=seed, n_jobs=1
    )
    return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def default_min_cluster_size(n: int) -> int:
    """HDBSCAN min_cluster_size for n particles: the thesis's 900 of 30,000 (3 %), rounded, at least 10."""
    if n < 1:
        raise InvalidValueError(f"default_min_cluster_size: needs at least one particle, got {n}")
    size, total = REFERENCE_CLUSTER_SIZE
    return max(MIN_CLUSTER_SIZE_FLOOR, round(n * size / total))


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters 0.. by decreasing size (ties: earliest first member first); noise stays -1."""
    ids, first, counts = np.unique(labels[labels != NOISE], return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    new = np.full(labels.shape, NOISE, dtype=np.int64)
    for rank, old in enumerate(ids[order]):
        new[labels == old] = rank
    return new


def cluster_hdbscan(embedding: np.ndarray, min_samples: int = 10, min_cluster_size: int | None = None) -> np.ndarray:
    """HDBSCAN labels [n] (int64) of an embedding [n, 2]: 0 = largest cluster, -1 = noise.

    min_cluster_size defaults to `default_min_cluster_size(n)`.
    """
    x = _points(embedding, "cluster_hdbscan")
    n = x.shape[0]
    mcs = default_min_cluster_size(n) if min_cluster_size is None else min_cluster_size
    if mcs < 2:
        raise InvalidValueError(f"cluster_hdbscan: min_cluster_size must be at least 2, got {mcs}")
    if not 1 <= min_samples <= n:
        raise InvalidValueError(f"cluster_hdbscan: min_samples must be in [1, {n}] (particles), got {min_samples}")
    labels = HDBSCAN(min_cluster_size=mcs, min_samples=min_samples, copy=True).fit_predict(x)
    return _by_size(labels)


def pca_traversal(latents_of_cluster: np.ndarray, n_points: int = 4, low: float = 5.0, high: float = 95.0) -> Traversal:
    """`n_points` latents evenly spaced along the first principal axis of a cluster's latents [m, d],
    from the `low`-th to the `high`-th percentile of the particles' scores on that axis."""
    x = _points(latents_of_cluster, "pca_traversal")
    if x.shape[0] < 2:
        raise InvalidValueError("pca_traversal: a cluster needs at least 2 particles")
    if n_points < 2:
        raise InvalidValueError(f"pca_traversal: n_points must be at least 2, got {n_points}")
    if not 0.0 <= low < high <= 100.0:
        raise InvalidValueError(f"pca_traversal: need 0 <= low < high <= 100 (percentiles), got {low}, {high}")
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    component = vt[0] * np.sign(vt[0][np.argmax(np.abs(vt[0]))])
    total = float((s**2).sum())
    explained = float(s[0] ** 2) / total if total > 0 else 0.0
    lo, hi = np.percentile((x - mean) @ component, [low, high])
    scores = np.linspace(lo, hi, n_points)
    return Traversal(mean + scores[:, None] * component, scores, component, mean, explained)


def representatives(embedding_of_cluster: np.ndarray, k: int = 16, seed: int = 0) -> np.ndarray:
    """Indices [k'] (k' = min(k, m), unique) into a cluster's points [m, 2]: the point nearest each K-means centre.

    Should two centres share a nearest point, the unique assignment of least total distance is taken.
    """
    x = _points(embedding_of_cluster, "representatives", dim=2)
    if k < 1:
        raise InvalidValueError(f"representatives: k must be at least 1, got {k}")
    km = KMeans(n_clusters=min(k, x.shape[0]), n_init=10, random_state=seed).fit(x)
    dist = np.linalg.norm(km.cluster_centers_[:, None, :] - x[None, :, :], axis=-1)
    _, cols = linear_sum_assignment(dist)  # rows come back in centre order
    return cols.astype(np.int64)


def analyse_latents(
    latents: np.ndarray, seed: int, n_neighbors: int = 30, min_dist: float = 0.0, min_samples: int = 10,
    min_cluster_size: int | None = None, n_traversal: int = 4, n_representatives: int = 16,
) -> ClusterAnalysis:
    """UMAP + HDBSCAN of latent means [n, d], then each cluster's PCA traversal and representative particles."""
    x = _points(latents, "analyse_latents")
    mcs = default_min_cluster_size(x.shape[0]) if min_cluster_size is None else min_cluster_size
    embedding = embed_umap(x, n_neighbors=n_neighbors, min_dist=min_dist, seed=seed)
    labels = cluster_hdbscan(embedding, min_samples=min_samples, min_cluster_size=mcs)
    members = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
    return ClusterAnalysis(
        embedding=embedding,
        labels=labels,
        sizes=np.array([m.size for m in members], dtype=np.int64),
        traversals=[pca_traversal(x[m], n_points=n_traversal) for m in members],
        representatives=[m[representatives(embedding[m], k=n_representatives, seed=seed)] for m in members],
        min_cluster_size=mcs,
    )


def clustering_scores(labels: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """Agreement of cluster labels [n] (-1 = noise) with true classes [n].

    nmi / ari count noise as one more cluster (so unassigned particles lower the score);
    nmi_clustered / ari_clustered use the non-noise particles only (NaN if there are none).
    Also noise_fraction and n_clusters.
    """
    labels, truth = np.asarray(labels).reshape(-1), np.asarray(truth).reshape(-1)
    if labels.shape != truth.shape:
        raise InvalidValueError(f"clustering_scores: {labels.size} labels but {truth.size} true classes")
    kept = labels != NOISE
    return {
        "nmi": normalized_mutual_info(labels, truth),
        "ari": adjusted_rand_index(labels, truth),
        "nmi_clustered": normalized_mutual_info(labels[kept], truth[kept]) if kept.any() else float("nan"),
        "ari_clustered": adjusted_rand_index(labels[kept], truth[kept]) if kept.any() else float("nan"),
        "noise_fraction": float(np.mean(~kept)),
        "n_clusters": int(np.unique(labels[kept]).size),
    }
