"""Run records: params.json and metrics.json beside every run's outputs, and training logs (CSV), written atomically."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryoscope.errors import InvalidValueError
from cryoscope.io.atomic import atomic_path


def to_jsonable(obj: Any) -> Any:
    """Convert tensors, numpy values, paths, dataclasses and tuples to plain JSON values (non-finite floats -> None)."""
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray | np.generic):
        return to_jsonable(obj.tolist())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    raise InvalidValueError(f"cannot write a value of type {type(obj).__name__} to JSON")


def _write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    text = json.dumps(to_jsonable(data), indent=2, sort_keys=True, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_metrics_json(path: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write a run's metrics.json atomically (tensors and numpy values become plain numbers/lists)."""
    return _write_json(path, metrics)


def write_params_json(path: str | Path, params: Mapping[str, Any]) -> Path:
    """Write a run's params.json atomically (the inputs and options that produced the outputs)."""
    return _write_json(path, params)


def write_log_csv(path: str | Path, history: list[dict], protect: tuple[str | Path, ...] = ()) -> None:
    """Write a training log (one dict of numbers per step, the same keys in each) as CSV atomically; nothing if empty.
    `protect` lists input files that must never be replaced."""
    if not history:
        return
    with atomic_path(path, protect) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
