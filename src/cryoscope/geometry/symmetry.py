"""Point-group symmetry with RELION's axis conventions (relion/src/symmetries.cpp).

A map V has symmetry S when V(S r) = V(r). With RELION poses (image = projection of V(A^T r)),
A and A S give identical images, so symmetry acts on the right of the pose matrices:
the poses A S for S in the group are equivalent, and the viewing direction A^T e_z becomes S^T A^T e_z.

Axes (as in RELION's `fill_symmetry_class`), golden ratio p = (1 + sqrt 5) / 2:
  Cn: n-fold about z.     Dn: n-fold about z, 2-fold about x.
  T:  3-fold about z, 2-fold about (0, sqrt(2/3), sqrt(1/3)).
  O:  3-fold about (1, 1, 1)/sqrt 3, 4-fold about z.
  I = I2: 2-fold about z, 5-fold about (1, 0, p), 3-fold about (0, 1/p, p)   (RELION's default).
  I1: 2-fold about x, 5-fold about (p, 0, -1), 3-fold about (p, 1/p, 0).
  I3: 5-fold about z, 2-fold about (-1, 0, p), 3-fold about (-0.49112347, 0.35682209, 0.79465447).
  I4: 5-fold about (2, 0, 1), 2-fold about (1, 0, p), 3-fold about (0.49112347, 0.35682209, 0.79465447).
Groups with mirrors or inversions (Cs, Ci, Cnv, Cnh, Sn, Dnh, Dnv, Td, Th, Oh, Ih) are not rotations and are refused.
"""

from __future__ import annotations

import math
import re

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.rotations import axis_angle_to_matrix

_P = (1 + math.sqrt(5)) / 2

# (fold, axis) generators per group, following RELION's fill_symmetry_class. For the icosahedral groups the
# 2-fold and 5-fold generate the group; RELION's extra 3-fold axes for I3/I4 are given there only to ~1e-8.
_GENERATORS: dict[str, list[tuple[int, tuple[float, float, float]]]] = {
    "T": [(3, (0.0, 0.0, 1.0)), (2, (0.0, math.sqrt(2 / 3), math.sqrt(1 / 3)))],
    "O": [(3, (1.0, 1.0, 1.0)), (4, (0.0, 0.0, 1.0))],
    "I2": [(2, (0.0, 0.0, 1.0)), (5, (1.0, 0.0, _P))],
    "I1": [(2, (1.0, 0.0, 0.0)), (5, (_P, 0.0, -1.0))],
    "I3": [(2, (-1.0, 0.0, _P)), (5, (0.0, 0.0, 1.0))],
    "I4": [(2, (1.0, 0.0, _P)), (5, (2.0, 0.0, 1.0))],
}
_ORDERS = {"T": 12, "O": 24, "I1": 60, "I2": 60, "I3": 60, "I4": 60}


def parse_symmetry(name: str) -> tuple[str, int]:
    """'C7' -> ('C', 7), 'd4' -> ('D', 4), 'I' -> ('I2', 60), 'O' -> ('O', 24): (family, n or order).

    Raises InvalidValueError for names that are not rotation point groups.
    """
    s = str(name).strip().upper()
    m = re.fullmatch(r"([CD])(\d+)", s)
    if m:
        n = int(m.group(2))
        if n < 1:
            raise InvalidValueError(f"symmetry '{name}': the order n of {m.group(1)}n must be >= 1")
        return m.group(1), n
    if s == "I":
        s = "I2"
    if s in _ORDERS:
        return s, _ORDERS[s]
    raise InvalidValueError(f"symmetry '{name}' is not supported (rotation point groups only: Cn, Dn, T, O, I, I1, I2, I3, I4)")


def _rotation(fold: int, axis: tuple[float, float, float], dtype: torch.dtype, device) -> torch.Tensor:
    a = torch.tensor(axis, dtype=torch.float64)
    return axis_angle_to_matrix(a / a.norm() * (2 * math.pi / fold)).to(dtype=dtype, device=device)


def _closure(generators: list[torch.Tensor], order: int) -> torch.Tensor:
    """All products of the generators (float64), identity first; checks that exactly `order` elements appear."""
    elements = [torch.eye(3, dtype=torch.float64)]
    frontier = list(elements)
    while frontier:
        new = []
        for g in frontier:
            for h in generators:
                p = g @ h
                if all((p - e).abs().max() > 1e-8 for e in elements):
                    elements.append(p)
                    new.append(p)
        frontier = new
        if len(elements) > order:
            break
    if len(elements) != order:  # the generator tables above are fixed, so this is a programming error
        raise RuntimeError(f"symmetry closure produced {len(elements)} elements, expected {order}")
    return torch.stack(elements)


def symmetry_group(name: str, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """Rotation matrices [G, 3, 3] of a point group in RELION's orientation, identity first.

    Orders: Cn -> n, Dn -> 2n, T -> 12, O -> 24, I/I1/I2/I3/I4 -> 60.
    """
    family, n = parse_symmetry(name)
    if family == "C":
        k = torch.arange(n, dtype=torch.float64)
        G = axis_angle_to_matrix(torch.stack([torch.zeros_like(k), torch.zeros_like(k), 2 * math.pi * k / n], -1))
    elif family == "D":
        C = symmetry_group(f"C{n}")
        G = torch.cat([C, C @ _rotation(2, (1.0, 0.0, 0.0), torch.float64, None)])
    else:
        G = _closure([_rotation(f, a, torch.float64, None) for f, a in _GENERATORS[family]], n)
    return G.to(dtype=dtype, device=device)


def symmetry_expand(R: torch.Tensor, group: str | torch.Tensor) -> torch.Tensor:
    """All symmetry-equivalent poses: [..., 3, 3] -> [..., G, 3, 3] with entries R @ S (as relion_particle_symmetry_expand)."""
    G = _as_group(group, R)
    return R[..., None, :, :] @ G


def asymmetric_unit_mask(directions: torch.Tensor, group: str | torch.Tensor) -> torch.Tensor:
    """Mask [...] of viewing directions [..., 3] lying in one asymmetric unit of the sphere.

    The unit is the Dirichlet cell around a fixed generic direction c: d is inside when no S d is closer
    to c than d is. Every orbit {S d} has exactly one member inside (up to measure-zero boundaries).
    This is a valid fundamental domain, not RELION's particular choice of asymmetric-unit boundaries.
    """
    G = _as_group(group, directions)
    c = torch.tensor([0.1734, 0.3541, 0.9190], dtype=directions.dtype, device=directions.device)
    c = c / c.norm()
    orbit = torch.einsum("gij,...j->...gi", G, directions)  # S d for each S
    score = orbit @ c
    return (directions @ c) >= score.max(-1).values - 1e-12


def _as_group(group: str | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if isinstance(group, str):
        return symmetry_group(group, dtype=like.dtype, device=like.device)
    return group.to(dtype=like.dtype, device=like.device)
