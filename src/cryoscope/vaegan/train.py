"""VAE-GAN training (the thesis's algorithm 6, with its printed losses put right):

    critic:    L_D = E D(x_f) - E D(x) + λ E (||∇D(x̂)|| - 1)²                     (WGAN-GP, λ = 10)
    encoder:   L_E = w_KL KL(q(z|x) || N(0, 1)) + MAE(D_l(x), D_l(x_rec))        (perceptual loss on the critic's
                                                                                 last feature map)
    generator: L_G = -E D(x_f) - E D(x_rec) + w_div / (ρ + 1e-5) + w_perc MAE(D_l(x), D_l(x_rec)),
               ρ = mean|c_rec - c_f| / mean|z_rec - z_f|   (mode seeking, Mao et al. 2019)

x: real images; x_f: images of prior latents z_f ~ N(0, 1); x_rec: images of the encoder's latents z_rec (μ + σ ε) of
x, both with the CTFs of the real batch's particles and the same uniform-camera rotations (so that they differ by the
latent alone; the critic's own fakes take a random particle's CTF each); c: the clean (noise-free)
images (the diversity term measures the signal, not the noise). The thesis writes the diversity term as -w_div ρ, which
is unbounded below (a generator lowers it without limit by inflating image differences); 1 / ρ is the bounded form of
the mode-seeking GAN that it cites. Three Adam optimisers (critic,
encoder, generators = signal + noise), the learning rate decayed by `lr_decay` every `decay_every` steps, and an
exponential moving average of the generators, which analysis uses. Every draw comes from one CPU generator saved in
the checkpoint; under torch.distributed the gradients are averaged over ranks (`distributed.average_gradients_`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import torch

from cryoscope.distributed import DistContext, average_gradients_
from cryoscope.errors import InvalidValueError
from cryoscope.io.checkpoint import generator_state, load_optimiser_state, optimiser_state, restore_generator
from cryoscope.nn.wgan import critic_loss
from cryoscope.vaegan.model import VAEGAN
from cryoscope.vaegan.networks import kl_divergence, reparameterise


@dataclass
class VAEGANSettings:
    """Optimisation (thesis defaults in brackets): steps, batch [16], learning rate [1e-5] decayed by lr_decay [0.96]
    every decay_every [10,000] steps, Adam betas [0.9, 0.999], generator EMA [0.96], gradient-penalty weight [10],
    diversity weight [0.02], the generator's perceptual weight [0.2], the KL weight [1]."""

    steps: int = 250_000
    batch_size: int = 16
    lr: float = 1e-5
    lr_decay: float = 0.96
    decay_every: int = 10_000
    beta1: float = 0.9
    beta2: float = 0.999
    ema_decay: float = 0.96
    gp_weight: float = 10.0
    diversity_weight: float = 0.02
    perceptual_weight: float = 0.2
    kl_weight: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.decay_every < 1:
            raise InvalidValueError("need steps >= 1, batch_size >= 2 and decay_every >= 1")
        if not self.lr > 0 or not 0 < self.lr_decay <= 1 or not 0 <= self.ema_decay < 1:
            raise InvalidValueError("need lr > 0, lr_decay in (0, 1] and ema_decay in [0, 1)")


class TrainingImages:
    """What training draws from: images (an indexable of float32 tensors [m, N, N], e.g. `vaegan.preprocess.ImageCache`)
    and each particle's CTF on the images' grid, computed on demand by `ctf(positions)` ([m, N, N]) or None."""

    def __init__(self, images, ctf=None, device: torch.device | str = "cpu"):
        self.images, self.ctf_fn, self.device = images, ctf, torch.device(device)
        self.n = len(images)

    def ctf(self, positions: torch.Tensor) -> torch.Tensor | None:
        return None if self.ctf_fn is None else self.ctf_fn(positions).to(self.device, torch.float32)

    def batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        images = torch.as_tensor(self.images[positions.numpy()]).to(self.device, torch.float32)
        return images, self.ctf(positions)


