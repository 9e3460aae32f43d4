"""`cryoscope info FILE`: summarise an MRC/MRCS map or stack, a STAR, cryoSPARC .cs or cryoDRGN .pkl file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from cryoscope.errors import CryoscopeError, InputFormatError


def describe(path: Path) -> list[str]:
    """Lines describing `path` (raises CryoscopeError for unreadable files)."""
    suffix = path.suffix.lower()
    if suffix in (".mrc", ".mrcs", ".map", ".rec"):
        return _describe_mrc(path)
    if suffix == ".star":
        return _describe_star(path)
    if suffix == ".cs":
        return _describe_cs(path)
    if suffix == ".pkl":
        return _describe_pkl(path)
    raise InputFormatError(f"unknown file type {suffix!r} (expected .mrc, .mrcs, .star, .cs or .pkl)", path)


def _describe_mrc(path: Path) -> list[str]:
    from cryoscope.io.mrc import SUPPORTED_MODES, _open, read_header

    h = read_header(path)
    with _open(path, mmap=True) as mrc:
        data = mrc.data
        lo = hi = None
        total = 0.0
        for chunk in np.array_split(np.arange(data.shape[0]), max(1, data.shape[0] // 256)) if data.ndim == 3 else [None]:
            block = np.asarray(data if chunk is None else data[chunk[0] : chunk[-1] + 1], dtype=np.float64)
            lo = block.min() if lo is None else min(lo, block.min())
            hi = block.max() if hi is None else max(hi, block.max())
            total += block.sum()
        mean = total / data.size
    nz, ny, nx = h.shape
    kind = "image stack" if h.is_stack else "volume"
    vs = h.voxel_size
    return [
        f"file: {path}",
        f"type: MRC {kind}",
        f"dimensions (x, y, z): {nx} x {ny} x {nz}",
        f"mode: {h.mode} ({SUPPORTED_MODES[h.mode]})",
        f"voxel size (Å): {vs[0]:g} x {vs[1]:g} x {vs[2]:g}" + ("  (unset)" if vs[0] == 0 else ""),
        f"origin (Å): {h.origin[0]:g}, {h.origin[1]:g}, {h.origin[2]:g}",
        f"min / max / mean: {lo:.6g} / {hi:.6g} / {mean:.6g}",
    ]


def _describe_star(path: Path) -> list[str]:
    from cryoscope.io.star import read_star, read_star_blocks

    blocks = read_star_blocks(path)
    lines = [f"file: {path}", "type: RELION STAR"]
    block_lines = [f"block data_{name} ({len(df)} rows): {', '.join(df.columns)}" for name, df in blocks.items()]
    try:
        meta = read_star(path)
    except CryoscopeError as err:  # still show the layout, then say why it cannot be used
        return lines + block_lines + [f"not usable as particle metadata: {str(err).removeprefix(f'{path}: ')}"]
    lines.append(f"particles: {meta.n}")
    lines += block_lines
    groups = sorted(set(meta.optics_group.tolist()))
    lines.append(f"optics groups: {len(groups)}")
    if meta.pixel_size is None:
        lines.append("pixel size: none in the file")
    else:
        sizes = sorted(set(np.round(meta.pixel_size.numpy(), 6).tolist()))
        lines.append(f"pixel size (Å): {', '.join(f'{s:g}' for s in sizes)}")
    lines.append(f"image box: {meta.box if meta.box is not None else 'not in the file'}")
    lines.append(f"poses: {'yes' if meta.has_poses else 'no'}; CTF: {'yes' if meta.has_ctf else 'no'}")
    files = sorted({p for p, _ in meta.resolved_images()})
    missing = [f for f in files if not f.exists()]
    lines.append(f"image files: {len(files)}, missing: {len(missing)}")
    lines += [f"  missing: {f}" for f in missing[:20]]
    if len(missing) > 20:
        lines.append(f"  ... and {len(missing) - 20} more")
    return lines


def _describe_cs(path: Path) -> list[str]:
    from cryoscope.io.cryosparc import load_cs

    arr = load_cs(path)
    lines = [f"file: {path}", "type: cryoSPARC .cs", f"particles: {len(arr)}", f"fields ({len(arr.dtype.names)}):"]
    for name in arr.dtype.names:
        dt = arr.dtype.fields[name][0]
        shape = dt.shape if dt.shape else ""
        lines.append(f"  {name}: {dt.base}{shape}")
    return lines


def _describe_pkl(path: Path) -> list[str]:
    from cryoscope.io.cryodrgn import load_pkl, pkl_kind

    obj = load_pkl(path)
    items = obj if isinstance(obj, tuple) else (obj,)
    kind = {"pose": "cryoDRGN poses", "ctf": "cryoDRGN CTF table"}.get(pkl_kind(obj), "numpy arrays (unknown layout)")
    lines = [f"file: {path}", f"type: {kind}"]
    lines += [f"  array {i}: shape {tuple(a.shape)}, {a.dtype}" for i, a in enumerate(items)]
    return lines


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info(file: Path = typer.Argument(..., help="MRC/MRCS, STAR, cryoSPARC .cs or cryoDRGN .pkl file")) -> None:
        """Describe a map, particle stack or particle metadata file."""
        typer.echo("\n".join(describe(file)))
