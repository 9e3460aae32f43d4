"""ConceptGAN losses (dissertation §5.3, §5.8.1–5.8.2), each term a path around the concept square.

    L = L_ADV + λ (L_CYC2 + L_CYC4) + μ L_COMM + ν L_ID                                              (5.5)

L_ADV (5.12) sums the four adversarial terms (5.7, 5.9–5.11), plus with `distance3` the two distance-3 terms of
§5.8.2 for imbalanced concepts. L_CYC2 sums the six distance-2 cycles of §5.3.2, L_CYC4 (5.16) the six distance-4
cycles of (5.13)–(5.15), L_COMM (5.21) the three commutativity terms (5.18)–(5.20), and L_ID (CycleGAN's identity
loss, §5.8.2) asks each transfer to leave alone the observed images that already hold its target value. Distances are
L1, averaged over pixels and images; λ = μ = ν = 10. "gan": eq. (5.1) with D's logits, the discriminator minimising
-log D(real) - log(1 - D(fake)) and the generators -log D(fake) (the non-saturating form of the minimax (5.2), with
the same optimum); "wgan-gp": the Wasserstein alternative of §5.8.2 with a gradient penalty (`nn.wgan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits

from cryoscope.conceptgan.domains import Domain, Path, apply_path
from cryoscope.errors import InvalidValueError
from cryoscope.nn.wgan import critic_loss, generator_loss

Objective = Literal["gan", "wgan-gp"]

ADVERSARIAL: tuple[tuple[Domain, Path, str], ...] = (
    ("00", ("G1",), "5.7"), ("00", ("G2",), "5.9"), ("10", ("F1",), "5.10"), ("01", ("F2",), "5.11"))
"""(source, path, equation): each fake is judged by the discriminator of the sub-domain it lands in."""
DISTANCE3: tuple[tuple[Domain, Path, str], ...] = (("00", ("G1", "G2", "F1"), "§5.8.2"), ("00", ("G2", "G1", "F2"), "§5.8.2"))
CYC2: tuple[tuple[Domain, Path], ...] = (
    ("00", ("G1", "F1")), ("10", ("F1", "G1")),  # forward and backward between Σ00 and Σ10
    ("00", ("G2", "F2")), ("01", ("F2", "G2")),  # forward and backward between Σ00 and Σ01
    ("01", ("G1", "F1")), ("10", ("G2", "F2")))  # forward only, through Σ11
CYC4: tuple[tuple[Domain, Path, str], ...] = (
    ("00", ("G1", "G2", "F1", "F2"), "5.13"), ("00", ("G2", "G1", "F2", "F1"), "5.13"),
    ("01", ("F2", "G1", "G2", "F1"), "5.14"), ("01", ("G1", "F2", "F1", "G2"), "5.14"),
    ("10", ("G2", "F1", "F2", "G1"), "5.15"), ("10", ("F1", "G2", "G1", "F2"), "5.15"))
COMM: tuple[tuple[Domain, Path, Path, str], ...] = (
    ("00", ("G1", "G2"), ("G2", "G1"), "5.18"), ("01", ("G1", "F2"), ("F2", "G1"), "5.19"),
    ("10", ("F1", "G2"), ("G2", "F1"), "5.20"))
IDENTITY: tuple[tuple[Domain, str], ...] = (("10", "G1"), ("00", "F1"), ("01", "F1"), ("01", "G2"), ("00", "F2"), ("10", "F2"))
"""(observed sub-domain, transfer whose target value it already has)."""


@dataclass
class LossConfig:
    """Which terms are on (ablations switch them off) and their weights: λ (cycle), μ (commutativity), ν (identity)."""

    adversarial: bool = True
    distance3: bool = False
    cyc2: bool = True
    cyc4: bool = True
    comm: bool = True
    identity: bool = True
    cycle_weight: float = 10.0
    comm_weight: float = 10.0
    identity_weight: float = 10.0
    objective: Objective = "gan"
    gp_weight: float = 10.0

    def validate(self) -> None:
        if self.objective not in ("gan", "wgan-gp"):
            raise InvalidValueError(f"unknown adversarial objective {self.objective!r} (gan or wgan-gp)")
        if min(self.cycle_weight, self.comm_weight, self.identity_weight, self.gp_weight) < 0:
            raise InvalidValueError("loss weights must be >= 0")

    def weights(self) -> dict[str, float]:
        """Weight of each enabled group of terms in L (5.5)."""
        on = {"adv": (self.adversarial, 1.0), "adv3": (self.distance3, 1.0), "cyc2": (self.cyc2, self.cycle_weight),
              "cyc4": (self.cyc4, self.cycle_weight), "comm": (self.comm, self.comm_weight),
              "identity": (self.identity, self.identity_weight)}
        return {k: w for k, (enabled, w) in on.items() if enabled}


class PathImages:
    """Images of real batches {observed sub-domain: [b, N, N]} along paths, each prefix computed once per batch."""

    def __init__(self, generators: nn.ModuleDict, real: dict[Domain, torch.Tensor]):
        self.generators, self.real = generators, real
        self._cache: dict[tuple[Domain, Path], torch.Tensor] = {}

    def __call__(self, source: Domain, path: Path) -> torch.Tensor:
        """(path)(σ_source): the transfers of `path` applied in order to the real batch of `source`."""
        if not path:
            return self.real[source]
        key = (source, tuple(path))
        if key not in self._cache:
            apply_path(source, path)  # refuses a transfer that does not apply
            self._cache[key] = self.generators[path[-1]](self(source, path[:-1]))
        return self._cache[key]


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """E ||a - b||_1, averaged over pixels and images."""
    return (a - b).abs().mean()


def adversarial_terms(config: LossConfig) -> tuple[tuple[Domain, Path, str], ...]:
    """The enabled adversarial terms: (source, path, equation)."""
    return (ADVERSARIAL if config.adversarial else ()) + (DISTANCE3 if config.distance3 else ())


def _fooling(discriminator: nn.Module, fake: torch.Tensor, objective: Objective) -> torch.Tensor:
    """The generators' side of one adversarial term: -E log D(fake) ("gan") or -E D(fake) ("wgan-gp")."""
    if objective == "gan":
        logits = discriminator(fake)
        return binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    return generator_loss(discriminator, fake)


