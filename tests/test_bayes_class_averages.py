"""Class-average preparation (thesis §4.1): MAP deconvolution, centring, defocus groups, averages from particles."""

from __future__ import annotations

import math

import pytest
import torch

from cryoscope.bayes.class_averages import (
    centre,
    centre_of_mass_shift,
    class_averages_from_particles,
    deconvolution_loss,
    deconvolve,
    defocus_frames,
    group_by_defocus,
    rotate_images,
    unconstrained_map,
)
from cryoscope.errors import InvalidValueError
from cryoscope.geometry.rotations import euler_to_matrix
from cryoscope.physics import gmm
from cryoscope.physics.ctf import CTFParams, apply_ctf, compute_ctf, phase_flip, wiener_filter
from cryoscope.physics.fourier import centered_coords, fft2c, ifft2c
from cryoscope.physics.shift import translate

D = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # many small steps: see conftest


def _blobs(centres_A: list[list[float]], amplitudes: list[float], box: int, pixel_size: float, rotations=None) -> torch.Tensor:
    """Projections [n, box, box] of Gaussian blobs of sigma 6 Å (px values; peak of the unrotated image 1)."""
    c = torch.tensor(centres_A, dtype=D)
    a = torch.tensor(amplitudes, dtype=D)
    s = torch.full((len(amplitudes),), 6.0, dtype=D)
    eye = torch.eye(3, dtype=D)[None]
    scale = 1 / gmm.project(c, a, s, eye, box, pixel_size).max()
    return gmm.project(c, a, s, eye if rotations is None else rotations, box, pixel_size) * scale


def _rel(a: torch.Tensor, truth: torch.Tensor) -> float:
    return float((a - truth).norm() / truth.norm())


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


TRUTH_BLOBS = ([[20.0, 5, 0], [-10, 15, 3], [0, -18, 0], [-15, -10, 0]], [1.0, 0.6, 0.8, 0.5])


def test_gradient_matches_autograd_and_finite_differences():
    g = torch.Generator().manual_seed(0)
    box = 16  # even box: the unpaired Nyquist row of an astigmatic CTF must stay self-adjoint
    ctf = CTFParams.create([9000.0, 15000.0, 21000.0], [7000.0, 14000.0, 16000.0], [10.0, 70.0, 140.0], dtype=D)
    C = compute_ctf(ctf, box, 2.0, D)
    frames = torch.randn(3, box, box, generator=g, dtype=D)
    weights = torch.tensor([1.0, 3.0, 0.5], dtype=D)
    y = torch.rand(box, box, generator=g, dtype=D).requires_grad_()
    loss, grad = deconvolution_loss(y, frames, C, weights, 7.0)
    (auto,) = torch.autograd.grad(loss, y)
    torch.testing.assert_close(grad, auto, rtol=1e-10, atol=1e-10)
    grad = grad.detach()
    v = torch.randn(box, box, generator=g, dtype=D)
    h = 1e-5
    y = y.detach()
    with torch.no_grad():
        up, down = (deconvolution_loss(y + sign * h * v, frames, C, weights, 7.0)[0] for sign in (1, -1))
    fd = (up - down) / (2 * h)
    assert float(fd) == pytest.approx(float((grad * v).sum()), rel=1e-7)


def test_fourier_closed_form_is_the_unconstrained_minimum():
    # Without the bound the loss is a quadratic diagonal in Fourier space: Y = sum w C Z / (sum w C^2 + alpha Lambda),
    # Lambda = 4 sin^2(pi kx / N) + 4 sin^2(pi ky / N), the symbol of the periodic differences.
    g = torch.Generator().manual_seed(1)
    box, alpha = 24, 2.0
    C = compute_ctf(CTFParams.create([12000.0, 20000.0], dtype=D), box, 3.0, D)
    frames = torch.randn(2, box, box, generator=g, dtype=D)
    weights = torch.tensor([1.0, 2.0], dtype=D)
    s = torch.sin(math.pi * centered_coords(box, dtype=D) / box) ** 2
    w = weights[:, None, None]
    exact = ifft2c((w * C * fft2c(frames)).sum(0) / ((w * C * C).sum(0) + alpha * 4 * (s[:, None] + s[None, :]))).real
    torch.testing.assert_close(unconstrained_map(frames, C, weights, alpha), exact, rtol=0, atol=1e-12)
    grad = deconvolution_loss(exact, frames, C, weights, alpha)[1]
    scale = deconvolution_loss(torch.zeros_like(exact), frames, C, weights, alpha)[1]
    assert float(grad.abs().max()) < 1e-10 * float(scale.abs().max())
    assert float(exact.min()) < 0  # so the bound below is active


