"""User-facing errors: one line, naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class CryoscopeError(Exception):
    """An error caused by input the user can fix. The CLI prints it as one line, no traceback."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputFormatError(CryoscopeError):
    """A file is unreadable, truncated, empty or of the wrong layout."""


class MissingDataError(CryoscopeError):
    """A required column, file, image or parameter (e.g. pixel size) is absent."""


class InvalidValueError(CryoscopeError):
    """A value is out of range, NaN/Inf, or inconsistent with another (e.g. pixel sizes)."""
