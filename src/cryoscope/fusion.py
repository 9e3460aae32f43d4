"""Kernel fusion by `torch.compile` (inductor: C++/OpenMP on CPU, Triton on CUDA) for elementwise-heavy samplers.

A fused function runs the same Python code as eagerly, so the two agree to rounding. It is compiled on first
use (tens of seconds on a CPU, cached on disk by inductor for later processes). `CRYOSCOPE_COMPILE=0` keeps it
eager; so does a failed compilation (no C++ compiler, for example), after one warning.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


def compile_enabled() -> bool:
    """True unless the environment sets CRYOSCOPE_COMPILE=0."""
    return os.environ.get("CRYOSCOPE_COMPILE", "1") != "0"


def fused(fn: F) -> F:
    """`fn` compiled when enabled: first for the shapes of its first call (a later, different size compiles once more
    with dynamic shapes), without inductor's bounds checks on gathered indices."""
    compiled = torch.compile(fn, dynamic=None, options={"assert_indirect_indexing": False})
    broken = False

    @functools.wraps(fn)
    def run(*args, **kwargs):
        nonlocal broken
        if broken or not compile_enabled():
            return fn(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except Exception as err:  # compilation failed: the eager function gives the same result, slower
            broken = True
            warnings.warn(f"torch.compile of {fn.__qualname__} failed ({type(err).__name__}); running it eagerly",
                          RuntimeWarning, stacklevel=2)
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]
