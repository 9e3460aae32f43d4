"""CryoGAN engine: gradient flow from the critic to the map, the gradient penalty as defined, exact resume from a
checkpoint, the simulator's SNR, and the commands end to end on a tiny dataset."""

from __future__ import annotations

import json

import pytest
import torch
from test_likelihood_scoring import blob_map

from cryoscope.cli.main import main
from cryoscope.gan.critic import Critic, critic_channels
from cryoscope.gan.data import RealImages
from cryoscope.gan.simulator import NoiseModel, ShiftModel, Simulator
from cryoscope.gan.train import GANSettings, GANTrainer
from cryoscope.gan.volume import ConformationGenerator, DensityMap
from cryoscope.nn.wgan import generator_loss, gradient_penalty
from cryoscope.io.checkpoint import load_checkpoint, save_checkpoint
from cryoscope.io.mrc import write_map
from cryoscope.physics.ctf import CTFParams
from cryoscope.physics.noise import masked_variance, particle_mask

BOX, VOXEL = 16, 5.0


def _simulator(seed: int = 0, shifts: str = "none") -> Simulator:
    torch.manual_seed(seed)
    density = blob_map(BOX, 5, 6, torch.float32)
    ctf = CTFParams.create(torch.linspace(10000, 25000, 20))
    return Simulator(DensityMap(density, float(density.max())), VOXEL, ctf, NoiseModel(0.5), ShiftModel(shifts, 1.0))


def test_critic_follows_the_slides_table_and_scales_with_the_box():
    assert critic_channels(32) == [96, 192, 384, 768]  # 32 -> 16 -> 8 -> 4 -> 2, as the table
    assert critic_channels(64) == [96, 192, 384, 768, 768]
    c = Critic(32)
    assert c(torch.randn(3, 32, 32)).shape == (3,)
    assert c.head[1].in_features == 768 * 4 and c.head[1].out_features == 50


def test_the_critics_gradient_reaches_the_map_and_agrees_with_finite_differences():
    sim = _simulator(shifts="gaussian")
    torch.manual_seed(1)
    critic = Critic(BOX, base=8)

    def loss() -> torch.Tensor:
        return generator_loss(critic, sim(24, torch.Generator().manual_seed(5)))

    loss().backward()
    grad = sim.volume.raw.grad
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
    assert float(grad[sim.volume.support == 0].abs().max()) == 0  # nothing outside the support
    assert sim.noise.log_sigma.grad is not None and sim.shifts.log_spread.grad is not None
    v = torch.randn_like(grad) * (sim.volume.support > 0)
    eps = 1e-2
    with torch.no_grad():
        raw = sim.volume.raw.clone()
        sim.volume.raw.copy_(raw + eps * v)
        up = float(loss())
        sim.volume.raw.copy_(raw - eps * v)
        down = float(loss())
        sim.volume.raw.copy_(raw)
    fd, analytic = (up - down) / (2 * eps), float((grad * v).sum())
    assert abs(fd - analytic) < 0.05 * abs(analytic)


def test_gradient_penalty_is_the_squared_deviation_of_the_input_gradient_norm_from_one():
    w = torch.randn(BOX, BOX)
    linear = lambda x: (x * w).sum((-1, -2)) + 3.0  # noqa: E731 - gradient w everywhere
    points = torch.randn(7, BOX, BOX)
    assert float(gradient_penalty(linear, points)) == pytest.approx(float((w.norm() - 1) ** 2), rel=1e-5)
    critic = Critic(BOX, base=4)
    norms = []
    for x in points:  # one image at a time, by plain autograd
        x = x[None].requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x).sum(), x)
        norms.append(g.norm())
    expected = ((torch.stack(norms) - 1) ** 2).mean()
    gp = gradient_penalty(critic, points)
    assert float(gp) == pytest.approx(float(expected), rel=1e-4)
    gp.backward()  # the penalty trains the critic: second-order gradients reach its weights
    assert float(critic.features[0].weight.grad.abs().sum()) > 0


