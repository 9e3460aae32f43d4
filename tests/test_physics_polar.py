"""Polar Fourier rings: exact DFT at the nodes, quadrature, CTF and shift phases, Fourier–Bessel rotations."""

import math

import pytest
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.rotations import euler_to_matrix
from cryoscope.physics.ctf import CTFParams, compute_ctf
from cryoscope.physics.forward import ImageFormation
from cryoscope.physics.fourier import centered_coords, fft2c
from cryoscope.physics.polar import (
    PolarGrid,
    fourier_bessel,
    polar_ctf,
    polar_grid,
    polar_transform,
    rings_from_fourier_bessel,
    rotate_rings,
    shift_phases,
)
from cryoscope.representations.voxel import VoxelMap

D = torch.float64


def _integer_grid() -> PolarGrid:
    """Rings k = 1, 2, 3 cycles per box at ψ = 0, π/2, π, 3π/2: every node is an integer frequency."""
    k = torch.tensor([1.0, 2.0, 3.0], dtype=D)
    return PolarGrid(k, torch.ones_like(k), 4, 3.0)


def _at_nodes(F: torch.Tensor, grid: PolarGrid) -> torch.Tensor:
    """Values [..., n_k, n_psi] of centred arrays F [..., N, N] at the (integer) grid nodes."""
    kx, ky = grid.points()
    c = F.shape[-1] // 2
    return F[..., ky.round().long() + c, kx.round().long() + c]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _gaussian_image(box: int, centre: tuple[float, float], sigma: float) -> torch.Tensor:
    """exp(-|x - centre|² / 2σ²) on the centred pixel grid, [N, N] ([y, x])."""
    r = centered_coords(box, dtype=D)
    y, x = torch.meshgrid(r, r, indexing="ij")
    return torch.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma**2))


@pytest.mark.parametrize("box", [16, 17])
def test_polar_transform_equals_fft2c_at_integer_nodes(box):
    grid = _integer_grid()
    images = torch.randn(3, box, box, dtype=D)
    rings = polar_transform(images, grid, chunk=2)
    assert rings.shape == (3, 3, 4) and rings.dtype == torch.complex128
    assert _rel(rings, _at_nodes(fft2c(images), grid)) < 1e-10


def test_area_weights_integrate_over_the_disc():
    s, k_max = 2.0, 5.0
    grid = polar_grid(k_max, n_shells=20, n_psi=8)
    kx, ky = grid.points()
    gauss = torch.exp(-(kx**2 + ky**2) / s**2)
    u = k_max**2 / s**2
    exact = math.pi * s**2 * (1 - math.exp(-u))
    assert abs(float((grid.area_weights()[:, None] * gauss).sum()) / exact - 1) < 1e-8
    # an anisotropic integrand: ∫∫ kx² exp(-|k|²/s²) d²k = π s⁴ (1 - e^{-u} (1 + u)) / 2
    exact_x2 = math.pi * s**4 * (1 - math.exp(-u) * (1 + u)) / 2
    assert abs(float((grid.area_weights()[:, None] * kx**2 * gauss).sum()) / exact_x2 - 1) < 1e-8
    # inner(a, a) = ∫∫ |a|²: a complex field whose modulus squared is the Gaussian
    a = torch.sqrt(gauss) * torch.exp(1j * (0.7 * kx - 0.3 * ky))
    assert abs(float(grid.inner(a, a)) / exact - 1) < 1e-8


def test_inner_product_approximates_parseval_sum_on_integer_grid():
    """Discretisation check: ∫∫_{|k|<k_max} |Â|² d²k (rings) against Σ_{|k|<k_max} |fft2c|² (unit cells).

    |Â|² has decayed to ~1e-7 of its peak at k_max, so both approximate N² Σ|A|² (they agree to ~1e-9 here); the
    1e-6 tolerance bounds the quadrature and disc cut-off errors, it is not an exact identity."""
    box, k_max = 32, 14.0
    image = (_gaussian_image(box, (0.7, -1.3), 2.0) + 0.5 * _gaussian_image(box, (4.2, 2.5), 1.5))[None]
    grid = polar_grid(k_max, n_shells=32, n_psi=64)
    F = fft2c(image)
    r = centered_coords(box, dtype=D)
    inside = (r[:, None] ** 2 + r[None, :] ** 2) < k_max**2
    riemann = (F.abs() ** 2 * inside).sum()
    rings = polar_transform(image, grid)
    assert abs(float(grid.inner(rings, rings)[0] / riemann) - 1) < 1e-6


