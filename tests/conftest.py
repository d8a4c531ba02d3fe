"""Shared test helpers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
COMPAT = Path(__file__).parent / "compat"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def one_thread():
    """One torch thread for a test of tiny networks or of CLI runs in subprocesses (which run on one thread
    too): on a busy 2-core machine two threads can be tens of times slower, and one thread everywhere keeps
    the kernels' summation order the same in parent and children."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_fixture(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative error ||a - e|| / ||e|| (absolute when e is all zeros)."""
    actual, expected = actual.double(), expected.double()
    denom = expected.norm()
    diff = (actual - expected).norm()
    return float(diff / denom) if denom > 0 else float(diff)


@pytest.fixture
def fixture_loader():
    return load_fixture