def test_bounded_deconvolution_satisfies_the_kkt_conditions():
    # Astigmatic CTFs on an even box: the closed-form start is not the optimum, L-BFGS-B has to get there.
    g = torch.Generator().manual_seed(4)
    box, alpha = 24, 2.0
    C = compute_ctf(CTFParams.create([12000.0, 20000.0], [8000.0, 17000.0], [20.0, 100.0], dtype=D), box, 3.0, D)
    frames = torch.randn(2, box, box, generator=g, dtype=D)
    weights = torch.tensor([1.0, 2.0], dtype=D)
    y = deconvolve(frames, C, weights, alpha)
    grad = deconvolution_loss(y, frames, C, weights, alpha)[1]
    scale = float(deconvolution_loss(torch.zeros_like(y), frames, C, weights, alpha)[1].abs().max())
    free = y > 0
    assert float(y.min()) == 0.0 and 0 < int(free.sum()) < box * box
    assert float(grad[free].abs().max()) < 1e-4 * scale  # stationary in the free pixels
    assert float(grad[~free].min()) > -1e-4 * scale  # the loss rises into the bound


def test_multi_frame_deconvolution_beats_single_frame_estimates():
    box, px, radius = 48, 3.0, 16
    g = torch.Generator().manual_seed(2)
    truth = _blobs(*TRUTH_BLOBS, box, px)[0] * 10  # unit noise SD: peak SNR 10
    C = compute_ctf(CTFParams.create([10000.0, 18000.0, 26000.0], dtype=D), box, px, D)
    frames = apply_ctf(truth, C) + torch.randn(3, box, box, generator=g, dtype=D)
    multi = deconvolve(frames, C, regulariser=1.0, mask_radius=radius)
    singles = [deconvolve(frames[f], C[f], regulariser=1.0, mask_radius=radius) for f in range(3)]
    snrs = (0.1, 1, 10, 100, 1000)
    wiener = min(_rel(ifft2c(wiener_filter(fft2c(frames[f]), C[f], snr)).real, truth) for f in range(3) for snr in snrs)
    flipped = min(_rel(ifft2c(phase_flip(fft2c(frames[f]), C[f])).real, truth) for f in range(3))
    estimates = torch.stack([multi, *singles])
    r = centered_coords(box, dtype=D)
    outside = r[:, None] ** 2 + r[None, :] ** 2 > radius**2
    assert bool((estimates >= 0).all()) and bool((estimates[:, outside] == 0).all())
    # measured: multi-frame 0.21, single-frame 0.32-0.44, best Wiener 0.87, phase flip 1.03 (relative errors)
    assert _rel(multi, truth) < 0.35 * min(wiener, flipped)
    assert _rel(multi, truth) < 0.75 * min(_rel(s, truth) for s in singles)
    assert _corr(multi, truth) > 0.97
    # the thesis' settings (alpha 10, no support): 0.68; no support at alpha 1: 0.54
    assert _rel(deconvolve(frames, C), truth) < 0.85 * wiener
    assert _rel(multi, truth) < 0.5 * _rel(deconvolve(frames, C, regulariser=1.0), truth)
    # single-frame deconvolution: correlation with the truth 0.96 against 0.42-0.45 for the raw frames
    for f in range(3):
        assert _corr(singles[f], truth) > _corr(frames[f], truth) + 0.4


@pytest.mark.parametrize("box", [32, 33])
def test_centring_moves_the_centre_of_mass_to_the_box_centre(box):
    px = 2.0
    img = _blobs([[6.6, -5.4, 0], [2.0, 3.0, 0]], [1.0, 0.4], box, px)  # centre of mass (5.29, -3.0) Å
    shift = centre_of_mass_shift(img)
    com_A = torch.tensor([6.6 + 0.4 * 2.0, -5.4 + 0.4 * 3.0], dtype=D) / 1.4
    torch.testing.assert_close(shift[0], -com_A / px, atol=1e-3, rtol=0)
    centred = centre(img)
    assert float(centre_of_mass_shift(centred).abs().max()) < 0.05
    assert float(centred.sum()) == pytest.approx(float(img.sum()), rel=1e-12)


def test_group_by_defocus_uses_equal_width_intervals():
    df = torch.tensor([1000.0, 1100.0, 5000.0, 9000.0, 9500.0])
    assert group_by_defocus(df, 4).tolist() == [0, 0, 1, 2, 2]  # edges 1000, 3125, 5250, 7375, 9500; one empty
    assert group_by_defocus(df, 1).tolist() == [0] * 5
    assert group_by_defocus(torch.full((3,), 2e4), 3).tolist() == [0, 0, 0]
    with pytest.raises(InvalidValueError):
        group_by_defocus(df, 0)


