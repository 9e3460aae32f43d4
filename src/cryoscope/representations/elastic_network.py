"""Elastic (anisotropic) network model: masses joined by linear springs at rest (thesis ch. 4, Eqs. 4.3-4.6, 4.39).

Positions are in Å, spring constants in kT/Å² (energies in units of kT, `kT` = 1/β given), masses in any
unit (Da for models read from files). The Hessian U of the spring energy is vectorised over springs (float64);
its null space holds the six rigid motions, and the thermal positional covariance is kT U⁺ (the pseudo-inverse:
rigid motions carry no probability, Eqs. 4.47-4.55).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import gemmi
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.io.pdb import atom_arrays

RIGID_DIM = 6


@dataclass(frozen=True)
class ElasticNetwork:
    """Point masses at equilibrium and the springs between them.

    positions [N, 3] Å, masses [N], springs [S, 2] (i < j), rest_lengths [S] Å (Eq. 4.6: the equilibrium distances,
    a non-frustrated network), groups [S] spring group (0 .. n_groups-1), labels [N] mass label the groups came from.
    """

    positions: torch.Tensor
    masses: torch.Tensor
    springs: torch.Tensor
    rest_lengths: torch.Tensor
    groups: torch.Tensor
    labels: torch.Tensor

    @property
    def n_masses(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_springs(self) -> int:
        return int(self.springs.shape[0])

    @property
    def n_groups(self) -> int:
        return int(self.groups.max()) + 1 if self.n_springs else 0

    def to(self, device: torch.device | str) -> ElasticNetwork:
        return ElasticNetwork(*(getattr(self, f).to(device) for f in
                                ("positions", "masses", "springs", "rest_lengths", "groups", "labels")))


class NodeAtom(NamedTuple):
    """Where a network node came from in a structure (for writing it back): chain, residue, number, atom, element."""

    chain: str
    residue: str
    number: int
    icode: str
    name: str
    element: str


def contacts(positions: torch.Tensor, cutoff: float, chunk: int = 4096) -> torch.Tensor:
    """Pairs (i < j) [S, 2] whose distance is at most `cutoff` Å, in row-major order."""
    n = positions.shape[0]
    pairs = []
    for start in range(0, n, chunk):
        d = torch.cdist(positions[start:start + chunk], positions)
        i, j = torch.nonzero(d <= cutoff, as_tuple=True)
        i = i + start
        keep = i < j
        pairs.append(torch.stack([i[keep], j[keep]], 1))
    return torch.cat(pairs) if pairs else torch.zeros(0, 2, dtype=torch.long, device=positions.device)


def build_network(positions: torch.Tensor, cutoff: float | None = None, masses: torch.Tensor | None = None,
                  labels: torch.Tensor | None = None, springs: torch.Tensor | None = None) -> ElasticNetwork:
    """Network from positions [N, 3] Å: springs between all pairs within `cutoff` Å (or the given `springs` [S, 2]).

    `masses` default to 1. `labels` [N] (integers >= 0) split the springs into groups: a spring belongs to the
    group of the smaller label of its two masses (all springs in group 0 without labels).
    """
    pos = torch.as_tensor(positions, dtype=torch.float64, device=getattr(positions, "device", None))
    if pos.dim() != 2 or pos.shape[1] != 3 or pos.shape[0] < 3:
        raise InvalidValueError(f"need positions [N >= 3, 3], got {tuple(pos.shape)}")
    if not torch.isfinite(pos).all():
        raise InvalidValueError("positions contain NaN or Inf")
    n = pos.shape[0]
    m = torch.ones(n, dtype=torch.float64, device=pos.device) if masses is None else masses
    m = torch.as_tensor(m, dtype=torch.float64, device=pos.device)
    if m.shape != (n,) or not bool((m > 0).all()):
        raise InvalidValueError(f"need {n} positive masses, got shape {tuple(m.shape)}")
    lab = torch.zeros(n, dtype=torch.long, device=pos.device) if labels is None else labels
    lab = torch.as_tensor(lab, device=pos.device).long()
    if lab.shape != (n,) or bool((lab < 0).any()):
        raise InvalidValueError(f"need {n} non-negative integer labels, got shape {tuple(lab.shape)}")
    if springs is None:
        if cutoff is None or cutoff <= 0:
            raise InvalidValueError(f"cutoff must be positive, got {cutoff}")
        springs = contacts(pos, cutoff)
    springs = torch.as_tensor(springs, device=pos.device).long()
    if springs.dim() != 2 or springs.shape[1] != 2 or bool((springs[:, 0] == springs[:, 1]).any()):
        raise InvalidValueError(f"springs must be [S, 2] pairs of different masses, got {tuple(springs.shape)}")
    springs = springs.sort(1).values
    rest = (pos[springs[:, 0]] - pos[springs[:, 1]]).norm(dim=1)
    if springs.shape[0] == 0 or bool((rest == 0).any()):
        raise InvalidValueError("no springs (cutoff too small?)" if springs.shape[0] == 0 else "two masses at the same position")
    groups = torch.minimum(lab[springs[:, 0]], lab[springs[:, 1]])
    groups = torch.unique(groups, return_inverse=True)[1]  # groups numbered 0 .. G-1 without gaps
    return ElasticNetwork(pos, m, springs, rest, groups, lab)


def network_from_structure(st: gemmi.Structure, cutoff: float, atoms: str = "ca", masses: str = "unit",
                           groups: str = "none") -> tuple[ElasticNetwork, list[NodeAtom]]:
    """Network from the first model of a structure: Cα atoms (`atoms="ca"`) or every atom ("all", e.g. pseudo-atoms).

    masses: "unit" (1 each, the usual ANM), "residue" (the residue's atomic mass, Da; with Cα) or "occupancy"
    (pseudo-atom weights as `gmm fit-map` writes them). groups: "none" (one spring constant) or "chain"
    (mass labels from chain order). Returns the network and the node atoms (for writing trajectories).
    """
    if atoms not in ("ca", "all") or masses not in ("unit", "residue", "occupancy") or groups not in ("none", "chain"):
        raise InvalidValueError(f"atoms must be ca|all, masses unit|residue|occupancy, groups none|chain; got {atoms!r}, {masses!r}, {groups!r}")
    if masses == "residue" and atoms != "ca":
        raise InvalidValueError("residue masses need Cα nodes (atoms='ca')")
    pos, _ = atom_arrays(st, ca_only=atoms == "ca")
    nodes = [cra for cra in st[0].all() if atoms == "all" or (cra.atom.name == "CA" and cra.atom.element == gemmi.Element("C"))]
    if masses == "unit":
        m = torch.ones(len(nodes), dtype=torch.float64, device=pos.device)
    elif masses == "residue":
        m = torch.tensor([sum(a.element.weight * a.occ for a in cra.residue) for cra in nodes], dtype=torch.float64,
                         device=pos.device)
    else:
        m = torch.tensor([cra.atom.occ for cra in nodes], dtype=torch.float64, device=pos.device)
    chain_index = {ch.name: i for i, ch in enumerate(st[0])}
    labels = torch.tensor([chain_index[cra.chain.name] if groups == "chain" else 0 for cra in nodes], device=pos.device)
    info = [NodeAtom(c.chain.name, c.residue.name, c.residue.seqid.num, c.residue.seqid.icode, c.atom.name, c.atom.element.name)
            for c in nodes]
    return build_network(pos, cutoff, m, labels), info


def spring_constants(network: ElasticNetwork, k: torch.Tensor | float) -> torch.Tensor:
    """Constant [S] of every spring (kT/Å²) from one value, one per group [G] or one per spring [S]."""
    k = torch.as_tensor(k, dtype=torch.float64, device=network.positions.device).reshape(-1)
    if k.numel() == 1:
        return k.expand(network.n_springs)
    if k.numel() == network.n_groups:
        return k[network.groups]
    if k.numel() == network.n_springs:
        return k
    raise InvalidValueError(f"need 1, {network.n_groups} (one per group) or {network.n_springs} spring constants, got {k.numel()}")


def hessian(network: ElasticNetwork, k: torch.Tensor | float) -> torch.Tensor:
    """Hessian U [3N, 3N] of the spring energy at equilibrium (Eq. 4.39); `k`: one constant, one per group or per spring.

    Block (α, α') = -k e eᵀ for a spring with unit direction e, and the diagonal block of α is minus the sum of
    its row, so U annihilates rigid motions.
    """
    ks = spring_constants(network, k)
    i, j = network.springs[:, 0], network.springs[:, 1]
    e = (network.positions[i] - network.positions[j]) / network.rest_lengths[:, None]
    block = ks[:, None, None] * e[:, :, None] * e[:, None, :]  # [S, 3, 3]
    n = network.n_masses
    u = torch.zeros(n, n, 3, 3, dtype=torch.float64, device=block.device)
    u.index_put_((i, j), -block, accumulate=True)
    u.index_put_((j, i), -block, accumulate=True)
    u.index_put_((i, i), block, accumulate=True)
    u.index_put_((j, j), block, accumulate=True)
    return u.permute(0, 2, 1, 3).reshape(3 * n, 3 * n)


def spring_energy(network: ElasticNetwork, delta: torch.Tensor, k: torch.Tensor | float) -> torch.Tensor:
    """Energy (kT) ½ Σ_springs k (‖x_α + δ_α − x_α' − δ_α'‖ − b)² of displacements δ [..., N, 3] Å (Eq. 4.5)."""
    ks = spring_constants(network, k)
    x = network.positions + delta
    i, j = network.springs[:, 0], network.springs[:, 1]
    stretch = (x[..., i, :] - x[..., j, :]).norm(dim=-1) - network.rest_lengths
    return 0.5 * (ks * stretch**2).sum(-1)


def rigid_basis(positions: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis [3N, 6] of rigid motions: three translations and three rotations about the centroid."""
    x = positions - positions.mean(0)
    n = x.shape[0]
    eye = torch.eye(3, dtype=x.dtype, device=x.device)
    trans = eye.expand(n, 3, 3).permute(0, 2, 1)  # [N, 3 (coordinate), 3 (direction)]
    rot = torch.linalg.cross(eye[None, :, :].expand(n, 3, 3), x[:, None, :].expand(n, 3, 3), dim=-1).permute(0, 2, 1)
    basis = torch.cat([trans, rot], -1).reshape(3 * n, RIGID_DIM)
    return torch.linalg.qr(basis).Q


def _spectrum(u: torch.Tensor, rtol: float) -> tuple[torch.Tensor, torch.Tensor]:
    lam, vec = torch.linalg.eigh(u)
    zero = lam.abs() <= rtol * lam.abs().max()
    if int(zero.sum()) > RIGID_DIM:
        raise InvalidValueError(f"the network has {int(zero.sum()) - RIGID_DIM} zero-energy modes beyond the 6 rigid ones "
                                "(floppy: increase the cutoff or add springs)")
    return lam, vec


def positional_covariance(u: torch.Tensor, kT: float = 1.0, rtol: float = 1e-9) -> torch.Tensor:
    """Thermal covariance [3N, 3N] (Å²) of the displacements δ: kT U⁺ with the six rigid modes removed (Eq. 4.48-4.62)."""
    lam, vec = _spectrum(u, rtol)
    keep = vec[:, RIGID_DIM:]
    return kT * (keep / lam[RIGID_DIM:]) @ keep.T


def normal_modes(u: torch.Tensor, masses: torch.Tensor, rtol: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal modes from T^-1/2 U T^-1/2 (Sec. 4.5): eigenvalues ω² [3N] (kT/Å²/mass, ascending) and displacement
    directions δ = T^-1/2 ũ [3N, 3N] (columns, each scaled to unit Euclidean norm). Modes 1-6 are the rigid motions."""
    inv_sqrt_m = masses.to(u).rsqrt().repeat_interleave(3)
    lam, vec = _spectrum(inv_sqrt_m[:, None] * u * inv_sqrt_m[None, :], rtol)
    disp = inv_sqrt_m[:, None] * vec
    return lam, disp / disp.norm(dim=0)
