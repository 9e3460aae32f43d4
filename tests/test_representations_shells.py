"""Shell (spherical-harmonic) representation of maps: conversion to and from voxels."""

from __future__ import annotations

import mrcfile
import pytest
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.fourier import centered_coords, fft3c, ifft3c
from cryoscope.representations.shells import from_voxels, k_max_from_two_pi_k, shell_basis, to_voxels


def test_voxel_round_trip_reproduces_the_band_limited_map(data_dir):
    vol = torch.tensor(mrcfile.read(data_dir / "maps" / "ribosome70S_65.mrc").astype("float64"))[:64, :64, :64].contiguous()
    basis = shell_basis(k_max_from_two_pi_k(24), 20, 26, 64)
    back = to_voxels(from_voxels(vol, basis), basis)
    c = centered_coords(64, dtype=torch.float64)
    kz, ky, kx = torch.meshgrid(c, c, c, indexing="ij")
    low = ifft3c(fft3c(vol) * ((kx**2 + ky**2 + kz**2).sqrt() < basis.k_max)).real
    assert float((back - low).norm() / low.norm()) < 0.03
    assert basis.n_params == int(((basis.degrees + 1) ** 2).sum()) and int(basis.degrees.max()) == 26


def test_bad_bases_and_maps_are_refused():
    with pytest.raises(InvalidValueError):
        shell_basis(40.0, 10, 8, 64)  # beyond Nyquist
    basis = shell_basis(5.0, 4, 6, 32)
    with pytest.raises(InvalidValueError):
        from_voxels(torch.zeros(30, 30, 30, dtype=torch.float64), basis)
