"""Fourier-slice projector: agreement with real-space projection, convention, exact adjoint."""

import pytest
import torch

from cryoscope.geometry.rotations import euler_to_matrix
from cryoscope.physics.projection import backproject, project, project_real_space

D = torch.float64


def gaussians(n, centres, sigmas, dtype=D):
    """Sum of isotropic Gaussians at (x, y, z) pixel offsets from the centre N // 2."""
    k = torch.arange(n, dtype=dtype) - n // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    v = torch.zeros(n, n, n, dtype=dtype)
    for (cx, cy, cz), s in zip(centres, sigmas):
        v += torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s * s))
    return v


def random_rotations(n, dtype=D):
    return euler_to_matrix(torch.rand(n, 3, dtype=dtype) * torch.tensor([360.0, 180.0, 360.0], dtype=dtype))


@pytest.mark.parametrize("n", [32, 33])
def test_fourier_slice_matches_real_space(n):
    v = gaussians(n, [(3, -2, 1), (-5, 4, 2), (1, 6, -4)], [3.0, 2.5, 2.0])
    R = random_rotations(4)
    a, b = project(v, R), project_real_space(v, R)
    for i in range(4):
        assert torch.corrcoef(torch.stack([a[i].flatten(), b[i].flatten()]))[0, 1] > 0.99


@pytest.mark.parametrize("n", [32, 33])
def test_offcentre_blob_lands_at_A_r0(n):
    r0 = torch.tensor([6.0, -4.0, 3.0], dtype=D)
    v = gaussians(n, [tuple(r0.tolist())], [1.5])
    R = random_rotations(3)
    img = project(v, R)
    k = torch.arange(n, dtype=D) - n // 2
    y, x = torch.meshgrid(k, k, indexing="ij")
    for i in range(3):
        expected = (R[i] @ r0)[:2]
        peak = img[i].argmax()
        assert torch.allclose(torch.stack([x.flatten()[peak], y.flatten()[peak]]), expected, atol=0.71)
        w = img[i] * (((x - expected[0]) ** 2 + (y - expected[1]) ** 2) < 16)  # centroid near the peak
        centroid = torch.stack([(w * x).sum(), (w * y).sum()]) / w.sum()
        assert torch.allclose(centroid, expected, atol=0.1)


@pytest.mark.parametrize("n,cutoff", [(16, None), (17, None), (16, 0.3), (17, 0.45)])
def test_backprojection_is_exact_adjoint(n, cutoff):
    v = torch.randn(n, n, n, dtype=D)
    R = random_rotations(5)
    y = torch.randn(5, n, n, dtype=D)
    lhs = (project(v, R, cutoff=cutoff) * y).sum()
    rhs = (v * backproject(y, R, cutoff=cutoff)).sum()
    assert torch.isclose(lhs, rhs, rtol=1e-12)
    Y = torch.randn(5, n, n, dtype=torch.complex128)
    lhs = torch.vdot(project(v, R, cutoff=cutoff, fourier=True).flatten(), Y.flatten()).real
    rhs = (v * backproject(Y, R, cutoff=cutoff, fourier=True)).sum()
    assert torch.isclose(lhs, rhs, rtol=1e-12)


def test_projection_is_differentiable_wrt_volume_and_rotations():
    n = 12
    v = torch.randn(n, n, n, dtype=D, requires_grad=True)
    R = random_rotations(3).requires_grad_(True)
    project(v, R).pow(2).sum().backward()
    assert v.grad is not None and R.grad is not None and R.grad.abs().sum() > 0
    # the volume gradient of 0.5 |P v|^2 is P* P v
    assert torch.allclose(v.grad, 2 * backproject(project(v.detach(), R.detach()), R.detach()), atol=1e-10)


@pytest.mark.parametrize("n,oversample", [(16, 2.0), (17, 2.0), (16, 1.5), (12, 1.25)])
def test_fourier_volume_matches_centred_fft_reference(n, oversample):
    from cryoscope.physics.fourier import fft3c, ifft3c
    from cryoscope.physics.projection import (
        fourier_volume,
        fourier_volume_adjoint,
        grid_interior,
        gridding_correction,
        padded_size,
    )

    v = torch.randn(n, n, n, dtype=D)
    m = padded_size(n, oversample)
    lo = m // 2 - n // 2
    corr = gridding_correction(n, m, dtype=D)
    ref = torch.nn.functional.pad(fft3c(torch.nn.functional.pad(v / corr, (lo, m - n - lo) * 3)), (1, 2) * 3)
    G = fourier_volume(v, oversample)
    assert torch.allclose(G, ref, atol=1e-10)
    X = torch.randn_like(G)
    ref_adj = (ifft3c(grid_interior(X)) * m**3).real[lo : lo + n, lo : lo + n, lo : lo + n] / corr
    assert torch.allclose(fourier_volume_adjoint(X, n), ref_adj, atol=1e-9)


def test_project_reuses_a_precomputed_fourier_volume():
    from cryoscope.physics.projection import fourier_volume

    v = torch.randn(12, 12, 12, dtype=D)
    R = random_rotations(3)
    assert torch.allclose(project(v, R, fvol=fourier_volume(v)), project(v, R), atol=1e-12)


