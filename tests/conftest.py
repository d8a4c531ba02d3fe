"""Shared test helpers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
COMPAT = Path(__file__).parent / "compat"

torch.set_num_threads(min(2, os.cpu_count() or 1))


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
