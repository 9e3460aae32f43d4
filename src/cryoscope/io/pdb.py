"""Atomic models (PDB/mmCIF via gemmi) and their electron-scattering density maps."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import gemmi
import numpy as np
import torch

from cryoscope.errors import InputFormatError, InvalidValueError
from cryoscope.io.files import existing_file
from cryoscope.io.mrc import Map

MOLMAP_SIGMA_FACTOR = 0.225  # Gaussian sigma (Å) per Å of resolution, as ChimeraX molmap (1 / (pi * sqrt(2)))
_STATES = ("open", "closed")
_CHARMM_HIS = ("HSD", "HSE", "HSP")


def default_structure_path(state: str = "open") -> Path:
    """Bundled E. coli adenylate kinase model: 'open' (PDB 4AKE) or 'closed' (PDB 1AKE), same atoms in the same order."""
    if state not in _STATES:
        raise InvalidValueError(f"unknown AdK state {state!r} (open or closed)")
    return Path(str(resources.files("cryoscope") / "data" / f"adk_{state}.pdb"))


def read_structure(path: str | Path) -> gemmi.Structure:
    """First model of a PDB/mmCIF file, without waters; InputFormatError if it has no atoms."""
    path = existing_file(path)
    try:
        st = gemmi.read_structure(str(path))
    except Exception as err:
        raise InputFormatError(f"not a readable PDB/mmCIF file ({err})", path) from None
    st.remove_waters()
    st.remove_empty_chains()
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputFormatError("no atoms in the model", path)
    for i in range(len(st) - 1, 0, -1):
        del st[i]
    _fix_polymer_elements(st)
    return st


def _fix_polymer_elements(st: gemmi.Structure) -> None:
    """In amino-acid/nucleotide residues (and for unknown elements) the element is the first letter of the
    atom name; files without element columns otherwise make gemmi read e.g. a left-aligned Cα as calcium.
    """
    for res in (r for ch in st[0] for r in ch):
        info = gemmi.find_tabulated_residue(res.name)
        polymer = res.name in _CHARMM_HIS or (info is not None and (info.is_amino_acid() or info.is_nucleic_acid()))
        for atom in res:
            if not polymer and atom.element.name != "X":
                continue
            first = "Se" if atom.name.upper().startswith("SE") else atom.name.lstrip("0123456789")[:1]
            if first in ("C", "N", "O", "S", "H", "P", "Se"):
                atom.element = gemmi.Element(first)


def atom_arrays(st: gemmi.Structure, ca_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Atom positions [n, 3] (x, y, z) Å and masses [n] (Da), float64; `ca_only` keeps protein Cα atoms."""
    pos, mass = [], []
    for cra in st[0].all():
        if ca_only and not (cra.atom.name == "CA" and cra.atom.element == gemmi.Element("C")):
            continue
        p = cra.atom.pos
        pos.append((p.x, p.y, p.z))
        mass.append(cra.atom.element.weight * cra.atom.occ)
    if not pos:
        raise InputFormatError("no matching atoms (Cα)" if ca_only else "no atoms")
    return torch.tensor(pos, dtype=torch.float64), torch.tensor(mass, dtype=torch.float64)


def ca_coordinates(path: str | Path) -> torch.Tensor:
    """Cα positions [n, 3] (x, y, z) Å of the first model."""
    return atom_arrays(read_structure(path), ca_only=True)[0]


