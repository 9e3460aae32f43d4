"""`cryoscope vaegan analyze` makes every tensor on an explicit device: the model's device for encoding and decoding,
the CPU for the latents, clustering and what is written out (what `--device cuda` needs).

Checked without a GPU (`meta_device`). The networks are built on the default (CPU)
device by design (as every torch module is) and then moved to the run's device, and the metadata readers (STAR
files) work on the CPU; they run with the CPU as the default device here, as they do in a real run. UMAP (numpy
only) is replaced by a 2-D PCA, since its numba kernels take tens of seconds to compile (it runs in
test_vaegan_cluster and in the end-to-end test of test_vaegan), and the maps are matched to the truth maps with a
coarse rotation search."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from meta_device import on_cpu
from test_likelihood_scoring import blob_map

from cryoscope.cli.main import main
from cryoscope.io.mrc import write_map
from cryoscope.vaegan.model import VAEGAN, VAEGANConfig
from cryoscope.vaegan.preprocess import ImageCache
from cryoscope.workflows.vaegan import decode_images, encode

BOX = 16


def _pca_2d(latents: np.ndarray, n_neighbors: int = 30, min_dist: float = 0.0, seed: int = 0) -> np.ndarray:
    """Stand-in for `embed_umap`: the latents' first two principal-component scores [n, 2]."""
    x = np.asarray(latents, dtype=np.float64)
    x = x - x.mean(0)
    return x @ np.linalg.svd(x, full_matrices=False)[2][:2].T


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Particles of two blob maps (32 px, CTF) and a VAE-GAN (3-D model) trained on them for two steps (CPU)."""
    d = tmp_path_factory.mktemp("vaegan")
    for name, seed, n in (("a", 6, 8), ("b", 4, 3)):
        write_map(d / f"{name}.mrc", blob_map(32, seed, n, torch.float32), 4.0)
    assert main(["simulate", "--map", str(d / "a.mrc"), "--map", str(d / "b.mrc"), "-n", "40", "--snr", "1",
                 "--defocus-min", "10000", "--defocus-max", "20000", "--seed", "1", "-o", str(d / "sim"),
                 "--no-progress"]) == 0
    assert main(["vaegan", "train", str(d / "sim" / "particles.star"), "-o", str(d / "t"), "--box", str(BOX), "--steps",
                 "2", "--batch-size", "4", "--latent-dim", "3", "--noise-dim", "8", "--network-base", "4",
                 "--network-blocks", "2", "--field-hidden", "16", "--field-layers", "2", "--device", "cpu",
                 "--no-progress"]) == 0
    return d


def test_analyze_stays_on_the_model_device(one_thread, trained, meta_default, monkeypatch):
    import cryoscope.vaegan.cluster as cluster
    import cryoscope.workflows.vaegan as wf

    import cryoscope.io.star
    import cryoscope.validation.align as align
    import cryoscope.workflows.likelihood

    cpu_helpers = ((wf, "VAEGAN"), (cryoscope.workflows.likelihood, "open_particles"), (cryoscope.io.star, "read_star"))
    for module, name in cpu_helpers:
        monkeypatch.setattr(module, name, on_cpu(getattr(module, name)))
    monkeypatch.setattr(cluster, "embed_umap", _pca_2d)
    monkeypatch.setattr(align, "align_maps", functools.partial(align.align_maps, n_rotations=20, n_candidates=1))
    d = trained
    out = d / "an"
    truth = d / "sim" / "ground_truth.star"
    assert main(["vaegan", "analyze", str(d / "t"), "-o", str(out), "--truth-star", str(truth),
                 "--reference", f"{d / 'a.mrc'},{d / 'b.mrc'}", "--noise-sigma-truth", "1.0",
                 "--min-cluster-size", "5", "--min-samples", "3", "--n-traversal", "2", "--n-representatives", "2",
                 "--device", "cpu", "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_particles"] == 40 and m["n_clusters"] >= 1 and np.isfinite(m["noise_sigma_input_units"])
    assert np.isfinite(np.load(out / "latents.npy")).all() and (out / "cluster_001.mrc").is_file()
    assert (out / "cluster_001_traversal_2.mrc").is_file() and (out / "report.html").is_file()


@pytest.mark.parametrize("noise", ["signal", "none"])
def test_2d_model_encodes_and_decodes_on_its_device(one_thread, trained, noise):
    torch.manual_seed(0)
    model = VAEGAN(VAEGANConfig(box=BOX, model="2d", latent_dim=3, noise_dim=8, noise=noise, network_base=4,
                                network_blocks=2)).eval()
    cache = ImageCache(trained / "t" / f"images_{BOX}.npy")
    torch.set_default_device("meta")
    try:
        latents = encode(model, cache, batch_size=16, progress=False)
        images = decode_images(model, latents[:3])
        sigma = model.noise_sigma()
    finally:
        torch.set_default_device(None)
    assert latents.shape == (40, 3) and np.isfinite(latents).all()
    assert images.device.type == "cpu" and images.shape == (3, BOX, BOX) and bool(torch.isfinite(images).all())
    assert np.isfinite(sigma) and (sigma > 0) == (noise != "none")
