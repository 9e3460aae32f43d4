"""`cryoscope gmm class-averages` from a RELION-style particle STAR file: each class's deconvolved average matches its
projection; missing class numbers are a one-line error."""

from __future__ import annotations

import json

import mrcfile
import torch
from test_bayes_class_averages import _blobs, _corr

from cryoscope.bayes.class_averages import centre
from cryoscope.cli.main import main
from cryoscope.geometry.rotations import euler_to_matrix
from cryoscope.io.metadata import ParticleMetadata
from cryoscope.io.mrc import write_stack
from cryoscope.io.star import write_star
from cryoscope.physics.ctf import CTFParams, compute_ctf
from cryoscope.physics.fourier import fft2c, ifft2c
from cryoscope.physics.shift import translate

D = torch.float64
BLOBS = [([[16.0, 0, 0], [-8, 14, 0], [-8, -14, 0]], [1.0, 1.0, 1.0]), ([[-20.0, 0, 0], [0, 0, 0], [20, 6, 0]], [1.5, 0.7, 0.7])]


def _write_particles(folder, with_classes=True):
    box, px, n_per = 32, 4.0, 60
    g = torch.Generator().manual_seed(5)
    classes = torch.arange(2).repeat_interleave(n_per)
    n = classes.numel()
    psi = torch.rand(n, generator=g, dtype=D) * 360
    euler = torch.stack([torch.zeros(n, dtype=D), torch.zeros(n, dtype=D), psi], -1)
    proj = torch.cat([_blobs(*BLOBS[k], box, px, euler_to_matrix(euler[classes == k])) for k in range(2)]) * 2
    origins = (torch.rand(n, 2, generator=g, dtype=D) - 0.5) * 6  # px
    df = 10000 + 20000 * torch.rand(n, generator=g, dtype=D)
    ctf = CTFParams.create(df + 250, df - 250, torch.rand(n, generator=g, dtype=D) * 180, dtype=D)
    images = ifft2c(translate(fft2c(proj) * compute_ctf(ctf, box, px, D), -origins)).real
    images = images + torch.randn(n, box, box, generator=g, dtype=D)
    stack = folder / "particles.mrcs"
    write_stack(stack, images.float(), px)
    meta = ParticleMetadata(n=n, euler=euler, shifts_A=origins * px, defocus_u=ctf.defocus_u, defocus_v=ctf.defocus_v,
                            defocus_angle=ctf.defocus_angle, voltage=ctf.voltage, cs=ctf.cs, amplitude_contrast=ctf.amplitude_contrast,
                            pixel_size=torch.full((n,), px, dtype=D), box=box, class_number=(classes + 1) if with_classes else None,
                            image_names=[(str(stack), i) for i in range(n)])
    write_star(folder / "particles.star", meta)
    return torch.cat([_blobs(*b, box, px) for b in BLOBS])


def test_class_averages_command(tmp_path, capsys):
    truth = _write_particles(tmp_path)
    out = tmp_path / "avg"
    assert main(["gmm", "class-averages", str(tmp_path / "particles.star"), "-o", str(out), "--defocus-groups", "4",
                 "--mask-diameter", "80"]) == 0
    with mrcfile.open(out / "averages.mrcs") as m:
        averages = torch.from_numpy(m.data.copy()).double()
        assert abs(float(m.voxel_size.x) - 4.0) < 1e-4
    assert averages.shape == (2, 32, 32) and float(averages.min()) >= 0
    for k in range(2):
        own = _corr(averages[k], centre(truth)[k])
        assert own > 0.9 and _corr(averages[k], centre(truth)[1 - k]) < own - 0.4
    assert json.loads((out / "metrics.json").read_text())["particles_per_class"] == {"1": 60, "2": 60}

    other = tmp_path / "noclass"
    other.mkdir()
    _write_particles(other, with_classes=False)
    assert main(["gmm", "class-averages", str(other / "particles.star"), "-o", str(tmp_path / "x")]) == 2
    assert "rlnClassNumber" in capsys.readouterr().err
