"""Choice of compute device (`--device auto|cpu|cuda`)."""

from __future__ import annotations

import torch

from cryoscope.errors import InvalidValueError


def resolve_device(spec: str = "auto") -> torch.device:
    """Map 'auto' | 'cpu' | 'cuda' | 'cuda:N' to a torch.device ('auto' picks CUDA when present)."""
    spec = spec.lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidValueError(f"--device {spec} requested but no CUDA device is available")
    if spec != "cpu" and not spec.startswith("cuda"):
        raise InvalidValueError(f"unknown device '{spec}' (use auto, cpu or cuda)")
    return torch.device(spec)
