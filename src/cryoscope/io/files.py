"""Checks every reader makes before opening an input file."""

from __future__ import annotations

from pathlib import Path

from cryoscope.errors import InputFormatError, MissingDataError


def existing_file(path: str | Path) -> Path:
    """`path` as a Path; MissingDataError if it does not exist, InputFormatError if it is empty."""
    path = Path(path)
    if not path.exists():
        raise MissingDataError("file not found", path)
    if path.stat().st_size == 0:
        raise InputFormatError("empty file", path)
    return path