def center_of_mass(positions: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean position [..., 3] of points [..., n, 3] (uniform weights if None)."""
    if weights is None:
        return positions.mean(-2)
    return (weights[..., None] * positions).sum(-2) / weights.sum(-1)[..., None]


def radius_of_gyration(positions: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """sqrt(weighted mean |r - com|^2) (Å) of points [..., n, 3]."""
    d2 = ((positions - center_of_mass(positions, weights)[..., None, :]) ** 2).sum(-1)
    if weights is None:
        return d2.mean(-1).sqrt()
    return ((weights * d2).sum(-1) / weights.sum(-1)).sqrt()


def map_center_of_mass(volume: torch.Tensor) -> torch.Tensor:
    """Density-weighted centre (x, y, z) in voxels relative to the box centre N//2 of a [z, y, x] map."""
    pos, w = _voxel_positions(volume)
    return center_of_mass(pos, w)


def map_radius_of_gyration(volume: torch.Tensor) -> torch.Tensor:
    """Density-weighted radius of gyration (voxels) of a [z, y, x] map (negative values clipped to 0)."""
    pos, w = _voxel_positions(volume)
    return radius_of_gyration(pos, w)


def _voxel_positions(volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    grids = [torch.arange(n, dtype=torch.float64, device=volume.device) - n // 2 for n in volume.shape]
    z, y, x = torch.meshgrid(*grids, indexing="ij")
    pos = torch.stack([x, y, z], -1).reshape(-1, 3)
    return pos, volume.to(torch.float64).clamp_min(0).reshape(-1)


def pdb_to_map(
    path: str | Path,
    box: int,
    voxel_size: float,
    resolution: float | None = None,
    bfactor: float | None = None,
    center: bool = True,
) -> Map:
    """Electron-scattering density of a model file on a box^3 grid (see `structure_to_map`)."""
    return structure_to_map(read_structure(path), box, voxel_size, resolution, bfactor, center, source=path)


def superpose(mobile: torch.Tensor, reference: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Positions [n, 3] of `mobile` after the weighted least-squares rigid fit onto `reference` (Kabsch)."""
    w = torch.ones(mobile.shape[0], dtype=mobile.dtype) if weights is None else weights
    cm, cr = center_of_mass(mobile, w), center_of_mass(reference, w)
    h = ((mobile - cm) * w[:, None]).T @ (reference - cr)
    u, _, vt = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(vt.T @ u.T))
    rot = vt.T @ torch.diag(torch.tensor([1.0, 1.0, float(d)], dtype=mobile.dtype)) @ u.T
    return (mobile - cm) @ rot.T + cr


def interpolated_model_map(
    first: str | Path,
    second: str | Path,
    t: float,
    box: int,
    voxel_size: float,
    resolution: float | None = None,
    bfactor: float | None = None,
) -> Map:
    """Density of the model at fraction `t` in [0, 1] along the straight line from `first` to `second`.

    The two files must list the same atoms in the same order; `second` is first superposed on
    `first` (mass-weighted Kabsch fit), so the path carries no rigid-body motion.
    """
    st1, st2 = read_structure(first), read_structure(second)
    p1, mass = atom_arrays(st1)
    p2, _ = atom_arrays(st2)
    names1 = [(c.residue.seqid.num, c.atom.name) for c in st1[0].all()]
    names2 = [(c.residue.seqid.num, c.atom.name) for c in st2[0].all()]
    if names1 != names2:
        raise InvalidValueError(f"models do not have the same atoms in the same order ({len(names1)} vs {len(names2)} atoms)", second)
    pos = (1 - t) * p1 + t * superpose(p2, p1, mass)
    for cra, p in zip(st1[0].all(), pos.tolist()):
        cra.atom.pos = gemmi.Position(*p)
    return structure_to_map(st1, box, voxel_size, resolution, bfactor, center=True, source=first)


def structure_to_map(
    st: gemmi.Structure,
    box: int,
    voxel_size: float,
    resolution: float | None = None,
    bfactor: float | None = None,
    center: bool = True,
    source: str | Path | None = None,
) -> Map:
    """Electron-scattering density of a model on a box^3 grid ([z, y, x] float32, voxel_size Å).

    Uses gemmi's DensityCalculatorE (electron form factors, International Tables C 4.3.2.2).
    `center`: move the mass-weighted centre to the box centre (index N//2); otherwise keep the file's
    coordinates (Å, map origin at 0). `bfactor` (Å²) replaces every atom's B; `resolution` (Å) adds a
    Gaussian blur of sigma = 0.225 * resolution (ChimeraX molmap), i.e. B = 8 pi^2 sigma^2.
    """
    if box < 2 or voxel_size <= 0:
        raise InvalidValueError(f"need box >= 2 and voxel size > 0, got box={box}, voxel_size={voxel_size}")
    if resolution is not None and resolution <= 0:
        raise InvalidValueError(f"resolution must be positive, got {resolution}")
    if bfactor is not None and bfactor < 0:
        raise InvalidValueError(f"B-factor must be >= 0, got {bfactor}")
    pos, mass = atom_arrays(st)
    centre_A = (box // 2) * voxel_size
    shift = centre_A - center_of_mass(pos, mass) if center else torch.zeros(3, dtype=torch.float64)
    moved = pos + shift
    extent = float(box * voxel_size)
    if bool((moved < 0).any() or (moved >= extent).any()):
        raise InvalidValueError(f"model does not fit in a {box}^3 box of {voxel_size:g} Å voxels ({extent:g} Å)", source)
    st.setup_entities()
    for cra in st[0].all():
        a = cra.atom
        a.pos = gemmi.Position(a.pos.x + float(shift[0]), a.pos.y + float(shift[1]), a.pos.z + float(shift[2]))
        if bfactor is not None:
            a.b_iso = float(bfactor)
            a.aniso = gemmi.SMat33f(0, 0, 0, 0, 0, 0)
    # A cell twice the box keeps periodic images of the density from wrapping into the box.
    st.cell = gemmi.UnitCell(2 * extent, 2 * extent, 2 * extent, 90, 90, 90)
    st.spacegroup_hm = "P 1"
    dc = gemmi.DensityCalculatorE()
    dc.d_min = 2 * voxel_size
    dc.rate = 1.0
    if resolution is not None:
        dc.blur = 8 * math.pi**2 * (MOLMAP_SIGMA_FACTOR * resolution) ** 2
    dc.grid.set_unit_cell(st.cell)
    dc.grid.spacegroup = gemmi.SpaceGroup("P 1")
    dc.grid.set_size(2 * box, 2 * box, 2 * box)
    dc.add_model_density_to_grid(st[0])
    dc.grid.symmetrize_sum()
    grid = np.array(dc.grid, copy=True)[:box, :box, :box]  # gemmi axes are (x, y, z)
    data = torch.from_numpy(np.ascontiguousarray(grid.transpose(2, 1, 0), dtype=np.float32))
    return Map(data, float(voxel_size), (0.0, 0.0, 0.0))


def write_pseudoatoms(path: str | Path, positions: torch.Tensor, weights: torch.Tensor, sigma: float,
                      protect: tuple[str | Path, ...] = ()) -> None:
    """Write a Gaussian mixture as a PDB of pseudo-atoms, atomically: one atom per component at `positions`
    [K, 3] (Å, file frame), occupancy = weight x K (1 for equal weights), B-factor 8 π² σ² (Å²)."""
    from cryoscope.io.atomic import atomic_path

    pos = positions.detach().double().cpu()
    w = weights.detach().double().cpu() * pos.shape[0]
    if pos.dim() != 2 or pos.shape[1] != 3 or w.shape != (pos.shape[0],):
        raise InvalidValueError(f"pseudo-atoms need positions [K, 3] and weights [K], got {tuple(pos.shape)}, {tuple(w.shape)}", path)
    if pos.shape[0] > 99999:
        raise InvalidValueError(f"{pos.shape[0]} pseudo-atoms do not fit a PDB file (at most 99,999)", path)
    st = gemmi.Structure()
    model = gemmi.Model("1")
    chain = gemmi.Chain("A")
    b = 8 * math.pi**2 * sigma**2
    for i in range(pos.shape[0]):
        res = gemmi.Residue()
        res.name, res.seqid = "GMM", gemmi.SeqId(i + 1, " ")
        atom = gemmi.Atom()
        atom.name, atom.element = "C", gemmi.Element("C")
        atom.pos = gemmi.Position(*pos[i].tolist())
        atom.occ, atom.b_iso = float(w[i]), b
        res.add_atom(atom)
        chain.add_residue(res)
    model.add_chain(chain)
    st.add_model(model)
    st.setup_entities()
    with atomic_path(path, protect) as tmp:
        st.write_pdb(str(tmp))
