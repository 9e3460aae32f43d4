"""Map-to-map alignment recovers a known rotation, shift and hand."""

from __future__ import annotations

import pytest
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.resample import flip_hand
from cryoscope.geometry.rotations import geodesic_distance
from cryoscope.geometry.sampling import random_rotations
from cryoscope.validation.align import (
    Alignment,
    align_maps,
    apply_map_alignment,
    fsc_after_alignment,
)

N = 32


def _gaussians(centres: torch.Tensor, widths: torch.Tensor, amps: torch.Tensor) -> torch.Tensor:
    """Sum of isotropic Gaussians (centres in voxels, x y z, about the box centre N // 2)."""
    c = torch.arange(N, dtype=torch.float32) - N // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    r = torch.stack([x, y, z], -1)
    return sum(a * torch.exp(-((r - p) ** 2).sum(-1) / (2 * w**2)) for p, w, a in zip(centres, widths, amps))


@pytest.fixture(scope="module")
def model():
    # asymmetric, well inside the box; six blobs are only weakly chiral (the mirror image, best rotated,
    # also correlates at > 0.99), so the hand must be decided after local refinement
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(6, 3, generator=g) * 2.5
    widths = torch.rand(6, generator=g) + 1.0
    amps = torch.rand(6, generator=g) + 0.5
    return centres, widths, amps


def _moved(model, R0: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
    """The reference rotated by R0 then shifted by s0: V(R0^T (r - s0)), rendered analytically."""
    centres, widths, amps = model
    return _gaussians(centres @ R0.T + s0, widths, amps)


def test_alignment_recovers_rotation_and_shift(model):
    reference = _gaussians(*model)
    R0 = random_rotations(1, torch.Generator().manual_seed(11))[0]
    s0 = torch.tensor([2.5, -1.5, 3.0])
    moved = _moved(model, R0, s0)
    al = align_maps(moved, reference, flip=False)
    # moved(R^T (r - s)) = reference(r) requires R = R0^T and s = -R0^T s0
    assert float(geodesic_distance(al.R, R0.T)) < 3.0
    assert float((al.shift + R0.T @ s0).norm()) < 0.5
    assert not al.flipped
    assert al.cc > 0.99


def test_alignment_recovers_hand_and_fsc(model):
    reference = _gaussians(*model)
    R0 = random_rotations(1, torch.Generator().manual_seed(21))[0]
    s0 = torch.tensor([1.5, -2.0, 1.0])
    mirrored = flip_hand(_moved(model, R0, s0))
    result = fsc_after_alignment(mirrored, reference, voxel_size=2.0)
    al = result.alignment
    assert al.flipped
    assert float(geodesic_distance(al.R, R0.T)) < 3.0
    assert float((al.shift + R0.T @ s0).norm()) < 0.5
    shells = result.frequencies <= 0.3
    assert result.fsc[shells].min() > 0.9
    assert result.resolution_05[0] > 0.3 and result.resolution_05[1] == pytest.approx(2.0 / result.resolution_05[0])
    assert torch.allclose(result.aligned, apply_map_alignment(mirrored, al))


def test_apply_alignment_identity_and_errors(model):
    v = _gaussians(*model)
    ident = Alignment(torch.eye(3), torch.zeros(3), False, 1.0)
    assert torch.allclose(apply_map_alignment(v, ident), v, atol=1e-4)
    with pytest.raises(InvalidValueError):
        align_maps(v, v[:-1, :-1, :-1])
    bad = v.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InvalidValueError):
        align_maps(bad, v)