def generator_losses(images: PathImages, discriminators: nn.ModuleDict, config: LossConfig) -> dict[str, torch.Tensor]:
    """The enabled groups of terms (unweighted sums): adv, adv3, cyc2, cyc4, comm, identity."""
    out: dict[str, torch.Tensor] = {}
    for group, terms in (("adv", ADVERSARIAL if config.adversarial else ()), ("adv3", DISTANCE3 if config.distance3 else ())):
        if terms:
            out[group] = sum(_fooling(discriminators[apply_path(s, p)], images(s, p), config.objective) for s, p, _ in terms)
    if config.cyc2:
        out["cyc2"] = sum(l1(images(s, p), images(s, ())) for s, p in CYC2)
    if config.cyc4:
        out["cyc4"] = sum(l1(images(s, p), images(s, ())) for s, p, _ in CYC4)
    if config.comm:
        out["comm"] = sum(l1(images(s, a), images(s, b)) for s, a, b, _ in COMM)
    if config.identity:
        out["identity"] = sum(l1(images.generators[t](images(s, ())), images(s, ())) for s, t in IDENTITY)
    return out


def total_loss(losses: dict[str, torch.Tensor], config: LossConfig) -> torch.Tensor:
    """L (5.5): the weighted sum of the groups from `generator_losses`."""
    weights = config.weights()
    return sum(weights[k] * v for k, v in losses.items())


def discriminator_losses(images: PathImages, discriminators: nn.ModuleDict, config: LossConfig,
                         generator: torch.Generator | None = None) -> dict[Domain, torch.Tensor]:
    """Per discriminator, the sum over its adversarial terms of -E log D(real) - E log(1 - D(fake)) ("gan") or the
    WGAN-GP critic loss; fakes are detached. Sub-domains judged by no enabled term are absent."""
    out: dict[Domain, torch.Tensor] = {}
    real_logits: dict[Domain, torch.Tensor] = {}
    for source, path, _ in adversarial_terms(config):
        d = apply_path(source, path)
        disc, real, fake = discriminators[d], images(d, ()), images(source, path).detach()
        if config.objective == "gan":
            if d not in real_logits:
                real_logits[d] = disc(real)
            fake_logits = disc(fake)
            term = (binary_cross_entropy_with_logits(real_logits[d], torch.ones_like(real_logits[d]))
                    + binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        else:
            term = critic_loss(disc, real, fake, config.gp_weight, generator)[0]
        out[d] = out[d] + term if d in out else term
    return out
