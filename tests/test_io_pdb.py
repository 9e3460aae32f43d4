"""Atomic model -> electron density: the map's centre and size match the atoms."""

from __future__ import annotations

import gemmi
import pytest
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.io.pdb import (
    atom_arrays,
    ca_coordinates,
    default_structure_path,
    map_center_of_mass,
    map_radius_of_gyration,
    pdb_to_map,
    radius_of_gyration,
    read_structure,
)  # fmt: skip


def test_bundled_structures_have_the_same_atoms():
    o, _ = atom_arrays(read_structure(default_structure_path("open")))
    c, _ = atom_arrays(read_structure(default_structure_path("closed")))
    assert o.shape == c.shape == (3341, 3)
    assert ca_coordinates(default_structure_path("open")).shape == (214, 3)
    with pytest.raises(InvalidValueError):
        default_structure_path("ajar")


@pytest.mark.parametrize("kw", [{}, {"resolution": 4.0}, {"bfactor": 60.0}])
def test_map_centre_and_rg_match_the_model(kw):
    path = default_structure_path("open")
    pos, mass = atom_arrays(read_structure(path))
    rg_atoms = float(radius_of_gyration(pos, mass))
    assert 18 < rg_atoms < 22  # AdK, ~20 Å
    m = pdb_to_map(path, 64, 1.5, **kw)
    assert m.data.shape == (64, 64, 64) and m.voxel_size == 1.5
    assert map_center_of_mass(m.data).abs().max() < 1.0  # voxels from index N//2
    assert abs(float(map_radius_of_gyration(m.data)) * 1.5 / rg_atoms - 1) < 0.1


def test_blur_widens_and_keep_coordinates_moves(tmp_path):
    path = default_structure_path("open")
    sharp = pdb_to_map(path, 64, 1.5, bfactor=0.0)
    blurred = pdb_to_map(path, 64, 1.5, resolution=8.0)
    assert blurred.data.max() < sharp.data.max()
    st = read_structure(path)
    st[0].transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(70.0, 60.0, 80.0)))
    st.write_pdb(str(tmp_path / "moved.pdb"))
    path = tmp_path / "moved.pdb"
    pos, mass = atom_arrays(read_structure(path))
    com = (mass[:, None] * pos).sum(0) / mass.sum()
    kept = pdb_to_map(path, 96, 1.5, center=False)
    com_map = (map_center_of_mass(kept.data) + 48) * 1.5  # Å from the map origin
    assert torch.allclose(com_map, com, atol=1.5)


def test_box_too_small():
    with pytest.raises(InvalidValueError, match="does not fit"):
        pdb_to_map(default_structure_path("open"), 16, 1.0)
