"""Files of the mechanical model: networks from PDB/mmCIF or .npz, coefficient moments (.npz) with their basis,
and normal-mode trajectories as multi-model PDB files (ChimeraX: `open mode_007.pdb coordsets true`, then
`coordset #1 loop 10`)."""

from __future__ import annotations

import math
from pathlib import Path

import gemmi
import numpy as np
import torch

from cryoscope.errors import CryoscopeError, InputFormatError, InvalidValueError, MissingDataError
from cryoscope.hetero.moments_basis import Basis, BoxBasis, SineBasis
from cryoscope.io.atomic import atomic_path
from cryoscope.io.files import existing_file
from cryoscope.io.pdb import read_structure
from cryoscope.representations.elastic_network import ElasticNetwork, NodeAtom, build_network, network_from_structure

STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")


def _npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as err:
        raise InputFormatError(f"not a readable .npz file ({err})", path) from None


def read_network(path: str | Path, cutoff: float, atoms: str = "ca", masses: str = "unit",
                 groups: str = "none") -> tuple[ElasticNetwork, list[NodeAtom] | None]:
    """Network from a structure file (see `network_from_structure`) or an .npz with `positions` [N, 3] Å and
    optional `masses` [N], `labels` [N] (spring groups; used unless groups="none") and `springs` [S, 2] (else the
    cutoff decides). Returns the network and, for structures, the node atoms."""
    path = existing_file(path)
    try:
        if path.suffix.lower() in STRUCTURE_SUFFIXES:
            return network_from_structure(read_structure(path), cutoff, atoms, masses, groups)
        if path.suffix.lower() != ".npz":
            raise InvalidValueError(f"unknown network file type {path.suffix!r} (PDB/mmCIF or .npz)")
        z = _npz(path)
        if "positions" not in z:
            raise MissingDataError("no 'positions' array", path)
        t = {k: torch.from_numpy(np.asarray(z[k])) for k in ("positions", "masses", "labels", "springs") if k in z}
        if groups != "none" and "labels" not in t:
            raise MissingDataError("spring groups requested but the file has no 'labels' array", path)
        return build_network(t["positions"], cutoff, t.get("masses"), t.get("labels") if groups != "none" else None,
                             t.get("springs")), None
    except CryoscopeError as err:
        if err.path is None:
            raise type(err)(str(err), path) from None
        raise


def basis_from_arrays(z: dict[str, np.ndarray], path: Path | None = None) -> Basis:
    """Basis spec from arrays: `basis` ('sine' or 'box'), `half_width` (Å), optional `centre` [3] (Å), and
    `per_axis` (sine) or `indices` [Nc, 3] (box; default: the half-space set for `max_index`)."""
    for key in ("basis", "half_width"):
        if key not in z:
            raise MissingDataError(f"no {key!r} entry (basis spec)", path)
    kind = str(z["basis"])
    r = float(z["half_width"])
    centre = tuple(float(v) for v in np.asarray(z.get("centre", np.zeros(3))).reshape(3))
    if r <= 0:
        raise InvalidValueError(f"half_width must be positive, got {r}", path)
    if kind == "sine":
        if "per_axis" not in z:
            raise MissingDataError("sine basis without 'per_axis'", path)
        return SineBasis(r, int(z["per_axis"]), centre)
    if kind == "box":
        if "indices" in z:
            idx = np.asarray(z["indices"]).astype(int)
            if idx.ndim != 2 or idx.shape[1] != 3:
                raise InvalidValueError(f"box 'indices' must be [Nc, 3], got {idx.shape}", path)
            return BoxBasis(r, tuple(tuple(int(v) for v in row) for row in idx), centre)
        if "max_index" not in z:
            raise MissingDataError("box basis needs 'indices' or 'max_index'", path)
        return BoxBasis.half_space(r, int(z["max_index"]), centre)
    raise InvalidValueError(f"basis must be 'sine' or 'box', got {kind!r}", path)