@pytest.mark.parametrize("box", [16, 15])
@pytest.mark.parametrize("with_ctf", [False, True])
def test_model_rings_are_ctf_times_shift_phases_times_centred_rings(box, with_ctf):
    """Images from ImageFormation with RELION origins: rings = shift_phases (· polar_ctf) · rings of the centred,
    CTF-free image at integer nodes (the same projection code path for both: pins the sign)."""
    r = centered_coords(box, dtype=D)
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    centres = 2.5 * torch.randn(3, 3, dtype=D)
    volume = sum(torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / 3.0) for c in centres)
    rep = VoxelMap(volume, voxel_size=1.4)
    rotations = euler_to_matrix(torch.tensor([[30.0, 70.0, -40.0], [200.0, 120.0, 15.0]], dtype=D))
    origins = torch.tensor([[1.5, -2.25], [-0.75, 3.0]], dtype=D)
    grid = _integer_grid()
    model = ImageFormation()
    params = CTFParams.create([12000.0, 20000.0], [10000.0, 19000.0], [30.0, -50.0], bfactor=40.0, phase_shift=20.0, dtype=D)
    ctf = compute_ctf(params, box, 1.4) if with_ctf else None
    shifted = polar_transform(model(rep, rotations, origins_px=origins, ctf=ctf), grid)
    centred = polar_transform(model(rep, rotations), grid)
    expected = shift_phases(origins, grid, box) * centred
    if with_ctf:
        expected = polar_ctf(params, grid, box, 1.4) * expected
    assert _rel(shifted, expected) < 1e-8
    assert _rel(shifted, centred) > 0.1  # the shift is not a no-op at these nodes


def test_shift_phases_are_a_continuous_shift_at_general_nodes():
    """A Gaussian particle centred at -origin (RELION) well inside the box: the DFT at non-integer nodes is the
    shift phase times the centred one, up to its (negligible) truncation and aliasing."""
    box, sigma = 32, 1.8
    origins = torch.tensor([[1.5, -2.25], [-3.1, 0.4]], dtype=D)
    grid = polar_grid(10.0, n_shells=6, n_psi=12)
    shifted = torch.stack([_gaussian_image(box, (-float(o[0]), -float(o[1])), sigma) for o in origins])
    centred = _gaussian_image(box, (0.0, 0.0), sigma).expand(2, box, box)
    expected = shift_phases(origins, grid, box) * polar_transform(centred, grid)
    assert _rel(polar_transform(shifted, grid), expected) < 1e-9


@pytest.mark.parametrize("box", [16, 15])
def test_polar_ctf_equals_compute_ctf_at_integer_nodes(box):
    params = CTFParams.create(
        [15000.0, 8000.0], [12000.0, 8500.0], [25.0, 110.0], bfactor=[0.0, 60.0], phase_shift=[0.0, 35.0], dtype=D
    )
    grid = _integer_grid()
    expected = _at_nodes(compute_ctf(params, box, 1.7), grid)
    values = polar_ctf(params, grid, box, 1.7)
    assert values.shape == (2, 3, 4) and not values.is_complex()
    assert _rel(values, expected) < 1e-10


@pytest.mark.parametrize("n_psi", [12, 11])
def test_fourier_bessel_round_trip_and_rotations(n_psi):
    rings = torch.randn(3, 2, n_psi, dtype=torch.complex128)
    assert _rel(rings_from_fourier_bessel(fourier_bessel(rings)), rings) < 1e-12
    step = torch.full((3,), 2 * math.pi / n_psi * 3, dtype=D)
    assert _rel(rotate_rings(rings, step), torch.roll(rings, 3, dims=-1)) < 1e-12

    # band-limited rings f(ψ) = Σ_{|q|<n/2} c_q e^{iqψ} (+ c cos(nψ/2) for even n), rotated by arbitrary angles
    q = torch.arange(-((n_psi - 1) // 2), (n_psi - 1) // 2 + 1, dtype=D)
    c = torch.randn(3, 2, q.shape[0], dtype=torch.complex128)
    c_nyquist = torch.randn(3, 2, 1, dtype=torch.complex128) * (n_psi % 2 == 0)

    def ring(psi):  # psi [3, 1, P] -> [3, 2, P]
        return (c[..., None] * torch.exp(1j * q[:, None] * psi[..., None, :])).sum(-2) + c_nyquist * torch.cos(n_psi / 2 * psi)

    psi = torch.arange(n_psi, dtype=D) * (2 * math.pi / n_psi)
    gamma = torch.tensor([0.37, -2.1, 4.4], dtype=D)
    rings = ring(psi.expand(3, 1, n_psi))
    assert _rel(fourier_bessel(rings)[..., q.long() % n_psi], c) < 1e-12  # Ǎ(q) is the coefficient of e^{iqψ}
    assert _rel(rotate_rings(rings, gamma), ring(psi - gamma[:, None, None])) < 1e-12


def test_bad_inputs_raise():
    grid = polar_grid(4.0, 3, 8)
    with pytest.raises(InvalidValueError):
        polar_transform(torch.zeros(2, 16, 15, dtype=D), grid)
    with pytest.raises(InvalidValueError):
        polar_transform(torch.zeros(2, 6, 6, dtype=D), grid)  # k_max 4 > Nyquist 3
    with pytest.raises(InvalidValueError):
        polar_grid(4.0, 3, 0)
    with pytest.raises(InvalidValueError):
        grid.inner(torch.zeros(3, 7, dtype=D), torch.zeros(3, 8, dtype=D))
    with pytest.raises(InvalidValueError):
        shift_phases(torch.zeros(2, 3, dtype=D), grid, 16)
    with pytest.raises(InvalidValueError):
        rotate_rings(torch.zeros(2, 3, 8, dtype=torch.complex128), torch.zeros(3, dtype=D))
