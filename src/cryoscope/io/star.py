"""RELION STAR particle files (starfile): read 3.0 and 3.1/4/5, write 3.0 or 3.1+."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
import torch

from cryoscope.errors import InputFormatError, InvalidValueError, MissingDataError
from cryoscope.io.atomic import atomic_path
from cryoscope.io.files import existing_file
from cryoscope.io.metadata import ParticleMetadata

NUMERIC_COLUMNS = (
    "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginX", "rlnOriginY", "rlnOriginXAngst",
    "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
    "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnPhaseShift", "rlnCtfBfactor",
    "rlnCtfScalefactor", "rlnImagePixelSize", "rlnDetectorPixelSize", "rlnMagnification",
    "rlnImageSize", "rlnOpticsGroup", "rlnClassNumber", "rlnRandomSubset",
)  # fmt: skip
MAGNIFICATION_30 = 10000.0  # RELION 3.0 output: pixel size = rlnDetectorPixelSize (µm) * 1e4 / magnification


def read_star_blocks(path: Path) -> dict[str, pd.DataFrame]:
    """All loop blocks of a STAR file; InputFormatError for empty or unparsable files."""
    path = existing_file(path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as err:
        raise InputFormatError(f"not a readable STAR file ({type(err).__name__}: {err})", path) from None
    loops = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame) and len(v.columns)}
    if not loops:
        raise InputFormatError("no data loop in the STAR file", path)
    return loops


def _particles_table(blocks: dict[str, pd.DataFrame], path: Path) -> pd.DataFrame:
    if "particles" in blocks:
        df = blocks["particles"].copy()
    else:
        with_names = [v for k, v in blocks.items() if k != "optics" and "rlnImageName" in v.columns]
        if not with_names:
            raise MissingDataError("missing required column rlnImageName (no particle table)", path)
        df = with_names[0].copy()
    if "rlnImageName" not in df.columns:
        raise MissingDataError("missing required column rlnImageName", path)
    if len(df) == 0:
        raise InputFormatError("the particle table has no rows", path)
    optics = blocks.get("optics")
    if optics is not None:
        if "rlnOpticsGroup" not in df.columns:
            raise MissingDataError("missing required column rlnOpticsGroup (the file has an optics table)", path)
        if "rlnOpticsGroup" not in optics.columns:
            raise MissingDataError("optics table lacks rlnOpticsGroup", path)
        _check_numeric(optics, ["rlnOpticsGroup"], path)
        _check_numeric(df, ["rlnOpticsGroup"], path)
        unknown = sorted(set(df["rlnOpticsGroup"].astype(int)) - set(optics["rlnOpticsGroup"].astype(int)))
        if unknown:
            raise InvalidValueError(f"particles reference optics group(s) {unknown} missing from data_optics", path)
        extra = [c for c in optics.columns if c not in df.columns or c == "rlnOpticsGroup"]
        opt = optics[extra].astype({"rlnOpticsGroup": int})
        df = df.astype({"rlnOpticsGroup": int}).merge(opt, on="rlnOpticsGroup", how="left")
    return df


def _check_numeric(df: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    for col in columns:
        if col not in df.columns or pd.api.types.is_numeric_dtype(df[col]):
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        bad = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise InvalidValueError(f"column {col}: value {df[col].iloc[bad]!r} in row {bad + 1} is not a number", path)


def _col(df: pd.DataFrame, name: str) -> torch.Tensor:
    return torch.tensor(df[name].to_numpy(dtype=np.float64))


def _parse_image_name(name: str, row: int, path: Path) -> tuple[str, int]:
    name = str(name).strip()
    if "@" not in name:
        return name, 0
    idx, file = name.split("@", 1)
    try:
        i = int(idx)
    except ValueError:
        raise InvalidValueError(f"rlnImageName {name!r} in row {row + 1}: index is not an integer", path) from None
    if i < 1:
        raise InvalidValueError(f"rlnImageName {name!r} in row {row + 1}: STAR indices start at 1", path)
    return file, i - 1


def read_star(path: str | Path, pixel_size: float | None = None) -> ParticleMetadata:
    """Read a RELION 3.0 or 3.1+ particle STAR file (optics merged into particles).

    Pixel size (Å): `pixel_size` if given, else rlnImagePixelSize, else rlnDetectorPixelSize * 1e4 / rlnMagnification.
    RELION 3.0 pixel origins (rlnOriginX/Y) are converted to Å.
    """
    path = Path(path)
    df = _particles_table(read_star_blocks(path), path)
    _check_numeric(df, NUMERIC_COLUMNS, path)
    n = len(df)
    cols = set(df.columns)

    if pixel_size is not None:
        px = torch.full((n,), float(pixel_size), dtype=torch.float64)
    elif "rlnImagePixelSize" in cols:
        px = _col(df, "rlnImagePixelSize")
    elif {"rlnDetectorPixelSize", "rlnMagnification"} <= cols:
        px = _col(df, "rlnDetectorPixelSize") * 1e4 / _col(df, "rlnMagnification")
    else:
        px = None

    euler = None
    if cols & {"rlnAngleRot", "rlnAngleTilt"}:
        for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):
            if c not in cols:
                raise MissingDataError(f"missing required column {c}", path)
        euler = torch.stack([_col(df, "rlnAngleRot"), _col(df, "rlnAngleTilt"), _col(df, "rlnAnglePsi")], -1)
    elif "rlnAnglePsi" in cols:  # 2-D alignment: in-plane angle only
        euler = torch.stack([torch.zeros(n, dtype=torch.float64)] * 2 + [_col(df, "rlnAnglePsi")], -1)

    shifts = None
    if cols & {"rlnOriginXAngst", "rlnOriginYAngst"}:
        for c in ("rlnOriginXAngst", "rlnOriginYAngst"):
            if c not in cols:
                raise MissingDataError(f"missing required column {c}", path)
        shifts = torch.stack([_col(df, "rlnOriginXAngst"), _col(df, "rlnOriginYAngst")], -1)
    elif cols & {"rlnOriginX", "rlnOriginY"}:
        for c in ("rlnOriginX", "rlnOriginY"):
            if c not in cols:
                raise MissingDataError(f"missing required column {c}", path)
        if px is None:
            raise MissingDataError("rlnOriginX/Y are in pixels but the file has no pixel size: give --pixel-size", path)
        shifts = torch.stack([_col(df, "rlnOriginX"), _col(df, "rlnOriginY")], -1) * px[:, None]
    elif euler is not None:
        shifts = torch.zeros(n, 2, dtype=torch.float64)

    ctf: dict[str, torch.Tensor] = {}
    if "rlnDefocusU" in cols:
        for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
            if c not in cols:
                raise MissingDataError(f"missing required column {c} (needed with rlnDefocusU)", path)
        u = _col(df, "rlnDefocusU")
        ctf = {
            "defocus_u": u,
            "defocus_v": _col(df, "rlnDefocusV") if "rlnDefocusV" in cols else u.clone(),
            "defocus_angle": _col(df, "rlnDefocusAngle") if "rlnDefocusAngle" in cols else torch.zeros(n, dtype=torch.float64),
            "voltage": _col(df, "rlnVoltage"),
            "cs": _col(df, "rlnSphericalAberration"),
            "amplitude_contrast": _col(df, "rlnAmplitudeContrast"),
            "phase_shift": _col(df, "rlnPhaseShift") if "rlnPhaseShift" in cols else torch.zeros(n, dtype=torch.float64),
            "bfactor": _col(df, "rlnCtfBfactor") if "rlnCtfBfactor" in cols else torch.zeros(n, dtype=torch.float64),
            "scale": _col(df, "rlnCtfScalefactor") if "rlnCtfScalefactor" in cols else torch.ones(n, dtype=torch.float64),
        }

    box = None
    if "rlnImageSize" in cols:
        sizes = set(df["rlnImageSize"].astype(int))
        if len(sizes) > 1:
            raise InvalidValueError(f"optics groups have different image sizes {sorted(sizes)}", path)
        box = sizes.pop()

    names = [_parse_image_name(v, k, path) for k, v in enumerate(df["rlnImageName"].tolist())]
    return ParticleMetadata(
        n=n,
        euler=euler,
        shifts_A=shifts,
        **ctf,
        optics_group=torch.tensor(df["rlnOpticsGroup"].to_numpy(np.int64)) if "rlnOpticsGroup" in cols else None,
        pixel_size=px,
        box=box,
        class_number=torch.tensor(df["rlnClassNumber"].to_numpy(np.int64)) if "rlnClassNumber" in cols else None,
        random_subset=torch.tensor(df["rlnRandomSubset"].to_numpy(np.int64)) if "rlnRandomSubset" in cols else None,
        image_names=names,
        root=path.parent.resolve(),
        source=str(path),
    )


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def write_star(path: str | Path, meta: ParticleMetadata, version: str = "relion31",
               protect: Sequence[str | Path] = (), extra: Mapping[str, np.ndarray] | None = None) -> None:
    """Write RELION 3.1+ (data_optics + data_particles, origins in Å) or RELION 3.0 (one table, origins in pixels).

    Optics groups are split where voltage, Cs, amplitude contrast or pixel size differ within a group.
    `extra` adds (or replaces) per-particle columns (label without the leading underscore -> [n] values), e.g. new
    half-sets (rlnRandomSubset) or cryoscope's own posterior spreads.
    """
    path = Path(path)
    if version not in ("relion30", "relion31"):
        raise InvalidValueError(f"unknown STAR format {version!r} (relion30 or relion31)")
    px = meta.require_pixel_size()
    if meta.image_names is None:
        raise MissingDataError("no image names to write (rlnImageName is required): give --images STACK.mrcs", meta.source)
    part = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@{p}" for p, i in meta.image_names_relative_to(path.parent)]})
    if meta.has_poses:
        e = _np(meta.euler)
        part["rlnAngleRot"], part["rlnAngleTilt"], part["rlnAnglePsi"] = e[:, 0], e[:, 1], e[:, 2]
    shifts = meta.shifts_A if meta.shifts_A is not None else None
    if meta.has_ctf:
        part["rlnDefocusU"] = _np(meta.defocus_u)
        part["rlnDefocusV"] = _np(meta.defocus_v)
        part["rlnDefocusAngle"] = _np(meta.defocus_angle)
        part["rlnPhaseShift"] = _np(meta.phase_shift) if meta.phase_shift is not None else 0.0
        part["rlnCtfBfactor"] = _np(meta.bfactor) if meta.bfactor is not None else 0.0
        part["rlnCtfScalefactor"] = _np(meta.scale) if meta.scale is not None else 1.0
    if meta.class_number is not None:
        part["rlnClassNumber"] = _np(meta.class_number)
    if meta.random_subset is not None:
        part["rlnRandomSubset"] = _np(meta.random_subset)
    for label, values in (extra or {}).items():
        values = np.asarray(values)
        if values.shape != (meta.n,):
            raise InvalidValueError(f"column {label} needs {meta.n} values, got shape {values.shape}", str(path))
        part[label] = values
    optics_cols = {"rlnImagePixelSize": _np(px)}
    if meta.has_ctf:
        optics_cols |= {
            "rlnVoltage": _np(meta.voltage),
            "rlnSphericalAberration": _np(meta.cs),
            "rlnAmplitudeContrast": _np(meta.amplitude_contrast),
        }

    if version == "relion30":
        if shifts is not None:
            part["rlnOriginX"] = _np(shifts[:, 0] / px)
            part["rlnOriginY"] = _np(shifts[:, 1] / px)
        for k, v in optics_cols.items():
            if k != "rlnImagePixelSize":
                part[k] = v
        part["rlnDetectorPixelSize"] = _np(px)
        part["rlnMagnification"] = MAGNIFICATION_30
        blocks = {"": part}
    else:
        if shifts is not None:
            part["rlnOriginXAngst"] = _np(shifts[:, 0])
            part["rlnOriginYAngst"] = _np(shifts[:, 1])
        key = pd.DataFrame({"g": _np(meta.optics_group), **optics_cols})
        uniq, group = np.unique(key.to_numpy(np.float64), axis=0, return_inverse=True)
        optics = pd.DataFrame(uniq[:, 1:], columns=list(optics_cols))
        optics.insert(0, "rlnOpticsGroup", np.arange(1, len(uniq) + 1))
        optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in range(1, len(uniq) + 1)])
        if meta.box is not None:
            optics["rlnImageSize"] = int(meta.box)
        optics["rlnImageDimensionality"] = 2
        part["rlnOpticsGroup"] = group.reshape(-1) + 1
        blocks = {"optics": optics, "particles": part}
    with atomic_path(path, protect=tuple(protect)) as tmp:
        starfile.write(blocks, tmp, overwrite=True, float_format="%.6f")


def write_star_new_poses(source: str | Path, path: str | Path, meta: ParticleMetadata, protect: Sequence[str | Path] = ()) -> None:
    """Copy of the particle STAR file `source` (read as `meta`) with the poses of `meta` (Euler angles, origins) in
    place of its own; every other block (loops and key-value blocks) and column is kept, image paths re-expressed
    relative to `path`'s folder. Origins stay in the source's unit (rlnOriginX/Y in pixels for RELION 3.0 files, else
    rlnOrigin*Angst)."""
    source, path = Path(source), Path(path)
    loops = read_star_blocks(source)
    key = "particles" if "particles" in loops else next(k for k, v in loops.items() if k != "optics" and "rlnImageName" in v.columns)
    df = loops[key].copy()
    if len(df) != meta.n or not meta.has_poses or meta.shifts_A is None:
        raise InvalidValueError(f"need poses and origins for its {len(df)} particles", source)
    e, s = _np(meta.euler), meta.shifts_A
    df["rlnAngleRot"], df["rlnAngleTilt"], df["rlnAnglePsi"] = e[:, 0], e[:, 1], e[:, 2]
    if {"rlnOriginX", "rlnOriginY"} & set(df.columns) and not {"rlnOriginXAngst", "rlnOriginYAngst"} & set(df.columns):
        px = meta.require_pixel_size()
        df["rlnOriginX"], df["rlnOriginY"] = _np(s[:, 0] / px), _np(s[:, 1] / px)
    else:
        df["rlnOriginXAngst"], df["rlnOriginYAngst"] = _np(s[:, 0]), _np(s[:, 1])
    df["rlnImageName"] = [f"{i + 1:06d}@{p}" for p, i in meta.image_names_relative_to(path.parent)]
    blocks = starfile.read(source, always_dict=True)  # every block, key-value ones too, in the file's order
    blocks[key] = df
    with atomic_path(path, protect=(source, *protect)) as tmp:
        starfile.write(blocks, tmp, overwrite=True, float_format="%.6f")
