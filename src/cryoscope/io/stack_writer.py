"""Streaming MRCS writer: fill a memory-mapped float32 stack batch by batch, then rename into place."""

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

    def __enter__(self) -> StackWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp.mrcs", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._mrc = mrcfile.new_mmap(self._tmp, shape=(self.n, self.box, self.box), mrc_mode=2, overwrite=True)
        self._mrc.set_image_stack()
        return self

    def write(self, start: int, images: torch.Tensor) -> None:
        """Store images [b, box, box] at rows start .. start + b - 1."""
        arr = images.detach().to("cpu", torch.float32).numpy()
        if arr.ndim != 3 or arr.shape[1:] != (self.box, self.box) or start < 0 or start + arr.shape[0] > self.n:
            raise InvalidValueError(f"batch of shape {arr.shape} at row {start} does not fit a stack of {self.n}x{self.box}x{self.box}", self.path)
        self._mrc.data[start : start + arr.shape[0]] = arr
        self._written[start : start + arr.shape[0]] = True

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                if not self._written.all():
                    raise InvalidValueError(f"only {int(self._written.sum())} of {self.n} images were written", self.path)
                self._mrc.voxel_size = self.pixel_size
                self._mrc.header.origin = (0.0, 0.0, 0.0)
                self._mrc.update_header_stats()
            self._mrc.close()
            if exc_type is None:
                publish(self._tmp, self.path)
        finally:
            if self._tmp.exists():
                self._tmp.unlink()
