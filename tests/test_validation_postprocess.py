"""Post-processing of half-maps: phase randomisation, the mask-corrected FSC, the Guinier B-factor, sharpening."""

from __future__ import annotations

import json

import pytest
import torch

from cryoscope.cli.main import main
from cryoscope.io.mrc import read_map, write_map
from cryoscope.physics.filters import lowpass, soft_mask
from cryoscope.physics.fourier import fft3c
from cryoscope.validation.fsc import fsc
from cryoscope.validation.postprocess import guinier_bfactor, mask_corrected_fsc, postprocess, randomize_phases, sharpen

N, VOXEL = 48, 1.5
D = torch.float64


def _atoms(n_atoms: int, seed: int) -> torch.Tensor:
    """Random point-like atoms (Gaussians of 0.6 voxel) inside a sphere of radius N / 4: a Wilson-like spectrum."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(n_atoms, 3, generator=g, dtype=D)
    pos = pos / pos.norm(dim=1, keepdim=True) * (torch.rand(n_atoms, 1, generator=g, dtype=D) ** (1 / 3)) * N / 4
    c = torch.arange(N, dtype=D) - N // 2
    vol = torch.zeros(N, N, N, dtype=D)
    for chunk in pos.split(200):
        dz = (c[None, :] - chunk[:, 2:3]) ** 2
        dy = (c[None, :] - chunk[:, 1:2]) ** 2
        dx = (c[None, :] - chunk[:, 0:1]) ** 2
        gz, gy, gx = (torch.exp(-d / (2 * 0.6**2)) for d in (dz, dy, dx))
        vol += torch.einsum("az,ay,ax->zyx", gz, gy, gx)
    return vol


def test_randomized_phases_keep_amplitudes_and_decorrelate_beyond_the_shell():
    vol = _atoms(400, 0)
    out = randomize_phases(vol, 10, torch.Generator().manual_seed(1))
    torch.testing.assert_close(fft3c(out).abs(), fft3c(vol).abs(), rtol=1e-9, atol=1e-9)  # real, amplitudes kept
    curve = fsc(vol, out)
    assert float(curve[1:10].min()) > 1 - 1e-9
    assert float(curve[11:].abs().max()) < 0.15


def test_phase_randomisation_removes_the_correlation_a_sharp_mask_creates():
    """Two half-maps share only low-resolution signal (shells <= 6); a hard-edged mask makes their masked FSC high
    far beyond it. The corrected FSC is back near 0 there, and equals the masked FSC below the randomisation shell."""
    g = torch.Generator().manual_seed(2)
    signal = lowpass(torch.randn(N, N, N, generator=g, dtype=D), 6 / N) * 20
    h1 = signal + torch.randn(N, N, N, generator=g, dtype=D)
    h2 = signal + torch.randn(N, N, N, generator=g, dtype=D)
    hard = soft_mask(N, N / 4, ndim=3, dtype=D)
    unmasked, masked, randomized, corrected, shell = mask_corrected_fsc(h1, h2, hard, 0.8, torch.Generator().manual_seed(3))
    assert 6 <= shell <= 9
    assert float(unmasked[12:].abs().mean()) < 0.05  # no shared signal out there
    assert float(masked[12:20].mean()) > 0.3  # the mask's doing
    assert float(corrected[12:].abs().mean()) < 0.1 and float(randomized[12:20].mean()) > 0.3  # measured 0.06, 0.38
    assert torch.equal(corrected[:shell], masked[:shell])


def test_guinier_fit_recovers_an_applied_blur():
    vol = _atoms(3000, 4)
    flat = torch.ones(N // 2 + 1, dtype=D)
    b = {blur: guinier_bfactor(sharpen(vol, VOXEL, blur, flat, 0.5), VOXEL, 10.0, 3.5) for blur in (50.0, 200.0)}
    assert b[200.0] - b[50.0] == pytest.approx(150.0, rel=0.1)
    assert guinier_bfactor(vol, VOXEL, 10.0, 9.0) is None  # fewer than 3 shells in range


def test_postprocess_sharpens_toward_the_unblurred_structure():
    g = torch.Generator().manual_seed(5)
    truth = sharpen(_atoms(3000, 6), VOXEL, 150.0, torch.ones(N // 2 + 1, dtype=D), 0.5)
    noise = 0.5 * float(truth.std())
    h1 = truth + noise * torch.randn(N, N, N, generator=g, dtype=D)
    h2 = truth + noise * torch.randn(N, N, N, generator=g, dtype=D)
    mask = soft_mask(N, N / 4 + 3, edge_width=4, ndim=3, dtype=D)
    out = postprocess(h1, h2, mask, VOXEL, generator=torch.Generator().manual_seed(7))
    assert out.bfactor_fitted > 100 and out.bfactor_applied == -out.bfactor_fitted
    assert 0 < out.resolution_05 <= out.resolution_0143 <= 0.5
    # restoring the high-frequency amplitudes brings the map closer to the unblurred structure (at the resolution)
    sharp = lowpass(_atoms(3000, 6), out.resolution_0143)
    cc = lambda v: float(torch.corrcoef(torch.stack([(v * mask).flatten(), (sharp * mask).flatten()]))[0, 1])
    assert 1 - cc(out.sharpened) < 0.8 * (1 - cc(0.5 * (h1 + h2)))  # measured 0.029 against 0.046
    given = postprocess(h1, h2, mask, VOXEL, bfactor=-50.0, generator=torch.Generator().manual_seed(7))
    assert given.bfactor_applied == -50.0 and torch.equal(given.fsc_corrected, out.fsc_corrected)
    unfit = postprocess(h1, h2, mask, VOXEL, fit_from=VOXEL / out.resolution_0143 - 0.1, generator=torch.Generator().manual_seed(7))
    assert unfit.bfactor_fitted is None and unfit.bfactor_applied == 0.0  # no Guinier range: nothing applied


def test_mask_and_postprocess_commands_write_maps_curves_and_metrics(tmp_path, capsys):
    g = torch.Generator().manual_seed(8)
    truth = sharpen(_atoms(2000, 9), VOXEL, 150.0, torch.ones(N // 2 + 1, dtype=D), 0.5)
    for k in (1, 2):
        write_map(tmp_path / f"half{k}.mrc", (truth + 0.5 * float(truth.std()) * torch.randn(N, N, N, generator=g, dtype=D)).float(), VOXEL)
    write_map(tmp_path / "truth.mrc", truth.float(), VOXEL)
    assert main(["mask", str(tmp_path / "truth.mrc"), "-o", str(tmp_path / "mask.mrc"), "--extend", "2", "--soft-edge", "4"]) == 0
    mask = read_map(tmp_path / "mask.mrc").data
    assert float(mask[N // 2, N // 2, N // 2]) == 1.0 and float(mask[0, 0, 0]) == 0.0 and float(mask.min()) >= 0.0
    assert bool(((mask > 0.05) & (mask < 0.95)).any())  # a soft edge
    assert main(["mask", str(tmp_path / "truth.mrc"), "-o", str(tmp_path / "none.mrc"), "--threshold", "1e9"]) == 2
    assert "truth.mrc" in capsys.readouterr().err and not (tmp_path / "none.mrc").exists()
    out = tmp_path / "post"
    args = ["postprocess", str(tmp_path / "half1.mrc"), str(tmp_path / "half2.mrc"), "-o", str(out), "--seed", "3"]
    assert main([*args, "--mask", str(tmp_path / "mask.mrc")]) == 0
    text = capsys.readouterr().out
    assert "B-factor" in text and "FSC 0.143" in text
    m = json.loads((out / "metrics.json").read_text())
    for key in ("resolution_0.143_angstrom", "bfactor_fitted", "bfactor_applied", "randomize_shell", "fsc_corrected", "fsc_masked"):
        assert key in m
    assert read_map(out / "postprocess.mrc").voxel_size == pytest.approx(VOXEL)
    masked = read_map(out / "postprocess_masked.mrc").data
    assert float(masked[0, 0, 0]) == 0.0 and float(masked.abs().max()) > 0
    assert (out / "fsc.png").exists() and json.loads((out / "params.json").read_text())["seed"] == 3
    # a mask of another box is refused, naming the file
    write_map(tmp_path / "small.mrc", torch.ones(8, 8, 8), VOXEL)
    assert main([*args, "--mask", str(tmp_path / "small.mrc")]) == 2
    err = capsys.readouterr().err
    assert "small.mrc" in err and len(err.strip().splitlines()) == 1
