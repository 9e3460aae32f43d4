"""Simulate → reconstruct → report through the command line, as a user runs it."""

from __future__ import annotations

import json

import numpy as np
import starfile
import torch

from cryoscope.cli.main import main
from cryoscope.physics.fourier import fft3c, radial_index_3d
from cryoscope.io.mrc import read_map
from cryoscope.io.pdb import default_structure_path
from cryoscope.io.star import read_star
from cryoscope.validation.fsc import fsc, resolution_at


def _simulate(tmp_path, *extra):
    out = tmp_path / "sim"
    args = ["simulate", "--pdb", str(default_structure_path("open")), "--box", "32", "--voxel-size", "3.0",
            "-n", "600", "--snr", "1.0", "--max-shift", "2", "--seed", "3", "-o", str(out), *extra]
    assert main(args) == 0
    return out


def test_simulate_writes_dataset_with_ground_truth(tmp_path):
    out = _simulate(tmp_path)
    meta = read_star(out / "particles.star")
    assert meta.n == 600 and meta.box == 32 and meta.has_ctf
    truth = starfile.read(out / "ground_truth.star")
    assert len(truth) == 600
    snr = truth["cryoscopeCleanSNR"].to_numpy()
    assert abs(snr.mean() - 1.0) < 0.15  # the SNR definition: masked signal variance / noise variance
    params = json.loads((out / "params.json").read_text())
    assert params["seed"] == 3 and params["snr"] == 1.0
    images = meta.images()[np.arange(600)]
    assert torch.isfinite(images).all()
    # the same seed gives the same data
    again = _simulate(tmp_path / "again")
    assert torch.equal(read_star(again / "particles.star").images()[np.arange(5)], images[:5])


def test_reconstruct_cli_recovers_truth(tmp_path):
    sim = _simulate(tmp_path)
    out = tmp_path / "rec"
    assert main(["reconstruct", str(sim / "particles.star"), "-o", str(out), "--reference", str(sim / "truth_1.mrc"), "--seed", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rec, truth = read_map(out / "map.mrc"), read_map(sim / "truth_1.mrc")
    assert rec.voxel_size == truth.voxel_size == 3.0
    curve = fsc(rec.data, truth.data)
    assert resolution_at(curve, 0.5, 32)[0] > 0.3  # 600 particles at SNR 1 resolve well past 10 Å at 3 Å/px
    assert abs(metrics["truth_fsc_0.5_cycles_per_pixel"] - resolution_at(curve, 0.5, 32)[0]) < 1e-6
    for name in ("half_map1.mrc", "half_map2.mrc", "fsc.png", "params.json"):
        assert (out / name).exists()
    # the FSC filter shrinks the weak shells; the unfiltered half-maps keep them (what post-processing needs)
    power = lambda m, d=out: float(fft3c(read_map(d / m).data.double())[radial_index_3d(32) >= 13].abs().pow(2).sum())
    assert power("half_map1_unfil.mrc") > 3 * power("half_map1.mrc")
    # the soft spherical mask (default 0.9 of the box) clears the corners; --mask-diameter 0 keeps them
    corners = radial_index_3d(32) > 16  # (distance from the centre in pixels: the same index in real space)
    bare = tmp_path / "bare"
    assert main(["reconstruct", str(sim / "particles.star"), "-o", str(bare), "--mask-diameter", "0", "--seed", "1"]) == 0
    corner_power = lambda d: float(read_map(d / "half_map1.mrc").data[corners].pow(2).mean())  # noqa: E731
    assert corner_power(out) < 0.1 * corner_power(bare)  # measured 0.03 (the filter after the mask spreads a little)
    assert main(["reconstruct", str(sim / "particles.star"), "-o", str(tmp_path / "bad"), "--mask-diameter", "-5"]) == 2


def test_reconstruct_without_ctf_columns_warns_and_runs(tmp_path, capsys):
    sim = _simulate(tmp_path, "--no-ctf")
    out = tmp_path / "rec"
    assert main(["reconstruct", str(sim / "particles.star"), "-o", str(out)]) == 0
    assert "no CTF columns" in capsys.readouterr().err


def test_trajectory_and_discrete_states(tmp_path):
    traj = tmp_path / "traj"
    assert main(["simulate", "--trajectory", str(default_structure_path("open")), "--trajectory", str(default_structure_path("closed")),
                 "--n-frames", "5", "--latent", "beta:2,2", "--box", "32", "--voxel-size", "3.0", "-n", "40", "-o", str(traj)]) == 0
    truth = starfile.read(traj / "ground_truth.star")
    z = truth["cryoscopeLatent"].to_numpy()
    assert ((z >= 0) & (z <= 1)).all() and z.std() > 0.05
    first, last = read_map(traj / "truth_first.mrc").data, read_map(traj / "truth_last.mrc").data
    assert float(fsc(first, last)[3:10].min()) < 0.95  # the open and closed states differ
    disc = tmp_path / "disc"
    assert main(["simulate", "--map", str(traj / "truth_first.mrc"), "--map", str(traj / "truth_last.mrc"),
                 "--fractions", "0.25,0.75", "-n", "400", "-o", str(disc), "--seed", "2"]) == 0
    classes = starfile.read(disc / "ground_truth.star")["rlnClassNumber"].to_numpy()
    assert set(classes) == {1, 2} and abs((classes == 2).mean() - 0.75) < 0.08


def test_simulate_bad_input_is_one_line_error(tmp_path, capsys):
    assert main(["simulate", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--map, --pdb or --trajectory" in err[0]
    assert main(["simulate", "--pdb", str(tmp_path / "missing.pdb"), "--box", "32", "--voxel-size", "3", "-o", str(tmp_path / "y")]) == 2
    assert "missing.pdb" in capsys.readouterr().err
    assert not (tmp_path / "y" / "particles.mrcs").exists()


def test_demo_job_writes_report(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "-n", "500", "--box", "32", "--voxel-size", "3.0", "--abinitio-iterations", "10",
                 "--refine-iterations", "1", "--seed", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["truth_fsc_0.5_cycles_per_pixel"] > 0.2
    # the stage without true poses runs and is reported (its accuracy: tests/test_cli_likelihood.py and the full demo;
    # 500 particles of this 17-pixel protein are too few for ab-initio)
    for key in ("abinitio_truth_fsc_0.5_cycles_per_pixel", "refine_truth_fsc_0.5_cycles_per_pixel", "refine_pose_error_median_deg"):
        assert metrics[key] is not None and metrics[key] >= 0
    html = (out / "report.html").read_text()
    assert "Without poses: ab-initio, then refinement" in html
    assert (out / "refine" / "particles.star").exists() and (out / "abinitio" / "map.mrc").exists()
    assert html.count("data:image/png;base64,") >= 5 and "truth_fsc_0.5_A" in html
    for name in ("map.mrc", "half_map1.mrc", "half_map2.mrc", "particles/particles.star", "params.json"):
        assert (out / name).exists()
