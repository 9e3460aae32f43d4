"""`cryoscope fsc` and `cryoscope align` through cryoscope.cli.main.main(argv)."""

from __future__ import annotations

import json

import pytest
import starfile
import torch

from cryoscope.cli.main import main
from cryoscope.geometry.rotations import matrix_to_euler
from cryoscope.geometry.sampling import random_rotations
from cryoscope.io.mrc import read_map, write_map
from cryoscope.report.html import PNG_SIGNATURE

N = 32
VOXEL = 1.5


def _gaussians(centres: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    c = torch.arange(N, dtype=torch.float32) - N // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    r = torch.stack([x, y, z], -1)
    return sum(torch.exp(-((r - p) ** 2).sum(-1) / (2 * w**2)) for p, w in zip(centres, widths))


@pytest.fixture(scope="module")
def model():
    g = torch.Generator().manual_seed(5)
    return torch.randn(6, 3, generator=g) * 2.5, torch.rand(6, generator=g) + 1.0


def test_fsc_command_prints_resolutions_and_writes_outputs(tmp_path, model, capsys):
    truth = _gaussians(*model)
    write_map(tmp_path / "a.mrc", truth + 0.05 * torch.randn(N, N, N), VOXEL)
    write_map(tmp_path / "b.mrc", truth + 0.05 * torch.randn(N, N, N), VOXEL)
    write_map(tmp_path / "mask.mrc", torch.ones(N, N, N), VOXEL)
    args = [str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "--mask", str(tmp_path / "mask.mrc")]
    assert main(["fsc", *args, "-o", str(tmp_path / "fsc.png"), "--json", str(tmp_path / "fsc.json")]) == 0
    out = capsys.readouterr().out
    assert "FSC 0.143:" in out and "FSC 0.5:" in out and "Å" in out and "cycles/pixel" in out
    assert (tmp_path / "fsc.png").read_bytes()[:8] == PNG_SIGNATURE
    metrics = json.loads((tmp_path / "fsc.json").read_text())
    assert len(metrics["fsc"]) == N // 2 + 1 and metrics["voxel_size"] == pytest.approx(VOXEL)
    # smooth signal + white noise: FSC falls with frequency; the 0.5 crossing comes first
    assert metrics["resolution_0.5_angstrom"] >= metrics["resolution_0.143_angstrom"] >= 2 * VOXEL
    f = metrics["resolution_0.5_cycles_per_pixel"]
    assert metrics["resolution_0.5_angstrom"] == pytest.approx(VOXEL / f)


def test_fsc_command_rejects_mismatched_maps(tmp_path, capsys):
    write_map(tmp_path / "a.mrc", torch.zeros(8, 8, 8), 1.0)
    write_map(tmp_path / "b.mrc", torch.zeros(8, 8, 8), 2.0)
    write_map(tmp_path / "c.mrc", torch.zeros(10, 10, 10), 1.0)
    assert main(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc")]) == 2
    assert "voxel size" in capsys.readouterr().err
    assert main(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "c.mrc")]) == 2
    err = capsys.readouterr().err
    assert "c.mrc" in err and len(err.strip().splitlines()) == 1
    assert main(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "missing.mrc")]) == 2


def test_align_command_writes_aligned_map(tmp_path, model, capsys):
    centres, widths = model
    reference = _gaussians(centres, widths)
    R0 = random_rotations(1, torch.Generator().manual_seed(21))[0]
    s0 = torch.tensor([1.5, -2.0, 1.0])
    moved = _gaussians(centres @ R0.T + s0, widths)
    write_map(tmp_path / "ref.mrc", reference, VOXEL)
    write_map(tmp_path / "map.mrc", moved, VOXEL)
    out = tmp_path / "aligned.mrc"
    argv = ["align", str(tmp_path / "map.mrc"), str(tmp_path / "ref.mrc"), "-o", str(out), "--no-flip", "--json", str(tmp_path / "al.json")]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "hand: unchanged" in text and "rotation (rot, tilt, psi)" in text and "FSC 0.143:" in text
    aligned = read_map(out)
    assert aligned.voxel_size == pytest.approx(VOXEL)
    cc = torch.corrcoef(torch.stack([aligned.data.flatten(), reference.flatten()]))[0, 1]
    assert cc > 0.99
    metrics = json.loads((tmp_path / "al.json").read_text())
    assert metrics["flipped"] is False
    assert metrics["euler_rot_tilt_psi_deg"] == pytest.approx(matrix_to_euler(R0.T.double()).tolist(), abs=2.0)
    assert torch.allclose(torch.tensor(metrics["shift_voxels_xyz"]), -(R0.T @ s0), atol=0.5)
    # refusing to overwrite an input
    assert main(["align", str(tmp_path / "map.mrc"), str(tmp_path / "ref.mrc"), "-o", str(tmp_path / "map.mrc")]) == 2