def test_simulated_images_have_the_snr_asked_for():
    sim = _simulator()
    for snr in (0.1, 1.0):
        sim.set_snr(snr, radius=6.0, n=512, generator=torch.Generator().manual_seed(2))
        g = torch.Generator().manual_seed(9)
        clean, _ = sim.clean(512, g)
        noisy = sim.noise(clean, g)
        mask = particle_mask(BOX, 6.0)
        measured = float(masked_variance(clean, mask).mean() / (noisy - clean).var())
        assert measured == pytest.approx(snr, rel=0.05)


def _trainer(images: torch.Tensor) -> GANTrainer:
    settings = GANSettings(stages=[(8, 2), (16, 2)], batch_size=4, critic_steps=2, critic_base=4, seed=3)
    return GANTrainer(_simulator(), RealImages(images, torch.arange(images.shape[0])), settings)


def test_a_run_resumed_from_its_checkpoint_ends_exactly_as_an_uninterrupted_one(tmp_path):
    images = torch.randn(40, BOX, BOX)
    straight = _trainer(images)
    for _ in range(4):
        straight.step()
    first = _trainer(images)
    for _ in range(3):  # stop inside the second stage (its critic and optimiser are in the checkpoint)
        first.step()
    save_checkpoint(tmp_path / "c.pt", first.state_dict(), {})
    resumed = _trainer(images)
    resumed.load_state_dict(load_checkpoint(tmp_path / "c.pt"))
    resumed.step()
    assert torch.equal(resumed.sim.volume.raw, straight.sim.volume.raw)
    assert torch.equal(resumed.averaged_volume()(), straight.averaged_volume()())
    keys = [k for k in straight.history[-1] if k != "seconds"]
    assert [resumed.history[-1][k] for k in keys] == [straight.history[-1][k] for k in keys]


def test_conformation_generator_maps_latents_to_non_negative_maps_in_the_support():
    torch.manual_seed(0)
    g = ConformationGenerator(blob_map(BOX, 5, 6, torch.float32), 1.0, n_basis=3)
    with torch.no_grad():
        g.basis.normal_()
    maps = g(torch.tensor([0.0, 0.5, 1.0]))
    assert maps.shape == (3, BOX, BOX, BOX) and float(maps.min()) >= 0
    assert float(maps[:, g.support == 0].abs().max()) == 0
    assert float((maps[0] - maps[2]).abs().max()) > 0  # the latent changes the map


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("gan")
    write_map(d / "a.mrc", blob_map(BOX, 5, 6, torch.float32), VOXEL)
    write_map(d / "b.mrc", blob_map(BOX, 5, 9, torch.float32), VOXEL)
    assert main(["simulate", "--map", str(d / "a.mrc"), "-n", "60", "--snr", "1", "--defocus-min", "10000",
                 "--defocus-max", "20000", "--seed", "1", "-o", str(d / "sim")]) == 0
    assert main(["simulate", "--map", str(d / "a.mrc"), "--map", str(d / "b.mrc"), "-n", "60", "--snr", "1",
                 "--seed", "2", "-o", str(d / "sim2")]) == 0
    return d


def test_cryogan_command_writes_half_maps_metrics_and_resumes(dataset, tmp_path):
    out = tmp_path / "gan"
    args = ["cryogan", str(dataset / "sim" / "particles.star"), "-o", str(out), "--stages", "8:2,16:2", "--batch-size", "4",
            "--critic-steps", "1", "--critic-base", "4", "--reference", str(dataset / "sim" / "truth_1.mrc"),
            "--checkpoint-every", "2", "--seed", "1", "--no-progress"]
    assert main(args) == 0
    for name in ("map.mrc", "half_map1.mrc", "half_map2.mrc", "fsc.png", "training.png", "params.json", "half1/log.csv"):
        assert (out / name).is_file()
    m = json.loads((out / "metrics.json").read_text())
    assert m["iterations"] == 4 and 0 < m["truth_fsc_0.5_cycles_per_pixel"] <= 0.5 and "halfmap_fsc_0.143_A" in m
    assert main([*args, "--resume"]) == 0  # finished run: nothing left to train, outputs rewritten
    assert main([*args, "--resume", "--critic-steps", "2"]) == 2  # other options: refused


