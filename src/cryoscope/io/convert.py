"""Read and write particle metadata by file extension: .star (RELION), .cs (cryoSPARC), .pkl (cryoDRGN)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryoscope.errors import InputFormatError, InvalidValueError, MissingDataError
from cryoscope.io.cryodrgn import (
    load_pkl,
    pkl_kind,
    read_cryodrgn,
    write_ctf_pkl,
    write_pose_pkl,
)
from cryoscope.io.cryosparc import read_cs, write_cs
from cryoscope.io.metadata import ParticleMetadata
from cryoscope.io.star import read_star, write_star

METADATA_SUFFIXES = (".star", ".cs", ".pkl")


def read_metadata(path: str | Path, pixel_size: float | None = None, box: int | None = None,
                  ctf: str | Path | None = None) -> ParticleMetadata:
    """Particle metadata from a STAR, .cs or cryoDRGN pkl file (`ctf`: a cryoDRGN CTF pkl to pair with a pose pkl).

    `pixel_size` (Å) and `box` (pixels) override or fill in what the file lacks.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".star":
        meta = read_star(path, pixel_size=pixel_size)
    elif suffix == ".cs":
        meta = read_cs(path, pixel_size=pixel_size)
    elif suffix == ".pkl":
        kind = pkl_kind(load_pkl(path))
        if kind == "pose":
            meta = read_cryodrgn(path, ctf, box=box, pixel_size=pixel_size)
        elif kind == "ctf":
            meta = read_cryodrgn(None, path, box=box, pixel_size=pixel_size)
        else:
            raise InputFormatError("neither a cryoDRGN pose pkl nor a CTF pkl", path)
    else:
        raise InputFormatError(f"unknown metadata format {suffix!r} (expected .star, .cs or .pkl)", path)
    if meta.box is None and box is None and meta.image_names is not None:
        meta.box = _box_from_images(meta)
    return meta.with_overrides(box=box)


def attach_stack(meta: ParticleMetadata, stack: str | Path) -> ParticleMetadata:
    """Name image i of `stack` as particle i (cryoDRGN pkls carry no image names); counts must match."""
    from cryoscope.io.mrc import read_header

    stack = Path(stack)
    n = read_header(stack).shape[0]
    if n != meta.n:
        raise InvalidValueError(f"stack has {n} images but the metadata has {meta.n} particles", stack)
    out = meta.with_overrides()
    out.image_names = [(str(stack.resolve()), i) for i in range(n)]
    if out.box is None:
        out.box = read_header(stack).shape[2]
    return out


def _box_from_images(meta: ParticleMetadata) -> int | None:
    """Image size from the first referenced stack header, if that file exists."""
    from cryoscope.io.mrc import read_header

    first = meta.resolved_images()[0][0]
    return read_header(first).shape[2] if first.exists() else None


def write_metadata(path: str | Path, meta: ParticleMetadata, star_format: str = "relion31",
                   ctf_out: str | Path | None = None, protect: Sequence[str | Path] = ()) -> list[Path]:
    """Write `meta` in the format named by the extension; returns the files written.

    A .pkl output is cryoDRGN's pose pkl (with `ctf_out` for the CTF pkl), or the CTF pkl if there are no poses.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if ctf_out is not None and suffix != ".pkl":
        raise InvalidValueError("--ctf-out only applies to a cryoDRGN .pkl output")
    if suffix == ".star":
        write_star(path, meta, version=star_format, protect=protect)
        return [path]
    if suffix == ".cs":
        write_cs(path, meta, protect=protect)
        return [path]
    if suffix == ".pkl":
        if not meta.has_poses:
            if ctf_out is not None:
                raise MissingDataError("no poses to write; the CTF table goes to OUT alone", meta.source)
            write_ctf_pkl(path, meta, protect=protect)
            return [path]
        # validate both outputs before writing either, so a failure leaves nothing behind
        meta.require_box(), meta.require_pixel_size()
        if ctf_out is not None and not meta.has_ctf:
            raise MissingDataError("no CTF parameters for --ctf-out", meta.source)
        write_pose_pkl(path, meta, protect=protect)
        if ctf_out is not None:
            try:
                write_ctf_pkl(ctf_out, meta, protect=(*protect, path))
            except Exception:
                path.unlink(missing_ok=True)
                raise
            return [path, Path(ctf_out)]
        return [path]
    raise InputFormatError(f"unknown output format {suffix!r} (expected .star, .cs or .pkl)", path)
