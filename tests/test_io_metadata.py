"""Particle metadata: every shared STAR/.cs/.pkl parses (or fails for a named reason), round trips,
and the cryoSPARC / cryoDRGN <-> RELION conventions, pinned on real files (see docs/io.md)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from cryoscope.errors import (
    CryoscopeError,
    InputFormatError,
    InvalidValueError,
    MissingDataError,
)
from cryoscope.geometry.rotations import geodesic_distance
from cryoscope.io.convert import read_metadata, write_metadata
from cryoscope.io.cryodrgn import load_pkl, read_cryodrgn, write_ctf_pkl, write_pose_pkl
from cryoscope.io.cryosparc import load_cs, read_cs, write_cs
from cryoscope.io.metadata import CTF_FIELDS
from cryoscope.io.mrc import ParticleStack, read_map, write_stack
from cryoscope.io.star import read_star, write_star

DATA = Path(__file__).parent / "data"
META, PM = DATA / "metadata", DATA / "particles_meta"
ALL_FILES = sorted(p for d in (META, PM) for p in d.iterdir() if p.suffix in (".star", ".cs", ".pkl"))
EXPECTED_FAILURES = {"FinalRefinement-OriginalParticles-PfCRT.star": "missing required column rlnAmplitudeContrast"}


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_every_shared_file_parses_or_names_the_problem(path):
    if path.name in EXPECTED_FAILURES:
        with pytest.raises(MissingDataError, match=EXPECTED_FAILURES[path.name]) as err:
            read_metadata(path)
        assert path.name in str(err.value) and "\n" not in str(err.value)
        return
    meta = read_metadata(path, box=30 if path.name in ("toy_rot_trans.pkl", "hand_rot.pkl") else None,
                         pixel_size=1.0 if path.suffix == ".pkl" else None)  # fmt: skip
    assert meta.n > 0
    if meta.image_names is not None:
        files = {p for p, _ in meta.resolved_images()}
        if not all(f.exists() for f in files):  # metadata reads; images fail clearly when accessed
            with pytest.raises(MissingDataError, match="not found"):
                meta.images()


def _same_ctf(a, b, rtol=1e-6):
    for f in CTF_FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        if x is not None and y is not None:
            torch.testing.assert_close(x, y, rtol=rtol, atol=1e-5, msg=f)


@pytest.mark.parametrize("name", ["relion31.star", "relion31.6opticsgroups.star", "relion5.star",
                                  "sample_particles_relion30.star", "sta_testing_bin8.star"])  # fmt: skip
@pytest.mark.parametrize("version", ["relion31", "relion30"])
def test_star_round_trip(tmp_path, name, version):
    a = read_star(META / name)
    write_star(tmp_path / "out.star", a, version=version)
    b = read_star(tmp_path / "out.star")
    assert (b.euler - a.euler).abs().max() < 1e-4
    assert (b.shifts_A - a.shifts_A).abs().max() < 1e-4
    torch.testing.assert_close(b.pixel_size, a.pixel_size)
    _same_ctf(a, b)
    assert [p for p, _ in b.resolved_images()] == [p for p, _ in a.resolved_images()]
    assert [i for _, i in b.image_names] == [i for _, i in a.image_names]


def test_relion30_pixel_size_and_origins():
    m = read_star(META / "sample_particles_relion30.star")
    import starfile

    df = starfile.read(META / "sample_particles_relion30.star")
    px = df["rlnDetectorPixelSize"].to_numpy() * 1e4 / df["rlnMagnification"].to_numpy()
    np.testing.assert_allclose(m.pixel_size.numpy(), px)
    np.testing.assert_allclose(m.shifts_A[:, 0].numpy(), df["rlnOriginX"].to_numpy() * px)


def test_cs_and_star_of_the_same_particles_agree():
    """EMPIAR-10076: one STAR and one .cs for the same 7 images pin CTF angle units, indices and pixel size."""
    s = read_star(PM / "empiar_10076_7.star")
    c = read_cs(PM / "empiar_10076_7.cs")
    _same_ctf(s, c, rtol=1e-5)
    torch.testing.assert_close(c.pixel_size, s.pixel_size, rtol=1e-6, atol=0)
    assert s.resolved_images() == c.resolved_images()  # STAR 1-based index@file == blob/idx 0-based


def test_cs_round_trip_and_cs_to_star(tmp_path):
    a = read_cs(META / "cryosparc_P12_J24_001_particles.cs")
    write_cs(tmp_path / "o.cs", a)
    b = read_cs(tmp_path / "o.cs")
    assert geodesic_distance(a.rotations, b.rotations).max() < 1e-4
    write_star(tmp_path / "o.star", a)
    s = read_star(tmp_path / "o.star")
    assert geodesic_distance(a.rotations, s.rotations).max() < 1e-4
    assert (s.shifts_A - a.shifts_A).abs().max() < 1e-4
    _same_ctf(a, s)
    arr = load_cs(META / "cryosparc_P12_J24_001_particles.cs")
    # RELION origin in Å = cryoSPARC shift (pixels) * pixel size, same sign
    np.testing.assert_allclose(s.shifts_A.numpy(), arr["alignments3D/shift"] * arr["alignments3D/psize_A"][:, None], atol=1e-4)


def test_cs_pose_matches_the_cryodrgn_parse_pose_csparc_relation(tmp_path):
    """cryoDRGN's parser: rot = expmap(pose)^T, trans = shift / D. Checked against an independent rotvec implementation."""
    arr = load_cs(META / "cryosparc_P12_J24_001_particles.cs")
    meta = read_cs(META / "cryosparc_P12_J24_001_particles.cs")
    write_pose_pkl(tmp_path / "pose.pkl", meta)
    rot, trans = pickle.load(open(tmp_path / "pose.pkl", "rb"))
    expected = Rotation.from_rotvec(arr["alignments3D/pose"].astype(np.float64)).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(rot, expected, atol=1e-6)
    np.testing.assert_allclose(trans, arr["alignments3D/shift"] / arr["blob/shape"][:, :1], atol=1e-6)


