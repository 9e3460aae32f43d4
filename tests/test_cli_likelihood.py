"""refine / classify from the command line as a user runs them: outputs, resume after SIGKILL, bad input, 2 processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import mrcfile
import numpy as np
import pytest
import starfile
import torch
from test_likelihood_em import BOX, simulate
from test_likelihood_scoring import blob_map

from cryoscope.cli.main import main
from cryoscope.distributed import run_spawned
from cryoscope.io.checkpoint import load_checkpoint
from cryoscope.io.mrc import read_map, write_map
from cryoscope.io.star import read_star
from cryoscope.physics.filters import frequency_magnitude
from cryoscope.likelihood.em import EMSettings, expectation_maximization
from cryoscope.validation.fsc import fsc
from cryoscope.physics.filters import lowpass

VOXEL = 4.0


@pytest.fixture(scope="module")
def states(tmp_path_factory):
    """Two compositional states (blob complex with and without a part) as MRC maps at 4 Å/pixel."""
    d = tmp_path_factory.mktemp("maps")
    a = blob_map(BOX, 11, 14, torch.float32)
    b = a + blob_map(BOX, 13, 4, torch.float32)
    write_map(d / "a.mrc", a, VOXEL)
    write_map(d / "b.mrc", b, VOXEL)
    write_map(d / "start.mrc", lowpass((a + b) / 2, 0.15), VOXEL)
    return d


def _simulate(out, maps, n, *extra):
    args = ["simulate", *sum((["--map", str(m)] for m in maps), []), "-n", str(n), "--snr", "2", "--max-shift", "1",
            "--defocus-min", "10000", "--defocus-max", "25000", "--seed", "3", "-o", str(out), *extra]
    assert main(args) == 0
    return out / "particles.star"


def _refine_args(star, initial, out, *extra):
    return ["refine", str(star), "--initial", str(initial), "-o", str(out), "--iterations", "3", "--healpix-order", "1",
            "--global-min-step", "15", "--max-shift", "1", "--initial-lowpass", "26", "--max-poses", "8", "--seed", "1", "--no-progress", *extra]


def test_refine_cli_writes_maps_star_metrics_and_recovers_poses(tmp_path, states):
    star = _simulate(tmp_path / "sim", [states / "a.mrc"], 200)
    out = tmp_path / "ref"
    assert main(_refine_args(star, states / "start.mrc", out, "--reference", str(states / "a.mrc"), "--truth-star", str(star))) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["iterations"] == 3 and len(m["history"]) == 3 and m["pose_error_median_deg"] < 10.0
    assert m["map_truth_fsc_0.5_cycles_per_pixel"] > 0.25
    # the same measures after every iteration; the last record is the final map's
    assert [r["iteration"] for r in m["truth_history"]] == [1, 2, 3]
    last = m["truth_history"][-1]
    assert last["map_truth_fsc_0.5_cycles_per_pixel"] == m["map_truth_fsc_0.5_cycles_per_pixel"]
    assert last["pose_error_median_deg"] == m["pose_error_median_deg"]
    rec = read_map(out / "map.mrc")
    assert rec.voxel_size == VOXEL and float(fsc(rec.data, read_map(states / "a.mrc").data)[1:8].mean()) > 0.8
    table = starfile.read(out / "particles.star")["particles"]
    for col in ("rlnAngleRot", "rlnOriginXAngst", "rlnRandomSubset", "rlnClassNumber", "cryoscopeAngularSpreadDeg"):
        assert col in table.columns
    assert set(table["rlnRandomSubset"]) == {1, 2} and (table["cryoscopeAngularSpreadDeg"] >= 0).all()
    assert json.loads((out / "params.json").read_text())["seed"] == 1
    assert read_star(out / "particles.star").images()[np.arange(2)].shape == (2, BOX, BOX)  # image names still resolve
    # RELION's *_unfil half-maps for post-processing: unmasked, so their corners keep the noise the references lose
    unfil, masked = read_map(out / "half_map1_unfil.mrc").data, read_map(out / "half_map1.mrc").data
    corners = frequency_magnitude(BOX, 3) > 0.5 * BOX  # (distance from the centre, in pixels)
    assert float(masked[corners].pow(2).mean()) < 0.01 * float(unfil[corners].pow(2).mean())
    # continuing from it keeps its gold-standard half-sets (RELION's rlnRandomSubset), whatever the seed
    again = tmp_path / "local"
    assert main([*_refine_args(out / "particles.star", out / "map.mrc", again, "--local", "--iterations", "1"), "--seed", "7"]) == 0
    assert json.loads((again / "params.json").read_text())["half_sets"] == "rlnRandomSubset"
    # its one iteration scores at 26 Å, yet, being the last, reconstructs to Nyquist (RELION's final iteration)
    last = json.loads((again / "metrics.json").read_text())["history"][-1]
    assert last["cutoff"] < 0.2 and last["reconstruction_cutoff"] == 0.5
    assert (starfile.read(again / "particles.star")["particles"]["rlnRandomSubset"] == table["rlnRandomSubset"]).all()


def test_refine_killed_and_resumed_ends_like_an_uninterrupted_run(tmp_path, states):
    star = _simulate(tmp_path / "sim", [states / "a.mrc"], 160)
    full, cut = tmp_path / "full", tmp_path / "cut"
    truth = ("--reference", str(states / "a.mrc"))
    assert main(_refine_args(star, states / "start.mrc", full, *truth)) == 0
    cmd = [sys.executable, "-m", "cryoscope", *_refine_args(star, states / "start.mrc", cut, *truth)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (cut / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(cut / "checkpoint.pt")["iteration"]
    assert done < 3 and not (cut / "map.mrc").exists()  # killed part-way
    assert main([*_refine_args(star, states / "start.mrc", cut, *truth), "--resume"]) == 0
    a, b = read_map(full / "map.mrc").data, read_map(cut / "map.mrc").data
    assert torch.allclose(a, b, atol=1e-5 * float(a.abs().max()))
    # the per-iteration records from before the kill come back from the checkpoint
    ha, hb = (json.loads((d / "metrics.json").read_text())["truth_history"] for d in (full, cut))
    assert [r["iteration"] for r in hb] == [1, 2, 3]
    assert np.allclose([r["map_truth_fsc_0.5_cycles_per_pixel"] for r in ha], [r["map_truth_fsc_0.5_cycles_per_pixel"] for r in hb], atol=1e-3)
    pa, pb = starfile.read(full / "particles.star")["particles"], starfile.read(cut / "particles.star")["particles"]
    assert np.allclose(pa["rlnAngleRot"], pb["rlnAngleRot"], atol=1e-3)
    # resuming with other settings is refused
    assert main([*_refine_args(star, states / "start.mrc", cut, *truth), "--resume", "--max-shift", "2"]) == 2


def test_classify_cli_separates_states_and_reports_fractions(tmp_path, states):
    star = _simulate(tmp_path / "sim", [states / "a.mrc", states / "b.mrc"], 160, "--fractions", "0.5,0.5")
    out = tmp_path / "cls"
    # as after a consensus refinement: local searches around the STAR file's poses
    args = ["classify", str(star), "--initial", str(states / "start.mrc"), "-o", str(out), "-K", "2", "--iterations", "4",
            "--local", "--max-shift", "1", "--initial-lowpass", "26", "--resolution-limit", "26", "--max-poses", "8",
            "--seed", "1", "--no-progress"]
    assert main(args) == 0
    truth = starfile.read(tmp_path / "sim" / "ground_truth.star")["rlnClassNumber"].to_numpy()
    got = starfile.read(out / "particles.star")["particles"]["rlnClassNumber"].to_numpy()
    m = json.loads((out / "metrics.json").read_text())
    assert abs(m["class001_fraction"] + m["class002_fraction"] - 1) < 1e-5
    for name in ("class001.mrc", "class002_half2.mrc", "fsc.png"):
        assert (out / name).exists()
    # one starting map: each half-set breaks the class symmetry with labels of its own, which must be matched
    # (without the matching: 0.51, every half-set itself at >= 0.99)
    accuracy = max((got == truth).mean(), (got != truth).mean())
    assert accuracy >= 0.95
    flip = (got == truth).mean() < 0.5
    for k in (1, 2):
        true_fraction = ((truth == (3 - k if flip else k))).mean()
        assert abs(m[f"class00{k}_fraction"] - true_fraction) < 0.05


def test_nan_images_stop_before_any_work(tmp_path, states, capsys):
    star = _simulate(tmp_path / "sim", [states / "a.mrc"], 40)
    stack = tmp_path / "sim" / "particles.mrcs"
    with mrcfile.open(stack, "r+") as f:
        f.data[7, 3, 3] = np.nan
    out = tmp_path / "ref"
    assert main(_refine_args(star, states / "start.mrc", out)) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith("cryoscope: error:") and "image 8" in line and "NaN" in line and str(star) in line
    assert not (out / "checkpoint.pt").exists()


def test_star_without_ctf_runs_with_ctf_off_and_a_warning(tmp_path, states, capsys):
    star = _simulate(tmp_path / "sim", [states / "a.mrc"], 60, "--no-ctf")
    out = tmp_path / "ref"
    assert main([*_refine_args(star, states / "start.mrc", out), "--iterations", "1"]) == 0
    assert "no CTF columns" in capsys.readouterr().err


# Batches of 8 divide both shards of each 32-particle half-set, so one and two processes score identical batches
# and differ only in the order of the all-reduced sums (last-bit float32 differences). Two iterations: the second
# searches locally around the first one's poses, with Wiener terms from the first one's FSC.
SHARDED = EMSettings(n_iter=2, healpix_order=0, max_shift=1.0, initial_cutoff=0.15, max_poses=10, batch_size=8)


def sharded_em_worker(ctx, meta, stack, initial):
    from cryoscope.likelihood.data import ParticleSource

    r = expectation_maximization(ParticleSource(meta, stack), initial, SHARDED, seed=4, ctx=ctx)
    return r.maps, r.rotations, r.sigma2


def test_two_process_gloo_run_gives_the_same_maps_as_one_process():
    truth = blob_map(BOX, 0, 16, torch.float32)
    particles, _, _, _ = simulate([truth], 64, 1.0, seed=6)
    initial = lowpass(truth, 0.15)
    maps2, rot2, s2 = run_spawned(sharded_em_worker, 2, particles.meta, particles.stack, initial)
    r = expectation_maximization(particles, initial, SHARDED, seed=4)
    assert torch.allclose(maps2, r.maps, atol=3e-4 * float(r.maps.abs().max()))
    assert torch.allclose(s2, r.sigma2, rtol=1e-4)
    assert float((rot2 - r.rotations).abs().max()) < 1e-4


def test_abinitio_then_refine_without_poses(tmp_path, states):
    star = _simulate(tmp_path / "sim", [states / "a.mrc"], 300)
    ab = tmp_path / "ab"
    assert main(["abinitio", str(star), "-o", str(ab), "--iterations", "40", "--batch-size", "100", "--max-shift", "1",
                 "--initial-resolution", "40", "--final-resolution", "13", "--reference", str(states / "a.mrc"),
                 "--seed", "2", "--no-progress"]) == 0
    m_ab = json.loads((ab / "metrics.json").read_text())
    assert m_ab["iterations"] == 40 and (ab / "checkpoint.pt").exists() and (ab / "particles.star").exists()
    ref = tmp_path / "ref"
    assert main(_refine_args(star, ab / "map.mrc", ref, "--reference", str(states / "a.mrc"), "--truth-star", str(star))) == 0
    m = json.loads((ref / "metrics.json").read_text())
    # no true poses anywhere: the map and the poses agree with the truth after gauge (and hand) alignment
    assert m["map_truth_fsc_0.5_cycles_per_pixel"] >= max(0.2, m_ab["map_truth_fsc_0.5_cycles_per_pixel"] - 0.02)
    assert m["pose_error_median_deg"] < 10.0


def test_refine_reads_a_cryosparc_cs_file_and_keeps_its_split(tmp_path, states):
    """A cryoSPARC user's .cs goes straight in; its alignments3D/split are the gold-standard half-sets."""
    from cryoscope.io.cryosparc import write_cs

    star = _simulate(tmp_path / "sim", [states / "a.mrc"], 60)
    meta = read_star(star)
    split = torch.arange(60) % 2 + 1
    meta.random_subset = split
    write_cs(tmp_path / "sim" / "particles.cs", meta)
    out = tmp_path / "ref"
    assert main([*_refine_args(tmp_path / "sim" / "particles.cs", states / "start.mrc", out), "--iterations", "1"]) == 0
    assert json.loads((out / "params.json").read_text())["half_sets"] == "rlnRandomSubset"
    assert (starfile.read(out / "particles.star")["particles"]["rlnRandomSubset"].to_numpy() == split.numpy()).all()
