"""VAE-GAN latent analysis: UMAP + HDBSCAN recover latent blobs, PCA traversals, K-means representatives,
clustering scores, cluster STAR subsets and the embedding plot. UMAP runs once (module fixture): its first
call compiles numba kernels for tens of seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from cryoscope.errors import InvalidValueError
from cryoscope.io.convert import read_metadata
from cryoscope.io.metadata import ParticleMetadata
from cryoscope.io.mrc import write_stack
from cryoscope.report.plots import plot_embedding
from cryoscope.vaegan.cluster import (
    analyse_latents,
    cluster_hdbscan,
    clustering_scores,
    default_min_cluster_size,
    embed_umap,
    pca_traversal,
    representatives,
)
from cryoscope.vaegan.subsets import class_numbers, write_cluster_subsets

N_PER_BLOB, DIM = 300, 10


@pytest.fixture(scope="module")
def blobs():
    """Latents [900, 10] of 3 Gaussian blobs (true classes [900]) and their analysis."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, DIM)) * 2  # centres 7-9.5 apart, unit spread (NMI ~0.99)
    truth = np.repeat(np.arange(3), N_PER_BLOB)
    latents = centres[truth] + rng.normal(size=(truth.size, DIM))
    return latents, truth, analyse_latents(latents, seed=0)


def test_umap_hdbscan_recover_latent_blobs(blobs):
    latents, truth, a = blobs
    scores = clustering_scores(a.labels, truth)
    assert a.embedding.shape == (900, 2) and a.labels.shape == (900,)
    assert a.n_clusters == 3 and scores["n_clusters"] == 3
    assert a.min_cluster_size == default_min_cluster_size(900) == 27
    assert scores["nmi"] >= 0.95 and scores["nmi_clustered"] >= 0.95 and scores["ari"] >= 0.95
    assert scores["noise_fraction"] == pytest.approx(a.noise_fraction) and a.noise_fraction < 0.05
    assert list(a.sizes) == sorted(a.sizes, reverse=True)
    assert [int((a.labels == c).sum()) for c in range(3)] == list(a.sizes)
    assert [t.latents.shape for t in a.traversals] == [(4, DIM)] * 3
    for c, rep in enumerate(a.representatives):
        assert rep.size == 16 and np.unique(rep).size == 16 and (a.labels[rep] == c).all()
        # the cluster's traversal runs through its own blob
        blob = np.bincount(truth[a.labels == c]).argmax()
        centre = latents[truth == blob].mean(0)
        assert np.linalg.norm(a.traversals[c].mean - centre) < 0.5


def test_embed_umap_is_reproducible_and_handles_few_points(blobs):
    latents = blobs[0][:20]  # fewer points than n_neighbors: lowered to n - 1
    e = embed_umap(latents, seed=3)
    assert e.shape == (20, 2) and e.dtype == np.float64
    np.testing.assert_array_equal(e, embed_umap(latents, seed=3))
    with pytest.raises(InvalidValueError, match="at least 4"):
        embed_umap(latents[:3])
    with pytest.raises(InvalidValueError, match="NaN"):
        embed_umap(np.full((10, 3), np.nan))


def test_default_min_cluster_size_scales_thesis_value():
    assert default_min_cluster_size(30_000) == 900
    assert default_min_cluster_size(3_000) == 90
    assert default_min_cluster_size(100) == 10
    with pytest.raises(InvalidValueError):
        default_min_cluster_size(0)


def test_hdbscan_labels_by_decreasing_size_with_noise():
    rng = np.random.default_rng(1)
    sizes, centres = (50, 200, 100), np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    pts = np.concatenate([c + rng.normal(size=(m, 2)) for c, m in zip(centres, sizes)] + [[[100.0, 100.0]]])
    labels = cluster_hdbscan(pts, min_samples=5, min_cluster_size=20)
    assert labels.dtype == np.int64 and labels[-1] == -1
    np.testing.assert_array_equal(np.bincount(labels[labels >= 0]), [200, 100, 50])
    assert (labels[50:250] == 0).all() and (labels[250:350] == 1).all()
    with pytest.raises(InvalidValueError, match="min_samples"):
        cluster_hdbscan(pts[:5], min_samples=10)


def test_pca_traversal_follows_the_elongated_direction():
    rng = np.random.default_rng(2)
    u = rng.normal(size=DIM)
    u /= np.linalg.norm(u)
    mean = rng.normal(size=DIM)
    t = rng.normal(size=2000) * 5
    x = mean + t[:, None] * u + 0.1 * rng.normal(size=(2000, DIM))
    tr = pca_traversal(x, n_points=4)
    assert abs(tr.component @ u) > 0.999 and tr.explained_variance > 0.99
    assert tr.component[np.argmax(np.abs(tr.component))] > 0
    proj = (x - x.mean(0)) @ tr.component
    np.testing.assert_allclose(tr.scores, np.linspace(*np.percentile(proj, [5, 95]), 4))
    np.testing.assert_allclose(tr.latents, x.mean(0) + tr.scores[:, None] * tr.component)
    # spans the 5-95 % range of the projections on the true direction
    along = (x - x.mean(0)) @ (u * np.sign(tr.component @ u))
    np.testing.assert_allclose(tr.scores[[0, -1]], np.percentile(along, [5, 95]), atol=0.05)
    # the sign is fixed by the data, not by the SVD
    flipped = pca_traversal(-x)
    assert flipped.component[np.argmax(np.abs(flipped.component))] > 0
    np.testing.assert_allclose(flipped.latents, -tr.latents[::-1], atol=1e-9)
    with pytest.raises(InvalidValueError, match="percentiles"):
        pca_traversal(x, low=95, high=5)


