"""Device audits without a GPU. With torch's default device set to "meta", a tensor made without an explicit
device is a meta tensor, and the first operation that mixes it with the (CPU) inputs fails. An engine that passes
makes every tensor on an explicit device, which is what `--device cuda` needs. A CPU-vs-CUDA mismatch stays
invisible: only a GPU run shows it.

Helpers that build small tables on the default (CPU) device by design, and move them where they are used, run with
the CPU as the default device (`on_cpu`), as they do in a real run. A test module lists them in `CPU_HELPERS` as
(module, function, modules that hold it by name); the `meta_default` fixture (conftest) patches them."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable

import pytest
import torch


def on_cpu(fn: Callable) -> Callable:
    """fn run with the CPU as torch's default device."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.device("cpu"):
            return fn(*args, **kwargs)

    return wrapper


def patch_cpu_helpers(monkeypatch: pytest.MonkeyPatch, helpers: Iterable[tuple[str, str, list[str]]]) -> None:
    """Replace each helper by its `on_cpu` version in every module that holds it by name."""
    for module, name, holders in helpers:
        wrapped = on_cpu(getattr(importlib.import_module(module), name))
        for holder in holders:
            monkeypatch.setattr(importlib.import_module(holder), name, wrapped)
