"""MRC maps and MRCS particle stacks (mrcfile): arrays [z, y, x] / [n, y, x] float32, sizes in Å."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import torch

from cryoscope.errors import InputFormatError, InvalidValueError, MissingDataError
from cryoscope.io.atomic import atomic_path
from cryoscope.io.files import existing_file

SUPPORTED_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
PIXEL_SIZE_RTOL = 1e-3


@dataclass
class Map:
    """A 3-D map: data [z, y, x] float32, voxel_size Å, origin (x, y, z) Å from the MRC header."""

    data: torch.Tensor
    voxel_size: float
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class MrcHeader:
    """What `info` and the readers need from an MRC header (shape is (nz, ny, nx))."""

    shape: tuple[int, int, int]
    mode: int
    voxel_size: tuple[float, float, float]
    origin: tuple[float, float, float]
    is_stack: bool
    data_offset: int = 1024
    byte_order: str = "<"


def _open(path: Path, mmap: bool = False, header_only: bool = False):
    """Open an MRC file permissively, turning every defect into a one-line InputFormatError."""
    path = existing_file(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if mmap:
                mrc = mrcfile.mmap(path, mode="r", permissive=True)
            else:
                mrc = mrcfile.open(path, mode="r", permissive=True, header_only=header_only)
        except Exception as err:  # mrcfile raises ValueError/OSError/EOFError for corrupt files
            raise InputFormatError(f"not a readable MRC file ({err})", path) from None
    if mrc.header is None:
        raise InputFormatError("not an MRC file (header too short)", path)
    mode = int(mrc.header.mode)
    if mode not in SUPPORTED_MODES:
        mrc.close()
        raise InputFormatError(f"unsupported MRC mode {mode} (supported: {sorted(SUPPORTED_MODES)})", path)
    if not header_only and mrc.data is None:
        mrc.close()
        why = "; ".join(str(w.message) for w in caught) or "no data block"
        raise InputFormatError(f"truncated or corrupt MRC data ({why})", path)
    return mrc


def read_header(path: str | Path) -> MrcHeader:
    """Header fields without reading the data (file size is checked against the header)."""
    path = Path(path)
    with _open(path, header_only=True) as mrc:
        h = mrc.header
        shape = (int(h.nz), int(h.ny), int(h.nx))
        itemsize = np.dtype(SUPPORTED_MODES[int(h.mode)]).itemsize
        expected = 1024 + int(h.nsymbt) + shape[0] * shape[1] * shape[2] * itemsize
        if path.stat().st_size < expected:
            raise InputFormatError(f"truncated MRC file: {path.stat().st_size} bytes, header needs {expected}", path)
        vs = mrc.voxel_size
        return MrcHeader(
            shape=shape,
            mode=int(h.mode),
            voxel_size=(float(vs.x), float(vs.y), float(vs.z)),
            origin=(float(h.origin.x), float(h.origin.y), float(h.origin.z)),
            is_stack=bool(int(h.ispg) == 0 and shape[0] > 1) or path.suffix.lower() == ".mrcs",
            data_offset=1024 + int(h.nsymbt),
            byte_order=h.mode.dtype.byteorder.replace("=", "<" if np.little_endian else ">"),
        )


def _check_finite(data: torch.Tensor, what: str, path: Path | str | None) -> None:
    if not bool(torch.isfinite(data).all()):
        raise InvalidValueError(f"{what} contains NaN/Inf values", path)


def read_map(path: str | Path, voxel_size: float | None = None) -> Map:
    """Read a 3-D map as float32 [z, y, x]; `voxel_size` (Å) overrides the header.

    A header voxel size of 0 without `voxel_size` is a MissingDataError.
    """
    path = Path(path)
    with _open(path) as mrc:
        data = np.asarray(mrc.data, dtype=np.float32)
        vs = float(mrc.voxel_size.x)
        origin = (float(mrc.header.origin.x), float(mrc.header.origin.y), float(mrc.header.origin.z))
    if data.ndim == 2:
        data = data[None]
    tensor = torch.from_numpy(np.array(data, dtype=np.float32, order="C"))
    _check_finite(tensor, "map", path)
    if voxel_size is not None:
        if not voxel_size > 0:
            raise InvalidValueError(f"voxel size must be positive, got {voxel_size}", path)
        vs = float(voxel_size)
    elif vs <= 0:
        raise MissingDataError("no voxel size in the MRC header (0): give --voxel-size", path)
    return Map(tensor, vs, origin)


def _write_mrc(path: Path, data: np.ndarray, voxel_size: float, stack: bool, protect: Sequence[str | Path]) -> None:
    if not voxel_size > 0:
        raise InvalidValueError(f"voxel size must be positive, got {voxel_size}", path)
    if not np.isfinite(data).all():
        raise InvalidValueError("refusing to write NaN/Inf values", path)
    with atomic_path(path, protect=tuple(protect)) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            if stack:
                mrc.set_image_stack()
            mrc.voxel_size = voxel_size
            mrc.header.origin = (0.0, 0.0, 0.0)
            mrc.update_header_stats()


def write_map(
    path: str | Path, data: torch.Tensor, voxel_size: float, protect: Sequence[str | Path] = ()
) -> None:
    """Write a [z, y, x] map as float32 MRC with the voxel size (Å) in the header; atomic.

    `protect` lists input files that must never be replaced.
    """
    arr = np.ascontiguousarray(torch.as_tensor(data, device="cpu").detach().numpy(), dtype=np.float32)
    if arr.ndim != 3:
        raise InvalidValueError(f"a map must be 3-D [z, y, x], got shape {tuple(arr.shape)}", path)
    _write_mrc(Path(path), arr, float(voxel_size), stack=False, protect=protect)


def write_stack(
    path: str | Path, images: torch.Tensor, pixel_size: float, protect: Sequence[str | Path] = ()
) -> None:
    """Write images [n, y, x] as a float32 MRCS stack with the pixel size (Å) in the header; atomic."""
    arr = np.ascontiguousarray(torch.as_tensor(images, device="cpu").detach().numpy(), dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InvalidValueError(f"a stack must be [n, y, x], got shape {tuple(arr.shape)}", path)
    _write_mrc(Path(path), arr, float(pixel_size), stack=True, protect=protect)


class ParticleStack:
    """Lazy particle images over one or several MRC/MRCS files, read on demand with positioned reads.

    Indexing by int returns [y, x]; by slice, list, array or tensor returns [n, y, x]; always float32.
    Only the requested images are read (runs of consecutive frames in one read); no file is mapped into
    memory, so the resident size stays at the batch whatever the stack size.
    Images are checked for NaN/Inf as they are read (InvalidValueError).
    """

    def __init__(self, files: list[Path], file_index: np.ndarray, frame: np.ndarray,
                 pixel_size: float | None = None, source: str | Path | None = None):
        self.files = files
        self._file_index = file_index.astype(np.int64)
        self._frame = frame.astype(np.int64)
        self._source = source
        self._fds: dict[int, int] = {}
        headers = [read_header(f) for f in files]
        self._headers = headers
        boxes = {(h.shape[1], h.shape[2]) for h in headers}
        if len(boxes) != 1:
            raise InvalidValueError(f"image files have different image sizes {sorted(boxes)}", source)
        ny, nx = boxes.pop()
        if ny != nx:
            raise InputFormatError(f"images must be square, got {ny} x {nx}", files[0])
        self.box = nx
        for fid, h in enumerate(headers):
            frames = self._frame[self._file_index == fid]
            if frames.size and (frames.min() < 0 or frames.max() >= h.shape[0]):
                bad = int(frames[(frames < 0) | (frames >= h.shape[0])][0])
                raise InvalidValueError(
                    f"image index {bad + 1} out of range: {files[fid]} has {h.shape[0]} images", source
                )
        self._pixel_size = pixel_size if pixel_size is not None else (headers[0].voxel_size[0] or None)

    @classmethod
    def open(cls, path: str | Path, pixel_size: float | None = None) -> ParticleStack:
        """All images of one MRC/MRCS file."""
        path = Path(path)
        n = read_header(path).shape[0]
        return cls([path], np.zeros(n, np.int64), np.arange(n), pixel_size, source=path)

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[str | Path, int]], pixel_size: float | None = None,
                   source: str | Path | None = None) -> ParticleStack:
        """Images given as (file, 0-based index) pairs, possibly across several files.

        Missing files are a MissingDataError naming the file and how many particles reference it.
        """
        if len(pairs) == 0:
            raise MissingDataError("no particle images listed", source)
        uniq: dict[Path, int] = {}
        file_index = np.empty(len(pairs), np.int64)
        frame = np.empty(len(pairs), np.int64)
        for k, (p, i) in enumerate(pairs):
            file_index[k] = uniq.setdefault(Path(p), len(uniq))
            frame[k] = i
        files = list(uniq)
        for fid, f in enumerate(files):
            if not f.exists():
                count = int((file_index == fid).sum())
                raise MissingDataError(f"image file {f} not found (referenced by {count} particles)", source)
        return cls(files, file_index, frame, pixel_size, source)

    def __len__(self) -> int:
        return int(self._frame.size)

    @property
    def pixel_size(self) -> float:
        """Pixel size (Å): given by the metadata or else the stack header."""
        if not self._pixel_size:
            raise MissingDataError("no pixel size in the stack header (0): give --pixel-size", self.files[0])
        return float(self._pixel_size)

    def check_header_pixel_size(self, pixel_size: float) -> None:
        """InvalidValueError if a stack header gives a pixel size (non-zero) different from `pixel_size` (Å)."""
        for f, h in zip(self.files, self._headers):
            hv = h.voxel_size[0]
            if hv > 0 and abs(hv - pixel_size) > PIXEL_SIZE_RTOL * pixel_size:
                raise InvalidValueError(
                    f"pixel size {pixel_size:g} Å in the metadata differs from {hv:g} Å in the header of {f}",
                    self._source,
                )

    def _read_frames(self, fid: int, frames: np.ndarray) -> np.ndarray:
        """Frames (0-based) of file `fid` as float32 [len(frames), box, box]."""
        h = self._headers[fid]
        if fid not in self._fds:
            self._fds[fid] = os.open(self.files[fid], os.O_RDONLY)
        dtype = np.dtype(SUPPORTED_MODES[h.mode]).newbyteorder(h.byte_order)
        frame_bytes = self.box * self.box * dtype.itemsize
        order = np.argsort(frames, kind="stable")
        ordered = frames[order]
        out = np.empty((frames.size, self.box, self.box), np.float32)
        breaks = np.nonzero(np.diff(ordered) != 1)[0] + 1
        for run_start, run_stop in zip(np.r_[0, breaks], np.r_[breaks, ordered.size]):
            first, count = int(ordered[run_start]), int(run_stop - run_start)
            raw = os.pread(self._fds[fid], count * frame_bytes, h.data_offset + first * frame_bytes)
            if len(raw) != count * frame_bytes:
                raise InputFormatError(f"truncated MRC data at image {first + 1}", self.files[fid])
            out[order[run_start:run_stop]] = np.frombuffer(raw, dtype).reshape(count, self.box, self.box)
        return out

    def __getitem__(self, index) -> torch.Tensor:
        single = isinstance(index, (int, np.integer)) or (torch.is_tensor(index) and index.ndim == 0)
        if torch.is_tensor(index):
            index = index.cpu().numpy()
        rows = np.atleast_1d(np.arange(len(self))[index if isinstance(index, slice) else np.asarray(index)])
        out = np.empty((rows.size, self.box, self.box), np.float32)
        fids = self._file_index[rows]
        for fid in np.unique(fids):
            sel = np.nonzero(fids == fid)[0]
            out[sel] = self._read_frames(int(fid), self._frame[rows[sel]])
        images = torch.from_numpy(out)
        if not bool(torch.isfinite(images).all()):
            bad = int(rows[int((~torch.isfinite(images)).flatten(1).any(1).nonzero()[0, 0])])
            f = self.files[self._file_index[bad]]
            raise InvalidValueError(f"image {self._frame[bad] + 1} of {f} contains NaN/Inf", self._source or f)
        return images[0] if single else images

    def __getstate__(self) -> dict:
        """Picklable (e.g. for worker processes): open file descriptors are not carried over, each process opens its own."""
        return {**self.__dict__, "_fds": {}}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        self.close()