def test_representatives_are_unique_members_nearest_to_centres(blobs):
    _, _, a = blobs
    members = np.flatnonzero(a.labels == 0)
    emb = a.embedding[members]
    idx = representatives(emb, k=16, seed=0)
    assert idx.shape == (16,) and np.unique(idx).size == 16 and idx.min() >= 0 and idx.max() < members.size
    centres = KMeans(n_clusters=16, n_init=10, random_state=0).fit(emb).cluster_centers_
    nearest = np.linalg.norm(centres[:, None] - emb[None], axis=-1).argmin(1)
    np.testing.assert_array_equal(idx, nearest)
    np.testing.assert_array_equal(members[idx], a.representatives[0])
    # fewer points than k: every point once
    few = representatives(emb[:5], k=16)
    assert sorted(few.tolist()) == [0, 1, 2, 3, 4]
    # duplicated points (3 distinct): still unique indices
    with pytest.warns(ConvergenceWarning):
        dup = representatives(np.repeat(emb[:3], 4, axis=0), k=6)
    assert np.unique(dup).size == 6


def test_clustering_scores_treat_noise_as_a_label():
    truth = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    s = clustering_scores(np.array([5, 5, 5, 7, 7, 7, 9, 9]), truth)
    assert s["nmi"] == pytest.approx(1) and s["ari"] == pytest.approx(1) and s["n_clusters"] == 3
    s = clustering_scores(np.array([0, 0, -1, 1, 1, 1, -1, -1]), truth)
    assert s["noise_fraction"] == pytest.approx(3 / 8) and s["n_clusters"] == 2
    assert s["nmi_clustered"] == pytest.approx(1) and s["nmi"] < 1
    assert np.isnan(clustering_scores(np.full(8, -1), truth)["nmi_clustered"])
    with pytest.raises(InvalidValueError, match="labels"):
        clustering_scores(np.zeros(3), truth)


def _particles(tmp_path, n=12, box=8):
    stack = tmp_path / "in" / "particles.mrcs"
    stack.parent.mkdir()
    write_stack(stack, torch.randn(n, box, box), pixel_size=2.0)
    return ParticleMetadata(
        n=n, euler=torch.rand(n, 3, dtype=torch.float64) * 90, shifts_A=torch.zeros(n, 2, dtype=torch.float64),
        pixel_size=torch.full((n,), 2.0, dtype=torch.float64), box=box, class_number=torch.ones(n, dtype=torch.int64),
        image_names=[(str(stack), i) for i in range(n)], source=str(stack),
    )


@pytest.mark.parametrize("star_format", ["relion31", "relion30"])
def test_cluster_subsets_round_trip(tmp_path, star_format):
    meta = _particles(tmp_path)
    labels = np.array([1, 0, 0, -1, 2, 0, 1, -1, 0, 2, 1, 0])
    out = tmp_path / "out"
    written = write_cluster_subsets(out, meta, labels, star_format=star_format)
    assert list(written) == ["all", "cluster_001", "cluster_002", "cluster_003"]
    everything = read_metadata(written["all"])
    np.testing.assert_array_equal(everything.class_number.numpy(), np.where(labels == -1, 4, labels + 1))
    assert [p for p, _ in everything.resolved_images()] == [p for p, _ in meta.resolved_images()]
    for c in range(3):
        sub = read_metadata(written[f"cluster_{c + 1:03d}"])
        members = np.flatnonzero(labels == c)
        assert sub.n == members.size and (sub.class_number == c + 1).all()
        assert [i for _, i in sub.image_names] == members.tolist()
        torch.testing.assert_close(sub.euler, meta.euler[members], atol=1e-5, rtol=0)
    assert sorted(p.name for p in out.iterdir()) == ["cluster_001.star", "cluster_002.star", "cluster_003.star", "clusters.star"]


def test_cluster_subsets_reject_bad_labels(tmp_path):
    meta = _particles(tmp_path, n=4)
    with pytest.raises(InvalidValueError, match="none empty"):
        class_numbers(np.array([0, 2, 2, -1]))
    with pytest.raises(InvalidValueError, match="noise"):
        class_numbers(np.array([0, -2, 0, 0]))
    with pytest.raises(InvalidValueError, match="4 particles"):
        write_cluster_subsets(tmp_path / "out", meta, np.array([0, 0, 1]))
    assert not (tmp_path / "out").exists()


def test_plot_embedding(tmp_path, blobs):
    _, truth, a = blobs
    for name, lab in (("clusters", a.labels), ("truth", truth)):
        path = plot_embedding(tmp_path / f"{name}.png", a.embedding, lab, title=name)
        assert path.stat().st_size > 1000
    with pytest.raises(InvalidValueError, match="n labels"):
        plot_embedding(tmp_path / "bad.png", a.embedding, truth[:5])
