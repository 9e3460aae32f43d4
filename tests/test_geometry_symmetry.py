"""Point groups: closure, orders, RELION axis placement, symmetry acting on the right of poses."""

from __future__ import annotations

import math

import pytest
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.rotations import matrix_to_axis_angle
from cryoscope.geometry.sampling import random_rotations
from cryoscope.geometry.symmetry import (
    asymmetric_unit_mask,
    parse_symmetry,
    symmetry_expand,
    symmetry_group,
)

D = torch.float64
P = (1 + math.sqrt(5)) / 2
GROUPS = {"C1": 1, "C2": 2, "C7": 7, "C12": 12, "D1": 2, "D2": 4, "D4": 8, "D7": 14, "T": 12, "O": 24, "I": 60, "I1": 60, "I2": 60, "I3": 60, "I4": 60}


def _index_in(products: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """For each matrix in products [..., 3, 3], the distance to the nearest element of G."""
    return (products[..., None, :, :] - G).abs().amax((-1, -2)).min(-1).values


@pytest.mark.parametrize("name, order", GROUPS.items())
def test_group_order_closure_and_rotations(name, order):
    G = symmetry_group(name)
    assert G.shape == (order, 3, 3)
    assert torch.equal(G[0], torch.eye(3, dtype=D))
    assert (G @ G.transpose(-1, -2) - torch.eye(3, dtype=D)).abs().max() < 1e-12
    assert (torch.linalg.det(G) - 1).abs().max() < 1e-12
    products = G[:, None] @ G[None, :]
    assert _index_in(products, G).max() < 1e-10  # closed under products
    assert _index_in(G.transpose(-1, -2), G).max() < 1e-10  # closed under inverses
    distinct = (G[:, None] - G[None]).abs().amax((-1, -2)) + torch.eye(order, dtype=D)
    assert distinct.min() > 1e-3


def _axes(G: torch.Tensor, fold: int) -> torch.Tensor:
    """Unit axes of the elements rotating by 360/fold degrees."""
    v = matrix_to_axis_angle(G)
    sel = (v.norm(dim=-1) - 2 * math.pi / fold).abs() < 1e-8
    return v[sel] / v[sel].norm(dim=-1, keepdim=True)


def _has_axis(G: torch.Tensor, fold: int, axis) -> bool:
    a = torch.tensor(axis, dtype=D)
    a = a / a.norm()
    return bool(((_axes(G, fold) @ a).abs() > 1 - 1e-7).any())


@pytest.mark.parametrize(
    "name, fold, axis",
    [
        ("C7", 7, (0, 0, 1)),
        ("D4", 4, (0, 0, 1)),
        ("D4", 2, (1, 0, 0)),
        ("D3", 2, (1, 0, 0)),
        ("T", 3, (0, 0, 1)),
        ("T", 2, (0, 0.816496, 0.577350)),
        ("O", 4, (0, 0, 1)),
        ("O", 4, (1, 0, 0)),
        ("O", 3, (1, 1, 1)),
        # RELION's symmetries.cpp axis tables (I = I2 is the default)
        ("I", 2, (0, 0, 1)),
        ("I2", 2, (1, 0, 0)),
        ("I2", 2, (0, 1, 0)),
        ("I2", 5, (0.525731114, 0, 0.850650807)),
        ("I2", 3, (0, 0.356822076, 0.934172364)),
        ("I1", 2, (1, 0, 0)),
        ("I1", 5, (0.85065080702670, 0, -0.5257311142635)),
        ("I1", 3, (0.9341723640, 0.3568220765, 0)),
        ("I3", 5, (0, 0, 1)),
        ("I3", 2, (-0.5257311143, 0, 0.8506508070)),
        ("I3", 3, (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
        ("I4", 5, (0.8944271932547096, 0, 0.4472135909903704)),
        ("I4", 2, (0.5257311143, 0, 0.8506508070)),
        ("I4", 3, (0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
    ],
)
def test_relion_axis_placement(name, fold, axis):
    assert _has_axis(symmetry_group(name), fold, axis)


def test_dihedral_two_folds_lie_in_the_xy_plane():
    G = symmetry_group("D5")
    ax2 = _axes(G, 2)
    assert ax2.shape[0] == 5 and ax2[:, 2].abs().max() < 1e-12
    assert not _has_axis(G, 2, (0, 1, 0))  # odd n: the 2-folds are x and its images under the 5-fold only


def test_i2_five_folds_are_the_icosahedron_vertices():
    """I2's twelve 5-fold directions are (+-1, 0, +-p), (0, +-p, +-1), (+-p, +-1, 0) (p = golden ratio), normalised."""
    verts = []
    for s1 in (1, -1):
        for s2 in (1, -1):
            verts += [(s1, 0, s2 * P), (0, s1 * P, s2), (s1 * P, s2, 0)]
    verts = torch.tensor(verts, dtype=D)
    verts = verts / verts.norm(dim=-1, keepdim=True)
    ax5 = _axes(symmetry_group("I2"), 5)  # 12 elements of 72 degrees: 6 axes, both senses
    assert ax5.shape[0] == 12
    assert (ax5 @ verts.T).max(-1).values.min() > 1 - 1e-12
    assert (verts @ ax5.T).max(-1).values.min() > 1 - 1e-12


@pytest.mark.parametrize("name, counts", [("T", {3: 8, 2: 3}), ("O", {4: 6, 3: 8, 2: 9}), ("I1", {5: 12, 3: 20, 2: 15})])
def test_element_angle_census(name, counts):
    """Number of elements per rotation angle 360/k (72 and 144 degree elements both counted as 5-fold, etc.)."""
    angles = torch.rad2deg(matrix_to_axis_angle(symmetry_group(name)).norm(dim=-1))
    if name == "I1":
        assert int(((angles - 144).abs() < 1e-6).sum()) == 12
    for fold, n in counts.items():
        assert int(((angles - 360 / fold).abs() < 1e-6).sum()) == n


def test_parse_symmetry_names():
    assert parse_symmetry("c7") == ("C", 7)
    assert parse_symmetry(" D4 ") == ("D", 4)
    assert parse_symmetry("I") == ("I2", 60)
    assert parse_symmetry("o") == ("O", 24)
    for bad in ("C0", "Cs", "C2v", "D6h", "Ih", "I5", "X", "", "helical"):
        with pytest.raises(InvalidValueError):
            symmetry_group(bad)


def test_symmetric_point_cloud_gives_identical_projections_for_equivalent_poses():
    """V(S r) = V(r) for a point cloud closed under the group; poses A and A S project it to the same image."""
    G = symmetry_group("D3")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=gen, dtype=D)
    cloud = torch.einsum("gij,pj->gpi", G, x).reshape(-1, 3)  # symmetric map as a set of points
    A = random_rotations(4, generator=gen, dtype=D)
    poses = symmetry_expand(A, "D3")  # [4, 6, 3, 3], A @ S
    # projection of V(A^T r): a map point x lands at r = A x, image = (r_x, r_y)
    ref = (cloud @ A.transpose(-1, -2))[..., :2]  # [4, P, 2]
    for s in range(G.shape[0]):
        img = (cloud @ poses[:, s].transpose(-1, -2))[..., :2]
        d = (img[:, :, None] - ref[:, None]).norm(dim=-1).min(-1).values.max()
        assert d < 1e-12
    # while S A (acting on the wrong side) does not reproduce the image
    wrong = (cloud @ (G[1] @ A).transpose(-1, -2))[..., :2]
    assert (wrong[:, :, None] - ref[:, None]).norm(dim=-1).min(-1).values.max() > 1e-3


@pytest.mark.parametrize("name", ["C1", "C4", "D3", "T", "O", "I"])
def test_asymmetric_unit_picks_one_member_of_each_orbit(name):
    G = symmetry_group(name)
    gen = torch.Generator().manual_seed(1)
    d = torch.randn(3000, 3, generator=gen, dtype=D)
    d = d / d.norm(dim=-1, keepdim=True)
    # viewing direction of A S is S^T d; the orbit of d is {S d}
    orbit = torch.einsum("gij,nj->ngi", G, d)
    inside = asymmetric_unit_mask(orbit, G)
    assert (inside.sum(-1) == 1).all()
    frac = asymmetric_unit_mask(d, name).to(D).mean()
    assert abs(float(frac) - 1 / G.shape[0]) < 4 * math.sqrt(1 / G.shape[0] / 3000) + 1e-9
