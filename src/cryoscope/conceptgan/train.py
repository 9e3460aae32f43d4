"""ConceptGAN training: per iteration one batch from each observed sub-domain, one Adam step of the four transfers on
L (5.5), then one of the three discriminators on the same (detached) fakes. Adam at 2e-4 (β1 = 0.5, as CycleGAN),
constant for the first half of the iterations and decaying linearly towards zero over the second (§5.3.6). Batches
are drawn with replacement from one CPU generator saved in the checkpoint, so a resumed run continues exactly.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from cryoscope.conceptgan.domains import OBSERVED, Domain
from cryoscope.conceptgan.losses import LossConfig, PathImages, discriminator_losses, generator_losses, total_loss
from cryoscope.conceptgan.networks import ConceptGAN
from cryoscope.errors import InvalidValueError
from cryoscope.io.checkpoint import generator_state, load_optimiser_state, optimiser_state, restore_generator


@dataclass
class ConceptGANSettings:
    """Optimisation: iterations, images per sub-domain per iteration, Adam learning rate and betas, seed."""

    iterations: int = 20_000
    batch_size: int = 16
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    seed: int = 0

    def validate(self) -> None:
        if self.iterations < 1 or self.batch_size < 2:
            raise InvalidValueError("need iterations >= 1 and batch_size >= 2")
        if not self.lr > 0 or not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise InvalidValueError("need lr > 0 and Adam betas in [0, 1)")


def learning_rate(step: int, iterations: int, lr: float) -> float:
    """lr for the first half of `iterations`, then linear decay: lr (T - t) / (T - T // 2) at 0-based step t >= T // 2."""
    start = iterations // 2
    return lr if step < start else lr * (iterations - step) / (iterations - start)


class ConceptGANTrainer:
    """Trains `model` on normalised images {observed sub-domain: [n, N, N]} (kept where they are; batches are moved)."""

    def __init__(self, model: ConceptGAN, images: dict[Domain, torch.Tensor], settings: ConceptGANSettings,
                 losses: LossConfig, device: torch.device | str = "cpu"):
        settings.validate()
        losses.validate()
        if set(images) != set(OBSERVED):
            raise InvalidValueError(f"need images of the sub-domains {', '.join(OBSERVED)}, got {', '.join(sorted(images))}")
        self.device = torch.device(device)
        self.model, self.images, self.settings, self.losses = model.to(self.device), images, settings, losses
        self.generator = torch.Generator().manual_seed(settings.seed)
        betas = (settings.beta1, settings.beta2)
        self.optimisers = {"generators": torch.optim.Adam(model.generators.parameters(), lr=settings.lr, betas=betas),
                           "discriminators": torch.optim.Adam(model.discriminators.parameters(), lr=settings.lr, betas=betas)}
        self.step_count = 0
        self.history: list[dict] = []

    def _batch(self) -> dict[Domain, torch.Tensor]:
        b, g = self.settings.batch_size, self.generator
        return {d: self.images[d][torch.randint(len(self.images[d]), (b,), generator=g)].to(self.device) for d in OBSERVED}

    def _update(self, name: str, loss: torch.Tensor, lr: float) -> None:
        opt = self.optimisers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=list(getattr(self.model, name).parameters()))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()

    def step(self) -> dict:
        """One generator and one discriminator update; returns the iteration's log entry (losses unweighted)."""
        started = time.perf_counter()
        lr = learning_rate(self.step_count, self.settings.iterations, self.settings.lr)
        self.model.train()
        images = PathImages(self.model.generators, self._batch())
        losses = generator_losses(images, self.model.discriminators, self.losses)
        total = total_loss(losses, self.losses)
        self._update("generators", total, lr)
        d_losses = discriminator_losses(images, self.model.discriminators, self.losses, self.generator)
        if d_losses:
            self._update("discriminators", sum(d_losses.values()), lr)
        self.step_count += 1
        entry = {"iteration": self.step_count, "loss": float(total.detach()),
                 **{k: float(v.detach()) for k, v in losses.items()},
                 **{f"d{d}": float(v.detach()) for d, v in d_losses.items()},
                 "lr": lr, "seconds": time.perf_counter() - started}
        self.history.append(entry)
        return entry

    def state_dict(self) -> dict:
        return {"step": self.step_count, "generator": generator_state(self.generator), "model": self.model.state_dict(),
                "optimisers": {k: optimiser_state(o) for k, o in self.optimisers.items()}, "history": self.history,
                "settings": asdict(self.settings), "losses": asdict(self.losses)}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        restore_generator(self.generator, state["generator"])
        self.model.load_state_dict(state["model"])
        for k, o in self.optimisers.items():
            load_optimiser_state(o, state["optimisers"][k])
        self.history = list(state["history"])