def read_moments(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, Basis]:
    """Mean [n] and covariance [n, n] of coefficients (real representation) and their basis from an .npz
    (`mean`, `cov` and the basis spec of `basis_from_arrays`)."""
    path = existing_file(path)
    z = _npz(path)
    for key in ("mean", "cov"):
        if key not in z:
            raise MissingDataError(f"no {key!r} array", path)
    basis = basis_from_arrays(z, path)
    mean = torch.from_numpy(np.asarray(z["mean"], dtype=np.float64))
    cov = torch.from_numpy(np.asarray(z["cov"], dtype=np.float64))
    n = basis.size
    if mean.shape != (n,) or cov.shape != (n, n):
        raise InvalidValueError(f"the {z['basis']} basis has {n} coefficients; got mean {tuple(mean.shape)}, cov {tuple(cov.shape)}", path)
    if not (torch.isfinite(mean).all() and torch.isfinite(cov).all()):
        raise InvalidValueError("mean or covariance contains NaN or Inf", path)
    return mean, cov, basis


def write_moments(path: str | Path, mean: torch.Tensor, cov: torch.Tensor, basis: Basis) -> None:
    """Write (mean, cov, basis spec) as `read_moments` reads them, atomically."""
    spec: dict[str, np.ndarray] = {"basis": np.array("sine" if isinstance(basis, SineBasis) else "box"),
                                   "half_width": np.array(basis.half_width), "centre": np.array(basis.centre)}
    if isinstance(basis, SineBasis):
        spec["per_axis"] = np.array(basis.per_axis)
    else:
        spec["indices"] = np.array(basis.indices, dtype=np.int64).reshape(-1, 3)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, mean=mean.detach().cpu().numpy(), cov=cov.detach().cpu().numpy(), **spec)


def write_mode_trajectory(path: str | Path, network: ElasticNetwork, mode: torch.Tensor, rmsd: float, frames: int,
                          nodes: list[NodeAtom] | None = None) -> None:
    """One cycle x0 + A sin(2π j / frames) δ, j = 0..frames-1, as a multi-model PDB (atomically); `mode` [3N] a unit
    displacement direction, A such that the largest frame RMSD from x0 is `rmsd` Å. Node atoms keep their names,
    residues and chains; networks without a structure are written as pseudo-atoms (residue ENM, chain A)."""
    if frames < 2 or rmsd <= 0:
        raise InvalidValueError(f"need frames >= 2 and rmsd > 0, got {frames}, {rmsd}", path)
    x0 = network.positions.detach().cpu().double()
    d = mode.detach().cpu().double().reshape(-1, 3)
    amp = rmsd * math.sqrt(x0.shape[0]) / float(d.norm())
    st = gemmi.Structure()
    for j in range(frames):
        x = (x0 + amp * math.sin(2 * math.pi * j / frames) * d).tolist()
        model = gemmi.Model(str(j + 1))
        chains: dict[str, gemmi.Chain] = {}
        for i, p in enumerate(x):
            node = NodeAtom("A", "ENM", i + 1, " ", "C", "C") if nodes is None else nodes[i]
            chain = chains.setdefault(node.chain, gemmi.Chain(node.chain))
            r = gemmi.Residue()
            r.name, r.seqid = node.residue, gemmi.SeqId(node.number, node.icode)
            atom = gemmi.Atom()
            atom.name, atom.element = node.name, gemmi.Element(node.element)
            atom.pos = gemmi.Position(*p)
            atom.occ, atom.b_iso = 1.0, 0.0
            r.add_atom(atom)
            chain.add_residue(r)
        for chain in chains.values():
            model.add_chain(chain)
        st.add_model(model)
    st.setup_entities()
    options = gemmi.PdbWriteOptions(minimal=True)
    with atomic_path(path) as tmp:
        st.write_pdb(str(tmp), options)
