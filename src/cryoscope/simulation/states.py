"""The true maps a dataset is simulated from: MRC maps, atomic models, or a trajectory between two models."""

from __future__ import annotations

from pathlib import Path

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.io.mrc import Map, read_map
from cryoscope.io.pdb import interpolated_model_map, pdb_to_map
from cryoscope.physics.filters import fourier_resize


def fit_box(volume: torch.Tensor, box: int) -> torch.Tensor:
    """Crop or zero-pad a centred cubic map [N, N, N] to [box, box, box] (centres N//2 and box//2 kept)."""
    n = volume.shape[-1]
    out = volume.new_zeros(box, box, box)
    lo_in, lo_out = max(0, n // 2 - box // 2), max(0, box // 2 - n // 2)
    m = min(n, box)
    out[lo_out : lo_out + m, lo_out : lo_out + m, lo_out : lo_out + m] = volume[lo_in : lo_in + m, lo_in : lo_in + m, lo_in : lo_in + m]
    return out


def prepare_map(m: Map, box: int | None = None, voxel_size: float | None = None) -> Map:
    """Resample a map to `voxel_size` (Å, Fourier crop/pad) and then crop/pad it to `box` pixels."""
    data, vs = m.data, m.voxel_size
    if voxel_size is not None and abs(voxel_size - vs) > 1e-6 * vs:
        n_new = max(2, round(data.shape[-1] * vs / voxel_size))
        data = fourier_resize(data, n_new, ndim=3)
        vs = vs * m.data.shape[-1] / n_new  # exact voxel size after resampling to an integer box
    if box is not None and box != data.shape[-1]:
        data = fit_box(data, box)
    return Map(data.contiguous(), vs)


def map_states(paths: list[str | Path], box: int | None, voxel_size: float | None, input_voxel_size: float | None) -> list[Map]:
    """Read MRC maps (`input_voxel_size` Å for headers without one) on a common box and voxel size."""
    maps = [read_map(p, voxel_size=input_voxel_size) for p in paths]
    target = voxel_size or maps[0].voxel_size
    target_box = box or maps[0].data.shape[-1]
    return [prepare_map(m, target_box, target) for m in maps]


def model_states(paths: list[str | Path], box: int, voxel_size: float, resolution: float | None) -> list[Map]:
    """Density maps of atomic models, each centred on its centre of mass."""
    if box is None or voxel_size is None:
        raise InvalidValueError("simulating from atomic models needs --box and --voxel-size")
    return [pdb_to_map(p, box, voxel_size, resolution=resolution) for p in paths]


def trajectory_frames(
    first: str | Path, second: str | Path, n_frames: int, box: int, voxel_size: float, resolution: float | None
) -> list[Map]:
    """`n_frames` maps along the straight line between two models with the same atoms (frame 0 = first)."""
    if n_frames < 2:
        raise InvalidValueError(f"a trajectory needs at least 2 frames, got {n_frames}")
    if box is None or voxel_size is None:
        raise InvalidValueError("simulating a trajectory needs --box and --voxel-size")
    return [
        interpolated_model_map(first, second, t, box, voxel_size, resolution=resolution)
        for t in torch.linspace(0, 1, n_frames).tolist()
    ]