def test_alignment_undoes_psi_and_origin_and_turns_the_ctf():
    box, px = 48, 3.0
    psi = torch.tensor([37.0, 200.0], dtype=D)
    R = euler_to_matrix(torch.stack([torch.zeros(2, dtype=D), torch.zeros(2, dtype=D), psi], -1))
    reference = _blobs(*TRUTH_BLOBS, box, px)[0]
    proj = _blobs(*TRUTH_BLOBS, box, px, R)
    assert max(_rel(a, reference) for a in rotate_images(proj, psi)) < 0.04  # bilinear interpolation: 0.030
    ctf = CTFParams.create([15000.0] * 2, [11000.0] * 2, [30.0] * 2, dtype=D)
    origins = torch.tensor([[2.3, -1.2], [-3.1, 0.7]], dtype=D)
    images = ifft2c(translate(fft2c(proj) * compute_ctf(ctf, box, px, D), -origins)).real
    one_class = torch.zeros(1, dtype=torch.long)
    for i in range(2):
        frame = defocus_frames(images[i : i + 1], psi[i : i + 1], origins[i : i + 1], one_class, ctf[i : i + 1], px, 1)
        assert _rel(frame.frames[0], apply_ctf(reference, frame.ctfs[0])) < 0.05  # measured 0.038
        assert _rel(frame.frames[0], apply_ctf(reference, compute_ctf(ctf[i : i + 1], box, px, D)[0])) > 0.05  # unturned CTF


def test_class_averages_from_particles_recover_each_class():
    box, px, n_per = 32, 4.0, 80
    g = torch.Generator().manual_seed(3)
    blobs = [
        ([[16.0, 0, 0], [-8, 14, 0], [-8, -14, 0]], [1.0, 1.0, 1.0]),
        ([[-20.0, 0, 0], [0, 0, 0], [20, 6, 0]], [1.5, 0.7, 0.7]),
    ]
    classes = torch.arange(2).repeat_interleave(n_per)
    n = classes.numel()
    psi = torch.rand(n, generator=g, dtype=D) * 360
    R = euler_to_matrix(torch.stack([torch.zeros(n, dtype=D), torch.zeros(n, dtype=D), psi], -1))
    proj = torch.cat([_blobs(*blobs[k], box, px, R[classes == k]) for k in range(2)]) * 2  # peak SNR 2
    origins = (torch.rand(n, 2, generator=g, dtype=D) - 0.5) * 6
    df = 10000 + 20000 * torch.rand(n, generator=g, dtype=D)
    ctf = CTFParams.create(df + 250, df - 250, torch.rand(n, generator=g, dtype=D) * 180, dtype=D)
    images = ifft2c(translate(fft2c(proj) * compute_ctf(ctf, box, px, D), -origins)).real
    images = images + torch.randn(n, box, box, generator=g, dtype=D)
    ids, averages = class_averages_from_particles(
        images, psi, origins, classes, ctf, px, n_defocus_groups=4, mask_radius=10, centred=True
    )
    assert ids.tolist() == [0, 1] and bool((averages >= 0).all())
    assert float(centre_of_mass_shift(averages).abs().max()) < 0.05  # measured 0.026
    truth = torch.cat([_blobs(*b, box, px) for b in blobs])
    frames = defocus_frames(images, psi, origins, classes, ctf, px, 4)
    for k in range(2):
        sel = frames.classes == k
        plain = (frames.frames[sel] * frames.counts[sel, None, None]).sum(0) / frames.counts[sel].sum()
        # measured: own class 0.98 / 0.96, other class 0.42 / 0.41, plain average of aligned images 0.78 / 0.67
        own = _corr(averages[k], centre(truth)[k])
        assert own > 0.9
        assert _corr(averages[k], centre(truth)[1 - k]) < own - 0.4
        assert own > _corr(plain, truth[k]) + 0.15
    with pytest.raises(InvalidValueError):
        class_averages_from_particles(images, psi, origins, classes, ctf, px, centred=True)


def test_bad_inputs_raise():
    C = torch.ones(2, 8, 8, dtype=D)
    with pytest.raises(InvalidValueError):
        deconvolve(torch.zeros(2, 8, 8, dtype=D), C[:, :4], regulariser=1.0)
    with pytest.raises(InvalidValueError):
        deconvolve(torch.zeros(2, 8, 8, dtype=D), C, torch.tensor([1.0, 0.0], dtype=D))
    with pytest.raises(InvalidValueError):
        centre(-torch.ones(1, 8, 8, dtype=D))

