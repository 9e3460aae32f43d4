"""VAE-GAN engine: the camera's rotations, the 3-D generator's images as projections of its own map, the invariant
encoder, the noise models, training on tiny data (finite losses, exact resume, two ranks in step), and the commands
end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_likelihood_scoring import blob_map

from cryoscope.cli.main import main
from cryoscope.io.mrc import write_map
from cryoscope.physics.forward import ImageFormation
from cryoscope.representations.voxel import VoxelMap
from cryoscope.vaegan.generators import FourierField, gram_schmidt, uniform_camera
from cryoscope.vaegan.model import VAEGAN, VAEGANConfig
from cryoscope.vaegan.networks import Encoder
from cryoscope.vaegan.train import TrainingImages, VAEGANSettings, VAEGANTrainer

BOX = 16


def test_gram_schmidt_gives_proper_uniform_rotations():
    R = uniform_camera(20000, torch.Generator().manual_seed(1), dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(R.transpose(1, 2) @ R, eye.expand_as(R), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(20000, dtype=torch.float64), atol=1e-12)
    assert R.mean(0).abs().max() < 0.02  # Haar measure: E[R] = 0 (each entry has std 1/√3, so 5 σ is 0.02)
    assert ((R**2).mean(0) - 1 / 3).abs().max() < 0.02
    with pytest.raises(Exception):
        gram_schmidt(torch.randn(4, 5))


def test_generated_images_are_projections_of_the_rendered_map():
    torch.manual_seed(3)
    field = FourierField(32, latent_dim=4, omega0=3.0)
    z = torch.randn(4)
    R = uniform_camera(5, torch.Generator().manual_seed(2))
    with torch.no_grad():
        images = torch.fft.ifft2(torch.fft.ifftshift(field.slices(R, z.expand(5, 4)), dim=(-2, -1)))
        assert images.imag.abs().max() < 1e-5 * images.real.abs().max()  # Hermitian slices: real images
        mine = VAEGAN(VAEGANConfig(box=32, latent_dim=4, noise="none"))
        mine.signal = field
        generated = mine.clean(z.expand(5, 4), None, R)
        projected = ImageFormation()(VoxelMap(field.render(z), 1.0), R)
    assert float((generated - projected).norm() / generated.norm()) < 0.01
    wrong = ImageFormation()(VoxelMap(field.render(z), 1.0), R.transpose(1, 2))
    assert float((generated - wrong).norm() / generated.norm()) > 0.05  # the test tells the two conventions apart


@pytest.mark.parametrize("rotation", ["gabor", "polar"])
def test_invariant_encoder_is_exactly_shift_invariant_and_the_ablation_is_not(rotation):
    images = torch.randn(3, 32, 32, dtype=torch.float64)
    shifted = torch.roll(images, (3, -5), dims=(-2, -1))
    if rotation == "polar":  # the polar warp is about the centre: rotation-, not shift-invariant
        shifted = torch.roll(torch.rot90(images, 1, (-2, -1)), 1, -2)
    enc = Encoder(4, 4, 3, True, rotation).double()
    assert torch.allclose(enc(shifted)[0], enc(images)[0], rtol=0, atol=1e-10)
    ablation = Encoder(4, 4, 3, False, rotation).double()
    assert (ablation(shifted)[0] - ablation(images)[0]).abs().max() > 1e-3


def test_signal_dependent_noise_scales_with_the_signal():
    model = VAEGAN(VAEGANConfig(box=BOX, model="2d", noise="signal", initial_sigma=0.5))
    clean = torch.full((200, BOX, BOX), 4.0)
    clean[100:] = 1.0
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        noisy = model.add_noise(clean, torch.zeros(200, model.config.noise_dim), g)
    ratio = float((noisy[:100] - 4).std() / (noisy[100:] - 1).std())
    assert abs(ratio - 2.0) < 0.1  # σ √|S|: four times the signal, twice the noise


def _images(n: int = 24) -> TrainingImages:
    g = torch.Generator().manual_seed(5)
    return TrainingImages(torch.randn(n, BOX, BOX, generator=g) + blob_map(BOX, 3, 6, torch.float32)[BOX // 2])


def _trainer(model: str = "3d", invariant: bool = True, noise: str = "gaussian", ctx=None) -> VAEGANTrainer:
    torch.manual_seed(11)
    cfg = VAEGANConfig(box=BOX, model=model, latent_dim=3, noise_dim=8, invariant=invariant, noise=noise,
                       network_base=4, network_blocks=2, field_hidden=16, field_layers=2)
    return VAEGANTrainer(VAEGAN(cfg), _images(), VAEGANSettings(steps=10, batch_size=4, lr=1e-3, decay_every=2, seed=2), ctx)


@pytest.mark.parametrize("model,invariant,noise", [("3d", True, "gaussian"), ("2d", True, "signal"), ("3d", False, "none")])
def test_training_runs_with_finite_losses(model, invariant, noise):
    trainer = _trainer(model, invariant, noise)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    for _ in range(3):
        entry = trainer.step()
    assert all(np.isfinite(v) for v in entry.values())
    assert all(not torch.equal(a, b) for a, b in zip(before, trainer.model.encoder.parameters()))
    assert entry["lr"] == pytest.approx(1e-3 * 0.96)  # decayed once after 2 steps


def test_resume_continues_exactly():
    straight = _trainer()
    for _ in range(4):
        straight.step()
    first = _trainer()
    for _ in range(2):
        first.step()
    state = first.state_dict()
    resumed = _trainer()
    resumed.load_state_dict(state)
    for _ in range(2):
        resumed.step()
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert straight.history[-1]["critic_loss"] == resumed.history[-1]["critic_loss"]


def _data_parallel_worker(ctx) -> dict:
    from cryoscope.distributed import all_reduce_sum_

    trainer = _trainer(ctx=ctx)
    for _ in range(2):
        trainer.step()
    flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    total = flat.clone()
    all_reduce_sum_([total], ctx)
    return {"flat": flat, "total": total}


def test_two_process_training_keeps_the_ranks_in_step():
    from cryoscope.distributed import run_spawned

    out = run_spawned(_data_parallel_worker, 2)
    assert torch.allclose(out["total"], 2 * out["flat"], rtol=1e-5, atol=1e-7)  # every rank holds the same networks
    alone = _trainer()
    for _ in range(2):
        alone.step()
    assert not torch.allclose(torch.cat([p.detach().flatten() for p in alone.model.parameters()]), out["flat"])


def test_commands_end_to_end(tmp_path):
    d = tmp_path
    a, b = blob_map(32, 6, 8, torch.float32), blob_map(32, 4, 3, torch.float32)
    write_map(d / "a.mrc", a, 4.0)
    write_map(d / "b.mrc", b, 4.0)
    assert main(["simulate", "--map", str(d / "a.mrc"), "--map", str(d / "b.mrc"), "-n", "120", "--snr", "1",
                 "--defocus-min", "10000", "--defocus-max", "20000", "--seed", "1", "-o", str(d / "sim"), "--no-progress"]) == 0
    train = ["vaegan", "train", str(d / "sim" / "particles.star"), "-o", str(d / "t"), "--box", "16", "--steps", "4",
             "--batch-size", "4", "--network-base", "4", "--network-blocks", "2", "--field-hidden", "16",
             "--checkpoint-every", "2", "--no-progress"]
    assert main(train) == 0
    assert main([*train, "--resume"]) == 0  # finished: nothing left to train
    assert main([*train, "--resume", "--lr", "1e-3"]) == 2  # other options: refused
    assert main(["vaegan", "analyze", str(d / "t"), "-o", str(d / "an"), "--truth-star", str(d / "sim" / "ground_truth.star"),
                 "--reference", f"{d / 'a.mrc'},{d / 'b.mrc'}", "--min-cluster-size", "20", "--n-neighbors", "10",
                 "--n-representatives", "4", "--no-progress"]) == 0
    m = json.loads((d / "an" / "metrics.json").read_text())
    assert m["n_particles"] == 120 and 0 <= m["nmi"] <= 1 and (d / "an" / "report.html").is_file()
    assert (d / "an" / "clusters.star").is_file() and np.load(d / "an" / "latents.npy").shape == (120, 10)
    assert main(["vaegan", "analyze", str(d / "nothing"), "-o", str(d / "x")]) == 2
