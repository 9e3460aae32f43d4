"""`cryoscope gmm initial-model` as a user runs it: outputs, and a run stopped mid-way resumes to the same result."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import torch

from cryoscope.cli.main import main
from cryoscope.geometry.sampling import random_rotations
from cryoscope.io.checkpoint import CheckpointDir
from cryoscope.io.mrc import write_stack
from cryoscope.io.star import read_star
from cryoscope.physics import gmm

PX = 8.0


class Stop(Exception):
    """Stands for a kill right after a checkpoint was written."""


@pytest.fixture(scope="module")
def averages(tmp_path_factory):
    """8 noise-free projections (24², 8 Å/px) of a random 30-component mixture."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(30, 3, generator=g, dtype=torch.float64) * 20
    rot = random_rotations(8, g, dtype=torch.float64)
    images = gmm.project(centres, torch.full((30,), 1 / 30, dtype=torch.float64), torch.full((30,), 8.0, dtype=torch.float64), rot, 24, PX)
    path = tmp_path_factory.mktemp("avg") / "averages.mrcs"
    write_stack(path, images.float(), PX)
    return path


def _args(images, out, model):
    return ["gmm", "initial-model", str(images), "-o", str(out), "--model", model, "--restarts", "2", "--rounds", "2",
            "--initial-components", "10", "--components", "30", "--initial-box", "16", "--box", "24", "--initial-counts", "500",
            "--counts", "2000", "--n-rotations", "200", "--steps", "8", "--burn-in", "4", "--thin", "2", "--checkpoint-every", "3",
            "--seed", "3", "--no-progress"]


@pytest.mark.parametrize("model", ["poisson", "gaussian"])
def test_initial_model_outputs_and_resume_after_a_stop(averages, tmp_path, monkeypatch, model):
    full = tmp_path / "full"
    assert main(_args(averages, full, model)) == 0
    for name in ("map.mrc", "map_sd.mrc", "map_other_hand.mrc", "pseudoatoms.pdb", "poses.star", "params.json", "metrics.json"):
        assert (full / name).is_file(), name
    metrics = json.loads((full / "metrics.json").read_text())
    lps = [r["log_posterior"] for r in metrics["restarts"]]
    assert metrics["best_restart"] == int(np.argmax(lps)) and metrics["n_samples"] == 2
    meta = read_star(full / "poses.star")
    assert meta.n == 8 and torch.allclose(meta.rotations[0], torch.eye(3, dtype=torch.float64), atol=1e-9)  # the gauge
    with mrcfile.open(full / "map.mrc") as m:
        assert m.data.shape == (24, 24, 24) and abs(float(m.voxel_size.x) - PX) < 1e-4 and float(m.data.min()) >= 0

    # stop right after the second refinement checkpoint (sweep 6 of 8), as a kill would, then resume
    real_save = CheckpointDir.save
    calls = []

    def save_then_stop(self, iteration, state):
        real_save(self, iteration, state)
        calls.append(iteration)
        if state["refine"] is not None and len(state["refine"]["result"]["log_posterior"]) == 6:
            raise Stop

    cut = tmp_path / "cut"
    monkeypatch.setattr(CheckpointDir, "save", save_then_stop)
    with pytest.raises(Stop):
        main(_args(averages, cut, model))
    monkeypatch.setattr(CheckpointDir, "save", real_save)
    assert not (cut / "map.mrc").exists()
    assert main([*_args(averages, cut, model), "--resume"]) == 0
    for name in ("map.mrc", "map_sd.mrc"):
        with mrcfile.open(full / name) as a, mrcfile.open(cut / name) as b:
            assert np.array_equal(a.data, b.data), name
    assert main([*_args(averages, cut, model), "--resume", "--steps", "9"]) == 2  # other options: refused


@pytest.mark.parametrize("model", ["poisson", "gaussian"])
def test_initial_model_with_point_group_symmetry(averages, tmp_path, model):
    out = tmp_path / "c2"
    args = _args(averages, out, model)
    assert main([*args, "--sym", "C2"]) == 0
    with mrcfile.open(out / "map.mrc") as m:
        vol = torch.from_numpy(m.data.copy()).double()
    n = vol.shape[-1]
    # C2 about z: (x, y) -> (-x, -y) about voxel N // 2, i.e. index i -> N - i (index 0 of an even box has no partner)
    inner = vol[:, 1:, 1:] if n % 2 == 0 else vol
    assert torch.allclose(inner.flip(-1).flip(-2), inner, atol=1e-5 * float(vol.abs().max()))
    assert json.loads((out / "metrics.json").read_text())["symmetry"] == "C2"
    assert main([*args[:-1], "--sym", "C2v", "--no-progress"]) == 2  # not a rotation group


def test_an_image_without_positive_density_is_a_one_line_error(tmp_path, capsys):
    images = torch.rand(4, 24, 24)
    images[2] = -images[2]
    write_stack(tmp_path / "bad.mrcs", images, PX)
    assert main(["gmm", "initial-model", str(tmp_path / "bad.mrcs"), "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.mrcs" in err and "image 3" in err and len(err.splitlines()) == 1
