"""`cryoscope softmodes` and `softmodes-path` as a user runs them: outputs, the particle path, bad input."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from cryoscope.cli.main import main
from cryoscope.io.mrc import write_map

VOXEL = 5.0


@pytest.fixture(scope="module")
def ribosome(data_dir, tmp_path_factory):
    """The bundled 70S map with its voxel size in the header."""
    path = tmp_path_factory.mktemp("map") / "ribosome.mrc"
    write_map(path, torch.tensor(mrcfile.read(data_dir / "maps" / "ribosome70S_65.mrc")), VOXEL)
    return path


def _small(*extra):
    return ["--two-pi-k", "8", "--shells", "4", "--degree", "6", "--max-iter", "120", "--n-modes", "3", "--no-progress", *extra]


def test_simulated_run_writes_modes_maps_tables_and_report(tmp_path, ribosome):
    out = tmp_path / "sm"
    assert main(["softmodes", str(ribosome), "-o", str(out), "--simulate", "uniform", "--n-images", "64", "--seed", "2", *_small()]) == 0
    m = json.loads((out / "metrics.json").read_text())
    lam = np.array(m["eigenvalues"])
    assert lam.shape == (3,) and np.all(lam > 0) and np.all(np.diff(lam) >= 0)
    assert max(m["rigid_rayleigh_over_largest"]) < 1e-4  # noiseless: rigid rotations are null directions
    assert m["hvp_per_second"] > 0 and m["modes"][0]["relative_norm_log20"] > 0
    with mrcfile.open(out / "mode_01_abs.mrc") as f:
        assert f.data.shape == (65, 65, 65) and abs(float(f.voxel_size.x) - VOXEL) < 1e-4 and float(f.data.max()) > 0
    rows = (out / "alignments.csv").read_text().splitlines()
    assert len(rows) == 65 and rows[0].startswith("index,rot,tilt,psi,mode1_deg")
    assert (out / "report.html").stat().st_size > 10_000 and json.loads((out / "params.json").read_text())["seed"] == 2
    # --resume reuses the polished poses and map and reproduces the modes
    assert main(["softmodes", str(ribosome), "-o", str(out), "--simulate", "uniform", "--n-images", "64", "--seed", "2", "--resume", *_small()]) == 0
    again = json.loads((out / "metrics.json").read_text())
    np.testing.assert_allclose(again["eigenvalues"], m["eigenvalues"], rtol=1e-6)


def test_particle_run_polishes_poses_and_writes_a_star_column(tmp_path, ribosome):
    sim = tmp_path / "sim"
    assert main(["simulate", "--map", str(ribosome), "-n", "48", "--snr", "5", "--max-shift", "1", "--defocus-min", "10000",
                 "--defocus-max", "20000", "--seed", "1", "-o", str(sim)]) == 0
    star = sim / "particles.star"
    before = star.read_bytes()
    out = tmp_path / "sm"
    assert main(["softmodes", str(ribosome), "-o", str(out), "--particles", str(star), "--refine-map", "3", "--polish", "20",
                 "--dtype", "float64", *_small()]) == 0
    m = json.loads((out / "metrics.json").read_text())
    steps = m["stationary_point"]["polish_steps_rad"]
    assert steps[-1][-1] < 1e-9 and m["stationary_point"]["refine_rounds"] == 3 and m["temperature"] > 0
    assert min(m["eigenvalues"]) > 0 and max(m["rigid_rayleigh_over_largest"]) < 1e-2  # near a joint stationary point
    table = starfile.read(out / "particles.star")
    particles = table["particles"] if isinstance(table, dict) else table
    assert len(particles) == 48 and (particles["cryoscopeSoftMode1AlignmentDeg"] >= 0).all()
    assert len(m["fragile_images"]) == 20 and star.read_bytes() == before


def test_bad_input_gives_one_line_errors(tmp_path, ribosome, capsys):
    assert main(["softmodes", str(ribosome), "-o", str(tmp_path / "a"), *_small()]) == 2
    assert "--particles" in capsys.readouterr().err
    assert main(["softmodes", str(ribosome), "-o", str(tmp_path / "b"), "--simulate", "uniform", "--n-images", "8",
                 "--noise", "marginal", *_small()]) == 2
    assert "marginal" in capsys.readouterr().err
    assert main(["softmodes", str(ribosome), "-o", str(tmp_path / "c"), "--simulate", "nonsense", *_small()]) == 2


def test_path_command_writes_stiffness(tmp_path, ribosome):
    frames = []
    vol = torch.tensor(mrcfile.read(ribosome))
    for i, s in enumerate((0.9, 1.0, 1.1)):
        frames.append(tmp_path / f"f{i}.mrc")
        write_map(frames[-1], s * vol, VOXEL)
    out = tmp_path / "path"
    assert main(["softmodes-path", *map(str, frames), "-o", str(out), "--n-images", "32", "--two-pi-k", "8", "--shells", "4",
                 "--degree", "6", "--no-progress"]) == 0
    lines = (out / "path_stiffness.csv").read_text().splitlines()
    assert lines[0] == "s,map,stiffness" and len(lines) == 4
    assert all(float(line.split(",")[-1]) > 0 for line in lines[1:])


def _cli_worker(ctx, args):
    return main(args)


def test_two_processes_give_the_same_modes_as_one(tmp_path, ribosome):
    """torch.distributed (2 Gloo processes, particles sharded, H v all-reduced) reproduces the 1-process run."""
    from cryoscope.distributed import run_spawned

    args = ["softmodes", str(ribosome), "--simulate", "uniform", "--n-images", "40", "--dtype", "float64", *_small()]
    assert main([*args, "-o", str(tmp_path / "one")]) == 0
    assert run_spawned(_cli_worker, 2, [*args, "-o", str(tmp_path / "two")]) == 0
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert two["processes"] == 2 and two["n_images"] == 40
    np.testing.assert_allclose(two["eigenvalues"], one["eigenvalues"], rtol=1e-8)
    a, b = ((tmp_path / d / "alignments.csv").read_text().splitlines() for d in ("one", "two"))
    assert len(a) == len(b) == 41
    np.testing.assert_allclose(np.array([r.split(",")[4:] for r in b[1:]], float), np.array([r.split(",")[4:] for r in a[1:]], float),
                               rtol=1e-6, atol=1e-9)


def test_null_modes_are_listed_and_the_determined_ones_scaled(tmp_path, ribosome, monkeypatch):
    import cryoscope.workflows.softmodes as wf

    solve = wf.soft_modes

    def with_a_null_mode(*args, **kwargs):  # as if no view sampled the softest direction: λ at rounding level
        modes = solve(*args, **kwargs)
        modes.eigenvalues[0] = 1e-3 * wf.NULL_RELATIVE["float32"] * modes.largest_ritz
        return modes

    monkeypatch.setattr(wf, "soft_modes", with_a_null_mode)
    out = tmp_path / "sm"
    assert main(["softmodes", str(ribosome), "-o", str(out), "--simulate", "uniform", "--n-images", "32", "--seed", "2",
                 "--maps-for", "1", *_small()]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert [r["mode"] for r in m["null_modes"]] == [1] and [r["mode"] for r in m["modes"]] == [2, 3]
    assert m["maps_written"] == 1 and (out / "mode_02_abs.mrc").is_file() and not (out / "mode_01_abs.mrc").exists()
    assert (out / "alignments.csv").read_text().splitlines()[0].endswith("mode2_deg,mode3_deg")
    assert "null direction" in (out / "report.html").read_text()
