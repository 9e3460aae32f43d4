"""Atomic output: write to a temporary file beside the target, then rename over it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryoscope.errors import InvalidValueError


def publish(tmp_path: Path, target: Path) -> None:
    """Give a finished temporary file the usual permissions (0666 less umask) and rename it to `target`."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    os.replace(tmp_path, target)


@contextlib.contextmanager
def atomic_path(target: str | Path, protect: tuple[str | Path, ...] = ()) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to `target`, on error delete it.

    `protect` lists input files the output must never replace.
    """
    target = Path(target)
    for p in protect:
        if Path(p).exists() and target.exists() and Path(p).resolve() == target.resolve():
            raise InvalidValueError("refusing to overwrite an input file", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + "".join(target.suffixes), dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        publish(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
