"""cryoSPARC .cs particle files (numpy structured arrays, loaded without pickle).

Conventions pinned in docs/io.md: the RELION matrix is A = R(pose)^T, with R the right-handed
rotation exp(skew(pose)), i.e. pose = -log(A); alignments3D/shift (pixels) equals the RELION
origin (pixels); ctf/df_angle_rad and ctf/phase_shift_rad are RELION's angles in radians;
blob/idx is 0-based; class and optics group ids are 0-based.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cryoscope.errors import InputFormatError, InvalidValueError, MissingDataError
from cryoscope.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from cryoscope.io.atomic import atomic_path
from cryoscope.io.files import existing_file
from cryoscope.io.metadata import ParticleMetadata

_KNOWN_PREFIXES = ("blob/", "ctf/", "alignments3D/")


def load_cs(path: str | Path) -> np.ndarray:
    """The structured array of a .cs file; InputFormatError if it is not one."""
    path = existing_file(path)
    try:
        with open(path, "rb") as fh:
            arr = np.load(fh, allow_pickle=False)
    except Exception as err:
        raise InputFormatError(f"not a cryoSPARC .cs file (numpy array): {err}", path) from None
    if not isinstance(arr, np.ndarray) or arr.dtype.names is None or arr.ndim != 1:
        raise InputFormatError("not a cryoSPARC .cs file: expected a 1-D numpy structured array", path)
    if not any(n.startswith(_KNOWN_PREFIXES) for n in arr.dtype.names):
        raise InputFormatError("no blob/, ctf/ or alignments3D/ fields: not a cryoSPARC particle file", path)
    if len(arr) == 0:
        raise InputFormatError("the .cs file has no particles", path)
    return arr


def _f(arr: np.ndarray, name: str) -> torch.Tensor:
    return torch.tensor(np.asarray(arr[name], dtype=np.float64))


def read_cs(path: str | Path, pixel_size: float | None = None) -> ParticleMetadata:
    """Read a cryoSPARC particle .cs file; `pixel_size` (Å) overrides blob/psize_A."""
    path = Path(path)
    arr = load_cs(path)
    names = set(arr.dtype.names)
    n = len(arr)

    def need(*fields: str) -> None:
        for f in fields:
            if f not in names:
                raise MissingDataError(f"missing required field {f}", path)

    if pixel_size is not None:
        px = torch.full((n,), float(pixel_size), dtype=torch.float64)
    elif "blob/psize_A" in names:
        px = _f(arr, "blob/psize_A")
    elif "alignments3D/psize_A" in names:
        px = _f(arr, "alignments3D/psize_A")
    else:
        px = None

    image_names = None
    box = None
    if "blob/path" in names:
        need("blob/idx")
        paths = [p.decode() if isinstance(p, bytes) else str(p) for p in arr["blob/path"]]
        image_names = [(p[1:] if p.startswith(">") else p, int(i)) for p, i in zip(paths, arr["blob/idx"])]
    if "blob/shape" in names:
        shapes = np.unique(np.asarray(arr["blob/shape"]).reshape(n, -1), axis=0)
        if len(shapes) != 1 or shapes[0][0] != shapes[0][-1]:
            raise InvalidValueError(f"blob/shape must be one square size, got {shapes.tolist()}", path)
        box = int(shapes[0][0])

    rotations = shifts = None
    if "alignments3D/pose" in names:
        need("alignments3D/shift")
        pose = _f(arr, "alignments3D/pose")
        if not bool(torch.isfinite(pose).all()):
            raise InvalidValueError("alignments3D/pose has NaN/Inf values", path)
        rotations = axis_angle_to_matrix(pose).transpose(-1, -2)
        shift_px = _f(arr, "alignments3D/shift")
        spx = _f(arr, "alignments3D/psize_A") if "alignments3D/psize_A" in names else px
        if spx is None:
            raise MissingDataError("alignments3D/shift is in pixels but no pixel size is given: give --pixel-size", path)
        shifts = shift_px * (px if pixel_size is not None else spx)[:, None]

    ctf = {}
    if "ctf/df1_A" in names:
        need("ctf/df2_A", "ctf/df_angle_rad", "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast")
        ctf = {
            "defocus_u": _f(arr, "ctf/df1_A"),
            "defocus_v": _f(arr, "ctf/df2_A"),
            "defocus_angle": torch.rad2deg(_f(arr, "ctf/df_angle_rad")),
            "voltage": _f(arr, "ctf/accel_kv"),
            "cs": _f(arr, "ctf/cs_mm"),
            "amplitude_contrast": _f(arr, "ctf/amp_contrast"),
            "phase_shift": torch.rad2deg(_f(arr, "ctf/phase_shift_rad")) if "ctf/phase_shift_rad" in names else torch.zeros(n, dtype=torch.float64),
            "bfactor": _f(arr, "ctf/bfactor") if "ctf/bfactor" in names else torch.zeros(n, dtype=torch.float64),
            "scale": _f(arr, "ctf/scale") if "ctf/scale" in names else torch.ones(n, dtype=torch.float64),
        }
    optics = torch.tensor(np.asarray(arr["ctf/exp_group_id"], np.int64)) + 1 if "ctf/exp_group_id" in names else None
    cls = None
    for key in ("alignments3D/class", "alignments2D/class"):
        if key in names:
            cls = torch.tensor(np.asarray(arr[key], np.int64)) + 1
            break
    split = torch.tensor(np.asarray(arr["alignments3D/split"], np.int64)) + 1 if "alignments3D/split" in names else None
    return ParticleMetadata(
        n=n, rotations=rotations, shifts_A=shifts, **ctf, optics_group=optics, pixel_size=px, box=box,
        class_number=cls, random_subset=split, image_names=image_names, root=path.parent.resolve(), source=str(path),
    )  # fmt: skip


def write_cs(path: str | Path, meta: ParticleMetadata, protect: Sequence[str | Path] = ()) -> None:
    """Write a cryoSPARC particle .cs file (structured array, no pickle); atomic."""
    path = Path(path)
    px = meta.require_pixel_size()
    n = meta.n
    cols: list[tuple[str, np.dtype, tuple, np.ndarray]] = [
        ("uid", np.dtype("<u8"), (), np.arange(1, n + 1, dtype=np.uint64))
    ]
    if meta.image_names is not None:
        resolved = meta.image_names_relative_to(path.parent)
        paths = [p for p, _ in resolved]
        width = max(1, max(len(p.encode()) for p in paths))
        cols += [
            ("blob/path", np.dtype(f"S{width}"), (), np.array([p.encode() for p in paths])),
            ("blob/idx", np.dtype("<u4"), (), np.array([i for _, i in resolved], np.uint32)),
        ]
    if meta.box is not None:
        cols.append(("blob/shape", np.dtype("<u4"), (2,), np.full((n, 2), meta.box, np.uint32)))
    cols.append(("blob/psize_A", np.dtype("<f4"), (), px.numpy()))
    if meta.has_ctf:
        ps = meta.phase_shift if meta.phase_shift is not None else torch.zeros(n, dtype=torch.float64)
        cols += [
            ("ctf/exp_group_id", np.dtype("<u4"), (), (meta.optics_group - 1).numpy()),
            ("ctf/accel_kv", np.dtype("<f4"), (), meta.voltage.numpy()),
            ("ctf/cs_mm", np.dtype("<f4"), (), meta.cs.numpy()),
            ("ctf/amp_contrast", np.dtype("<f4"), (), meta.amplitude_contrast.numpy()),
            ("ctf/df1_A", np.dtype("<f4"), (), meta.defocus_u.numpy()),
            ("ctf/df2_A", np.dtype("<f4"), (), meta.defocus_v.numpy()),
            ("ctf/df_angle_rad", np.dtype("<f4"), (), torch.deg2rad(meta.defocus_angle).numpy()),
            ("ctf/phase_shift_rad", np.dtype("<f4"), (), torch.deg2rad(ps).numpy()),
            ("ctf/scale", np.dtype("<f4"), (), (meta.scale if meta.scale is not None else torch.ones(n)).numpy()),
            ("ctf/bfactor", np.dtype("<f4"), (), (meta.bfactor if meta.bfactor is not None else torch.zeros(n)).numpy()),
        ]
    if meta.has_poses:
        pose = matrix_to_axis_angle(meta.rotations.transpose(-1, -2))
        shifts = meta.shifts_A if meta.shifts_A is not None else torch.zeros(n, 2, dtype=torch.float64)
        cols += [
            ("alignments3D/pose", np.dtype("<f4"), (3,), pose.numpy()),
            ("alignments3D/shift", np.dtype("<f4"), (2,), (shifts / px[:, None]).numpy()),
            ("alignments3D/psize_A", np.dtype("<f4"), (), px.numpy()),
        ]
    if meta.class_number is not None:
        cols.append(("alignments3D/class", np.dtype("<u4"), (), (meta.class_number - 1).numpy()))
    if meta.random_subset is not None:
        cols.append(("alignments3D/split", np.dtype("<u4"), (), (meta.random_subset - 1).numpy()))
    arr = np.zeros(n, dtype=[(name, dt, shape) for name, dt, shape, _ in cols])
    for name, _, _, values in cols:
        arr[name] = values
    with atomic_path(path, protect=tuple(protect)) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