def test_cryogan_time_limit_stops_each_half_early_writes_outputs_and_resume_finishes(dataset, tmp_path):
    out = tmp_path / "gan"
    args = ["cryogan", str(dataset / "sim" / "particles.star"), "-o", str(out), "--stages", "8:2,16:1000", "--batch-size", "4",
            "--critic-steps", "1", "--critic-base", "4", "--checkpoint-every", "1000", "--seed", "1", "--no-progress"]
    assert main([*args, "--time-limit", "0.001"]) == 0  # one iteration per half, then checkpoints and outputs
    m = json.loads((out / "metrics.json").read_text())
    assert m["stopped_by_time_limit"] and m["iterations_per_set"] == [1, 1] and (out / "half_map2.mrc").is_file()
    assert main([*args[:5], "8:2,16:1", *args[6:], "--resume"]) == 2  # a different schedule is refused
    assert main([*args, "--resume", "--time-limit", "0.001"]) == 0
    assert json.loads((out / "metrics.json").read_text())["iterations_per_set"] == [2, 2]


def test_multicryogan_command_reports_the_recovered_state_fractions(dataset, tmp_path):
    out = tmp_path / "multi"
    sim = dataset / "sim2"
    args = ["multicryogan", str(sim / "particles.star"), "-o", str(out), "--stages", "16:2", "--batch-size", "4",
            "--critic-steps", "1", "--critic-base", "4", "--latent", "categorical:2", "--maps-per-batch", "2", "--no-halves",
            "--reference", f"{sim / 'truth_1.mrc'},{sim / 'truth_2.mrc'}", "--truth-star", str(sim / "ground_truth.star"),
            "--no-progress"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (out / "latent_000.mrc").is_file() and (out / "latent_001.mrc").is_file()
    assert sum(m["state_fractions_recovered"]) == pytest.approx(1.0) and len(m["state_fractions_true"]) == 2


def test_nan_images_stop_before_training(dataset, tmp_path):
    import mrcfile
    import shutil

    sim = tmp_path / "sim"
    shutil.copytree(dataset / "sim", sim)
    with mrcfile.open(sim / "particles.mrcs", "r+") as f:
        f.data[5, 3, 3] = float("nan")
    assert main(["cryogan", str(sim / "particles.star"), "-o", str(tmp_path / "o"), "--no-progress"]) == 2
    assert not (tmp_path / "o" / "half1" / "checkpoint.pt").exists()


def _data_parallel_worker(ctx, images: torch.Tensor) -> dict:
    from cryoscope.distributed import all_reduce_sum_

    settings = GANSettings(stages=[(16, 2)], batch_size=4, critic_steps=2, critic_base=4, seed=3)
    trainer = GANTrainer(_simulator(), RealImages(images, torch.arange(images.shape[0])), settings, ctx)
    for _ in range(2):
        trainer.step()
    raw = trainer.sim.volume.raw.detach().clone()
    total = raw.clone()
    all_reduce_sum_([total], ctx)
    return {"raw": raw, "total": total}


def test_two_process_training_keeps_the_ranks_in_step_on_different_minibatches():
    from cryoscope.distributed import run_spawned

    images = torch.randn(40, BOX, BOX)
    out = run_spawned(_data_parallel_worker, 2, images)
    assert torch.allclose(out["total"], 2 * out["raw"], rtol=1e-6, atol=0)  # every rank holds the same map
    alone = GANTrainer(_simulator(), RealImages(images, torch.arange(40)),
                       GANSettings(stages=[(16, 2)], batch_size=4, critic_steps=2, critic_base=4, seed=3))
    for _ in range(2):
        alone.step()
    assert not torch.allclose(alone.sim.volume.raw, out["raw"])  # rank 1's minibatches entered the averaged steps
