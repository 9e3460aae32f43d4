"""Checkpoint / resume of iterative runs: atomic `torch.save` of plain data, loaded with `weights_only=True`.

A checkpoint holds a state dict (tensors, None/bool/int/float/str, lists, tuples and dicts with string
keys, nested), the run parameters it was written with (JSON-able), and a format version. Arbitrary
Python objects are refused at save time, so loading never unpickles code. Resuming with parameters
that differ from the saved ones is an error naming the keys, so a restarted run cannot silently mix
two configurations.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from cryoscope.errors import InputFormatError, InvalidValueError, MissingDataError
from cryoscope.io.atomic import atomic_path

FORMAT = "cryoscope-checkpoint"
FORMAT_VERSION = 1
_SCALARS = (type(None), bool, int, float, str)
_ABSENT = object()


def save_checkpoint(path: str | Path, state: dict[str, Any], params: dict[str, Any]) -> None:
    """Write `state` and the run `params` to `path` atomically (temporary file + rename).

    Tensors are stored on the CPU (views are stored without their base). Other object types raise
    InvalidValueError naming the offending key; the previous checkpoint at `path` is then untouched.
    """
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "params": _json_params(params, path),
        "state": _plain(state, "state", path),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The state dict saved at `path` (tensors on the CPU).

    When `params` is given it must equal the saved run parameters, else InvalidValueError naming the
    differing keys. A missing, truncated or foreign file, or another format version, is a CryoscopeError.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError("checkpoint file not found", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, disallowed global: all mean "not a usable checkpoint"
        text = str(exc).strip()
        reason = text.splitlines()[0].split(". ")[0][:160] if text else type(exc).__name__
        raise InputFormatError(f"unreadable checkpoint (truncated or corrupt): {reason}", path) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "state" not in payload:
        raise InputFormatError("not a cryoscope checkpoint", path)
    if payload.get("version") != FORMAT_VERSION:
        raise InputFormatError(
            f"checkpoint format version {payload.get('version')} is not supported (expected {FORMAT_VERSION})", path
        )
    if params is not None:
        _check_params(payload.get("params", {}), _json_params(params, path), path)
    return payload["state"]


def generator_state(generator: torch.Generator) -> torch.Tensor:
    """State of a torch.Generator (CPU or CUDA) as a CPU uint8 tensor, to store in a checkpoint."""
    return generator.get_state().clone()


def restore_generator(generator: torch.Generator, state: torch.Tensor) -> torch.Generator:
    """Set `generator` to a state from `generator_state`, so its random stream resumes exactly; returns it."""
    if state.dtype != torch.uint8 or state.dim() != 1:
        raise InvalidValueError(f"generator state must be a 1-D uint8 tensor, got {state.dtype} {tuple(state.shape)}")
    generator.set_state(state.cpu())
    return generator


def optimiser_state(opt: torch.optim.Optimizer) -> dict:
    """An optimiser's state dict with string keys (checkpoints hold plain data)."""
    sd = opt.state_dict()
    return {"state": {str(k): v for k, v in sd["state"].items()}, "param_groups": sd["param_groups"]}


def load_optimiser_state(opt: torch.optim.Optimizer, saved: dict) -> None:
    """Restore an optimiser from `optimiser_state`."""
    opt.load_state_dict({"state": {int(k): v for k, v in saved["state"].items()}, "param_groups": saved["param_groups"]})


class CheckpointDir:
    """The latest checkpoint of a run in an output folder: `OUT/checkpoint.pt`, overwritten at each save.

    The iteration number is stored inside; `params` are the run parameters every save records and every
    load checks.
    """

    NAME = "checkpoint.pt"

    def __init__(self, out_dir: str | Path, params: dict[str, Any]):
        self.path = Path(out_dir) / self.NAME
        self.params = params

    def exists(self) -> bool:
        """True when a checkpoint has been written in the folder."""
        return self.path.is_file()

    def save(self, iteration: int, state: dict[str, Any]) -> None:
        """Replace the checkpoint with the state after `iteration` (atomic)."""
        save_checkpoint(self.path, {"iteration": int(iteration), "state": state}, self.params)

    def load(self) -> tuple[int, dict[str, Any]]:
        """(iteration, state) of the latest checkpoint, checked against the run parameters."""
        saved = load_checkpoint(self.path, self.params)
        if not isinstance(saved.get("iteration"), int) or not isinstance(saved.get("state"), dict):
            raise InputFormatError("checkpoint has no iteration number or state", self.path)
        return saved["iteration"], saved["state"]


def _plain(value: Any, key: str, path: str | Path) -> Any:
    """`value` checked to hold only plain data; tensors detached, on the CPU, without views of larger storage."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.untyped_storage().nbytes() != t.nbytes or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        return t
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{key}[{i}]", path) for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidValueError(f"checkpoint key {key}[{k!r}] is not a string", path)
            out[k] = _plain(v, f"{key}[{k!r}]", path)
        return out
    raise InvalidValueError(
        f"cannot checkpoint {key} of type {type(value).__name__} (only tensors, numbers, strings, lists, dicts)", path
    )


def _json_params(params: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Run parameters normalised through JSON (tuples become lists), so saved and current ones compare equal."""
    try:
        out = json.loads(json.dumps(params, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(f"run parameters are not JSON-serialisable: {exc}", path) from None
    if not isinstance(out, dict):
        raise InvalidValueError("run parameters must be a dict", path)
    return out


def _check_params(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Raise naming every key whose value differs between the checkpoint and the current run."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, _ABSENT), current.get(key, _ABSENT)
        if not _same(a, b):
            diffs.append(f"{key} (checkpoint {_show(a)}, now {_show(b)})")
    if diffs:
        raise InvalidValueError("checkpoint was written with different run parameters: " + "; ".join(diffs), path)


def _show(value: Any) -> str:
    """A parameter value for the error message (JSON, shortened)."""
    text = "absent" if value is _ABSENT else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _same(a: Any, b: Any) -> bool:
    """Equality of JSON values where NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b
