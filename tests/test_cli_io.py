"""CLI: info, convert, pdb2map through cryoscope.cli.main.main(argv)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryoscope.cli.main import main
from cryoscope.geometry.rotations import geodesic_distance
from cryoscope.io.cryosparc import read_cs
from cryoscope.io.mrc import read_map
from cryoscope.io.star import read_star

DATA = Path(__file__).parent / "data"
META, PM = DATA / "metadata", DATA / "particles_meta"


@pytest.mark.parametrize(
    "path, expect",
    [
        (META / "relion31.star", ["particles: 5", "optics groups: 1", "pixel size (Å): 2.806", "rlnOriginXAngst"]),
        (META / "sample_particles_relion30.star", ["particles: 17", "missing: 1", "sample.mrcs"]),
        (META / "cryosparc_P12_J24_001_particles.cs", ["particles: 2019", "alignments3D/pose: float32(3,)"]),
        (PM / "toy_rot_trans.pkl", ["cryoDRGN poses", "(1000, 3, 3)", "(1000, 2)"]),
        (META / "ctf1.pkl", ["cryoDRGN CTF table", "(5, 9)"]),
        (PM / "toymodel_small_nocenter.mrc", ["30 x 30 x 30", "mode: 2 (float32)", "voxel size (Å): 1"]),
    ],
)
def test_info(capsys, path, expect):
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    for e in expect:
        assert e in out


def test_info_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty.star").write_text("")
    assert main(["info", str(tmp_path / "empty.star")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "empty.star: empty file" in err


def test_convert_star_cs_pkl(tmp_path, capsys):
    src = META / "relion31.star"
    assert main(["convert", str(src), str(tmp_path / "o.cs")]) == 0
    assert main(["convert", str(tmp_path / "o.cs"), str(tmp_path / "o.star"), "--format", "relion30"]) == 0
    assert main(["convert", str(tmp_path / "o.star"), str(tmp_path / "p.pkl"), "--ctf-out", str(tmp_path / "c.pkl")]) == 0
    back = ["convert", str(tmp_path / "p.pkl"), str(tmp_path / "back.star"), "--ctf", str(tmp_path / "c.pkl")]
    assert main(back) == 2 and "--images" in capsys.readouterr().err  # a pkl names no images
    assert main(back + ["--images", str(META / "relion31.mrcs")]) == 0
    a, b = read_star(src), read_star(tmp_path / "back.star")
    assert geodesic_distance(a.rotations, b.rotations).max() < 1e-4
    assert (a.shifts_A - b.shifts_A).abs().max() < 1e-4
    assert (a.defocus_u - b.defocus_u).abs().max() < 1e-2
    assert read_cs(tmp_path / "o.cs").n == 5


def test_convert_failures_write_nothing(tmp_path, capsys):
    out = tmp_path / "o.star"
    assert main(["convert", str(PM / "toy_projections.star"), str(out)]) == 2  # no pixel size
    assert "pixel size" in capsys.readouterr().err and not out.exists()
    assert main(["convert", str(PM / "toy_projections.star"), str(out), "--pixel-size", "1.0"]) == 0
    assert read_star(out).pixel_size[0] == 1.0
    assert main(["convert", str(PM / "toy_rot_trans.pkl"), str(tmp_path / "x.star")]) == 2  # translations need a box
    assert main(["convert", str(out), str(out)]) == 2  # never overwrite the input
    assert list(tmp_path.iterdir()) == [out]


def test_pdb2map(tmp_path, capsys):
    from cryoscope.io.pdb import default_structure_path

    out = tmp_path / "adk.mrc"
    args = ["pdb2map", str(default_structure_path()), "-o", str(out), "--box", "48", "--voxel-size", "2.0"]
    assert main(args + ["--resolution", "6"]) == 0
    m = read_map(out)
    assert m.data.shape == (48, 48, 48) and m.voxel_size == 2.0 and m.data.sum() > 0
    assert main(args + ["--resolution", "6", "--bfactor", "20"]) == 2
    assert main(["pdb2map", str(tmp_path / "none.pdb"), "-o", str(tmp_path / "x.mrc")]) == 2
    assert not (tmp_path / "x.mrc").exists()
