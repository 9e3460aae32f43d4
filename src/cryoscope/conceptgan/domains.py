"""The concept square: sub-domains Σxy of two binary concepts X and Y, the transfers between them, and paths.

G1 sets X = 1, F1 sets X = 0, G2 sets Y = 1, F2 sets Y = 0; each applies only where the concept has the other value
(G1 : Σ0y -> Σ1y, ...). A path is a tuple of transfer names in the order they are applied: ("G1", "G2") is
(G2 ∘ G1)(σ). Σ00, Σ01 and Σ10 are observed (they have data and a discriminator); Σ11 is not.
"""

from __future__ import annotations

from cryoscope.errors import InvalidValueError

Domain = str  # "00", "01", "10" or "11": the values of (X, Y)
Path = tuple[str, ...]

DOMAINS: tuple[Domain, ...] = ("00", "01", "10", "11")
OBSERVED: tuple[Domain, ...] = ("00", "01", "10")
UNSEEN: Domain = "11"
TRANSFERS: dict[str, tuple[int, int, int]] = {"G1": (0, 0, 1), "F1": (0, 1, 0), "G2": (1, 0, 1), "F2": (1, 1, 0)}
"""name -> (concept index, value before, value after)."""


def check_domain(domain: str) -> Domain:
    """`domain` if it names a sub-domain ("00", "01", "10", "11"), else InvalidValueError."""
    if domain not in DOMAINS:
        raise InvalidValueError(f"unknown sub-domain {domain!r} (use 00, 01, 10 or 11)")
    return domain


def apply_transfer(domain: Domain, name: str) -> Domain:
    """The sub-domain reached by applying transfer `name` to an image of `domain`; InvalidValueError where it does not apply."""
    if name not in TRANSFERS:
        raise InvalidValueError(f"unknown transfer {name!r} (use G1, F1, G2 or F2)")
    concept, before, after = TRANSFERS[name]
    if int(domain[concept]) != before:
        raise InvalidValueError(f"{name} does not apply to Σ{domain}")
    return domain[:concept] + str(after) + domain[concept + 1:]


def apply_path(domain: Domain, path: Path) -> Domain:
    """The sub-domain at the end of `path` (transfers applied left to right) from `domain`."""
    for name in path:
        domain = apply_transfer(domain, name)
    return domain


def routes(source: Domain, target: Domain) -> list[Path]:
    """The shortest paths from `source` to `target`: one per order in which the differing concepts are changed
    (X first, then Y first); [()] when they are equal."""
    setters = (("F1", "G1"), ("F2", "G2"))  # per concept: the transfer that sets it to 0, to 1
    flips = [setters[i][int(t)] for i, (s, t) in enumerate(zip(check_domain(source), check_domain(target))) if s != t]
    return [tuple(flips)] if len(flips) < 2 else [tuple(flips), tuple(reversed(flips))]


def notation(path: Path) -> str:
    """A path as the composition it is, e.g. ("G1", "G2") -> "G2∘G1" ("I" for the empty path)."""
    return "∘".join(reversed(path)) or "I"
