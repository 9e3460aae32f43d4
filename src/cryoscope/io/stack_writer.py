"""Streaming MRCS writer: write a float32 stack batch by batch (positioned writes, header statistics kept as
running sums), then rename into place. Memory stays at one batch whatever the stack size."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType

import mrcfile
import numpy as np
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.io.atomic import publish


class StackWriter:
    """Write `n` images of `box`² pixels (pixel size Å) to `path` without holding the stack in memory.

    Use as a context manager; `write(start, images)` stores images [b, box, box] at rows start..start+b.
    The file appears at `path` only when the block exits without error (atomic rename).
    """

    def __init__(self, path: str | Path, n: int, box: int, pixel_size: float, protect: tuple[str | Path, ...] = ()):
        self.path = Path(path)
        for p in protect:
            if self.path.exists() and Path(p).exists() and Path(p).resolve() == self.path.resolve():
                raise InvalidValueError("refusing to overwrite an input file", self.path)
        if n < 1 or box < 2 or not pixel_size > 0:
            raise InvalidValueError(f"need n >= 1, box >= 2 and pixel size > 0 (got {n}, {box}, {pixel_size})", self.path)
        self.n, self.box, self.pixel_size = n, box, float(pixel_size)
        self._written = np.zeros(n, dtype=bool)
        self._min, self._max, self._sum, self._sumsq = np.inf, -np.inf, 0.0, 0.0

    def __enter__(self) -> StackWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp.mrcs", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        # header of a one-image stack, then nz patched and the file extended (sparse): nothing of size n is touched
        with mrcfile.new(self._tmp, overwrite=True) as mrc:
            mrc.set_data(np.zeros((1, self.box, self.box), np.float32))
            mrc.set_image_stack()
            self._data_offset = int(mrc.header.nbytes + mrc.extended_header.nbytes)
            order = "<" if mrc.header.mode.dtype.byteorder in ("<", "=", "|") and np.little_endian else ">"
        self._file = open(self._tmp, "r+b")  # noqa: SIM115 - closed in __exit__
        os.pwrite(self._file.fileno(), np.array([self.n], dtype=order + "i4").tobytes(), 8)  # nz (header word 3)
        self._file.truncate(self._data_offset + self.n * self.box * self.box * 4)
        return self

    def write(self, start: int, images: torch.Tensor) -> None:
        """Store images [b, box, box] at rows start .. start + b - 1 (each row once: header statistics are sums)."""
        arr = images.detach().to("cpu", torch.float32).numpy()
        if arr.ndim != 3 or arr.shape[1:] != (self.box, self.box) or start < 0 or start + arr.shape[0] > self.n:
            raise InvalidValueError(f"batch of shape {arr.shape} at row {start} does not fit a stack of {self.n}x{self.box}x{self.box}", self.path)
        arr = np.ascontiguousarray(arr, dtype="<f4")
        os.pwrite(self._file.fileno(), arr.tobytes(), self._data_offset + start * self.box * self.box * 4)
        self._written[start : start + arr.shape[0]] = True
        self._min = min(self._min, float(arr.min()))
        self._max = max(self._max, float(arr.max()))
        self._sum += float(arr.sum(dtype=np.float64))
        self._sumsq += float(np.square(arr, dtype=np.float64).sum())

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self._file.close()
            if exc_type is None:
                if not self._written.all():
                    raise InvalidValueError(f"only {int(self._written.sum())} of {self.n} images were written", self.path)
                count = self.n * self.box * self.box
                mean = self._sum / count
                with mrcfile.mmap(self._tmp, mode="r+") as mrc:  # header only: the data pages are not touched
                    mrc.voxel_size = self.pixel_size
                    mrc.header.origin = (0.0, 0.0, 0.0)
                    mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = self._min, self._max, mean
                    mrc.header.rms = float(np.sqrt(max(self._sumsq / count - mean * mean, 0.0)))
                publish(self._tmp, self.path)
        finally:
            if self._tmp.exists():
                self._tmp.unlink()
