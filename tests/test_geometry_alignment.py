"""Gauge alignment: which side G, symmetry and hand act on (checked with point-cloud projections), and recovery of G."""

from __future__ import annotations

import math

import pytest
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.alignment import (
    align_poses,
    apply_alignment,
    hand_flip_poses,
    map_transform,
    pose_error,
    rotate_poses,
)
from cryoscope.geometry.rotations import (
    axis_angle_to_matrix,
    euler_to_matrix,
    geodesic_distance,
)
from cryoscope.geometry.sampling import random_rotations
from cryoscope.geometry.symmetry import symmetry_group

D = torch.float64
F = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=D))


def project(points: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Images [n, P, 2] of a point-cloud map under poses A [n, 3, 3]: image = projection along z of V(A^T r).

    A map point x sits at r = A x in the rotated map; dropping z gives its image position.
    """
    return (points @ A.transpose(-1, -2))[..., :2]


@pytest.fixture
def cloud() -> torch.Tensor:
    return torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=D)


def test_rotated_map_and_poses_give_identical_images(cloud):
    gen = torch.Generator().manual_seed(1)
    A = random_rotations(20, generator=gen, dtype=D)
    G = random_rotations(1, generator=gen, dtype=D)[0]
    rotated_cloud = cloud @ G.T  # V'(r) = V(G^T r): the point x moves to G x
    assert torch.allclose(project(rotated_cloud, rotate_poses(A, G)), project(cloud, A), atol=1e-13)
    # the other side does not work
    assert (project(rotated_cloud, A @ G) - project(cloud, A)).abs().max() > 0.1


def test_mirrored_map_with_flipped_poses_gives_identical_images(cloud):
    A = random_rotations(20, generator=torch.Generator().manual_seed(2), dtype=D)
    mirrored = cloud @ F  # V'(r) = V(F r): the point (x, y, z) moves to (x, y, -z)
    Af = hand_flip_poses(A)
    assert torch.allclose(Af, F @ A @ F)
    assert (torch.linalg.det(Af) - 1).abs().max() < 1e-13
    assert torch.allclose(project(mirrored, Af), project(cloud, A), atol=1e-13)
    assert (project(mirrored, A) - project(cloud, A)).abs().max() > 0.1


def test_hand_flip_in_euler_angles():
    e = torch.tensor([[30.0, 50.0, -70.0], [-100.0, 120.0, 10.0]], dtype=D)
    Af = hand_flip_poses(euler_to_matrix(e))
    assert torch.allclose(Af, euler_to_matrix(e * torch.tensor([1.0, -1.0, 1.0], dtype=D)), atol=1e-14)
    assert torch.allclose(Af, euler_to_matrix(e + torch.tensor([180.0, 0.0, 180.0], dtype=D)), atol=1e-14)


def _perturb(R: torch.Tensor, sigma_deg: float, gen: torch.Generator) -> torch.Tensor:
    eps = torch.randn(R.shape[0], 3, generator=gen, dtype=D) * math.radians(sigma_deg)
    return R @ axis_angle_to_matrix(eps)


def _gauge_error(G_est: torch.Tensor, G_true: torch.Tensor, symmetry: str) -> float:
    """Angle (degrees) between G_est and G_true modulo the right action of the group."""
    S = symmetry_group(symmetry)
    return float(geodesic_distance(G_est.expand_as(S), G_true @ S).min())


@pytest.mark.parametrize("symmetry, flip", [("C1", False), ("C1", True), ("D7", True), ("I", False), ("O", True)])
def test_recover_global_rotation_and_hand_from_noisy_poses(symmetry, flip):
    gen = torch.Generator().manual_seed(3)
    n, sigma = 1000, 3.0
    A_true = random_rotations(n, generator=gen, dtype=D)
    G_true = random_rotations(1, generator=gen, dtype=D)[0]
    S = symmetry_group(symmetry)
    s_idx = torch.randint(0, S.shape[0], (n,), generator=gen)
    A_est = rotate_poses(_perturb(A_true @ S[s_idx], sigma, gen), G_true)
    if flip:
        A_est = hand_flip_poses(A_est)
    outliers = torch.rand(n, generator=gen) < 0.1
    A_est[outliers] = random_rotations(int(outliers.sum()), generator=gen, dtype=D)

    G, found_flip, err = align_poses(A_est, A_true, symmetry=symmetry, allow_flip=True)
    assert found_flip == flip
    assert _gauge_error(G, G_true, symmetry) < 0.2 * sigma
    # inlier errors follow the injected noise: |eps| has mean sigma * sqrt(8 / pi) for 3-D Gaussian eps
    inlier_mean = float(err[~outliers].mean())
    assert abs(inlier_mean - sigma * math.sqrt(8 / math.pi)) < 0.1 * sigma
    assert float(err[outliers].median()) > 5 * sigma
    # the aligned poses match the reference up to symmetry and noise
    aligned = apply_alignment(A_est, G, found_flip)
    K = S.shape[0]
    direct = geodesic_distance(aligned[:, None].expand(-1, K, -1, -1), A_true[:, None] @ S[None]).min(-1).values
    assert torch.allclose(direct, err, atol=1e-9)


@pytest.mark.parametrize("symmetry", ["C1", "C4", "D3", "T", "I1"])
def test_errors_vanish_for_poses_differing_only_by_symmetry(symmetry):
    gen = torch.Generator().manual_seed(4)
    A = random_rotations(300, generator=gen, dtype=D)
    S = symmetry_group(symmetry)
    A_sym = A @ S[torch.randint(0, S.shape[0], (300,), generator=gen)]
    assert pose_error(A_sym, A, symmetry=symmetry, align=False).max() <= 1e-6
    assert pose_error(A_sym, A, symmetry=symmetry).max() <= 1e-6
    G = random_rotations(1, generator=gen, dtype=D)[0]
    assert pose_error(hand_flip_poses(rotate_poses(A_sym, G)), A, symmetry=symmetry).max() <= 1e-6
    if symmetry != "C1":  # without the group the same poses look wrong
        assert pose_error(A_sym, A, symmetry="C1", align=False).max() > 10


def test_map_transform_superposes_the_estimated_map(cloud):
    """The estimated map is the reference rotated by G and mirrored; V_true(r) = V_est(M r) recovers it."""
    gen = torch.Generator().manual_seed(5)
    A_true = random_rotations(200, generator=gen, dtype=D)
    G_true = random_rotations(1, generator=gen, dtype=D)[0]
    est_cloud = cloud @ (F @ G_true).T  # V_est(r) = V_true(G^T F r)
    A_est = hand_flip_poses(rotate_poses(A_true, G_true))
    assert torch.allclose(project(est_cloud, A_est), project(cloud, A_true), atol=1e-12)  # consistent data set
    G, flip, err = align_poses(A_est, A_true)
    assert flip and err.max() < 1e-6
    M = map_transform(G, flip)
    # V_true(r) = V_est(M r): a reference point x appears in the estimated map at M x
    assert torch.allclose(cloud @ M.T, est_cloud, atol=1e-10)


def test_no_flip_when_not_allowed_and_float32_inputs():
    gen = torch.Generator().manual_seed(6)
    A = random_rotations(100, generator=gen)
    G_true = random_rotations(1, generator=gen)[0]
    G, flip, err = align_poses(rotate_poses(A, G_true), A, allow_flip=False)
    assert not flip and G.dtype == torch.float32 and err.dtype == torch.float32
    assert float(geodesic_distance(G.double(), G_true.double())) < 1e-3 and err.max() < 1e-2


def test_bad_inputs_raise_clear_errors():
    A = random_rotations(5, dtype=D)
    with pytest.raises(InvalidValueError):
        align_poses(A, A[:4])
    with pytest.raises(InvalidValueError):
        align_poses(A[:0], A[:0])
    bad = A.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InvalidValueError):
        pose_error(bad, A)
    with pytest.raises(InvalidValueError):
        pose_error(A, A, symmetry="C2v")


@pytest.mark.parametrize("flip", [False, True])
def test_poses_for_moved_map_reproduce_the_images(flip):
    """A map moved by `apply_map_alignment` (hand, rotation, shift), imaged at the transformed poses and origins,
    gives the original particle images (up to the cubic resampling of the map)."""
    from cryoscope.geometry.alignment import poses_for_moved_map
    from cryoscope.physics.forward import ImageFormation
    from cryoscope.representations.voxel import VoxelMap
    from cryoscope.validation.align import Alignment, apply_map_alignment

    gen = torch.Generator().manual_seed(7)
    n, box = 12, 32
    ax = torch.arange(box, dtype=D) - box // 2
    r = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij")[::-1], -1)  # (x, y, z) per voxel
    centres = (torch.rand(8, 3, generator=gen, dtype=D) - 0.5) * 12
    vol = sum(torch.exp(-((r - c) ** 2).sum(-1) / (2 * 2.0**2)) for c in centres)
    A = random_rotations(n, generator=gen, dtype=D)
    origins = (torch.rand(n, 2, generator=gen, dtype=D) - 0.5) * 4
    R = random_rotations(1, generator=gen, dtype=D)[0]
    shift = torch.tensor([1.7, -2.2, 0.9], dtype=D)
    moved = apply_map_alignment(vol, Alignment(R, shift, flip, 0.0))
    A2, o2 = poses_for_moved_map(A, origins, R, shift, flip)
    form = ImageFormation()
    images = form(VoxelMap(vol, 1.0), A, origins_px=origins)
    again = form(VoxelMap(moved, 1.0), A2, origins_px=o2)
    assert (torch.linalg.det(A2) - 1).abs().max() < 1e-12
    assert (again - images).norm() / images.norm() < 0.04  # measured 0.022: resampling (cubic, then trilinear slices)
    wrong_sign = form(VoxelMap(moved, 1.0), A2, origins_px=2 * origins - o2)  # the shift's image moved the other way
    assert (wrong_sign - images).norm() / images.norm() > 0.5
