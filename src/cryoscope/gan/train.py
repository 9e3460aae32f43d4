"""CryoGAN training: alternating critic and generator steps, frequency marching over image sizes, and an
exponential moving average (EMA) of the generator's parameters, which is the reported map.

Frequency marching: stage k trains on images Fourier-cropped to `box_k` pixels (low-passed at their Nyquist, and
cheaper), with a critic of its own, built for that size when the stage starts; the map is shared by all stages.
Every random draw comes from one generator (rank-dependent under torch.distributed), saved in the checkpoint, so a
resumed run continues exactly as an uninterrupted one. Under torch.distributed each rank draws its own minibatches
and the gradients are averaged over ranks before every optimiser step (data-parallel SGD, as DDP does; the gradient
penalty's double backward is why the averaging is explicit, `average_gradients_`, rather than DDP's hooks).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from cryoscope.distributed import DistContext, average_gradients_
from cryoscope.errors import InvalidValueError
from cryoscope.gan.critic import Critic
from cryoscope.gan.data import RealImages
from cryoscope.gan.simulator import Simulator
from cryoscope.nn.wgan import critic_loss, generator_loss
from cryoscope.io.checkpoint import generator_state, load_optimiser_state, optimiser_state, restore_generator
from cryoscope.physics.filters import fourier_resize

ADAM_BETAS = (0.5, 0.9)  # the usual WGAN-GP choice


@dataclass
class GANSettings:
    """stages: (image box, generator iterations) pairs, boxes non-decreasing powers of two <= the map's box.
    Learning rates: critic (Adam), map or conformation generator (in units of its amplitude), noise and shift spread."""

    stages: list[tuple[int, int]] = field(default_factory=lambda: [(32, 1000)])
    batch_size: int = 32
    critic_steps: int = 5
    gp_weight: float = 10.0
    critic_lr: float = 1e-4
    generator_lr: float = 1e-2
    nuisance_lr: float = 1e-2
    critic_base: int = 96
    ema_decay: float = 0.99
    seed: int = 0

    def validate(self, box: int) -> None:
        if not self.stages:
            raise InvalidValueError("training needs at least one stage (box, iterations)")
        boxes = [b for b, _ in self.stages]
        for b, it in self.stages:
            if b < 4 or b & (b - 1) or b > box or it < 1:
                raise InvalidValueError(f"bad stage ({b} px, {it} iterations): boxes are powers of two in [4, {box}], iterations >= 1")
        if boxes != sorted(boxes):
            raise InvalidValueError(f"stage boxes must not decrease (frequency marching), got {boxes}")
        if self.batch_size < 2 or self.critic_steps < 1 or self.gp_weight < 0 or not 0 <= self.ema_decay < 1:
            raise InvalidValueError("need batch_size >= 2, critic_steps >= 1, gp_weight >= 0 and ema_decay in [0, 1)")

    @property
    def iterations(self) -> int:
        return sum(it for _, it in self.stages)


class GANTrainer:
    """Trains `simulator` (its volume, noise level and shift spread) against `real` images with WGAN-GP."""

    def __init__(self, simulator: Simulator, real: RealImages, settings: GANSettings, ctx: DistContext | None = None):
        self.sim, self.real, self.settings, self.ctx = simulator, real, settings, ctx
        self.box = simulator.volume.support.shape[-1]
        settings.validate(self.box)
        rank = 0 if ctx is None else ctx.rank
        self.generator = torch.Generator().manual_seed(settings.seed * 1000 + rank)
        volume_params = list(simulator.volume.parameters())
        nuisance = [p for p in (simulator.noise.log_sigma, simulator.shifts.log_spread) if p.requires_grad]
        groups = [{"params": volume_params, "lr": settings.generator_lr}]
        if nuisance:
            groups.append({"params": nuisance, "lr": settings.nuisance_lr})
        self.generator_opt = torch.optim.Adam(groups, betas=ADAM_BETAS)
        self.ema = {k: v.detach().clone() for k, v in simulator.volume.named_parameters()}
        self.critic: Critic | None = None
        self.critic_opt: torch.optim.Optimizer | None = None
        self.iteration = 0
        self.history: list[dict] = []

    def stage(self, iteration: int | None = None) -> tuple[int, int]:
        """(stage index, image box) of an iteration (default: the next one)."""
        it, end = self.iteration if iteration is None else iteration, 0
        for k, (box, n) in enumerate(self.settings.stages):
            end += n
            if it < end:
                return k, box
        return len(self.settings.stages) - 1, self.settings.stages[-1][0]

    def _build_critic(self, k: int, box: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.settings.seed * 7919 + k)  # the same initial critic on every rank and on resume
            self.critic = Critic(box, self.settings.critic_base).to(self.real.device)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=self.settings.critic_lr, betas=ADAM_BETAS)

    def _crop(self, images: torch.Tensor, box: int) -> torch.Tensor:
        return images if box == images.shape[-1] else fourier_resize(images, box)

    def step(self) -> dict:
        """One generator iteration (after `critic_steps` critic steps); returns its log entry."""
        started = time.perf_counter()
        s, g = self.settings, self.generator
        k, box = self.stage()
        if self.critic is None or self.critic.box != box:
            self._build_critic(k, box)
        for _ in range(s.critic_steps):
            real = self._crop(self.real.sample(s.batch_size, g), box)
            with torch.no_grad():
                fake = self._crop(self.sim(s.batch_size, g), box)
            loss_d, info = critic_loss(self.critic, real, fake, s.gp_weight, g)
            self.critic_opt.zero_grad(set_to_none=True)
            loss_d.backward()
            average_gradients_(self.critic.parameters(), self.ctx)
            self.critic_opt.step()
        fake = self._crop(self.sim(s.batch_size, g), box)
        loss_g = generator_loss(self.critic, fake)
        self.generator_opt.zero_grad(set_to_none=True)
        loss_g.backward()
        average_gradients_(self.sim.parameters(), self.ctx)
        self.generator_opt.step()
        self.sim.volume.constrain_()
        with torch.no_grad():
            for name, p in self.sim.volume.named_parameters():
                self.ema[name].lerp_(p.detach(), 1 - s.ema_decay)
        self.iteration += 1
        entry = {"iteration": self.iteration, "box": box, "critic_loss": float(loss_d.detach()), "generator_loss": float(loss_g.detach()),
                 **info, "noise_sigma": float(self.sim.noise.sigma.detach()), "shift_spread": float(self.sim.shifts.log_spread.detach().exp()),
                 "seconds": time.perf_counter() - started}
        self.history.append(entry)
        return entry

    def averaged_volume(self) -> nn.Module:
        """A copy of the simulator's volume module holding the EMA of its parameters."""
        vol = copy.deepcopy(self.sim.volume)
        with torch.no_grad():
            for name, p in vol.named_parameters():
                p.copy_(self.ema[name])
        return vol

    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration, "generator": generator_state(self.generator), "simulator": self.sim.state_dict(),
            "generator_opt": optimiser_state(self.generator_opt), "ema": self.ema, "history": self.history,
            "critic": None if self.critic is None else self.critic.state_dict(),
            "critic_opt": None if self.critic_opt is None else optimiser_state(self.critic_opt),
            "settings": {k: (list(map(list, v)) if k == "stages" else v) for k, v in asdict(self.settings).items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        restore_generator(self.generator, state["generator"])
        self.sim.load_state_dict(state["simulator"])
        load_optimiser_state(self.generator_opt, state["generator_opt"])
        self.ema = {k: v.to(self.real.device) for k, v in state["ema"].items()}
        self.history = list(state["history"])
        if state["critic"] is not None:
            k, box = self.stage(max(self.iteration - 1, 0))
            self._build_critic(k, box)
            self.critic.load_state_dict(state["critic"])
            load_optimiser_state(self.critic_opt, state["critic_opt"])