@pytest.mark.parametrize("n", [12, 13])
def test_cell_sums_give_the_normal_operator_and_backprojection(n):
    """Per-cell rows (samples folded to z >= 0) reproduce Interp* diag(w) Interp and the weighted backprojection
    of the unfolded samples, as real maps (the adjoint's real part is the Hermitian symmetrisation)."""
    from cryoscope.physics.projection import (
        fold_half_slices,
        fourier_volume,
        fourier_volume_adjoint,
        grid_size,
        scatter_half_slices,
        slice_fourier_volume,
        slice_layout,
    )
    from cryoscope.reconstruction.cells import CellSums, apply_normal_stencil, stencil_row_sums

    R = random_rotations(6)
    size, layout = grid_size(n, 2.0), slice_layout(n, 0.45)
    grid = fourier_volume(torch.randn(n, n, n, dtype=D))
    w = fold_half_slices(torch.rand(6, n, n, dtype=D).to(torch.complex128), layout).real
    y = torch.randn(6, layout.freqs.shape[0], dtype=torch.complex128)
    samples = slice_fourier_volume(grid, R, n).reshape(6, -1)[:, layout.computed]
    explicit = torch.zeros(size**3, dtype=torch.complex128)
    scatter_half_slices([(samples * w, explicit)], R, layout, size)
    back = torch.zeros(size**3, dtype=torch.complex128)
    scatter_half_slices([(y, back)], R, layout, size)
    cells = CellSums(n, size, 0.45, 2, torch.device("cpu"), D)
    cells.add(y, w, R, layout, torch.tensor([1, 1, 1, 1, 1, 1]))
    assert cells.rows.view(2, -1, cells.rows.shape[-1])[0].abs().max() == 0
    stencil, z0 = cells.stencil(1), cells.slab_start  # the slab z >= z0 holds every coupling
    as_map = lambda g: fourier_volume_adjoint(g.view(size, size, size), n)
    want = as_map(explicit)
    applied = torch.zeros_like(grid)
    applied[z0:] = apply_normal_stencil(stencil, grid[z0:])
    assert (as_map(applied) - want).abs().max() < 1e-12 * want.abs().max()
    want = as_map(back)
    assert (as_map(cells.numerator(1)) - want).abs().max() < 1e-12 * want.abs().max()
    spread = torch.zeros(size**3, dtype=torch.complex128)
    scatter_half_slices([(w.to(torch.complex128), spread)], R, layout, size)
    want = as_map(spread)
    rows = torch.zeros(size, size, size, dtype=torch.complex128)
    rows[z0:] = stencil_row_sums(stencil)
    assert (as_map(rows) - want).abs().max() < 1e-12 * want.abs().max()


@pytest.mark.parametrize("n,cutoff,kernel", [(16, None, "kb4"), (17, 0.45, "kb3"), (16, 0.3, "kb5")])
def test_kaiser_bessel_backprojection_is_exact_adjoint(n, cutoff, kernel):
    v = torch.randn(n, n, n, dtype=D)
    R = random_rotations(4)
    y = torch.randn(4, n, n, dtype=D)
    lhs = (project(v, R, cutoff=cutoff, kernel=kernel) * y).sum()
    rhs = (v * backproject(y, R, cutoff=cutoff, kernel=kernel)).sum()
    assert torch.isclose(lhs, rhs, rtol=1e-12)


def test_kaiser_bessel_matches_analytic_line_integrals():
    """Blobs (sigma 1.5 px) project to 2-D Gaussians of amplitude sigma sqrt(2 pi) at (A c)_xy; kb4 is ~30x closer than trilinear."""
    n, sigma = 32, 1.5
    centres = torch.tensor([(3.0, -2.0, 1.0), (-5.0, 4.0, 2.0), (1.0, 6.0, -4.0), (-2.0, -6.0, 5.0)], dtype=D)
    v = gaussians(n, centres.tolist(), [sigma] * 4)
    R = random_rotations(4)
    k = torch.arange(n, dtype=D) - n // 2
    y, x = torch.meshgrid(k, k, indexing="ij")
    p = torch.einsum("mij,bj->mbi", R, centres)[..., :2]
    exact = (sigma * (2 * torch.pi) ** 0.5) * torch.exp(
        -((x - p[..., 0, None, None]) ** 2 + (y - p[..., 1, None, None]) ** 2) / (2 * sigma**2)
    ).sum(1)
    err = {kern: float((project(v, R, kernel=kern) - exact).norm() / exact.norm()) for kern in ("trilinear", "kb4")}
    assert err["kb4"] < 1.5e-3 and err["trilinear"] > 30 * err["kb4"]


def test_kaiser_bessel_is_differentiable_and_rejects_unknown_kernels():
    from cryoscope.errors import InvalidValueError
    from cryoscope.physics.projection import fourier_volume, grid_size

    n = 10
    v = torch.randn(n, n, n, dtype=D, requires_grad=True)
    R = random_rotations(2).requires_grad_(True)
    project(v, R, kernel="kb3").pow(2).sum().backward()
    assert torch.allclose(v.grad, 2 * backproject(project(v.detach(), R.detach(), kernel="kb3"), R.detach(), kernel="kb3"), atol=1e-10)
    assert R.grad is not None and torch.isfinite(R.grad).all() and R.grad.abs().sum() > 0
    assert fourier_volume(v.detach(), kernel="kb3").shape[-1] == grid_size(n, 2.0, "kb3") == 2 * n + 5
    with pytest.raises(InvalidValueError, match="kernel"):
        project(v.detach(), R.detach(), kernel="cubic")