def test_align_command_moves_particle_poses_with_the_map(tmp_path, model, capsys):
    """Particles imaged from MAP, with their poses moved by `align --particles`, are the images of REF at the new
    poses; every other STAR column is kept and image paths still resolve from another folder."""
    from cryoscope.io.metadata import ParticleMetadata
    from cryoscope.io.mrc import write_stack
    from cryoscope.io.star import read_star, read_star_blocks, write_star
    from cryoscope.physics.forward import ImageFormation
    from cryoscope.representations.voxel import VoxelMap

    centres, widths = model
    reference = _gaussians(centres, widths)
    R0 = random_rotations(1, torch.Generator().manual_seed(22))[0]
    moved = _gaussians(centres @ R0.T + torch.tensor([1.0, 2.0, -1.5]), widths)
    write_map(tmp_path / "ref.mrc", reference, VOXEL)
    write_map(tmp_path / "map.mrc", moved, VOXEL)
    g = torch.Generator().manual_seed(23)
    n = 16
    A = random_rotations(n, g).double()
    origins = (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * 4
    images = ImageFormation()(VoxelMap(moved.double(), VOXEL), A, origins_px=origins)
    write_stack(tmp_path / "parts.mrcs", images.float(), VOXEL)
    meta = ParticleMetadata(n=n, rotations=A, shifts_A=origins * VOXEL, pixel_size=torch.full((n,), VOXEL, dtype=torch.float64),
                            box=N, image_names=[("parts.mrcs", i) for i in range(n)], root=tmp_path)
    subsets = torch.arange(n) % 2 + 1
    write_star(tmp_path / "parts.star", meta, extra={"rlnRandomSubset": subsets.numpy()})
    with open(tmp_path / "parts.star", "a") as f:  # a key-value block, as RELION's data_general
        f.write("\ndata_general\n\n_rlnNrClasses 1\n")
    (tmp_path / "out").mkdir()
    moved_star = tmp_path / "out" / "moved.star"
    argv = ["align", str(tmp_path / "map.mrc"), str(tmp_path / "ref.mrc"), "-o", str(tmp_path / "out" / "aligned.mrc"),
            "--no-flip", "--particles", str(tmp_path / "parts.star"), "--particles-out", str(moved_star)]
    assert main(argv) == 0
    assert "moved.star" in capsys.readouterr().out
    new = read_star(moved_star)
    stack = new.images()
    assert torch.equal(stack[torch.arange(n)].float(), images.float())  # image paths resolve from out/
    assert (read_star_blocks(moved_star)["particles"]["rlnRandomSubset"].to_numpy() == subsets.numpy()).all()
    assert int(starfile.read(moved_star, always_dict=True)["general"]["rlnNrClasses"]) == 1
    form = ImageFormation()
    again = form(VoxelMap(reference.double(), VOXEL), new.rotations, origins_px=new.shifts_A / VOXEL)
    stale = form(VoxelMap(reference.double(), VOXEL), A, origins_px=origins)
    assert (again - images).norm() / images.norm() < 0.05  # measured 0.016 (map resampling), stale poses 1.05
    assert (stale - images).norm() / images.norm() > 0.5
    # one without the other is refused
    assert main(argv[:-2]) == 2