def _mae(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean()


class VAEGANTrainer:
    def __init__(self, model: VAEGAN, data: TrainingImages, settings: VAEGANSettings, ctx: DistContext | None = None):
        settings.validate()
        self.model, self.data, self.settings, self.ctx = model.to(data.device), data, settings, ctx
        rank = 0 if ctx is None else ctx.rank
        self.generator = torch.Generator().manual_seed(settings.seed * 1000 + rank)
        betas = (settings.beta1, settings.beta2)
        self.optimisers = {name: torch.optim.Adam(getattr(model, name).parameters(), lr=settings.lr, betas=betas)
                           for name in ("critic", "encoder", "generators")}
        self.ema = copy.deepcopy(model.generators).requires_grad_(False)
        self.step_count = 0
        self.history: list[dict] = []

    def learning_rate(self, step: int | None = None) -> float:
        s = self.settings
        return s.lr * s.lr_decay ** ((self.step_count if step is None else step) // s.decay_every)

    def _update(self, name: str, loss: torch.Tensor, retain: bool = False) -> None:
        opt, params = self.optimisers[name], list(getattr(self.model, name).parameters())
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=params, retain_graph=retain)
        average_gradients_(params, self.ctx)
        for group in opt.param_groups:
            group["lr"] = self.learning_rate()
        opt.step()

    def _fake(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(noisy, clean) prior images with a random particle's CTF each, and their draws."""
        g, m = self.generator, self.model
        draws = m.draw(n, g, device)
        ctf = self.data.ctf(torch.randint(self.data.n, (n,), generator=g))
        clean = m.clean(draws["z"], ctf, draws.get("rotations"))
        return m.add_noise(clean, draws["z_noise"], g), clean, draws

    def step(self) -> dict:
        """One critic update, then one encoder and one generator update; returns the step's log entry."""
        started = time.perf_counter()
        s, g, m, device = self.settings, self.generator, self.model, self.data.device
        real, ctf_real = self.data.batch(torch.randint(self.data.n, (s.batch_size,), generator=g))
        with torch.no_grad():
            fake, _, _ = self._fake(s.batch_size, device)
        loss_d, info = critic_loss(m.critic, real, fake, s.gp_weight, g)
        self._update("critic", loss_d)

        mean, log_var = m.encoder(real)
        z_rec = reparameterise(mean, log_var, g)
        prior = m.draw(s.batch_size, g, device)  # x_f and x_rec share camera and CTFs: they differ by latent alone
        clean_fake = m.clean(prior["z"], ctf_real, prior.get("rotations"))
        clean_rec = m.clean(z_rec, ctf_real, prior.get("rotations"))
        fake = m.add_noise(clean_fake, prior["z_noise"], g)
        rec = m.add_noise(clean_rec, torch.randn(prior["z_noise"].shape, generator=g).to(device), g)
        with torch.no_grad():
            _, features_real = m.critic.features(real)
        score_rec, features_rec = m.critic.features(rec)
        perceptual = _mae(features_real, features_rec)
        kl = kl_divergence(mean, log_var)
        loss_e = s.kl_weight * kl + perceptual
        diversity = (clean_rec - clean_fake).abs().mean() / (z_rec - prior["z"]).abs().mean()
        adversarial = -m.critic(fake).mean() - score_rec.mean()
        loss_g = adversarial + s.diversity_weight / (diversity + 1e-5) + s.perceptual_weight * perceptual
        self._update("encoder", loss_e, retain=True)
        self._update("generators", loss_g)
        with torch.no_grad():
            for avg, p in zip(self.ema.parameters(), m.generators.parameters()):
                avg.lerp_(p, 1 - s.ema_decay)
            for avg, b in zip(self.ema.buffers(), m.generators.buffers()):
                avg.copy_(b)
        self.step_count += 1
        entry = {"iteration": self.step_count, "critic_loss": float(loss_d.detach()), **info,
                 "encoder_loss": float(loss_e.detach()), "kl": float(kl.detach()), "perceptual": float(perceptual.detach()),
                 "generator_loss": float(loss_g.detach()), "diversity": float(diversity.detach()),
                 "noise_sigma": m.noise_sigma(64, torch.Generator().manual_seed(0)), "lr": self.learning_rate(),
                 "seconds": time.perf_counter() - started}
        self.history.append(entry)
        return entry

    def averaged_model(self) -> VAEGAN:
        """A copy of the model whose generators hold their moving average (encoder and critic as trained)."""
        out = copy.deepcopy(self.model)
        out.generators.load_state_dict(self.ema.state_dict())
        return out.eval()

    def state_dict(self) -> dict:
        return {"step": self.step_count, "generator": generator_state(self.generator), "model": self.model.state_dict(),
                "ema": self.ema.state_dict(), "history": self.history,
                "optimisers": {k: optimiser_state(o) for k, o in self.optimisers.items()},
                "settings": asdict(self.settings)}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        restore_generator(self.generator, state["generator"])
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.history = list(state["history"])
        for k, o in self.optimisers.items():
            load_optimiser_state(o, state["optimisers"][k])
