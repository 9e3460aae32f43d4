"""The parameters of a run, as written to params.json and matched on --resume: a command's options with paths as
strings, without those that only say where and how it runs (folder, resume, progress, device, time limit)."""

from __future__ import annotations

from pathlib import Path

RUN_ONLY = ("out", "resume", "progress", "device", "time_limit")


def run_params(values: dict, command: str, drop: tuple[str, ...] = ()) -> dict:
    """{"command": command, option: value, ...} from a command's `locals()`, less RUN_ONLY and `drop`."""
    return {"command": command, **{k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()
                                   if k not in RUN_ONLY + drop}}
