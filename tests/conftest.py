"""Shared test fixtures: bundled small test data, float64 helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
# fused kernels run eagerly in tests (compiling each takes tens of seconds); test_fusion compiles one on purpose
os.environ.setdefault("CRYOSCOPE_COMPILE", "0")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder of small files copied from public sources (see tests/data/README.md)."""
    return DATA


@pytest.fixture
def meta_default(request, monkeypatch):
    """torch's default device is "meta" during the test (`meta_device`): the test module's `CPU_HELPERS` run with
    the CPU default, and fused kernels run eagerly (the same Python code)."""
    from meta_device import patch_cpu_helpers

    monkeypatch.setenv("CRYOSCOPE_COMPILE", "0")
    patch_cpu_helpers(monkeypatch, getattr(request.module, "CPU_HELPERS", ()))
    torch.set_default_device("meta")
    yield
    torch.set_default_device(None)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (many small steps: thread hand-offs would cost more than the work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
