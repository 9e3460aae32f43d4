"""ConceptGAN: the concept square and its paths, every loss term against a hand computation with hand-set transfers,
which discriminator judges which composed image, the networks' layout, the learning-rate schedule, training on tiny
data (finite losses, exact resume through a checkpoint file), and the commands end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.functional import logsigmoid

from cryoscope.cli.main import main
from cryoscope.conceptgan.domains import DOMAINS, OBSERVED, apply_path, notation, routes
from cryoscope.conceptgan.generate import synthesise
from cryoscope.conceptgan.losses import (
    ADVERSARIAL,
    COMM,
    CYC2,
    CYC4,
    DISTANCE3,
    IDENTITY,
    LossConfig,
    PathImages,
    discriminator_losses,
    generator_losses,
    total_loss,
)
from cryoscope.conceptgan.networks import ConceptGAN, Discriminator, Generator
from cryoscope.conceptgan.train import ConceptGANSettings, ConceptGANTrainer, learning_rate
from cryoscope.errors import InvalidValueError
from cryoscope.io.checkpoint import CheckpointDir
from cryoscope.io.mrc import ParticleStack, write_stack
from cryoscope.io.star import read_star

BOX = 16


class Affine(nn.Module):
    """A hand-set transfer x -> scale x + shift."""

    def __init__(self, scale: float = 1.0, shift: float = 0.0):
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x + self.shift


class MeanLogit(nn.Module):
    """A hand-set discriminator: logit = k × the image mean; records the means of every image it is shown."""

    def __init__(self, k: float = 1.0):
        super().__init__()
        self.k, self.seen = k, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = x.flatten(1).mean(1)
        self.seen.append(means.detach())
        return self.k * means


def _real(b: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {d: torch.randn(b, 4, 4, generator=g, dtype=torch.float64) for d in OBSERVED}


def test_transfers_move_along_the_concept_square():
    assert apply_path("00", ("G1",)) == "10" and apply_path("00", ("G2",)) == "01"
    assert apply_path("00", ("G1", "G2")) == apply_path("00", ("G2", "G1")) == "11"
    assert apply_path("11", ("F1", "F2")) == "00"
    for bad in (("01", ("G2",)), ("10", ("G1",)), ("00", ("F1",)), ("00", ("X",))):
        with pytest.raises(InvalidValueError):
            apply_path(*bad)
    assert routes("00", "11") == [("G1", "G2"), ("G2", "G1")]
    assert routes("01", "11") == [("G1",)] and routes("10", "11") == [("G2",)] and routes("11", "00") == [("F1", "F2"), ("F2", "F1")]
    assert notation(("G1", "G2", "F1", "F2")) == "F2∘F1∘G2∘G1" and notation(()) == "I"
    for s in DOMAINS:
        for t in DOMAINS:
            assert all(apply_path(s, r) == t for r in routes(s, t))


def test_loss_tables_are_the_dissertations_paths():
    # adversarial (5.7, 5.9-5.11): one step into another observed sub-domain, judged by its discriminator
    assert [apply_path(s, p) for s, p, _ in ADVERSARIAL] == ["10", "01", "00", "00"]
    # distance-3 (§5.8.2): (G1, G2, F1) from Σ00 is judged in Σ01, (G2, G1, F2) in Σ10
    assert [apply_path(s, p) for s, p, _ in DISTANCE3] == ["01", "10"]
    # six distance-2 cycles: both ways between Σ00 and Σ10 and between Σ00 and Σ01, forward through Σ11 from Σ01, Σ10
    assert len(CYC2) == len(set(CYC2)) == 6 and all(len(p) == 2 and apply_path(s, p) == s for s, p in CYC2)
    first_steps = {("00", "10"), ("10", "00"), ("00", "01"), ("01", "00"), ("01", "11"), ("10", "11")}
    assert {(s, apply_path(s, p[:1])) for s, p in CYC2} == first_steps
    # distance-4 cycles (5.13-5.15): two per observed sub-domain, each visiting all four sub-domains
    assert sorted(s for s, _, _ in CYC4) == ["00", "00", "01", "01", "10", "10"]
    for s, p, _ in CYC4:
        visited = {apply_path(s, p[:k]) for k in range(4)}
        assert visited == set(DOMAINS) and apply_path(s, p) == s
    # commutativity (5.18-5.20): the same two transfers in both orders end in one sub-domain
    for s, a, b, _ in COMM:
        assert sorted(a) == sorted(b) and a != b and apply_path(s, a) == apply_path(s, b)
    assert [apply_path(s, a) for s, a, _, _ in COMM] == ["11", "10", "01"]
    # identity: each transfer on the observed sub-domains that already hold its target value
    for s, t in IDENTITY:
        with pytest.raises(InvalidValueError):
            apply_path(s, (t,))


def test_each_loss_term_matches_a_hand_computation():
    a, b, c, d = 1.0, 0.5, 2.0, 4.0
    gens = nn.ModuleDict({"G1": Affine(shift=a), "F1": Affine(shift=-b), "G2": Affine(scale=c), "F2": Affine(scale=1 / d)})
    discs = nn.ModuleDict({k: MeanLogit(k=0.5 + i) for i, k in enumerate(OBSERVED)})
    x = _real()
    x00, x01, x10 = x["00"], x["01"], x["10"]
    G1, F1, G2, F2 = (lambda t: t + a), (lambda t: t - b), (lambda t: c * t), (lambda t: t / d)
    mae = lambda u, v: float((u - v).abs().mean())  # noqa: E731
    D = {k: (lambda t, k=k: discs[k].k * t.flatten(1).mean(1)) for k in OBSERVED}
    fool = lambda k, t: float(-logsigmoid(D[k](t)).mean())  # noqa: E731  -E log D(fake)

    out = generator_losses(PathImages(gens, x), discs, LossConfig(distance3=True))
    assert float(out["adv"]) == pytest.approx(fool("10", G1(x00)) + fool("01", G2(x00)) + fool("00", F1(x10)) + fool("00", F2(x01)))
    assert float(out["adv3"]) == pytest.approx(fool("01", F1(G2(G1(x00)))) + fool("10", F2(G1(G2(x00)))))
    cyc2 = (mae(F1(G1(x00)), x00) + mae(G1(F1(x10)), x10) + mae(F2(G2(x00)), x00) + mae(G2(F2(x01)), x01)
            + mae(F1(G1(x01)), x01) + mae(F2(G2(x10)), x10))
    assert float(out["cyc2"]) == pytest.approx(cyc2)
    cyc4 = (mae(F2(F1(G2(G1(x00)))), x00) + mae(F1(F2(G1(G2(x00)))), x00)      # (5.13)
            + mae(F1(G2(G1(F2(x01)))), x01) + mae(G2(F1(F2(G1(x01)))), x01)    # (5.14)
            + mae(G1(F2(F1(G2(x10)))), x10) + mae(F2(G1(G2(F1(x10)))), x10))   # (5.15)
    assert float(out["cyc4"]) == pytest.approx(cyc4)
    comm = mae(G2(G1(x00)), G1(G2(x00))) + mae(F2(G1(x01)), G1(F2(x01))) + mae(G2(F1(x10)), F1(G2(x10)))  # (5.18-5.20)
    assert float(out["comm"]) == pytest.approx(comm)
    identity = mae(G1(x10), x10) + mae(F1(x00), x00) + mae(F1(x01), x01) + mae(G2(x01), x01) + mae(F2(x00), x00) + mae(F2(x10), x10)
    assert float(out["identity"]) == pytest.approx(identity)
    cfg = LossConfig(distance3=True)
    assert float(total_loss(out, cfg)) == pytest.approx(
        float(out["adv"]) + float(out["adv3"]) + 10 * (cyc2 + cyc4) + 10 * comm + 10 * identity)

    # the discriminators' side of (5.12): -E log D(real) - E log(1 - D(fake)) per term, D00 in two terms
    real = lambda k: float(-logsigmoid(D[k](x[k])).mean())  # noqa: E731
    fake = lambda k, t: float(-logsigmoid(-D[k](t)).mean())  # noqa: E731  -E log(1 - D(fake))
    dl = discriminator_losses(PathImages(gens, x), discs, LossConfig())
    assert float(dl["10"]) == pytest.approx(real("10") + fake("10", G1(x00)))
    assert float(dl["01"]) == pytest.approx(real("01") + fake("01", G2(x00)))
    assert float(dl["00"]) == pytest.approx(2 * real("00") + fake("00", F1(x10)) + fake("00", F2(x01)))
    dl3 = discriminator_losses(PathImages(gens, x), discs, LossConfig(distance3=True))
    assert float(dl3["01"]) == pytest.approx(2 * real("01") + fake("01", G2(x00)) + fake("01", F1(G2(G1(x00)))))

    # WGAN-GP: the generators' side is -E D(fake)
    adversarial_only = LossConfig(objective="wgan-gp", cyc2=False, cyc4=False, comm=False, identity=False)
    w = generator_losses(PathImages(gens, x), discs, adversarial_only)
    assert set(w) == {"adv"}
    assert float(w["adv"]) == pytest.approx(-float(D["10"](G1(x00)).mean() + D["01"](G2(x00)).mean()
                                                   + D["00"](F1(x10)).mean() + D["00"](F2(x01)).mean()))


def test_switched_off_terms_are_absent():
    gens = nn.ModuleDict({k: Affine() for k in ("G1", "F1", "G2", "F2")})
    discs = nn.ModuleDict({k: MeanLogit() for k in OBSERVED})
    out = generator_losses(PathImages(gens, _real()), discs, LossConfig(cyc4=False, comm=False))
    assert set(out) == {"adv", "cyc2", "identity"}
    assert set(LossConfig(cyc4=False, comm=False).weights()) == {"adv", "cyc2", "identity"}
    assert discriminator_losses(PathImages(gens, _real()), discs, LossConfig(adversarial=False)) == {}


def test_compositions_land_in_the_right_sub_domains():
    """Images carry their sub-domain as their value 10 X + Y; transfers change it exactly; every discriminator must
    see only images of its own sub-domain, and the composed transfers must reach Σ11 by both orders."""
    code = {d: 10.0 * int(d[0]) + int(d[1]) for d in DOMAINS}
    gens = nn.ModuleDict({"G1": Affine(shift=10), "F1": Affine(shift=-10), "G2": Affine(shift=1), "F2": Affine(shift=-1)})
    discs = nn.ModuleDict({k: MeanLogit() for k in OBSERVED})
    real = {d: torch.full((2, 4, 4), code[d], dtype=torch.float64) for d in OBSERVED}
    cfg = LossConfig(distance3=True)
    out = generator_losses(PathImages(gens, real), discs, cfg)
    discriminator_losses(PathImages(gens, real), discs, cfg)
    for d in OBSERVED:
        seen = torch.cat(discs[d].seen)
        assert seen.numel() > 0 and torch.all(seen == code[d]), d
    assert float(out["cyc2"]) == float(out["cyc4"]) == float(out["comm"]) == 0  # exact, commuting transfers
    assert float(out["identity"]) == pytest.approx(3 * 10 + 3 * 1)  # G1, F1 (twice) shift by 10; G2, F2 (twice) by 1
    for source in OBSERVED:
        images, paths, which = synthesise(gens, real[source], source, "11", "both")
        assert torch.all(images == code["11"]) and len(paths) == (2 if source == "00" else 1)
    _, _, which = synthesise(gens, torch.zeros(5, 4, 4), "00", "11", "both")
    assert which.tolist() == [0, 1, 0, 1, 0]
    assert synthesise(gens, torch.zeros(3, 4, 4), "00", "11", "y-first")[2].tolist() == [1, 1, 1]


def test_networks_are_sized_to_the_box():
    gen, disc = Generator(64, width=2), Discriminator(64, width=2)
    convs = [m for m in gen.modules() if type(m) is nn.Conv2d]
    assert sum(m.stride == (2, 2) for m in convs) == 2
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in gen.modules()) == 2
    assert sum(type(m).__name__ == "ResidualBlock" for m in gen.modules()) == 6
    dconvs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert len(dconvs) == 5 and all(m.kernel_size == (4, 4) for m in dconvs)  # DiscoGAN at 64²
    assert sum(isinstance(m, nn.LeakyReLU) for m in disc.modules()) == 4
    x = torch.randn(3, 64, 64)
    assert gen(x).shape == x.shape and disc(x).shape == (3,)
    assert len([m for m in Discriminator(16, width=2).modules() if isinstance(m, nn.Conv2d)]) == 3
    for bad in (12, 6):
        with pytest.raises(InvalidValueError):
            Discriminator(bad)


def test_learning_rate_is_constant_then_decays_linearly():
    rates = [learning_rate(t, 10, 2e-4) for t in range(10)]
    assert rates[:6] == [2e-4] * 6
    assert rates[6:] == pytest.approx([2e-4 * k / 5 for k in (4, 3, 2, 1)])


def _images(n: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {d: torch.randn(n, BOX, BOX, generator=g) + i for i, d in enumerate(OBSERVED)}


def _trainer(losses: LossConfig | None = None) -> ConceptGANTrainer:
    torch.manual_seed(3)
    norm = "none" if losses is not None and losses.objective == "wgan-gp" else "batch"
    model = ConceptGAN(BOX, width=2, discriminator_width=4, discriminator_norm=norm)
    return ConceptGANTrainer(model, _images(), ConceptGANSettings(iterations=4, batch_size=3, lr=1e-3, seed=2),
                             losses or LossConfig())


@pytest.mark.parametrize("losses", [LossConfig(distance3=True), LossConfig(objective="wgan-gp", cyc4=False, comm=False)])
def test_training_runs_with_finite_losses(one_thread, losses):
    trainer = _trainer(losses)
    before = {k: p.detach().clone() for k, p in trainer.model.named_parameters()}
    for _ in range(2):
        entry = trainer.step()
    assert all(np.isfinite(v) for v in entry.values())
    assert ("cyc4" in entry) == losses.cyc4 and ("adv3" in entry) == losses.distance3 and {"d00", "d01", "d10"} <= set(entry)
    # every weight moves (a critic's last bias cancels from E D(real) - E D(fake), so biases are not checked)
    assert all(not torch.equal(before[k], p) for k, p in trainer.model.named_parameters() if k.endswith("weight"))


def test_resume_from_a_checkpoint_continues_exactly(one_thread, tmp_path):
    straight = _trainer()
    for _ in range(4):
        straight.step()
    first = _trainer()
    for _ in range(2):
        first.step()
    ckpt = CheckpointDir(tmp_path, {"seed": 2})
    ckpt.save(first.step_count, first.state_dict())
    resumed = _trainer()
    step, state = CheckpointDir(tmp_path, {"seed": 2}).load()  # torch.load(weights_only=True)
    resumed.load_state_dict(state)
    assert step == resumed.step_count == 2
    for _ in range(2):
        resumed.step()
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [e["loss"] for e in straight.history] == [e["loss"] for e in resumed.history]
    assert resumed.history[-1]["lr"] == pytest.approx(1e-3 / 2)


def test_commands_end_to_end(one_thread, tmp_path):
    d = tmp_path
    for k, (name, images) in enumerate(_images(10).items()):
        write_stack(d / f"d{name}.mrcs", images * (k + 1), 3.0)
    train = ["conceptgan", "train", "--d00", str(d / "d00.mrcs"), "--d01", str(d / "d01.mrcs"), "--d10", str(d / "d10.mrcs"),
             "-o", str(d / "t"), "--box", "8", "--width", "2", "--discriminator-width", "2", "--iterations", "3",
             "--batch-size", "2", "--checkpoint-every", "2", "--montage-images", "2", "--device", "cpu", "--no-progress"]
    assert main(train) == 0
    m = json.loads((d / "t" / "metrics.json").read_text())
    assert m["iterations"] == 3 and m["box"] == 8 and m["pixel_size_A"] == pytest.approx(6.0) and np.isfinite(m["final_loss"])
    assert (d / "t" / "report.html").stat().st_size > 0 and len((d / "t" / "log.csv").read_text().splitlines()) == 4
    assert main([*train, "--resume"]) == 0  # finished: nothing left to train
    assert main([*train, "--resume", "--no-comm"]) == 2  # other options: refused
    assert main(["conceptgan", "generate", str(d / "t"), "-o", str(d / "g"), "-n", "7", "--seed", "1", "--device", "cpu"]) == 0
    meta = read_star(d / "g" / "generated.star")
    stack = meta.images()
    assert meta.n == len(stack) == 7 and stack.box == 8 and float(meta.pixel_size[0]) == pytest.approx(6.0)
    assert ParticleStack.open(d / "g" / "generated.mrcs").pixel_size == pytest.approx(6.0)
    assert torch.isfinite(stack[:]).all()
    g = json.loads((d / "g" / "metrics.json").read_text())
    assert g["routes"] == ["G2∘G1", "G1∘G2"] and g["route_counts"] == [4, 3]
    p = json.loads((d / "g" / "params.json").read_text())
    assert p["seed"] == 1 and p["source"] == "00"
    back = ["conceptgan", "generate", str(d / "t"), "-o", str(d / "g2"), "--source", "11", "--target", "00", "--device", "cpu"]
    assert main(back) == 2  # Σ11 has no training stack
    assert main([*back, "--input", str(d / "g" / "generated.star"), "--order", "x-first"]) == 0  # a STAR file as input
    assert json.loads((d / "g2" / "metrics.json").read_text())["route_counts"] == [7, 0]
    (d / "notes.txt").write_text("not images")
    assert main([*train[:3], str(d / "notes.txt"), *train[4:]]) == 2
    assert main(["conceptgan", "generate", str(d / "nothing"), "-o", str(d / "x")]) == 2