def _project(volume: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """image(x, y) = sum_z V(A^T (x, y, z)), trilinear, centre N//2 (docs/conventions.md)."""
    N = volume.shape[0]
    ar = torch.arange(N, dtype=torch.float64) - N // 2
    z, y, x = torch.meshgrid(ar, ar, ar, indexing="ij")
    r = torch.stack([x, y, z], -1).reshape(-1, 3)
    out = []
    for a in A:
        g = ((r @ a) + N // 2) / (N - 1) * 2 - 1  # rows of (A^T r)
        v = F.grid_sample(volume[None, None].double(), g.reshape(1, N, N, N, 3), align_corners=True)
        out.append(v[0, 0].sum(0))
    return torch.stack(out)


def _corr(a, b):
    a = a - a.mean((-1, -2), keepdim=True)
    b = b - b.mean((-1, -2), keepdim=True)
    return (a * b).sum((-1, -2)) / ((a * a).sum((-1, -2)) * (b * b).sum((-1, -2))).sqrt()


def test_cryodrgn_rotations_are_relion_matrices_toy_projections():
    """The toy images are projections of the toy volume with the pkl poses: the cryoDRGN matrix is RELION's A."""
    vol = read_map(PM / "toymodel_small_nocenter.mrc").data
    images = ParticleStack.open(PM / "toy_projections_first12.mrcs")[:].double()
    meta = read_cryodrgn(PM / "toy_rot_trans.pkl", box=30, pixel_size=1.0).subset(slice(0, 12))
    assert _corr(_project(vol, meta.rotations), images).min() > 0.999
    assert _corr(_project(vol, meta.rotations.transpose(1, 2)), images).mean() < 0.6


def test_cryodrgn_round_trips_and_translation_units(tmp_path):
    meta = read_cryodrgn(PM / "toy_rot_trans.pkl", box=30, pixel_size=1.5)
    _, trans = load_pkl(PM / "toy_rot_trans.pkl")
    np.testing.assert_allclose(meta.shifts_A.numpy(), trans * 30 * 1.5)  # origin_px = trans * D
    write_pose_pkl(tmp_path / "p.pkl", meta)
    back = read_cryodrgn(tmp_path / "p.pkl", box=30, pixel_size=1.5)
    assert geodesic_distance(meta.rotations, back.rotations).max() < 1e-4
    torch.testing.assert_close(back.shifts_A, meta.shifts_A)
    ctf = read_cryodrgn(ctf_path=META / "ctf1.pkl")
    write_ctf_pkl(tmp_path / "c.pkl", ctf)
    _same_ctf(ctf, read_cryodrgn(ctf_path=tmp_path / "c.pkl"))


def test_star_to_cryodrgn_to_star(tmp_path):
    a = read_star(META / "relion31.star")
    write_metadata(tmp_path / "p.pkl", a, ctf_out=tmp_path / "c.pkl")
    b = read_cryodrgn(tmp_path / "p.pkl", tmp_path / "c.pkl")
    assert geodesic_distance(a.rotations, b.rotations).max() < 1e-4
    torch.testing.assert_close(b.shifts_A, a.shifts_A, atol=1e-4, rtol=0)
    _same_ctf(a, b, rtol=1e-6)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_restricted_unpickler_rejects_code(tmp_path):
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(InputFormatError, match="evil.pkl.*forbidden object builtins.print"):
        load_pkl(tmp_path / "evil.pkl")
    (tmp_path / "dict.pkl").write_bytes(pickle.dumps({"rot": np.eye(3)}))
    with pytest.raises(InputFormatError, match="dict.pkl"):
        load_pkl(tmp_path / "dict.pkl")


STAR31 = (META / "relion31.star").read_text()


def _bad_star(tmp_path, text, name="bad.star"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_bad_star_inputs(tmp_path):
    with pytest.raises(MissingDataError, match="rlnImageName"):
        read_star(_bad_star(tmp_path, STAR31.replace("_rlnImageName #22", "_rlnSomethingElse #22")))
    with pytest.raises(MissingDataError, match="rlnAnglePsi"):
        read_star(_bad_star(tmp_path, STAR31.replace("_rlnAnglePsi #15", "_rlnOther #15")))
    with pytest.raises(InvalidValueError, match="rlnDefocusU: value 'abc' in row 2"):
        lines = STAR31.splitlines()
        k = [i for i, l in enumerate(lines) if l.strip().startswith("3277.000000")][1]
        fields = lines[k].split()
        fields[6] = "abc"
        lines[k] = " ".join(fields)
        read_star(_bad_star(tmp_path, "\n".join(lines)))
    with pytest.raises(InvalidValueError, match="NaN/Inf"):
        lines = STAR31.splitlines()
        k = [i for i, l in enumerate(lines) if l.strip().startswith("3277.000000")][0]
        fields = lines[k].split()
        fields[12] = "nan"
        lines[k] = " ".join(fields)
        read_star(_bad_star(tmp_path, "\n".join(lines)))
    with pytest.raises(InputFormatError, match="empty"):
        read_star(_bad_star(tmp_path, ""))


def test_image_access_errors(tmp_path):
    write_stack(tmp_path / "relion31.mrcs", torch.randn(3, 256, 256), 2.806)
    p = _bad_star(tmp_path, STAR31)
    meta = read_star(p)
    with pytest.raises(InvalidValueError, match="index 4 out of range.*has 3 images"):
        meta.images()
    write_stack(tmp_path / "relion31.mrcs", torch.randn(5, 256, 256), 1.0)
    with pytest.raises(InvalidValueError, match="pixel size 2.806 Å in the metadata differs from 1 Å"):
        meta.images()
    assert len(meta.images(check_pixel_size=False)) == 5
    (tmp_path / "relion31.mrcs").unlink()
    with pytest.raises(MissingDataError, match="relion31.mrcs not found .*5 particles"):
        meta.images()
    # writing over the input is refused and leaves it intact
    with pytest.raises(InvalidValueError, match="overwrite"):
        write_star(p, meta, protect=(p,))
    assert p.read_text() == STAR31


def test_failed_conversion_writes_nothing(tmp_path):
    meta = read_star(PM / "toy_projections.star")  # no pixel size
    for out in ("o.star", "o.cs", "o.pkl"):
        with pytest.raises(CryoscopeError):
            write_metadata(tmp_path / out, meta)
    assert list(tmp_path.iterdir()) == []


def test_half_sets_survive_star_and_cs_round_trips(tmp_path):
    """cryoSPARC's alignments3D/split (0/1) is RELION's rlnRandomSubset (1/2); both directions, both formats."""
    from dataclasses import replace

    arr = load_cs(META / "cryosparc_P12_J24_001_particles.cs")
    a = read_cs(META / "cryosparc_P12_J24_001_particles.cs")
    np.testing.assert_array_equal(a.random_subset.numpy(), arr["alignments3D/split"].astype(np.int64) + 1)
    write_star(tmp_path / "o.star", a)
    s = read_star(tmp_path / "o.star")
    assert torch.equal(s.random_subset, a.random_subset)
    write_cs(tmp_path / "o.cs", s)
    np.testing.assert_array_equal(load_cs(tmp_path / "o.cs")["alignments3D/split"], arr["alignments3D/split"])
    import starfile

    relion = read_star(META / "relion31.star")
    np.testing.assert_array_equal(relion.random_subset.numpy(), starfile.read(META / "relion31.star")["particles"]["rlnRandomSubset"].to_numpy())
    assert read_star(PM / "empiar_10076_7.star").random_subset is None
    with pytest.raises(InvalidValueError, match=r"rlnRandomSubset\) must be 1 or 2, got 3 \(particle 2\)"):
        replace(s, random_subset=torch.tensor([1, 3] + [2] * (s.n - 2)))


def test_half_sets_from_the_file_when_it_has_both():
    from cryoscope.reconstruction.halfmaps import half_sets, random_half_sets

    own = torch.tensor([1, 2, 2, 1, 2, 1, 1])
    half, from_file = half_sets(7, 0, own)
    assert from_file and torch.equal(half, own - 1)
    half, from_file = half_sets(7, 4, torch.ones(7, dtype=torch.long))  # one half only: a new random split
    assert not from_file and torch.equal(half, random_half_sets(7, 4))
    assert torch.equal(half_sets(7, 4)[0], random_half_sets(7, 4))
