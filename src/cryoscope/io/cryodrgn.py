"""cryoDRGN pose and CTF .pkl files, read with a restricted unpickler (numpy arrays and tuples only).

Conventions pinned in docs/io.md: cryoDRGN's rotation matrix equals the RELION matrix A(rot, tilt, psi);
translations are RELION origins in fractions of the box: origin_px = trans * D.
CTF table rows: (box, pixel size Å, dfU Å, dfV Å, angle °, kV, Cs mm, amplitude contrast, phase shift °).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cryoscope.errors import InputFormatError, InvalidValueError, MissingDataError
from cryoscope.io.atomic import atomic_path
from cryoscope.io.files import existing_file
from cryoscope.io.metadata import ParticleMetadata

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray

_ALLOWED = {
    **{(m, "_reconstruct"): _multiarray._reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _multiarray.scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays, dtypes and scalars."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden object {module}.{name}") from None


def load_pkl(path: str | Path) -> np.ndarray | tuple[np.ndarray, ...]:
    """Load a numpy array or tuple of arrays from a pickle without executing arbitrary code."""
    path = existing_file(path)
    try:
        with open(path, "rb") as fh:
            obj = _NumpyOnlyUnpickler(fh).load()
    except Exception as err:
        raise InputFormatError(f"not a cryoDRGN pickle of numpy arrays ({err})", path) from None
    items = obj if isinstance(obj, tuple) else (obj,)
    if not items or not all(isinstance(x, np.ndarray) for x in items):
        raise InputFormatError("pickle holds something other than numpy arrays or a tuple of them", path)
    return obj


def pkl_kind(obj: np.ndarray | tuple) -> str:
    """'pose' (rotations [N,3,3], optional translations [N,2]), 'ctf' ([N,9]) or 'unknown'."""
    items = obj if isinstance(obj, tuple) else (obj,)
    if items[0].ndim == 3 and items[0].shape[1:] == (3, 3) and (
        len(items) == 1 or (len(items) == 2 and items[1].shape == (items[0].shape[0], 2))
    ):
        return "pose"
    if len(items) == 1 and items[0].ndim == 2 and items[0].shape[1] == 9:
        return "ctf"
    return "unknown"


def _finite(a: np.ndarray, what: str, path: Path) -> torch.Tensor:
    t = torch.tensor(np.asarray(a, dtype=np.float64))
    if not bool(torch.isfinite(t).all()):
        raise InvalidValueError(f"{what} has NaN/Inf values", path)
    return t


def read_cryodrgn(pose_path: str | Path | None = None, ctf_path: str | Path | None = None,
                  box: int | None = None, pixel_size: float | None = None) -> ParticleMetadata:
    """Read a cryoDRGN pose pkl and/or CTF pkl into one table.

    Translations (fractions of the box) need the box size D: from the CTF pkl or `box`; shifts in Å
    also need the pixel size (CTF pkl or `pixel_size`).
    """
    if pose_path is None and ctf_path is None:
        raise MissingDataError("give a cryoDRGN pose pkl and/or CTF pkl")
    ctf: dict[str, torch.Tensor] = {}
    px_t = None
    n = None
    if ctf_path is not None:
        ctf_path = Path(ctf_path)
        obj = load_pkl(ctf_path)
        if pkl_kind(obj) != "ctf":
            raise InputFormatError(f"not a cryoDRGN CTF table: expected an (N, 9) array, got {_shapes(obj)}", ctf_path)
        t = _finite(obj, "CTF table", ctf_path)
        n = t.shape[0]
        boxes = set(t[:, 0].round().long().tolist())
        if len(boxes) != 1:
            raise InvalidValueError(f"CTF table has several box sizes {sorted(boxes)}", ctf_path)
        file_box = boxes.pop()
        if box is None:
            box = int(file_box)
        px_t = t[:, 1]
        ctf = dict(
            defocus_u=t[:, 2], defocus_v=t[:, 3], defocus_angle=t[:, 4], voltage=t[:, 5], cs=t[:, 6],
            amplitude_contrast=t[:, 7], phase_shift=t[:, 8],
        )  # fmt: skip
    if pixel_size is not None:
        px_t = torch.full((n if n is not None else 1,), float(pixel_size), dtype=torch.float64)
    rotations = shifts = None
    if pose_path is not None:
        pose_path = Path(pose_path)
        obj = load_pkl(pose_path)
        if pkl_kind(obj) != "pose":
            raise InputFormatError(f"not a cryoDRGN pose pkl: expected (N,3,3) rotations [+ (N,2) translations], got {_shapes(obj)}", pose_path)
        items = obj if isinstance(obj, tuple) else (obj,)
        rotations = _finite(items[0], "rotations", pose_path)
        if n is not None and rotations.shape[0] != n:
            raise InvalidValueError(f"{rotations.shape[0]} poses but {n} CTF rows in {ctf_path}", pose_path)
        n = rotations.shape[0]
        if px_t is not None and px_t.shape[0] == 1:
            px_t = px_t.expand(n).clone()
        if len(items) == 2:
            trans = _finite(items[1], "translations", pose_path)
            if box is None:
                raise MissingDataError("translations are fractions of the box: give --box or a CTF pkl", pose_path)
            if px_t is None:
                raise MissingDataError("translations need a pixel size: give --pixel-size or a CTF pkl", pose_path)
            shifts = trans * box * px_t[:, None]
        else:
            shifts = torch.zeros(n, 2, dtype=torch.float64)
    source = str(pose_path if pose_path is not None else ctf_path)
    return ParticleMetadata(
        n=n, rotations=rotations, shifts_A=shifts, **ctf, pixel_size=px_t, box=box,
        root=Path(source).parent.resolve(), source=source,
    )  # fmt: skip


def _shapes(obj) -> str:
    items = obj if isinstance(obj, tuple) else (obj,)
    return ", ".join(str(tuple(x.shape)) for x in items)


def write_pose_pkl(path: str | Path, meta: ParticleMetadata, protect: Sequence[str | Path] = ()) -> None:
    """Write (rotations (N,3,3), translations (N,2) in box fractions) as cryoDRGN's parse_pose_star does."""
    if not meta.has_poses:
        raise MissingDataError("no poses to write to a cryoDRGN pose pkl", meta.source)
    box = meta.require_box()
    px = meta.require_pixel_size()
    shifts = meta.shifts_A if meta.shifts_A is not None else torch.zeros(meta.n, 2, dtype=torch.float64)
    rot = meta.rotations.numpy().astype(np.float64)
    trans = (shifts / px[:, None] / box).numpy().astype(np.float64)
    _dump(path, (rot, trans), protect)


def write_ctf_pkl(path: str | Path, meta: ParticleMetadata, protect: Sequence[str | Path] = ()) -> None:
    """Write the (N, 9) float32 CTF table as cryoDRGN's parse_ctf_star does."""
    if not meta.has_ctf:
        raise MissingDataError("no CTF parameters to write to a cryoDRGN CTF pkl", meta.source)
    box = meta.require_box()
    px = meta.require_pixel_size()
    zeros = torch.zeros(meta.n, dtype=torch.float64)
    cols = [torch.full((meta.n,), float(box), dtype=torch.float64), px, meta.defocus_u, meta.defocus_v,
            meta.defocus_angle, meta.voltage, meta.cs, meta.amplitude_contrast,
            meta.phase_shift if meta.phase_shift is not None else zeros]  # fmt: skip
    _dump(path, torch.stack(cols, -1).numpy().astype(np.float32), protect)


def _dump(path: str | Path, obj, protect: Sequence[str | Path]) -> None:
    with atomic_path(path, protect=tuple(protect)) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump(obj, fh)
